"""dp_sklearn: the Deep Pneumonia framework as scikit-learn estimators.

Self-supervised contrastive pre-training, a mask-guided attention classifier with
contrastive regulation, and class-balanced losses for class-imbalanced lesion
recognition in chest X-rays. See ``README.md`` and ``docs/`` for the user guide.

The public names below are imported on first use, so ``import dp_sklearn`` stays cheap.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "DeepPneumoniaClassifier": "dp_sklearn.estimators.deep_pneumonia",
    "MaskAttentionClassifier": "dp_sklearn.estimators.mask_attention",
    "ContrastivePretrainer": "dp_sklearn.estimators.pretrainer",
    "ClassBalancedWeighting": "dp_sklearn.estimators.class_balanced",
    "ClassBalancedSampler": "dp_sklearn.estimators.class_balanced",
    "ImageResampler": "dp_sklearn.estimators.resampling",
    "LocalDiscriminationPretrainer": "dp_sklearn.estimators.local_discrimination",
    "MultiLabelMetricClassifier": "dp_sklearn.estimators.multilabel",
    "RadiomicsContrastiveClassifier": "dp_sklearn.estimators.radiomics_contrastive",
    "ClassBalancedLoss": "dp_sklearn.losses.class_balanced",
    "class_balanced_weights": "dp_sklearn.losses.class_balanced",
    "class_balanced_sample_weight": "dp_sklearn.losses.class_balanced",
    "class_balanced_class_weight": "dp_sklearn.losses.class_balanced",
    "XRayReader": "dp_sklearn.data.io",
    "read_image": "dp_sklearn.data.io",
    "load_cxr1k": "dp_sklearn.datasets",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dp_sklearn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
