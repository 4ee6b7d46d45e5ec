"""dp_sklearn: the Deep Pneumonia framework as scikit-learn estimators.

Self-supervised contrastive pre-training, a mask-guided attention classifier with
contrastive regulation, and class-balanced losses for class-imbalanced lesion
recognition in chest X-rays. See ``README.md`` and ``docs/`` for the user guide.
"""

__version__ = "0.1.0"
