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

import copy
import inspect
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, PassthroughScoring, PrintLog
from torch import nn

from ..explain import GradCAM, cam_to_region
from ..losses.class_balanced import ClassBalancedLoss, init_last_layer_bias
from ..losses.contrastive import NTXentLoss
from ..nn.backbones import build_backbone
from ..nn.heads import ProjectionHead
from ..radiomics import FEATURE_NAMES, apply_minmax, fit_minmax, radiomic_features
from ..utils.validation import check_images
from ._torch import TorchEstimatorMixin
from .callbacks import default_callbacks, remaining_epochs

__all__ = ["RadiomicsContrastiveClassifier", "RadiomicsContrastiveNet", "RadiomicsFeedback"]

_LOSS_TERMS = ("cls_loss", "contrast_loss")


class RadiomicsContrastiveNet(nn.Module):
    """Image branch (backbone -> average pool -> classifier, and a projection) and radiomics branch.

    - image: ``F = backbone(x)`` ``(N, C, h, w)``; ``h = mean_hw(F)`` ``(N, C)``; logits
      ``= Linear(h)``; ``z_image = ProjectionHead(C, C, D)(h)``;
    - radiomics: ``r`` ``(N, R)`` (scaled radiomic features) -> MLP ``R -> 64 -> 128`` (ReLU
      between, the authors' CNN version) -> ``z_radiomics = ProjectionHead(128, 128, D)``.

    ``forward(x, radiomics=None)`` returns ``(logits, aux)`` with ``aux["features"]`` (``h``,
    float32) and, when ``radiomics`` is given, ``aux["z_image"]`` and ``aux["z_radiomics"]``
    ``(N, D)``. Grad-CAM looks at ``self.backbone`` (its output feature map).

    Examples
    --------
    >>> import torch
    >>> from dp_sklearn.nn.backbones import build_backbone
    >>> net = RadiomicsContrastiveNet(build_backbone("resnet10t"), n_classes=3, n_radiomics=54)
    >>> logits, aux = net(torch.rand(4, 1, 32, 32), radiomics=torch.rand(4, 54))
    >>> logits.shape, aux["z_image"].shape, aux["z_radiomics"].shape
    (torch.Size([4, 3]), torch.Size([4, 128]), torch.Size([4, 128]))
    """

    def __init__(self, backbone, n_classes, n_radiomics, radiomics_hidden=(64, 128), projection_dim=128,
                 dropout=0.0):
        super().__init__()
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError("backbone must have an integer `out_channels` (build it with build_backbone).")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, n_classes)
        self.image_projector = ProjectionHead(channels, channels, int(projection_dim), batch_norm=False)
        layers, dim = [], int(n_radiomics)
        hidden = tuple(int(h) for h in radiomics_hidden)
        for k, width in enumerate(hidden):
            layers.append(nn.Linear(dim, width))
            if k < len(hidden) - 1:
                layers.append(nn.ReLU(inplace=True))
            dim = width
        self.radiomics_encoder = nn.Sequential(*layers) if layers else nn.Identity()
        self.radiomics_projector = ProjectionHead(dim, dim, int(projection_dim), batch_norm=False)
        self.out_channels = channels
        self.n_classes = n_classes

    def forward(self, x, radiomics=None):
        feats = self.backbone(x)
        h = feats.float().mean(dim=(2, 3))
        logits = self.classifier(self.dropout(h))
        aux = {"features": h}
        if radiomics is not None:
            aux["z_image"] = self.image_projector(h)
            aux["z_radiomics"] = self.radiomics_projector(self.radiomics_encoder(radiomics.to(h.dtype)))
        return logits, aux


