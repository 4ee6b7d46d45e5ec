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
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from skorch import NeuralNetClassifier
from torch import nn

from .._compat import Interval, StrOptions
from ..data.augment import tta_view
from ..losses.attention import LesionContrastiveLoss, MaskAttentionLoss, make_alignment_loss
from ..losses.class_balanced import ClassBalancedLoss
from ..nn.attention import MaskAttentionNet
from ..nn.optim import init_last_layer_bias
from ..utils.outputs import write_rows
from .base import TorchClassifierBase, TorchEstimatorBase, fill_doc

__all__ = ["MaskAttentionClassifier"]


@fill_doc
class MaskAttentionClassifier(TorchClassifierBase, NeuralNetClassifier):
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
    backbone : str, nn.Module subclass or instance, default="vgg_compact"
        Feature extractor, see :func:`dp_sklearn.nn.backbones.build_backbone`; the default gives an
        8x8 attention grid at 64 px and is fast on a CPU. An instance is deep-copied at ``fit``: the
        object you pass is never trained in place.
    image_size : int, (int, int) or None, default=64
        Size the images (and masks) are resized to; None keeps the input size (array input only).
    {encoder}
    {backbone_kwargs}
    attention_weight : float >= 0, default=5.0
        Weight of the alignment loss; ``0`` switches mask-guided attention off altogether (no
        hard attention, no alignment). On cxr1k, weight 1 left held-out attention at about 2x
        the lesion's area share, 5 brought it to 3-4x (see ``benchmarks/mask_attention_eval.py``).
    contrastive_weight : float >= 0, default=0.1
        Weight of the contrastive regulation; ``0`` switches it off (no projection head).
    temperature : float > 0, default=0.1
        Softmax temperature of the contrastive regulation (the ``contrastive_weight`` term, a
        supervised-contrastive loss over projected whole-image, lesion and background features):
        their cosine similarities are divided by it. As in every estimator with one contrastive
        term, ``temperature`` is that term's; smaller values sharpen it.
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
    tta : int in [0, 8], default=8
        Test-time augmentation: ``predict_proba`` averages the probabilities of the image and of
        ``tta`` fixed views of it (:func:`dp_sklearn.data.augment.tta_view`: views 1-4 shift by 4 %,
        5-8 zoom by 0.94-1.08), one forward pass per view; 0 switches it off. Attention maps and
        ``transform`` always use the image alone.
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
    attention_grad_scale : float in [0, 1] or "auto", default="auto"
        Factor on the gradient from the attention branch (alignment loss included) into the
        backbone. At 0 the alignment trains the attention branch only, and the backbone learns from
        the classification through the (mask-multiplied) pooling and from the contrastive regulation;
        above 0 the alignment also reshapes the backbone's features. Applies only with mask guidance
        (``attention_weight > 0``; otherwise the gradient is not scaled). ``"auto"``: 0 when the
        backbone starts from a pre-trained ``encoder`` (as inside :class:`DeepPneumoniaClassifier`),
        0.2 when it trains from scratch. On cxr1k, after contrastive pre-training, 0 instead of 0.2
        gained 0.46 +- 0.35 macro-AUC (5 folds of a choosing split x 2 classifier seeds; balanced
        accuracy +0.3 +- 0.8) for a lesion-focus lift of 3.6x instead of 3.9x; from scratch it lost
        localisation (lift 2.6x instead of 3.4x) for no AUC gain (docs/method.md, fourth round).
        1 instead of 0.2 had cost 1.8-1.9 AUC points on two folds of an earlier recipe.
    projection_dim : int, default=128
        Output size of the projection head of the contrastive regulation.
    dropout : float in [0, 1), default=0.0
        Dropout on the pooled features.
    max_epochs : int, default=30
        Training epochs (about 850 optimizer steps for 900 images at batch 32; 30 epochs beat 20
        by 0.65 macro-AUC points over the 5 folds of the choosing split, see docs/method.md).
    lr : float >= 0, default=3e-3
        Peak learning rate of the optimizer (AdamW by default).
    weight_decay : float >= 0, default=0.05
        Decoupled weight decay of the optimizer, when it takes one (``optimizer__weight_decay``
        overrides it), on kernels and weight matrices only: norm weights and biases get none.
    batch_size : int, default=32
        Images per batch.
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
        Training-time augmentation on the device, applied to images and masks together.
        ``True``: :class:`dp_sklearn.data.augment.RadiographAugment` with the classifier's mild
        geometry (crop of 85-100 % of the area, rotation, shift and zoom at their defaults) and no
        intensity changes, which beat RadiographAugment's strong defaults on cxr1k (see
        docs/method.md); a dict -> RadiographAugment's keyword arguments (on top of those), a
        module -> called as ``module(images, masks)``; ``False`` -> none.
    patience : int or None, default=None
        Early stopping on ``train_loss``.
    {checkpoint_dir}
    empty_mask_means : {"unannotated", "no_lesion"}, default="unannotated"
        Whether an all-zero mask means "not annotated" (default; the image stays out of the mask
        terms) or "annotated, no lesion". Note that a "no lesion" mask empties ``A * M`` and has
        no lesion feature, so such images still take no part in the mask terms (the network
        cannot learn from an empty lesion); the option only affects validation and warnings.
    {device}
    {precision}
    {num_workers}
    {random_state}
    {verbose}
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
    >>> clf = MaskAttentionClassifier("resnet10_half", image_size=32, max_epochs=1, batch_size=4,
    ...                               augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, y, masks=masks).predict(X[:2]).shape
    (2,)
    >>> clf.attention_maps(X[:2]).shape
    (2, 32, 32)
    """

    _parameter_constraints = {
        **TorchEstimatorBase._parameter_constraints,
        "backbone_kwargs": [dict, None],
        "attention_weight": [Interval(Real, 0, None, closed="left")],
        "contrastive_weight": [Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "class_balance_beta": [Interval(Real, 0, 1, closed="left")],
        "loss_type": [StrOptions({"softmax", "sigmoid", "focal"})],
        "focal_gamma": [Interval(Real, 0, None, closed="left")],
        "hard_attention": [StrOptions({"multiply", "replace"})],
        "alignment_loss": [StrOptions({"dice", "bce", "bce+dice"}), nn.Module],
        "pooling": [StrOptions({"attention", "avg", "attention+avg"})],
        "mask_downsample": [StrOptions({"area", "max"})],
        "attention_grad_scale": [Interval(Real, 0, 1, closed="both"), StrOptions({"auto"})],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "lr_schedule": [StrOptions({"warmup_cosine", "cosine", "constant"})],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "tta": [Interval(Integral, 0, 8, closed="both")],
        "empty_mask_means": [StrOptions({"unannotated", "no_lesion"})],
    }
    _loss_terms = ("cls_loss", "align_loss", "contrast_loss")
    _fitted_attributes = ("class_counts_", "n_classes_", "n_masks_")

    #: What ``augment=True`` means for the classifier: mild geometry, no intensity changes.
    _augment_defaults = {"crop_scale": (0.85, 1.0), "intensity": False}

    def __init__(
        self,
        backbone="vgg_compact",
        image_size=64,
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
        tta=8,
        hard_attention="multiply",
        alignment_loss="dice",
        pooling="attention+avg",
        mask_downsample="area",
        attention_grad_scale="auto",
        projection_dim=128,
        dropout=0.0,
        max_epochs=30,
        lr=3e-3,
        weight_decay=0.05,
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
            module, criterion, backbone=backbone, image_size=image_size, max_epochs=max_epochs, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, augment=augment, patience=patience,
            checkpoint_dir=checkpoint_dir, device=device, precision=precision, num_workers=num_workers,
            random_state=random_state, verbose=verbose, optimizer=optimizer, train_split=train_split,
            torch_load_kwargs=torch_load_kwargs, **kwargs,
        )
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
        self.lr_schedule = lr_schedule
        self.warmup = warmup
        self.empty_mask_means = empty_mask_means

    # ------------------------------------------------------------------ building
    def _mask_terms_on(self):
        return self.attention_weight > 0 or self.contrastive_weight > 0

    def _attention_grad_scale(self):
        """The resolved ``attention_grad_scale``: ``"auto"`` is 0 from a pre-trained encoder, else 0.2."""
        if self.attention_grad_scale != "auto":
            return float(self.attention_grad_scale)
        # A pre-trained backbone keeps its features (the alignment bending them cost macro-AUC);
        # from scratch, the alignment is what teaches the backbone lesion features.
        return 0.0 if self.encoder is not None else 0.2

    def initialize_module(self):
        n_classes = getattr(self, "n_classes_", None)
        if n_classes is None:
            raise ValueError(f"{type(self).__name__} is initialised by fit(X, y); the number of classes comes from y.")
        kwargs = dict(
            hard_attention=self.hard_attention if self.attention_weight > 0 else "none",
            pooling=self.pooling,
            mask_downsample=self.mask_downsample,
            # Like hard attention, the gradient scale belongs to mask guidance: off with it.
            attention_grad_scale=self._attention_grad_scale() if self.attention_weight > 0 else 1.0,
            dropout=self.dropout,
            projection_dim=self.projection_dim if self.contrastive_weight > 0 else None,
        )
        kwargs.update(self.get_params_for("module"))
        module = self.module(backbone=self._build_backbone(), n_classes=n_classes, **kwargs)
        if self.loss_type != "softmax" and isinstance(getattr(module, "classifier", None), nn.Linear):
            init_last_layer_bias(module.classifier, self.loss_type)
        self.module_ = module
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

    # ------------------------------------------------------------------ fit
    def _prepare_fit(self, images, y, masks, available, sample_weight, classes):
        if masks is not None and not available.any() and self._mask_terms_on():
            warnings.warn(
                "masks were given but every mask is empty (an all-zero mask means 'not annotated'): "
                "the mask terms (hard attention, alignment, contrastive regulation) are inactive.",
                UserWarning,
                stacklevel=3,
            )
        counts = np.bincount(y, minlength=len(classes))
        if self.class_balance_beta > 0 and np.any(counts == 0):
            missing = classes[counts == 0].tolist()
            raise ValueError(f"classes {missing} have no training sample; the class-balanced weights are undefined.")
        if not self._mask_terms_on():
            masks, available = None, np.zeros(len(images), dtype=bool)  # a plain CNN: masks are not read
        self.n_classes_ = len(classes)
        self.class_counts_ = counts
        self.n_masks_ = int(available.sum())
        return self._make_dataset(images, y, masks, available, sample_weight=sample_weight)

    # ------------------------------------------------------------------ steps
    def prepare_batch(self, batch, training):
        x = batch["x"]
        if not training:
            return {"x": tta_view(x, self._view_now)} if self._view_now else {"x": x}
        mask = batch.get("mask")
        x, mask = self.augment_(x, mask)
        out = {"x": x}
        if self._mask_terms_on() and mask is not None:
            out["mask"] = mask
            out["has_mask"] = batch["has_mask"]
        return out

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, aux = y_pred if isinstance(y_pred, tuple) else (y_pred, {})
        y_true = torch.as_tensor(y_true).to(logits.device, non_blocking=True)
        sample_weight = X.get("sample_weight") if isinstance(X, dict) else None
        if sample_weight is not None:
            sample_weight = sample_weight.to(logits.device)
        total, terms = self.criterion_(logits, aux, y_true, sample_weight=sample_weight)
        self._record_terms(terms, training)
        return total

    # ------------------------------------------------------------------ inference
    # The test-time view the forward passes apply (0: the image itself); set by predict_proba only.
    _view_now = 0

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
        With ``tta > 0``, the mean of these over the image and its test-time views.
        """
        dataset = self._predict_dataset(X)[1]
        views, chunks = 1 + int(self.tta), []
        with self._resolved_device():
            # One read of each batch; every view is its own forward over the plain batch (views
            # stacked into one batch change the numbers with the batch's make-up), averaged in float64.
            for batch in self.get_iterator(dataset, training=False):
                proba = 0.0
                for k in range(views):
                    self._view_now = k
                    try:
                        yp = self.evaluation_step(batch, training=False)
                    finally:
                        del self._view_now
                    logits = yp[0] if isinstance(yp, tuple) else yp
                    proba = proba + self._probabilities(logits.float().cpu()).double()
                chunks.append(proba)
        return (torch.cat(chunks) / views).numpy().astype(np.float32)

    def attention_maps(self, X, out=None):
        """Where the model looks: float32 ``(n, H, W)`` in [0, 1] at the input resolution.

        The learned map ``A`` (sigmoid of the attention branch, no mask involved) upsampled
        bilinearly from the feature grid to the input images' size (to ``image_size`` for path
        input).

        Parameters
        ----------
        X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or sequence of paths
        out : None, path ending in ``.npy``, or float32 array of shape (n, H, W)
            Where the maps go, batch by batch (see :func:`dp_sklearn.utils.write_rows`):
            a new array (None), a ``.npy`` file written as the batches come and returned as a
            ``numpy.memmap`` (memory stays flat however many paths ``X`` holds), or an array to fill.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from dp_sklearn.estimators import MaskAttentionClassifier
        >>> X = np.random.RandomState(0).rand(8, 32, 32).astype(np.float32)
        >>> clf = MaskAttentionClassifier(image_size=32, max_epochs=1, batch_size=4, verbose=0,
        ...                               random_state=0).fit(X, [0, 1] * 4)
        >>> maps = clf.attention_maps(X, out=os.path.join(tempfile.mkdtemp(), "maps.npy"))
        >>> type(maps).__name__, maps.shape, bool(np.array_equal(maps, clf.attention_maps(X)))
        ('memmap', (8, 32, 32), True)
        """
        images, dataset = self._predict_dataset(X)
        size = self._image_size() if isinstance(images, list) else images.shape[1:]

        def maps():  # a generator: runs only once ``out`` is checked
            for _, aux in self._forward_batches(dataset, "attention_logits"):
                att = torch.sigmoid(aux["attention_logits"])
                att = torch.nn.functional.interpolate(att, size=tuple(size or att.shape[-2:]), mode="bilinear",
                                                      align_corners=False)
                yield att[:, 0].clamp_(0.0, 1.0).numpy()

        return write_rows(maps(), (len(images), *(size or (None, None))), out)

    def transform(self, X, out=None):
        """The features the classifier head sees: ``pool(F * A)`` ``(n, C)``, ``[avg_pool(F), pool(F * A)]``
        ``(n, 2C)`` for ``pooling="attention+avg"``, uniform pooling ``(n, C)`` for ``"avg"``.

        ``out``: None, a path ending in ``.npy`` or a float32 array of shape (n, ``module_.feature_dim``),
        as in :meth:`attention_maps`.
        """
        return self._write_aux(self._predict_dataset(X)[1], "features", self.module_.feature_dim, out)
