"""RadiomicsContrastiveClassifier: image and radiomics encoders tied by NT-Xent, with a Grad-CAM feedback loop.

After Han, Chen, Lin, Feng, Yao, Shu, Wang et al., "Knowledge-Augmented Contrastive Learning for
Abnormality Classification and Localization in Chest X-rays with Radiomics using a Feedback Loop"
(WACV 2022; arXiv:2104.04968). An image encoder classifies the radiograph; Grad-CAM on its feature
map picks the abnormal region; radiomic features of that region (:mod:`dp_sklearn.radiomics`)
pass through a second, small encoder, and the projections of the two views of the same
radiograph are positives of an NT-Xent loss whose negatives are the other radiographs of the
batch. The regions (and so the radiomic features) are recomputed from the current model every
``feedback_every`` epochs: the feedback loop. Where a radiologist's mask is given it replaces the
Grad-CAM region. Prediction and localization need only the image branch.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn

from .._compat import Interval
from ..explain import GradCAM, cam_to_region, masks_to_boxes
from ..losses.class_balanced import ClassBalancedLoss
from ..losses.contrastive import NTXentLoss
from ..losses.radiomics import RadiomicsContrastiveLoss
from ..nn.optim import init_last_layer_bias
from ..nn.radiomics import RadiomicsContrastiveNet
from ..radiomics import FEATURE_NAMES, apply_minmax, fit_minmax, radiomic_features
from .base import TorchClassifierBase, TorchEstimatorBase, fill_doc

# RadiomicsContrastiveNet and RadiomicsContrastiveLoss lived here before; re-exported from their old path.
__all__ = ["RadiomicsContrastiveClassifier", "RadiomicsContrastiveLoss", "RadiomicsContrastiveNet", "RadiomicsFeedback"]


class RadiomicsFeedback(Callback):
    """The feedback loop: recompute the training regions and their radiomics at the start of every
    ``net.feedback_every``-th epoch (epochs 1, 1 + k, 1 + 2k, ...)."""

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        epoch = len(net.history)  # skorch has already appended this epoch's row
        every = int(net.feedback_every)
        if dataset_train is not None and (epoch - 1) % every == 0:
            net.refresh_regions(dataset_train)
            net.history.record("feedback", True)


@fill_doc
class RadiomicsContrastiveClassifier(TorchClassifierBase, NeuralNetClassifier):
    """Chest X-ray classifier with a radiomics encoder as a contrastive second view (Han et al.).

    Training, every batch: the image branch gives logits and a projection ``z_image``; the
    radiomic features of each image's current region (looked up in a per-sample cache with the
    batch's ``"index"``) go through the radiomics encoder to ``z_radiomics``; the loss is

    ``focal(logits, y) + contrastive_weight * NT-Xent(z_image, z_radiomics; temperature)``

    with the sigmoid focal loss of :class:`~dp_sklearn.losses.class_balanced.ClassBalancedLoss`
    (``class_balance_beta=0``: plain focal loss). The regions come from Grad-CAM of the current
    model on the un-augmented training images (for each image's true class), turned into the
    strongest connected region by :func:`dp_sklearn.explain.cam_to_region` (min-max, Gaussian blur,
    threshold 0.5, central box when the map covers the whole image); where a radiologist mask is
    given it is the region instead. Regions and the 54 radiomic features
    (:data:`dp_sklearn.radiomics.FEATURE_NAMES`) are recomputed every ``feedback_every`` epochs
    (callback :class:`RadiomicsFeedback`, at the start of the epoch) and min-max scaled with the
    training set's range (NaN -> 0). Prediction uses the image branch only.

    Parameters
    ----------
    {backbone}
    {image_size}
    {backbone_kwargs}
    contrastive_weight : float >= 0, default=1.0
        Weight of the image-radiomics NT-Xent term; 0 trains the image branch alone (a focal-loss
        CNN; regions are then still computed, for ``train_boxes_``).
    temperature : float > 0, default=0.5
        Softmax temperature of the image-radiomics NT-Xent term (the ``contrastive_weight`` term,
        an image's projection and its radiomics projection being the two views): the cosine
        similarities between the batch's projections are divided by it (0.5, the authors'
        value). As in every estimator with one contrastive term, ``temperature`` is that term's;
        smaller values sharpen it.
    focal_gamma : float >= 0, default=2.0
        Focal-loss gamma (Lin et al.'s default; the loss is the sigmoid focal loss).
    class_balance_beta : float in [0, 1), default=0.0
        Class-balanced weighting of the focal loss (Cui et al.); 0 is the plain focal loss.
    projection_dim : int, default=128
        Output size of both projection heads.
    radiomics_hidden : tuple of int, default=(64, 128)
        Widths of the radiomics encoder (the authors' 102 -> 64 -> 128, here 54 -> 64 -> 128).
    feedback_every : int >= 1, default=1
        Recompute Grad-CAM regions and radiomics every this many epochs.
    cam_threshold : float in (0, 1], default=0.5
    cam_blur_sigma : float >= 0 or None, default=None
        Gaussian blur of the map, in pixels of the working image size; None: ``size / 32``.
    cam_layer : str or None, default=None
        Submodule of the backbone Grad-CAM looks at (e.g. ``"layer3"`` for a finer map); None:
        the backbone's output.
    radiomics_levels : int >= 2, default=32
        Grey levels of the radiomics discretisation (fixed bins over [0, 1]).
    dropout : float in [0, 1), default=0.0
    max_epochs : int, default=30
        Training epochs.
    {lr}
    {weight_decay}
    batch_size : int, default=32
        Images per batch.
    {augment}
    patience : int or None, default=None
        Early stopping on ``train_loss``.
    {checkpoint_dir}
    {device}
    {precision}
    {num_workers}
    {random_state}
    {verbose}
    module, criterion, optimizer, train_split, torch_load_kwargs, **kwargs
        skorch parameters (``train_split=None``: train on all data).

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    class_counts_ : ndarray (n_classes,)
    n_masks_ : int
        Training images whose region came from a radiologist mask.
    n_feedback_ : int
        How many times the regions were computed during fit.
    train_boxes_ : int64 ndarray (n_train, 4)
        The last regions' bounding boxes ``(x0, y0, x1, y1)`` on the working image size.
    train_radiomics_ : float32 ndarray (n_train, 54)
        The last raw radiomic features of the training regions.
    radiomics_min_, radiomics_max_ : float32 ndarray (54,)
        The min-max scaling range fitted on those.
    feature_names_radiomics_ : tuple of str

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(12, 32, 32).astype(np.float32)
    >>> y = np.array(["normal", "pneumonia", "covid19"] * 4)
    >>> clf = RadiomicsContrastiveClassifier("resnet10_half", image_size=32, max_epochs=1, batch_size=6,
    ...                                      augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, y).predict(X[:2]).shape
    (2,)
    >>> heat, boxes = clf.localize(X[:2])
    >>> heat.shape, boxes.shape
    ((2, 32, 32), (2, 4))
    """

    _parameter_constraints = {
        **TorchEstimatorBase._parameter_constraints,
        "backbone_kwargs": [dict, None],
        "contrastive_weight": [Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "focal_gamma": [Interval(Real, 0, None, closed="left")],
        "class_balance_beta": [Interval(Real, 0, 1, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "radiomics_hidden": [tuple, list],
        "feedback_every": [Interval(Integral, 1, None, closed="left")],
        "cam_threshold": [Interval(Real, 0, 1, closed="right")],
        "cam_blur_sigma": [Interval(Real, 0, None, closed="left"), None],
        "cam_layer": [str, None],
        "radiomics_levels": [Interval(Integral, 2, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
    }
    _loss_terms = ("cls_loss", "contrast_loss")
    _fitted_attributes = ("n_classes_", "class_counts_", "n_masks_", "n_feedback_")

    def __init__(
        self,
        backbone="resnet18",
        image_size=224,
        *,
        backbone_kwargs=None,
        contrastive_weight=1.0,
        temperature=0.5,
        focal_gamma=2.0,
        class_balance_beta=0.0,
        projection_dim=128,
        radiomics_hidden=(64, 128),
        feedback_every=1,
        cam_threshold=0.5,
        cam_blur_sigma=None,
        cam_layer=None,
        radiomics_levels=32,
        dropout=0.0,
        max_epochs=30,
        lr=1e-3,
        weight_decay=1e-4,
        batch_size=32,
        augment=True,
        patience=None,
        checkpoint_dir=None,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=1,
        module=RadiomicsContrastiveNet,
        criterion=RadiomicsContrastiveLoss,
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
        self.backbone_kwargs = backbone_kwargs
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.focal_gamma = focal_gamma
        self.class_balance_beta = class_balance_beta
        self.projection_dim = projection_dim
        self.radiomics_hidden = radiomics_hidden
        self.feedback_every = feedback_every
        self.cam_threshold = cam_threshold
        self.cam_blur_sigma = cam_blur_sigma
        self.cam_layer = cam_layer
        self.radiomics_levels = radiomics_levels
        self.dropout = dropout

    def get_default_callbacks(self):
        # The regions are refreshed before anything else happens in an epoch.
        return [("radiomics_feedback", RadiomicsFeedback())] + super().get_default_callbacks()

    def _validate_hyperparams(self):
        super()._validate_hyperparams()
        hidden = tuple(self.radiomics_hidden)
        if any(not isinstance(h, Integral) or h < 1 for h in hidden):
            raise ValueError(f"radiomics_hidden must be a tuple of positive ints, got {self.radiomics_hidden!r}.")

    # ------------------------------------------------------------------ building
    def initialize_module(self):
        n_classes = getattr(self, "n_classes_", None)
        if n_classes is None:
            raise ValueError(f"{type(self).__name__} is initialised by fit(X, y); the number of classes comes from y.")
        kwargs = dict(n_radiomics=len(FEATURE_NAMES), radiomics_hidden=tuple(self.radiomics_hidden),
                      projection_dim=self.projection_dim, dropout=self.dropout)
        kwargs.update(self.get_params_for("module"))
        module = self.module(backbone=self._build_backbone(), n_classes=n_classes, **kwargs)
        if isinstance(getattr(module, "classifier", None), nn.Linear):
            init_last_layer_bias(module.classifier, "focal")
        self.module_ = module
        return self

    def initialize_criterion(self):
        cls = ClassBalancedLoss(loss_type="focal", beta=float(self.class_balance_beta), gamma=float(self.focal_gamma))
        counts = getattr(self, "class_counts_", None)
        if counts is not None:
            cls.set_samples_per_class(counts)
        kwargs = dict(classification=cls, contrastive=NTXentLoss(temperature=self.temperature),
                      contrastive_weight=self.contrastive_weight)
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.criterion(**kwargs)
        return self

    # ------------------------------------------------------------------ fit
    def _prepare_fit(self, images, y, masks, available, sample_weight, classes):
        self.n_classes_ = len(classes)
        self.class_counts_ = np.bincount(y, minlength=len(classes))
        self.n_train_ = len(images)
        self.n_masks_ = int(available.sum())
        self.n_feedback_ = 0
        self._targets_ = torch.as_tensor(y)
        self._radiomics_cache = None
        return self._make_dataset(images, y, masks, available, sample_weight=sample_weight)

    def _end_fit(self):
        self._radiomics_cache = None
        vars(self).pop("_targets_", None)

    # ------------------------------------------------------------------ feedback loop
    def _blur_sigma(self, size):
        if self.cam_blur_sigma is not None:
            return float(self.cam_blur_sigma)
        return max(size) / 32.0

    def _gradcam(self):
        layer = self.module_.backbone
        if self.cam_layer:
            layer = layer.get_submodule(self.cam_layer)
        return GradCAM(self.module_, layer, autocast_dtype=self.amp_dtype_)

    @torch.no_grad()
    def _radiomics(self, x, regions):
        return radiomic_features(x[:, 0].float(), regions, n_levels=int(self.radiomics_levels))

    def refresh_regions(self, dataset):
        """Recompute every training sample's region (Grad-CAM, or its mask) and radiomics.

        Called by :class:`RadiomicsFeedback`; ``dataset`` yields XRayDataset items (``"index"``
        identifies the sample). Fills ``train_boxes_``, ``train_radiomics_``,
        ``radiomics_min_/max_`` and the scaled per-sample cache the training batches read.
        """
        cam = self._gradcam()
        n = self.n_train_
        raw = torch.full((n, len(FEATURE_NAMES)), float("nan"))
        boxes = np.zeros((n, 4), dtype=np.int64)
        seen = torch.zeros(n, dtype=torch.bool)
        iterator = self.get_iterator(dataset, training=False)
        for batch, _ in iterator:
            batch = self._to_device(batch)
            x, idx = batch["x"], batch["index"].cpu()
            maps = cam(x, target=self._targets_[idx].to(x.device))
            regions, bx = cam_to_region(maps, self.cam_threshold, self._blur_sigma(x.shape[-2:]))
            regions = torch.from_numpy(regions).to(x.device)
            has = batch["has_mask"].bool() & (batch["mask"][:, 0] > 0.5).flatten(1).any(1)
            if bool(has.any()):
                given = batch["mask"][:, 0] > 0.5
                regions = torch.where(has[:, None, None], given, regions)
                bx[has.cpu().numpy()] = masks_to_boxes(given[has].cpu())
            raw[idx] = self._radiomics(x, regions).float().cpu()
            boxes[idx.numpy()] = bx
            seen[idx] = True
        lo, hi = fit_minmax(raw[seen])
        self.radiomics_min_, self.radiomics_max_ = lo.numpy().astype(np.float32), hi.numpy().astype(np.float32)
        self.train_radiomics_ = raw.numpy().astype(np.float32)
        self.train_boxes_ = boxes
        self.feature_names_radiomics_ = FEATURE_NAMES
        self._radiomics_cache = apply_minmax(raw, lo, hi).float()
        self.n_feedback_ = getattr(self, "n_feedback_", 0) + 1

    # ------------------------------------------------------------------ steps
    def prepare_batch(self, batch, training):
        x = batch["x"]
        if not training:
            return {"x": x}
        aug = self.augment_(x, None)
        x = aug[0] if isinstance(aug, tuple) else aug  # RadiographAugment returns images alone without masks
        out = {"x": x}
        cache = getattr(self, "_radiomics_cache", None)
        if cache is not None and self.contrastive_weight > 0:
            out["radiomics"] = cache[batch["index"].cpu()].to(x.device, non_blocking=True)
        return out

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, aux = y_pred if isinstance(y_pred, tuple) else (y_pred, {})
        y_true = torch.as_tensor(y_true).to(logits.device)
        sample_weight = X.get("sample_weight") if isinstance(X, dict) else None
        total, terms = self.criterion_(logits, aux, y_true, sample_weight=sample_weight)
        self._record_terms(terms, training)
        return total

    # ------------------------------------------------------------------ inference
    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)``: one-vs-all sigmoid scores normalised to sum to 1."""
        scores = torch.sigmoid(self._forward_outputs(self._predict_dataset(X)[1])[0])
        return (scores / scores.sum(1, keepdim=True).clamp_min(1e-12)).numpy().astype(np.float32)

    def transform(self, X, out=None):
        """Image representations ``h`` (average-pooled backbone features), ``(n, C)``.

        ``out``: None, a path ending in ``.npy`` or a float32 array of shape (n, ``module_.out_channels``),
        where the representations go batch by batch (see :func:`dp_sklearn.utils.write_rows`; a
        ``.npy`` path comes back as a ``numpy.memmap``, and memory stays flat however many paths
        ``X`` holds).
        """
        return self._write_aux(self._predict_dataset(X)[1], "features", self.module_.out_channels, out)

    def gradcam(self, X, target=None):
        """Grad-CAM heat maps ``(n, H, W)`` in [0, 1] of array images ``X``, at ``X``'s size.

        ``target``: None (each image's predicted class), a label, or one label per image (labels
        as in ``y``).
        """
        check_is_fitted(self, "fitted_classes_")
        from ..explain import estimator_gradcam

        if target is not None:
            labels = np.atleast_1d(np.asarray(target))
            unknown = np.setdiff1d(labels, self.classes_)
            if len(unknown):
                raise ValueError(f"target has labels {unknown.tolist()} that are not in classes_.")
            target = np.searchsorted(self.classes_, labels)
        with self._resolved_device():
            layer = self.module_.backbone.get_submodule(self.cam_layer) if self.cam_layer else None
            return estimator_gradcam(self, X, target, target_layer=layer, batch_size=self.batch_size)

    def localize(self, X, target=None):
        """Heat maps ``(n, H, W)`` and boxes ``(n, 4)`` ``(x0, y0, x1, y1)`` on ``X``'s pixel grid.

        The boxes follow the training rule (:func:`dp_sklearn.explain.cam_to_region` with
        ``cam_threshold`` and the blur scaled to ``X``'s size).
        """
        heat = self.gradcam(X, target)
        size = heat.shape[1:]
        _, boxes = cam_to_region(heat, self.cam_threshold, self._blur_sigma(size) if self.cam_blur_sigma is None
                                 else float(self.cam_blur_sigma) * max(size) / max(self._image_size() or size))
        return heat, boxes

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_radiomics_cache", None)
        state.pop("_targets_", None)
        return state