class RadiomicsContrastiveLoss(nn.Module):
    """``classification(logits, y) + contrastive_weight * NT-Xent(z_image, z_radiomics)``.

    Returns ``(total, terms)``; the NT-Xent term is 0 when the batch has no radiomics or fewer
    than 2 samples (no negatives).
    """

    def __init__(self, classification, contrastive, contrastive_weight=1.0):
        super().__init__()
        self.classification = classification
        self.contrastive = contrastive
        self.contrastive_weight = float(contrastive_weight)

    def forward(self, logits, aux, y):
        cls = self.classification(logits, y)
        terms = {"cls_loss": cls.detach()}
        total = cls
        zi, zr = aux.get("z_image"), aux.get("z_radiomics")
        if self.contrastive_weight > 0 and zi is not None and zr is not None and len(zi) >= 2:
            con = self.contrastive(zi, zr)
            total = total + self.contrastive_weight * con
            terms["contrast_loss"] = con.detach()
        else:
            terms["contrast_loss"] = torch.zeros((), device=logits.device)
        return total, terms


class RadiomicsFeedback(Callback):
    """The feedback loop: recompute the training regions and their radiomics at the start of every
    ``net.feedback_every``-th epoch (epochs 1, 1 + k, 1 + 2k, ...)."""

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        epoch = len(net.history)  # skorch has already appended this epoch's row
        every = int(net.feedback_every)
        if dataset_train is not None and (epoch - 1) % every == 0:
            net.refresh_regions(dataset_train)
            net.history.record("feedback", True)


class RadiomicsContrastiveClassifier(TorchEstimatorMixin, NeuralNetClassifier):
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
    backbone : str, nn.Module subclass or instance, default="resnet18"
        See :func:`dp_sklearn.nn.backbones.build_backbone`; an instance is deep-copied at fit.
    image_size : int, (int, int) or None, default=224
    backbone_kwargs : dict or None
    contrastive_weight : float >= 0, default=1.0
        Weight of the image-radiomics NT-Xent term; 0 trains the image branch alone (a focal-loss
        CNN; regions are then still computed, for ``train_boxes_``).
    temperature : float > 0, default=0.5
        NT-Xent temperature (the authors' value).
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
    max_epochs, lr, batch_size, weight_decay, augment, patience, checkpoint_dir, device,
    precision, num_workers, random_state, verbose :
        As in :class:`~dp_sklearn.estimators.mask_attention.MaskAttentionClassifier`.
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
    >>> clf = RadiomicsContrastiveClassifier("resnet10t", image_size=32, max_epochs=1, batch_size=6,
    ...                                      augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, y).predict(X[:2]).shape
    (2,)
    >>> heat, boxes = clf.localize(X[:2])
    >>> heat.shape, boxes.shape
    ((2, 32, 32), (2, 4))
    """

    _parameter_constraints = {
        "image_size": [Interval(Integral, 8, None, closed="left"), tuple, list, None],
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
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "augment": ["boolean", dict, nn.Module],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
    }
    _PLAIN_ATTRIBUTES = frozenset({"backbone", "augment"})

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
        self.weight_decay = weight_decay
        self.augment = augment
        self.patience = patience
        self.checkpoint_dir = checkpoint_dir
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
        return [("radiomics_feedback", RadiomicsFeedback())] + base + terms + extra + [("print_log", PrintLog())]

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
        hidden = tuple(self.radiomics_hidden)
        if any(not isinstance(h, Integral) or h < 1 for h in hidden):
            raise ValueError(f"radiomics_hidden must be a tuple of positive ints, got {self.radiomics_hidden!r}.")

    # ------------------------------------------------------------------ building
    def initialize_module(self):
        n_classes = getattr(self, "n_classes_", None)
        if n_classes is None:
            raise ValueError(f"{type(self).__name__} is initialised by fit(X, y); the number of classes comes from y.")
        backbone = self.backbone
        if isinstance(backbone, nn.Module):
            backbone = copy.deepcopy(backbone)
        backbone = build_backbone(backbone, in_channels=1, **(self.backbone_kwargs or {}))
        kwargs = dict(n_radiomics=len(FEATURE_NAMES), radiomics_hidden=tuple(self.radiomics_hidden),
                      projection_dim=self.projection_dim, dropout=self.dropout)
        kwargs.update(self.get_params_for("module"))
        module = self.module(backbone=backbone, n_classes=n_classes, **kwargs)
        if isinstance(getattr(module, "classifier", None), nn.Linear):
            init_last_layer_bias(module.classifier, "focal")
        self.module_ = module
        self.augmenter_ = self._build_augmenter()
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

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer":
            return args, kwargs
        try:
            accepts_decay = "weight_decay" in inspect.signature(self.optimizer).parameters
        except (TypeError, ValueError):
            accepts_decay = False
        if accepts_decay:
            kwargs.setdefault("weight_decay", self.weight_decay)
        classifier = getattr(self.module_, "classifier", None)
        if isinstance(classifier, nn.Linear) and classifier.bias is not None:
            bias, groups = classifier.bias, []  # the prior-initialised bias gets no weight decay
            for group in args[0]:
                rest = [p for p in group["params"] if p is not bias]
                if rest:
                    groups.append({**group, "params": rest})
            groups.append({"params": [bias], "weight_decay": 0.0})
            args = (groups,)
        return args, kwargs

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, masks=None):
        """Fit on images ``X``, labels ``y`` and optional, partial radiologist ``masks``.

        Parameters
        ----------
        X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or sequence of paths
        y : array-like (n,)
        masks : None, array-like (n, H, W) or list with ``None`` entries
            Where an image has a (non-empty) mask, the mask is its region for the radiomics
            instead of the Grad-CAM region; all-zero means "not annotated".

        Returns
        -------
        self
        """
        self._validate_hyperparams()
        images, masks_arr, available = self._check_inputs(X, masks)
        n = len(images)
        classes, y_enc = self._encode_y(y, n)
        counts = np.bincount(y_enc, minlength=len(classes))
        dataset = self._make_dataset(images, y_enc, masks_arr, available)
        for name in ("fitted_classes_", "n_classes_", "class_counts_", "n_masks_", "n_feedback_"):
            self.__dict__.pop(name, None)
        self.n_classes_ = len(classes)
        self.class_counts_ = counts
        self.n_train_ = n
        self._targets_ = torch.as_tensor(y_enc)
        self.n_feedback_ = 0
        self._radiomics_cache = None
        try:
            super().fit(dataset, y_enc)
        finally:
            self._radiomics_cache = None
            self.__dict__.pop("_targets_", None)
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
                from ..explain import masks_to_boxes

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
        aug = self.augmenter_(x, None)
        x = aug[0] if isinstance(aug, tuple) else aug  # RadiographAugment returns images alone without masks
        out = {"x": x}
        cache = getattr(self, "_radiomics_cache", None)
        if cache is not None and self.contrastive_weight > 0:
            out["radiomics"] = cache[batch["index"].cpu()].to(x.device, non_blocking=True)
        return out

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, aux = y_pred if isinstance(y_pred, tuple) else (y_pred, {})
        y_true = torch.as_tensor(y_true).to(logits.device)
        total, terms = self.criterion_(logits, aux, y_true)
        if training:
            for name, value in terms.items():
                self.history.record_batch(name, float(value))
        return total

    # ------------------------------------------------------------------ inference
    def _outputs(self, X):
        check_is_fitted(self, "fitted_classes_")
        images = check_images(X, min_samples=1)
        logits = [yp[0].float() if isinstance(yp, tuple) else yp.float()
                  for yp in self.forward_iter(self._make_dataset(images), training=False)]
        return torch.cat(logits)

    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)``: one-vs-all sigmoid scores normalised to sum to 1."""
        scores = torch.sigmoid(self._outputs(X))
        return (scores / scores.sum(1, keepdim=True).clamp_min(1e-12)).numpy().astype(np.float32)

    def predict(self, X):
        """Predicted labels ``(n,)``."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``(X, y)``."""
        from sklearn.metrics import accuracy_score

        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    def transform(self, X):
        """Image representations ``h`` (average-pooled backbone features), ``(n, C)``."""
        check_is_fitted(self, "fitted_classes_")
        images = check_images(X, min_samples=1)
        feats = [yp[1]["features"].float() for yp in self.forward_iter(self._make_dataset(images), training=False)]
        return torch.cat(feats).numpy().astype(np.float32)

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags
