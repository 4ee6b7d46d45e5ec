"""MaskAttentionClassifier: mask-guided hard attention, contrastive regulation and a class-balanced loss.

The classifier stage of Deep Pneumonia (Wei, Bai, Zhang, Li, arXiv:2207.11393) as a skorch
``NeuralNetClassifier``. The network (:class:`~dp_sklearn.nn.attention.MaskAttentionNet`) pools a
backbone's feature map with a learned spatial attention map ``A``; during training, the images
that carry a radiologist's lesion mask ``M`` pool with ``A * M`` (hard attention), an alignment
loss pulls ``A`` towards ``M``, and a supervised-contrastive loss ties whole-image features to
lesion features and away from background features. Prediction needs no mask.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import TransformerTags
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier
from skorch.callbacks import LRScheduler, PassthroughScoring, PrintLog
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from ..data.augment import tta_view
from ..data.dataset import XRayDataset
from ..losses.attention import LesionContrastiveLoss, MaskAttentionLoss, make_alignment_loss
from ..losses.class_balanced import ClassBalancedLoss, init_last_layer_bias
from ..nn.attention import MaskAttentionNet
from ..nn.backbones import build_backbone
from ..utils.validation import check_images
from ._torch import TorchEstimatorMixin
from .callbacks import WarmupCosineLR, default_callbacks, remaining_epochs

__all__ = ["MaskAttentionClassifier"]

_LOSS_TERMS = ("cls_loss", "align_loss", "contrast_loss")


class _WeightedDataset(XRayDataset):
    """XRayDataset whose inputs also carry ``"sample_weight"`` (float32 scalar per sample)."""

    def __init__(self, *args, sample_weight=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_weight = torch.as_tensor(np.asarray(sample_weight, dtype=np.float32))

    def __getitem__(self, i):
        inputs, y = super().__getitem__(i)
        inputs["sample_weight"] = self.sample_weight[i]
        return inputs, y


class MaskAttentionClassifier(TorchEstimatorMixin, NeuralNetClassifier):
    """Chest X-ray classifier whose attention is guided by partial lesion masks.

    Network: backbone feature map ``F`` -> attention branch -> map ``A`` in [0, 1] over the feature
    grid -> attention-weighted pooling ``f = sum(F * A) / sum(A)`` -> linear classifier (which by
    default also sees the global average of ``F``, see ``pooling``). During training, on the
    images that have a mask ``M`` (downsampled to the grid):

    - **hard attention**: pooling uses ``A * M`` (or ``M``, see ``hard_attention``), so evidence
      outside the lesion is cut off;
    - **alignment**: ``attention_weight * L_align(A, M)`` (Dice or BCE) pulls ``A`` towards ``M``
      so that at test time, with no mask, ``A`` alone looks at lesions;
    - **contrastive regulation**: ``contrastive_weight * SupCon`` over whole-image features
      ``pool(F * A)``, lesion features ``pool(F * M)`` and background features
      ``pool(F * (1 - M))`` (see :func:`dp_sklearn.losses.attention.lesion_contrastive_pairs`).

    The classification term is the class-balanced loss of Cui et al. (CVPR 2019). With
    ``attention_weight=0``, ``contrastive_weight=0`` and ``class_balance_beta=0`` the model is a
    plain CNN classifier trained with cross-entropy (masks are then not even read), which is the
    baseline of the ablation. The paper's body is not available: the choices are parameters.

    Parameters
    ----------
    backbone : str, nn.Module subclass or instance, default="resnet18"
        See :func:`dp_sklearn.nn.backbones.build_backbone` (``"resnet10t"`` is the small CPU
        variant). An instance is deep-copied at ``fit`` (the parameter is never trained in place).
    image_size : int, (int, int) or None, default=224
        Size the images (and masks) are resized to; None keeps the input size.
    encoder : fitted ContrastivePretrainer, nn.Module or None, default=None
        Warm start: the backbone starts from the pretrainer's ``encoder_`` (or this module's)
        ``state_dict``; a structure that does not match the backbone raises ``ValueError``. The
        encoder itself is not modified. Note that ``sklearn.base.clone`` un-fits an estimator
        parameter, so pass ``pretrainer.encoder_`` when the classifier will be cloned (e.g. in
        ``cross_validate``).
    backbone_kwargs : dict or None, default=None
        Extra constructor arguments of a named backbone, e.g. ``{"stem_stride": 1}``.
    attention_weight : float >= 0, default=5.0
        Weight of the alignment loss; ``0`` switches mask-guided attention off altogether (no
        hard attention, no alignment). On cxr1k, weight 1 left held-out attention at about 2x
        the lesion's area share, 5 brought it to 3-4x (see ``benchmarks/mask_attention_eval.py``).
    contrastive_weight : float >= 0, default=0.1
        Weight of the contrastive regulation; ``0`` switches it off (no projection head).
    temperature : float > 0, default=0.1
        Temperature of the supervised-contrastive loss.
    class_balance_beta : float in [0, 1), default=0.999
        Effective-number ``beta`` of the class-balanced loss; ``0`` gives unweighted losses (plain
        ``nn.CrossEntropyLoss`` for ``loss_type="softmax"``). Class counts come from the training
        ``y``.
    loss_type : {"softmax", "sigmoid", "focal"}, default="softmax"
        Classification loss variant. For sigmoid/focal the last-layer bias starts at
        ``-log(C - 1)`` and gets no weight decay (Cui et al.).
    focal_gamma : float >= 0, default=0.5
        Focal-loss ``gamma`` (``loss_type="focal"`` only).
    label_smoothing : float in [0, 1), default=0.1
        Label smoothing of the classification loss: the target is ``0.9 * onehot + 0.1 / C``, so
        a short fit on a few hundred images is not pushed to over-confident logits.
    tta : int >= 0, default=4
        Test-time augmentation: ``predict_proba`` averages the probabilities of the image and of
        ``tta`` fixed, mildly shifted and zoomed views of it (:func:`dp_sklearn.data.augment.tta_view`),
        one pass over ``X`` per view; 0 switches it off. Attention maps and ``transform`` always use
        the image alone.
    hard_attention : {"multiply", "replace"}, default="multiply"
        How a training mask acts on the pooling map: ``A * M`` or ``M``.
    alignment_loss : {"dice", "bce", "bce+dice"}, default="dice"
        Form of the alignment loss, see :mod:`dp_sklearn.losses.attention`.
    pooling : {"attention+avg", "attention", "avg"}, default="attention+avg"
        What the classifier head sees. ``"attention+avg"``: the attention-pooled features next
        to the global average ``[avg_pool(F), pool(F * A)]``, so that evidence outside lesions
        (a normal lung, diffuse disease) is not lost when ``A`` is pulled onto lesions (with
        ``"attention"`` alone, a strong alignment cost 3-4 points of macro-AUC on cxr1k).
        ``"attention"``: ``pool(F * A)`` only. ``"avg"``: uniform pooling, a plain CNN head (the
        attention map is then trained only by the alignment loss and does not affect
        predictions).
    mask_downsample : {"area", "max"}, default="area"
        Mask to feature grid: fraction of lesion pixels per cell, or any lesion pixel.
    attention_grad_scale : float in [0, 1], default=0.2
        Factor on the gradient from the attention branch (alignment loss included) into the
        backbone; below 1 the strong alignment shapes the backbone's features less. Applies only
        with mask guidance (``attention_weight > 0``; otherwise the gradient is not scaled). On cxr1k
        folds 1 and 3, 0.2 instead of 1 kept the lesion focus (2.97x / 3.26x the mask area,
        vs 3.10x / 3.32x) and recovered 1.8 / 1.9 macro-AUC points.
    projection_dim : int, default=128
        Output size of the projection head of the contrastive regulation.
    dropout : float in [0, 1), default=0.0
        Dropout on the pooled features.
    max_epochs, lr, batch_size : int, float, int
        Training length, AdamW learning rate and batch size.
    weight_decay : float >= 0, default=1e-4
        Decoupled weight decay of the optimizer (when it takes one; overridden by
        ``optimizer__weight_decay``), applied to weight matrices and kernels only: norm weights
        and biases get none.
    lr_schedule : {"warmup_cosine", "cosine", "constant"}, default="warmup_cosine"
        ``"warmup_cosine"``: set before every optimizer step, the learning rate rises linearly
        from 0 to ``lr`` over the first ``warmup`` share of all steps, then follows a half
        cosine to 0 (:class:`dp_sklearn.estimators.callbacks.WarmupCosineLR`); a resumed fit sees
        the same rate at every step. ``"cosine"``: cosine decay from ``lr`` to 0 stepped per
        epoch, no warm-up. ``"constant"``: ``lr`` throughout. A short fine-tune that ends at a
        small learning rate gives far more repeatable models than one that stops at full ``lr``.
    warmup : float in [0, 1), default=0.1
        Share of the training steps spent warming up (``lr_schedule="warmup_cosine"`` only).
    augment : bool, dict or nn.Module, default=True
        Training-time augmentation on the device, applied to images and masks together:
        ``True`` -> :class:`dp_sklearn.data.augment.RadiographAugment` defaults, a dict -> its
        keyword arguments, a module -> called as ``module(images, masks)``; ``False`` -> none.
    patience : int or None, default=None
        Early stopping on ``train_loss``.
    checkpoint_dir : str or None, default=None
        Save module/optimizer/history after every epoch and resume from there on the next fit.
    empty_mask_means : {"unannotated", "no_lesion"}, default="unannotated"
        Whether an all-zero mask means "not annotated" (default; the image stays out of the mask
        terms) or "annotated, no lesion". Note that a "no lesion" mask empties ``A * M`` and has
        no lesion feature, so such images still take no part in the mask terms (the network
        cannot learn from an empty lesion); the option only affects validation and warnings.
    device : {"auto", "cpu", "cuda"}, default="auto"
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        ``"auto"``: bfloat16 autocast on CUDA, float32 on CPU.
    num_workers : int, default=0
        DataLoader worker processes.
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling, dropout and augmentation (repeatable on one device).
    verbose : int, default=1
    module, criterion, optimizer, train_split, torch_load_kwargs, **kwargs
        skorch parameters. ``criterion`` is built with ``(classification, alignment, contrastive,
        attention_weight, contrastive_weight)``; ``train_split=None`` trains on all data; the
        training iterator shuffles by default (``iterator_train__shuffle=True``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The original labels (``predict`` returns them).
    class_counts_ : ndarray of shape (n_classes,)
        Training samples per class (the class-balanced weights' counts).
    n_masks_ : int
        Training images that had a usable mask.
    module_, criterion_, optimizer_, history_ :
        skorch's fitted components; ``history_`` has per-epoch ``cls_loss``, ``align_loss`` and
        ``contrast_loss`` next to ``train_loss``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(12, 32, 32).astype(np.float32)
    >>> y = np.array(["normal", "pneumonia", "covid19"] * 4)
    >>> masks = np.zeros((12, 32, 32), dtype=bool); masks[::3, 8:20, 8:20] = True
    >>> clf = MaskAttentionClassifier("resnet10t", image_size=32, max_epochs=1, batch_size=4,
    ...                               augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, y, masks=masks).predict(X[:2]).shape
    (2,)
    >>> clf.attention_maps(X[:2]).shape
    (2, 32, 32)
    """

    _parameter_constraints = {
        "image_size": [Interval(Integral, 8, None, closed="left"), tuple, list, None],
        "backbone_kwargs": [dict, None],
        "attention_weight": [Interval(Real, 0, None, closed="left")],
        "contrastive_weight": [Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "class_balance_beta": [Interval(Real, 0, 1, closed="left")],
        "loss_type": [StrOptions({"softmax", "sigmoid", "focal"})],
        "focal_gamma": [Interval(Real, 0, None, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "tta": [Interval(Integral, 0, None, closed="left")],
        "hard_attention": [StrOptions({"multiply", "replace"})],
        "alignment_loss": [StrOptions({"dice", "bce", "bce+dice"}), nn.Module],
        "pooling": [StrOptions({"attention", "avg", "attention+avg"})],
        "mask_downsample": [StrOptions({"area", "max"})],
        "attention_grad_scale": [Interval(Real, 0, 1, closed="both")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr_schedule": [StrOptions({"warmup_cosine", "cosine", "constant"})],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "augment": ["boolean", dict, nn.Module],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "empty_mask_means": [StrOptions({"unannotated", "no_lesion"})],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
    }

    # Parameters that may hold nn.Module instances: skorch would otherwise try to register them
    # as fitted components (and refuse them outside ``initialize``).
    _PLAIN_ATTRIBUTES = frozenset({"backbone", "encoder", "augment", "alignment_loss"})

    def __init__(
        self,
        backbone="resnet18",
        image_size=224,
        *,
        encoder=None,
        backbone_kwargs=None,
        attention_weight=5.0,
        contrastive_weight=0.1,
        temperature=0.1,
        class_balance_beta=0.999,
        loss_type="softmax",
        focal_gamma=0.5,
        label_smoothing=0.1,
        tta=4,
        hard_attention="multiply",
        alignment_loss="dice",
        pooling="attention+avg",
        mask_downsample="area",
        attention_grad_scale=0.2,
        projection_dim=128,
        dropout=0.0,
        max_epochs=30,
        lr=1e-3,
        weight_decay=1e-4,
        lr_schedule="warmup_cosine",
        warmup=0.1,
        batch_size=32,
        augment=True,
        patience=None,
        checkpoint_dir=None,
        empty_mask_means="unannotated",
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=1,
        module=MaskAttentionNet,
        criterion=MaskAttentionLoss,
        optimizer=torch.optim.AdamW,
        train_split=None,
        torch_load_kwargs=None,
        **kwargs,
    ):
        kwargs.setdefault("iterator_train__shuffle", True)
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            verbose=verbose,
            device=device,
            torch_load_kwargs=torch_load_kwargs,
            **kwargs,
        )
        self.backbone = backbone
        self.image_size = image_size
        self.encoder = encoder
        self.backbone_kwargs = backbone_kwargs
        self.attention_weight = attention_weight
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.class_balance_beta = class_balance_beta
        self.loss_type = loss_type
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.tta = tta
        self.hard_attention = hard_attention
        self.alignment_loss = alignment_loss
        self.pooling = pooling
        self.mask_downsample = mask_downsample
        self.attention_grad_scale = attention_grad_scale
        self.projection_dim = projection_dim
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup = warmup
        self.augment = augment
        self.patience = patience
        self.checkpoint_dir = checkpoint_dir
        self.empty_mask_means = empty_mask_means
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state

    def __setattr__(self, name, attr):
        if name in self._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, attr)
            return
        super().__setattr__(name, attr)

    # ------------------------------------------------------------------ callbacks
    @property
    def _default_callbacks(self):
        base = [(name, cb) for name, cb in super()._default_callbacks if name != "print_log"]
        terms = [(name, PassthroughScoring(name=name, on_train=True)) for name in _LOSS_TERMS]
        extra = default_callbacks(
            patience=getattr(self, "patience", None), checkpoint_dir=getattr(self, "checkpoint_dir", None)
        )
        schedule = []
        # After "resume", so that a resumed fit's schedule starts from the restored history.
        if getattr(self, "lr_schedule", "constant") == "warmup_cosine":
            schedule = [("lr_scheduler", WarmupCosineLR(warmup=self.warmup))]
        elif getattr(self, "lr_schedule", "constant") == "cosine":
            schedule = [("lr_scheduler", LRScheduler(policy=CosineAnnealingLR, T_max=self.max_epochs))]
        return base + terms + extra + schedule + [("print_log", PrintLog())]

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        if epochs is None:
            epochs = remaining_epochs(self)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    # ------------------------------------------------------------------ validation
    def _validate_hyperparams(self):
        params = {key: getattr(self, key) for key in self._parameter_constraints}
        validate_parameter_constraints(self._parameter_constraints, params, caller_name=type(self).__name__)
        if self.image_size is not None and not np.isscalar(self.image_size):
            size = tuple(self.image_size)
            if len(size) != 2 or any(not isinstance(s, Integral) or s < 8 for s in size):
                raise ValueError(f"image_size must be an int >= 8, a (height, width) pair or None, got {self.image_size!r}.")

    # ------------------------------------------------------------------ building
    def _mask_terms_on(self):
        return self.attention_weight > 0 or self.contrastive_weight > 0

    def _load_encoder(self, backbone):
        enc = self.encoder
        if enc is None:
            return
        source = enc
        if not isinstance(enc, nn.Module):
            source = getattr(enc, "encoder_", None)
            if source is None:
                if hasattr(enc, "fit"):
                    raise ValueError(
                        f"encoder is an unfitted {type(enc).__name__}: fit it first, or pass its fitted "
                        "`encoder_` module (sklearn's clone un-fits estimator parameters)."
                    )
                raise TypeError(
                    "encoder must be a fitted ContrastivePretrainer, an nn.Module or None, "
                    f"got {type(enc).__name__}."
                )
        if not isinstance(source, nn.Module):
            raise TypeError(f"encoder.encoder_ must be an nn.Module, got {type(source).__name__}.")
        state = {k: v.detach().clone() for k, v in source.state_dict().items()}
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"the encoder's weights ({type(source).__name__}) do not fit the backbone {self.backbone!r}: "
                "warm-start needs the same architecture (use the same `backbone`, `backbone_kwargs` as the "
                f"pretrainer). torch said: {str(exc).splitlines()[0]}"
            ) from exc

    def initialize_module(self):
        n_classes = getattr(self, "n_classes_", None)
        if n_classes is None:
            raise ValueError(f"{type(self).__name__} is initialised by fit(X, y); the number of classes comes from y.")
        backbone = self.backbone
        if isinstance(backbone, nn.Module):
            backbone = copy.deepcopy(backbone)
        backbone = build_backbone(backbone, in_channels=1, **(self.backbone_kwargs or {}))
        self._load_encoder(backbone)
        kwargs = dict(
            hard_attention=self.hard_attention if self.attention_weight > 0 else "none",
            pooling=self.pooling,
            mask_downsample=self.mask_downsample,
            # Like hard attention, the gradient scale belongs to mask guidance: off with it.
            attention_grad_scale=self.attention_grad_scale if self.attention_weight > 0 else 1.0,
            dropout=self.dropout,
            projection_dim=self.projection_dim if self.contrastive_weight > 0 else None,
        )
        kwargs.update(self.get_params_for("module"))
        module = self.module(backbone=backbone, n_classes=n_classes, **kwargs)
        if self.loss_type != "softmax" and isinstance(getattr(module, "classifier", None), nn.Linear):
            init_last_layer_bias(module.classifier, self.loss_type)
        self.module_ = module
        self.augmenter_ = self._build_augmenter()
        return self

    def initialize_criterion(self):
        beta = float(self.class_balance_beta)
        if beta == 0.0 and self.loss_type == "softmax":
            cls = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        else:
            cls = ClassBalancedLoss(loss_type=self.loss_type, beta=beta, gamma=self.focal_gamma,
                                    label_smoothing=self.label_smoothing)
            counts = getattr(self, "class_counts_", None)
            if counts is not None:
                cls.set_samples_per_class(counts)
        kwargs = dict(
            classification=cls,
            alignment=make_alignment_loss(
                copy.deepcopy(self.alignment_loss) if isinstance(self.alignment_loss, nn.Module) else self.alignment_loss
            ),
            contrastive=LesionContrastiveLoss(temperature=self.temperature),
            attention_weight=self.attention_weight,
            contrastive_weight=self.contrastive_weight,
        )
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.criterion(**kwargs)
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer":
            return args, kwargs
        try:
            accepts_decay = "weight_decay" in inspect.signature(self.optimizer).parameters
        except (TypeError, ValueError):
            accepts_decay = False
        if not accepts_decay:
            return args, kwargs
        kwargs.setdefault("weight_decay", self.weight_decay)
        # Norm weights and biases (every 1-D parameter) get no weight decay: decaying a
        # BatchNorm scale only fights the next layer, and the prior-initialised last-layer
        # bias of the sigmoid/focal losses must keep its prior (Cui et al.).
        groups = []
        for group in args[0]:
            matrices = [p for p in group["params"] if p.ndim > 1]
            vectors = [p for p in group["params"] if p.ndim <= 1]
            if matrices:
                groups.append({**group, "params": matrices})
            if vectors:
                groups.append({**group, "params": vectors, "weight_decay": 0.0})
        return (groups,), kwargs

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, masks=None, sample_weight=None):
        """Fit on images ``X``, labels ``y`` and optional, partial lesion ``masks``.

        Parameters
        ----------
        X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or sequence of paths
        y : array-like of shape (n,)
            Class labels (any labels; ``predict`` returns them).
        masks : None, array-like (n, H, W), list with ``None`` entries, or list of mask paths
            Radiologist lesion masks: values in {0, 1}, {0, 255} or bool, the images' size. An
            all-zero mask means "not annotated" (see ``empty_mask_means``). Used for training only.
        sample_weight : array-like of shape (n,), optional
            Non-negative weights multiplying each sample's classification loss (the mask terms are
            unweighted; class-balanced weights still come from the unweighted class counts).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Mismatched lengths or mask shapes, masks with values other than 0/1/255/bool, a single
            class in ``y``, invalid hyper-parameters. Nothing is fitted when it raises.
        """
        self._validate_hyperparams()
        images, masks_arr, available = self._check_inputs(X, masks)
        n = len(images)
        classes, y_enc = self._encode_y(y, n)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.ndim != 1 or len(sample_weight) != n:
                raise ValueError(f"sample_weight must have shape ({n},), got {sample_weight.shape}.")
            if not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
                raise ValueError("sample_weight must be finite and non-negative.")
        if masks is not None and not available.any() and self._mask_terms_on():
            warnings.warn(
                "masks were given but every mask is empty (an all-zero mask means 'not annotated'): "
                "the mask terms (hard attention, alignment, contrastive regulation) are inactive.",
                UserWarning,
                stacklevel=2,
            )
        counts = np.bincount(y_enc, minlength=len(classes))
        if self.class_balance_beta > 0 and np.any(counts == 0):
            missing = classes[counts == 0].tolist()
            raise ValueError(f"classes {missing} have no training sample; the class-balanced weights are undefined.")

        if not self._mask_terms_on():
            masks_arr, available = None, np.zeros(n, dtype=bool)  # a plain CNN: masks are not read
        if sample_weight is None:
            dataset = self._make_dataset(images, y_enc, masks_arr, available)
        else:
            dataset = _WeightedDataset(
                images, y=y_enc, masks=masks_arr, mask_available=available, image_size=self._image_size(),
                sample_weight=sample_weight,
            )
        for name in ("fitted_classes_", "class_counts_", "n_classes_", "n_masks_"):
            self.__dict__.pop(name, None)
        self.n_classes_ = len(classes)
        self.class_counts_ = counts
        super().fit(dataset, y_enc)
        self.fitted_classes_ = classes
        self.n_masks_ = int(available.sum())
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        if not isinstance(X, torch.utils.data.Dataset):
            raise TypeError("partial_fit is only used internally with a prepared dataset; call fit(X, y, masks=...).")
        return super().partial_fit(X, y, classes=classes, **fit_params)

    @property
    def classes_(self):
        if "fitted_classes_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is not fitted yet: it has no classes_.")
        return self.fitted_classes_

    # ------------------------------------------------------------------ steps
    def prepare_batch(self, batch, training):
        x = batch["x"]
        if not training:
            return {"x": tta_view(x, self._view_now)} if self._view_now else {"x": x}
        mask = batch.get("mask")
        x, mask = self.augmenter_(x, mask)
        out = {"x": x}
        if self._mask_terms_on() and mask is not None:
            out["mask"] = mask
            out["has_mask"] = batch["has_mask"]
        return out

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, aux = y_pred if isinstance(y_pred, tuple) else (y_pred, {})
        y_true = y_true.to(logits.device, non_blocking=True) if isinstance(y_true, torch.Tensor) else torch.as_tensor(y_true, device=logits.device)
        sample_weight = X.get("sample_weight") if isinstance(X, dict) else None
        if sample_weight is not None:
            sample_weight = sample_weight.to(logits.device)
        total, terms = self.criterion_(logits, aux, y_true, sample_weight=sample_weight)
        if training:
            for name, value in terms.items():
                self.history.record_batch(name, float(value))
        return total

    # ------------------------------------------------------------------ inference
    def _predict_dataset(self, X):
        check_is_fitted(self, "fitted_classes_")
        images = check_images(X, min_samples=1)
        return images, self._make_dataset(images)

    # The test-time view the forward passes apply (0: the image itself); set by predict_proba only.
    _view_now = 0

    def _outputs(self, X, key=None):
        images, dataset = self._predict_dataset(X)
        logits, extra = [], []
        for yp in self.forward_iter(dataset, training=False):
            out, aux = yp if isinstance(yp, tuple) else (yp, {})
            logits.append(out.float())
            if key is not None:
                extra.append(aux[key].float())
        return images, torch.cat(logits), (torch.cat(extra) if key is not None else None)

    def _probabilities(self, logits):
        if self.loss_type == "softmax":
            return torch.softmax(logits, dim=1)
        scores = torch.sigmoid(logits)
        return scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)``, float32; no masks are used.

        ``loss_type="softmax"``: softmax of the logits. ``"sigmoid"``/``"focal"``: the
        one-vs-all sigmoid scores, normalised to sum to 1 per image (they are trained as
        independent probabilities; the normalisation keeps ``predict_proba``'s contract).
        """
        # One pass per test-time view, each with the batches of a plain pass, averaged.
        proba = 0.0
        views = 1 + int(getattr(self, "tta", 0))
        for k in range(views):
            self._view_now = k
            try:
                _, logits, _ = self._outputs(X)
            finally:
                del self._view_now
            proba = proba + self._probabilities(logits).double()
        return (proba / views).numpy().astype(np.float32)

    def predict(self, X):
        """Predicted labels ``(n,)`` (the original labels of ``y``)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``(X, y)``; labels not seen during ``fit`` raise ``ValueError``."""
        check_is_fitted(self, "fitted_classes_")
        unseen = np.setdiff1d(np.unique(np.asarray(y)), self.classes_)
        if len(unseen):
            raise ValueError(f"y contains labels not seen during fit: {unseen.tolist()}.")
        from sklearn.metrics import accuracy_score

        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    def attention_maps(self, X):
        """Where the model looks: float32 ``(n, H, W)`` in [0, 1] at the input resolution.

        The learned map ``A`` (sigmoid of the attention branch, no mask involved) upsampled
        bilinearly from the feature grid to the input images' size (to ``image_size`` for path
        input).
        """
        images, _, att = self._outputs(X, "attention_logits")
        size = self._image_size() if isinstance(images, list) else images.shape[1:]
        if size is None:
            size = att.shape[-2:]
        att = torch.sigmoid(att)
        att = torch.nn.functional.interpolate(att, size=tuple(size), mode="bilinear", align_corners=False)
        return att[:, 0].clamp_(0.0, 1.0).numpy().astype(np.float32)

    def transform(self, X):
        """The features the classifier head sees: ``pool(F * A)`` ``(n, C)``, ``[avg_pool(F), pool(F * A)]``
        ``(n, 2C)`` for ``pooling="attention+avg"``, uniform pooling ``(n, C)`` for ``"avg"``."""
        _, _, feats = self._outputs(X, "features")
        return feats.numpy().astype(np.float32)

    def fit_transform(self, X, y, masks=None, sample_weight=None):
        """Fit, then return the pooled features of ``X`` (see :meth:`transform`)."""
        return self.fit(X, y, masks=masks, sample_weight=sample_weight).transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        # transform() gives the pooled features, so scikit-learn's transformer checks apply too.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])
        return tags
