"""DeepPneumoniaClassifier: contrastive pre-training, then mask-attention fine-tuning, in one ``fit``.

A meta-estimator in the idiom of scikit-learn's ``Pipeline`` and ``SelfTrainingClassifier``: the two
stages are estimator parameters (``pretrainer=``, ``classifier=``) whose own parameters are reachable
as ``pretrainer__<name>`` and ``classifier__<name>``; the few parameters that must agree between the
stages (backbone, working size, device...) are set once, here, and applied to both.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ..utils.validation import check_images, check_masks
from .mask_attention import MaskAttentionClassifier
from .pretrainer import ContrastivePretrainer

__all__ = ["DeepPneumoniaClassifier"]

#: Parameters set on both stages (they must agree for the encoder to warm-start the classifier).
SHARED_STAGE_PARAMETERS = ("backbone", "image_size", "device", "precision", "num_workers", "random_state", "verbose")
#: Parameters set on both stages when not None (else each stage keeps its own value).
OPTIONAL_STAGE_PARAMETERS = ("batch_size", "augment")


def _is_fitted(estimator) -> bool:
    try:
        check_is_fitted(estimator)
        return True
    except (NotFittedError, AttributeError):  # skorch's NotInitializedError is a NotFittedError
        return False


def default_pretrainer():
    """The pre-trainer of ``DeepPneumoniaClassifier()``: :class:`ContrastivePretrainer` with its
    defaults (SimCLR, 30 epochs, batches of 64, lr 2e-3)."""
    return ContrastivePretrainer()


def default_classifier():
    """The classifier of ``DeepPneumoniaClassifier()``: :class:`MaskAttentionClassifier` with its defaults."""
    return MaskAttentionClassifier()


class DeepPneumoniaClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """The Deep Pneumonia framework as one classifier.

    ``fit(X, y, masks=M)`` first pre-trains the encoder with self-supervised contrastive learning
    on the training images (``pretrainer``, no labels), then fine-tunes it inside ``classifier``
    (a :class:`MaskAttentionClassifier`): attention pooling guided by the radiologists' lesion masks
    (hard attention and an alignment loss), contrastive regulation of lesion, background and
    whole-image features, and a class-balanced loss. Setting a part's weight to 0
    (``classifier__attention_weight=0``...) switches it off, which is how the benchmark's ablation
    is made. Prediction needs no masks. Every parameter of both stages is validated before
    pre-training starts.

    Parameters
    ----------
    backbone : str or nn.Module class/instance, default="vgg_compact"
        Encoder of both stages (see :func:`dp_sklearn.nn.backbones.build_backbone`). The default
        gives an 8x8 attention grid at 64 px and is fast on a CPU; on a GPU, ``"resnet18"`` at
        224 px is the paper-scale setting. Set on both stages.
    image_size : int or (int, int), default=64
        Working resolution of both stages.
    pretrainer : ContrastivePretrainer, LocalDiscriminationPretrainer or None, default=None
        The pre-training stage; None uses :func:`default_pretrainer` (``ContrastivePretrainer()``:
        30 epochs, batches of 64). An already fitted one is used as is (its encoder
        is copied, it is not refitted); an unfitted one is cloned, given the shared parameters,
        and fitted. Its parameters are reachable as ``pretrainer__<name>`` (setting one while
        ``pretrainer`` is None first puts the default pre-trainer there).
    classifier : MaskAttentionClassifier or None, default=None
        The fine-tuning stage, cloned and given the shared parameters and the pre-trained encoder;
        None uses :func:`default_classifier`. Its parameters are reachable as
        ``classifier__<name>``, e.g. ``classifier__attention_weight`` or
        ``classifier__backbone_kwargs``.
    pretrain : bool, default=True
        Whether to run the pre-training stage. False fine-tunes from random initialisation.
    batch_size : int or None, default=None
        Batch size of both stages; None keeps each stage's own (64 for pre-training and 32 for
        fine-tuning with the defaults).
    augment : bool, dict or None, default=None
        Radiograph augmentations of both stages; None keeps each stage's own (``True``).
    checkpoint_dir : str or None, default=None
        If set, both stages checkpoint every epoch into sub-folders ``pretrainer/`` and
        ``classifier/``, and a new ``fit`` with the same folder resumes where an interrupted one
        stopped.
    device : {"auto", "cpu", "cuda"}, default="auto"
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
    num_workers : int, default=0
        Data-loading worker processes.
    random_state : int or None, default=None
    verbose : int, default=1

    Attributes
    ----------
    pretrainer_ : ContrastivePretrainer or None
        The fitted pre-trainer (None when ``pretrain=False``).
    classifier_ : MaskAttentionClassifier
        The fitted classifier.
    classes_ : ndarray
        Class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from dp_sklearn import DeepPneumoniaClassifier
    >>> from dp_sklearn.estimators import ContrastivePretrainer, MaskAttentionClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(16, 32, 32).astype("float32"); y = np.array([0, 1] * 8)
    >>> masks = np.zeros((16, 32, 32), bool); masks[::2, 8:20, 8:20] = True
    >>> clf = DeepPneumoniaClassifier(backbone="resnet10_half", image_size=32, batch_size=8,
    ...                               pretrainer=ContrastivePretrainer(max_epochs=1),
    ...                               classifier=MaskAttentionClassifier(max_epochs=1, attention_weight=2.0),
    ...                               verbose=0, random_state=0)
    >>> clf.fit(X, y, masks=masks).predict_proba(X).shape
    (16, 2)
    >>> clf.get_params()["classifier__attention_weight"]
    2.0
    >>> clf.attention_maps(X[:2]).shape
    (2, 32, 32)
    """

    def __init__(
        self,
        backbone="vgg_compact",
        image_size=64,
        *,
        pretrainer=None,
        classifier=None,
        pretrain=True,
        batch_size=None,
        augment=None,
        checkpoint_dir=None,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=1,
    ):
        self.backbone = backbone
        self.image_size = image_size
        self.pretrainer = pretrainer
        self.classifier = classifier
        self.pretrain = pretrain
        self.batch_size = batch_size
        self.augment = augment
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    def set_params(self, **params):
        """Set parameters; ``classifier__<name>``/``pretrainer__<name>`` with the stage left at None
        first put the default stage there, so it can be tuned like any other parameter."""
        for stage, make in (("pretrainer", default_pretrainer), ("classifier", default_classifier)):
            nested = any(key.startswith(stage + "__") for key in params)
            if nested and params.get(stage, getattr(self, stage)) is None:
                params[stage] = make()
        return super().set_params(**params)

    # ------------------------------------------------------------------ building
    def _stage_params(self, name):
        params = {key: getattr(self, key) for key in SHARED_STAGE_PARAMETERS}
        params.update({key: getattr(self, key) for key in OPTIONAL_STAGE_PARAMETERS if getattr(self, key) is not None})
        params["checkpoint_dir"] = None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, name)
        return params

    def _build_pretrainer(self):
        if self.pretrainer is not None:
            if not (hasattr(self.pretrainer, "fit") and hasattr(self.pretrainer, "transform")):
                raise TypeError(f"pretrainer must be a pre-trainer (ContrastivePretrainer...) or None, "
                                f"got {type(self.pretrainer).__name__}.")
            if _is_fitted(self.pretrainer):
                return self.pretrainer
        elif not self.pretrain:
            return None
        pretrainer = default_pretrainer() if self.pretrainer is None else clone(self.pretrainer)
        return pretrainer.set_params(**self._stage_params("pretrainer"))

    def _build_classifier(self):
        classifier = default_classifier() if self.classifier is None else self.classifier
        if not isinstance(classifier, MaskAttentionClassifier):
            raise TypeError(f"classifier must be a MaskAttentionClassifier or None, got {type(classifier).__name__}.")
        return clone(classifier).set_params(**self._stage_params("classifier"))

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, masks=None, sample_weight=None):
        """Pre-train on ``X`` (no labels), then fine-tune with labels ``y`` and optional ``masks``.

        Parameters
        ----------
        X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or list of paths
        y : array-like of shape (n,)
        masks : None, array-like (n, H, W), or list with ``None`` entries
            Radiologist lesion masks, partial; used only for training.
        sample_weight : array-like of shape (n,), optional
            Per-sample weights of the fine-tuning loss (multiplied with the class-balanced weights).

        Returns
        -------
        self
        """
        # Validate everything before any training so bad input or a bad parameter of either stage
        # never leaves a half-fitted model, nor costs a pre-training run.
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        images = check_images(X)
        y = np.asarray(y)
        if len(y) != len(images):
            raise ValueError(f"X has {len(images)} images but y has {len(y)} labels.")
        if len(np.unique(y)) < 2:
            raise ValueError("y has a single class; a classifier needs at least two.")
        if not isinstance(images, list):
            check_masks(masks, len(images), images.shape[1:])
        for name in ("pretrainer_", "classifier_", "classes_"):
            vars(self).pop(name, None)
        pretrainer = self._build_pretrainer()
        classifier = self._build_classifier()
        classifier._validate_hyperparams()
        fit_pretrainer = pretrainer is not None and not _is_fitted(pretrainer)
        if fit_pretrainer:
            pretrainer._validate_hyperparams()
            if self.verbose:
                print(f"[DeepPneumonia] contrastive pre-training on {len(images)} images")
            pretrainer.fit(images)
        if self.verbose:
            print("[DeepPneumonia] fine-tuning the mask-attention classifier")
        classifier.set_params(encoder=pretrainer).fit(images, y, masks=masks, sample_weight=sample_weight)
        self.pretrainer_ = pretrainer
        self.classifier_ = classifier
        self.classes_ = classifier.classes_
        return self

    # ------------------------------------------------------------------ predict
    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)``; no masks needed."""
        check_is_fitted(self, "classifier_")
        return self.classifier_.predict_proba(X)

    def predict(self, X):
        """Predicted class labels ``(n,)``."""
        check_is_fitted(self, "classifier_")
        return self.classifier_.predict(X)

    def attention_maps(self, X, out=None):
        """Where the model looked: float32 ``(n, H, W)`` in [0, 1] at the input resolution.

        ``out`` (None, a path ending in ``.npy``, or a float32 array to fill) streams the maps to
        disk batch by batch, see :meth:`MaskAttentionClassifier.attention_maps`.
        """
        check_is_fitted(self, "classifier_")
        return self.classifier_.attention_maps(X, out=out)

    def transform(self, X, out=None):
        """Pooled image embeddings of the fine-tuned encoder, ``(n, d)``; ``out`` as in :meth:`attention_maps`."""
        check_is_fitted(self, "classifier_")
        return self.classifier_.transform(X, out=out)

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``(X, y)``; labels unseen during ``fit`` raise a ValueError."""
        check_is_fitted(self, "classifier_")
        unseen = np.setdiff1d(np.unique(np.asarray(y)), self.classes_)
        if len(unseen):
            raise ValueError(f"y contains labels not seen during fit: {unseen.tolist()}.")
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags
