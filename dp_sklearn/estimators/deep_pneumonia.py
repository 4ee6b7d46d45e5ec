"""DeepPneumoniaClassifier: contrastive pre-training, then mask-attention fine-tuning, in one ``fit``."""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..utils.validation import check_images, check_masks
from .mask_attention import MaskAttentionClassifier
from .pretrainer import ContrastivePretrainer


def _is_fitted(estimator) -> bool:
    try:
        check_is_fitted(estimator)
        return True
    except Exception:  # NotFittedError or skorch's NotInitializedError
        return False


class DeepPneumoniaClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """The Deep Pneumonia framework as one classifier.

    ``fit(X, y, masks=M)`` first pre-trains the encoder with self-supervised contrastive learning
    on the training images (:class:`ContrastivePretrainer`, no labels), then fine-tunes it inside
    a :class:`MaskAttentionClassifier`: attention pooling guided by the radiologists' lesion masks
    (hard attention and an alignment loss), contrastive regulation of lesion, background and
    whole-image features, and a class-balanced loss. Setting a part's weight to 0 switches it off,
    which is how the benchmark's ablation is made. Prediction needs no masks.

    Parameters
    ----------
    backbone : str or nn.Module class/instance, default="resnet18"
        Encoder shared by both stages (see :func:`dp_sklearn.nn.backbones.build_backbone`);
        ``"resnet10t"`` is the small one for CPU runs.
    image_size : int or (int, int), default=224
        Working resolution of both stages.
    pretrain : bool, default=True
        Whether to run contrastive pre-training. False fine-tunes from random initialisation.
    pretrainer : ContrastivePretrainer or None, default=None
        A pre-trainer to use instead of one built from the ``pretrain_*`` parameters. An
        already fitted one is used as is (its encoder is copied, it is not refitted); an unfitted
        one is cloned and fitted. Its parameters are reachable as ``pretrainer__<name>``.
    pretrain_epochs : int, default=50
    pretrain_lr : float, default=1e-3
    pretrain_temperature : float, default=0.2
        NT-Xent temperature of the pre-training.
    projection_dim : int, default=128
        Output size of the pre-training projection head.
    attention_weight : float, default=5.0
        Weight of the mask alignment loss; 0 also switches mask-guided hard attention off.
    contrastive_weight : float, default=0.1
        Weight of the contrastive regulation loss; 0 switches it off.
    temperature : float, default=0.1
        Temperature of the contrastive regulation loss.
    class_balance_beta : float in [0, 1), default=0.999
        Beta of the class-balanced loss (Cui et al. 2019); 0 gives plain cross-entropy.
    loss_type : {"softmax", "sigmoid", "focal"}, default="softmax"
    focal_gamma : float, default=0.5
    hard_attention : {"multiply", "replace"}, default="multiply"
        How a training mask acts on the attention map: ``A * M`` or ``M``.
    alignment_loss : {"dice", "bce", "bce+dice"}, default="dice"
        Loss pulling the attention map towards the mask.
    pooling : {"attention+avg", "attention", "avg"}, default="attention+avg"
        What the classifier head sees, see :class:`MaskAttentionClassifier`.
    attention_grad_scale : float in [0, 1], default=0.2
        Factor on the attention branch's gradient into the backbone, see
        :class:`MaskAttentionClassifier`.
    max_epochs : int, default=30
        Fine-tuning epochs.
    lr : float, default=1e-3
        Fine-tuning learning rate.
    weight_decay : float, default=1e-4
    lr_schedule : {"cosine", "constant"}, default="cosine"
        Fine-tuning learning-rate schedule, see :class:`MaskAttentionClassifier`.
    batch_size : int, default=32
    augment : bool or dict, default=True
        Radiograph augmentations (both stages); a dict gives
        :class:`dp_sklearn.data.augment.RadiographAugment` arguments.
    checkpoint_dir : str or None, default=None
        If set, both stages checkpoint every epoch into sub-folders and a new ``fit`` with the
        same folder resumes where an interrupted one stopped.
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
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(16, 32, 32).astype("float32"); y = np.array([0, 1] * 8)
    >>> masks = np.zeros((16, 32, 32), bool); masks[::2, 8:20, 8:20] = True
    >>> clf = DeepPneumoniaClassifier(backbone="resnet10t", image_size=32, pretrain_epochs=1,
    ...                               max_epochs=1, batch_size=8, verbose=0, random_state=0)
    >>> clf.fit(X, y, masks=masks).predict_proba(X).shape
    (16, 2)
    >>> clf.attention_maps(X[:2]).shape
    (2, 32, 32)
    """

    def __init__(
        self,
        backbone="resnet18",
        image_size=224,
        *,
        pretrain=True,
        pretrainer=None,
        pretrain_epochs=50,
        pretrain_lr=1e-3,
        pretrain_temperature=0.2,
        projection_dim=128,
        attention_weight=5.0,
        contrastive_weight=0.1,
        temperature=0.1,
        class_balance_beta=0.999,
        loss_type="softmax",
        focal_gamma=0.5,
        hard_attention="multiply",
        alignment_loss="dice",
        pooling="attention+avg",
        attention_grad_scale=0.2,
        max_epochs=30,
        lr=1e-3,
        weight_decay=1e-4,
        lr_schedule="cosine",
        batch_size=32,
        augment=True,
        checkpoint_dir=None,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=1,
    ):
        self.backbone = backbone
        self.image_size = image_size
        self.pretrain = pretrain
        self.pretrainer = pretrainer
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.pretrain_temperature = pretrain_temperature
        self.projection_dim = projection_dim
        self.attention_weight = attention_weight
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.class_balance_beta = class_balance_beta
        self.loss_type = loss_type
        self.focal_gamma = focal_gamma
        self.hard_attention = hard_attention
        self.alignment_loss = alignment_loss
        self.pooling = pooling
        self.attention_grad_scale = attention_grad_scale
        self.max_epochs = max_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.batch_size = batch_size
        self.augment = augment
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ building
    def _subdir(self, name):
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, name)

    def _build_pretrainer(self):
        if self.pretrainer is not None:
            if not isinstance(self.pretrainer, ContrastivePretrainer):
                raise TypeError(f"pretrainer must be a ContrastivePretrainer or None, got {type(self.pretrainer)}.")
            return self.pretrainer if _is_fitted(self.pretrainer) else clone(self.pretrainer)
        if not self.pretrain:
            return None
        return ContrastivePretrainer(
            backbone=self.backbone, image_size=self.image_size, projection_dim=self.projection_dim,
            temperature=self.pretrain_temperature, batch_size=self.batch_size, max_epochs=self.pretrain_epochs,
            lr=self.pretrain_lr, weight_decay=self.weight_decay, augment=self.augment,
            checkpoint_dir=self._subdir("pretrainer"), device=self.device, precision=self.precision,
            num_workers=self.num_workers, random_state=self.random_state, verbose=self.verbose,
        )

    def _build_classifier(self, encoder):
        return MaskAttentionClassifier(
            backbone=self.backbone, image_size=self.image_size, encoder=encoder,
            attention_weight=self.attention_weight, contrastive_weight=self.contrastive_weight,
            temperature=self.temperature, class_balance_beta=self.class_balance_beta, loss_type=self.loss_type,
            focal_gamma=self.focal_gamma, hard_attention=self.hard_attention,
            alignment_loss=self.alignment_loss, pooling=self.pooling,
            attention_grad_scale=self.attention_grad_scale, max_epochs=self.max_epochs,
            lr=self.lr, weight_decay=self.weight_decay, lr_schedule=self.lr_schedule,
            batch_size=self.batch_size, augment=self.augment,
            checkpoint_dir=self._subdir("classifier"), device=self.device, precision=self.precision,
            num_workers=self.num_workers, random_state=self.random_state, verbose=self.verbose,
        )

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
        # Validate everything before any training so bad input never leaves a half-fitted model.
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
            self.__dict__.pop(name, None)

        pretrainer = self._build_pretrainer()
        if pretrainer is not None and not _is_fitted(pretrainer):
            if self.verbose:
                print(f"[DeepPneumonia] contrastive pre-training on {len(images)} images")
            pretrainer.fit(images)
        if self.verbose:
            print("[DeepPneumonia] fine-tuning the mask-attention classifier")
        classifier = self._build_classifier(pretrainer).fit(images, y, masks=masks, sample_weight=sample_weight)
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

    def attention_maps(self, X):
        """Where the model looked: float32 ``(n, H, W)`` in [0, 1] at the input resolution."""
        check_is_fitted(self, "classifier_")
        return self.classifier_.attention_maps(X)

    def transform(self, X):
        """Pooled image embeddings of the fine-tuned encoder, ``(n, d)``."""
        check_is_fitted(self, "classifier_")
        return self.classifier_.transform(X)

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
