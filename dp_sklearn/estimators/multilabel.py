"""MultiLabelMetricClassifier: multi-label chest X-ray findings via a dual-weighted metric loss.

Jin, Lu, Zhu, Huo, "Deep learning based classification of multi-label chest X-ray images via
dual-weighted metric loss", Comput Biol Med 157:106683, 2023 (mean AUC 0.826 over ChestX-ray14's
14 findings). A CNN's pooled visual vector and a semantic vector of every label *name* are mapped
into one metric space (:class:`~dp_sklearn.nn.label_embeddings.MetricHead`); the mapped label
vectors are the class prototypes and an image's score for a label is its cosine similarity to
that prototype. Training uses the dual-weighted metric loss
(:class:`~dp_sklearn.losses.metric.DualWeightedMetricLoss`, image- and category-level weights)
plus a consistency loss that keeps the prototypes' mutual similarities close to the semantic
vectors'. ``loss="bce"`` and ``loss="class_balanced"`` train the same network with the baselines'
losses, and ``head="linear"`` replaces the metric head by a plain linear classifier, so a
benchmark compares losses and heads with the same backbone and budget.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.base import ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring, PrintLog
from torch import nn

from ..losses.class_balanced import ClassBalancedLoss
from ..losses.metric import DualWeightedMetricLoss, PrototypeConsistencyLoss
from ..nn.backbones import build_backbone
from ..nn.heads import GlobalAvgPool
from ..nn.label_embeddings import MetricHead, label_embeddings
from ..utils.validation import check_images
from ._torch import TorchEstimatorMixin
from .callbacks import default_callbacks, remaining_epochs

__all__ = ["MultiLabelLoss", "MultiLabelMetricClassifier", "MultiLabelMetricNet", "check_indicator"]

_LOSS_TERMS = ("main_loss", "consistency_loss")


def check_indicator(y, n_samples=None):
    """Validate a multi-label indicator matrix and return it as uint8 ``(n, L)``.

    Parameters
    ----------
    y : array-like or sparse matrix of shape (n_samples, n_labels)
        Values in {0, 1} (bool, int or float), at least two label columns.
    n_samples : int, optional
        Expected number of rows.

    Returns
    -------
    Y : uint8 ndarray of shape (n_samples, n_labels)

    Raises
    ------
    ValueError
        ``y`` is 1-D (class labels), has one column, values other than 0/1, NaN, or the wrong
        number of rows.

    Examples
    --------
    >>> check_indicator([[1, 0], [0, 1], [1, 1]]).shape
    (3, 2)
    """
    if y is None:
        raise ValueError("y is required: MultiLabelMetricClassifier is a supervised multi-label classifier.")
    if sp.issparse(y):
        y = y.toarray()
    try:
        Y = np.asarray(y)
    except Exception as exc:
        raise ValueError(f"y could not be converted to an indicator matrix: {exc}") from exc
    hint = ("y must be a multi-label indicator matrix of shape (n_samples, n_labels) with values in {0, 1} "
            "and at least two labels (e.g. load_cxr1k().multilabel, or MultiLabelBinarizer().fit_transform "
            "of label lists)")
    if Y.ndim != 2:
        raise ValueError(f"{hint}; got an array of shape {Y.shape}. For single-label classes use "
                         "MaskAttentionClassifier.")
    if Y.shape[1] < 2:
        raise ValueError(f"{hint}; got {Y.shape[1]} column(s).")
    if Y.dtype.kind not in "biuf":
        raise ValueError(f"{hint}; got dtype {Y.dtype}.")
    if Y.dtype.kind == "f" and not np.all(np.isfinite(Y)):
        raise ValueError(f"{hint}; y contains NaN or infinity.")
    if not np.all((Y == 0) | (Y == 1)):
        bad = np.unique(Y[(Y != 0) & (Y != 1)])[:5].tolist()
        raise ValueError(f"{hint}; got values {bad}.")
    if n_samples is not None and Y.shape[0] != n_samples:
        raise ValueError(f"X has {n_samples} images but y has {Y.shape[0]} rows.")
    return Y.astype(np.uint8)


class MultiLabelMetricNet(nn.Module):
    """Backbone -> global average pooling -> metric head (or linear head).

    Parameters
    ----------
    backbone : nn.Module
        A feature backbone (``out_channels`` attribute), see :mod:`dp_sklearn.nn.backbones`.
    n_labels : int
    semantic : ndarray (n_labels, text_dim) or None
        Semantic vectors of the label names (``None``: learnable prototypes).
    head : {"metric", "linear"}, default="metric"
    hidden : tuple of int, default=(512, 256, 128)
    scale : float, default=10.0
    prior : ndarray (n_labels,) or None
        Label frequencies: the per-label bias starts at their log-odds (both heads).
    dropout : float, default=0.0
        Dropout on the pooled features.

    Notes
    -----
    ``forward(x)`` returns ``(logits, aux)``: logits ``(N, L)`` and ``aux`` with
    ``"similarity"`` (cosines ``(N, L)``; the logits again for the linear head),
    ``"embedding"`` (metric-space vectors, or the pooled features for the linear head).

    Examples
    --------
    >>> import torch
    >>> from dp_sklearn.nn.backbones import build_backbone
    >>> net = MultiLabelMetricNet(build_backbone("resnet10t", in_channels=1), 3)
    >>> logits, aux = net(torch.rand(2, 1, 32, 32))
    >>> logits.shape, aux["embedding"].shape
    (torch.Size([2, 3]), torch.Size([2, 128]))
    """

    def __init__(self, backbone, n_labels, semantic=None, head="metric", hidden=(512, 256, 128), scale=10.0,
                 prior=None, dropout=0.0):
        super().__init__()
        self.backbone = backbone
        self.pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        in_dim = int(backbone.out_channels)
        self.head_type = head
        if head == "metric":
            self.head = MetricHead(in_dim, n_labels, semantic=semantic, hidden=hidden, scale=scale, prior=prior)
        elif head == "linear":
            self.head = nn.Linear(in_dim, n_labels)
            if prior is not None:
                p = torch.as_tensor(np.asarray(prior, dtype=np.float32)).clamp(1e-4, 1 - 1e-4)
                with torch.no_grad():
                    self.head.bias.copy_(torch.log(p / (1 - p)))
        else:
            raise ValueError(f"head must be 'metric' or 'linear', got {head!r}.")

    def forward(self, x, **kwargs):
        h = self.dropout(self.pool(self.backbone(x)))
        if self.head_type == "metric":
            logits, sim = self.head(h)
            return logits, {"similarity": sim, "embedding": self.head.embed(h.float())}
        logits = self.head(h)
        return logits, {"similarity": logits, "embedding": h}


class MultiLabelLoss(nn.Module):
    """Main multi-label loss plus the prototype-consistency term; per-sample weights supported.

    Parameters
    ----------
    main : {"dual_weighted", "bce", "class_balanced"}
    dual_weighted : DualWeightedMetricLoss or None
        The loss used for ``main="dual_weighted"``.
    class_balance_beta : float, default=0.999
        ``beta`` of the class-balanced sigmoid baseline (Cui et al.: each image's summed BCE is
        weighted by the mean class-balanced weight of its positive labels, weight 1 without
        positives; exactly :class:`~dp_sklearn.losses.class_balanced.ClassBalancedLoss`).
    consistency_weight : float, default=0.1
        Weight of :class:`~dp_sklearn.losses.metric.PrototypeConsistencyLoss` (used only when
        the head has semantic vectors).
    positives_per_label : array-like (L,), optional
        Training positives per label (category weights of both weighted losses).

    Notes
    -----
    ``forward(logits, similarity, target, bias=None, prototypes=None, semantic=None,
    sample_weight=None)`` returns ``(total, terms)``.
    """

    def __init__(self, main="dual_weighted", dual_weighted=None, class_balance_beta=0.999, consistency_weight=0.1,
                 positives_per_label=None):
        super().__init__()
        if main not in ("dual_weighted", "bce", "class_balanced"):
            raise ValueError(f"main must be 'dual_weighted', 'bce' or 'class_balanced', got {main!r}.")
        self.main = main
        self.dual_weighted = dual_weighted if dual_weighted is not None else DualWeightedMetricLoss()
        self.class_balanced = ClassBalancedLoss("sigmoid", beta=class_balance_beta)
        self.consistency = PrototypeConsistencyLoss()
        self.consistency_weight = float(consistency_weight)
        if positives_per_label is not None:
            self.set_label_counts(positives_per_label)

    def set_label_counts(self, positives_per_label):
        counts = np.maximum(np.asarray(positives_per_label, dtype=np.float64), 1.0)
        self.dual_weighted.set_label_counts(counts)
        self.class_balanced.set_samples_per_class(counts)
        return self

    def forward(self, logits, similarity, target, bias=None, prototypes=None, semantic=None, sample_weight=None):
        y = target.float()
        logits = logits.float()
        terms = {}
        if self.main == "dual_weighted":
            if sample_weight is None:
                main = self.dual_weighted(similarity, y, bias)
            else:
                main = self.dual_weighted(similarity, y, bias, sample_weight=sample_weight)
        else:
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (N, L)
            if self.main == "bce":
                per = bce.mean(dim=1)
            else:  # ClassBalancedLoss (sigmoid, multi-label): alpha_i * sum_c bce_ic
                w = self.class_balanced._class_weights(y.shape[1], y.device, y.dtype)
                n_pos = y.sum(dim=1)
                alpha = torch.where(n_pos > 0, y @ w / n_pos.clamp_min(1e-12), torch.ones_like(n_pos))
                per = alpha * bce.sum(dim=1)
            main = per.mean() if sample_weight is None else (sample_weight.float() * per).mean()
        terms["main_loss"] = main.detach()
        total = main
        if prototypes is not None and semantic is not None and self.consistency_weight > 0:
            cons = self.consistency(prototypes, semantic)
            terms["consistency_loss"] = cons.detach()
            total = total + self.consistency_weight * cons
        else:
            terms["consistency_loss"] = torch.zeros((), device=logits.device)
        return total, terms


class MultiLabelMetricClassifier(TorchEstimatorMixin, ClassifierMixin, NeuralNet):
    """Multi-label chest X-ray classifier: image embeddings vs. label-name prototypes in one metric space.

    For ``y`` an indicator matrix ``(n, L)`` (e.g. ``load_cxr1k().multilabel``, NIH's 14
    findings). Network: backbone -> global average pooling ``h`` -> visual MLP
    ``d -> 512 -> 256 -> 128`` -> unit vector ``v``; label MLP ``384 -> 512 -> 256 -> 128`` on the
    (fixed) semantic vectors of the label names -> unit prototypes ``p_c``; similarity
    ``s_c = v . p_c`` in [-1, 1]; logit ``z_c = scale * s_c + b_c`` with a learnable per-label
    threshold ``b_c`` (started at the label's training log-odds). Loss (see
    :mod:`dp_sklearn.losses.metric`): the dual-weighted metric loss (calibrated label ranking with
    margin; focal-like per-image weights, class-balanced per-label weights) plus
    ``consistency_weight`` times the prototype-consistency loss.

    Semantic vectors (``semantic_vectors="auto"``): the vectors shipped with dp_sklearn for the
    given ``label_names`` (all-MiniLM-L6-v2 sentence embeddings computed offline; see
    :mod:`dp_sklearn.nn.label_embeddings`), the installed text encoder for other names, or else
    learnable prototypes with a ``UserWarning``. Without ``label_names`` the prototypes are
    learnable (no names, nothing to embed; no warning). ``prototype_source_`` says which happened.

    Parameters
    ----------
    backbone : str, nn.Module subclass or instance, default="resnet18"
        See :func:`dp_sklearn.nn.backbones.build_backbone` (``"resnet10t"`` for small CPU runs).
    image_size : int, (int, int) or None, default=224
    label_names : sequence of str or None, default=None
        Names of the ``L`` label columns (e.g. ``load_cxr1k().multilabel_names``).
    semantic_vectors : "auto", array-like (L, text_dim) or None, default="auto"
        ``"auto"``: from ``label_names`` as above; an array: your own vectors; ``None``:
        learnable prototypes.
    encoder : fitted ContrastivePretrainer, nn.Module or None, default=None
        Warm start of the backbone from a pretrainer's ``encoder_`` (same architecture), as in
        :class:`~dp_sklearn.estimators.mask_attention.MaskAttentionClassifier`. Pass
        ``pretrainer.encoder_`` when the classifier will be cloned.
    backbone_kwargs : dict or None, default=None
    head : {"metric", "linear"}, default="metric"
        ``"linear"``: a plain linear classifier on ``h`` (baseline; needs ``loss`` "bce" or
        "class_balanced").
    loss : {"dual_weighted", "bce", "class_balanced"}, default="dual_weighted"
        ``"bce"``: binary cross-entropy on the logits; ``"class_balanced"``: the class-balanced
        sigmoid loss of Cui et al. (``class_balance_beta``).
    embed_dims : tuple of int, default=(512, 256, 128)
        Widths of the visual and label MLPs; the last is the metric space's dimension.
    scale : float > 0, default=10.0
        ``z = scale * cos + b``.
    margin : float >= 0, default=0.1
        Margin of the metric loss in cosine units.
    rank_weight : float >= 0, default=1.0
        Weight of the within-image positive-vs-negative ranking terms.
    image_weight : bool, default=True
        Focal-like per-image (hardness) weights of the dual-weighted loss.
    image_gamma : float >= 0, default=1.0
    category_weight : bool, default=True
        Class-balanced per-label weights (mean 1 over the labels, larger for rarer ones) on the positive
        terms of the dual-weighted loss; see :mod:`dp_sklearn.losses.metric`.
    class_balance_beta : float in [0, 1), default=0.999
        Effective-number ``beta`` of the category weights and of ``loss="class_balanced"``.
    consistency_weight : float >= 0, default=0.1
        Weight of the prototype-consistency loss (only with semantic vectors).
    threshold : float in (0, 1) or array-like (L,), default=0.5
        ``predict`` marks label ``c`` when ``predict_proba[:, c] >= threshold[c]``.
    dropout : float in [0, 1), default=0.0
    max_epochs, lr, batch_size, weight_decay :
        Training length, AdamW learning rate, batch size, weight decay (none on the biases
        ``b_c``).
    augment : bool, dict or nn.Module, default=True
        Training-time :class:`~dp_sklearn.data.augment.RadiographAugment` on the device.
    patience, checkpoint_dir : see MaskAttentionClassifier.
    device : {"auto", "cpu", "cuda"}, default="auto"
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
    num_workers : int, default=0
    random_state : int or None, default=None
    verbose : int, default=1
    module, criterion, optimizer, train_split, torch_load_kwargs, **kwargs
        skorch parameters.

    Attributes
    ----------
    classes_ : ndarray of shape (L,)
        ``arange(L)``: the label columns (scikit-learn's convention for indicator targets).
    label_names_ : ndarray of shape (L,)
        ``label_names`` or ``"label0"...``.
    label_counts_ : ndarray of shape (L,)
        Training positives per label.
    prototype_source_ : str
        ``"shipped"`` / ``"text_encoder"`` (via :func:`~dp_sklearn.nn.label_embeddings.label_embeddings`),
        ``"user"`` or ``"learnable"``.
    semantic_vectors_ : ndarray (L, text_dim) or None

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(12, 32, 32).astype(np.float32)
    >>> Y = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]] * 3)
    >>> clf = MultiLabelMetricClassifier("resnet10t", image_size=32, label_names=["Effusion", "Mass", "Edema"],
    ...                                  max_epochs=1, batch_size=4, augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, Y).predict_proba(X[:2]).shape
    (2, 3)
    >>> clf.prototype_source_
    'shipped'
    """

    _parameter_constraints = {
        "image_size": [Interval(Integral, 8, None, closed="left"), tuple, list, None],
        "label_names": ["array-like", None],
        "semantic_vectors": [StrOptions({"auto"}), "array-like", None],
        "backbone_kwargs": [dict, None],
        "head": [StrOptions({"metric", "linear"})],
        "loss": [StrOptions({"dual_weighted", "bce", "class_balanced"})],
        "embed_dims": [tuple, list],
        "scale": [Interval(Real, 0, None, closed="neither")],
        "margin": [Interval(Real, 0, None, closed="left")],
        "rank_weight": [Interval(Real, 0, None, closed="left")],
        "image_weight": ["boolean"],
        "image_gamma": [Interval(Real, 0, None, closed="left")],
        "category_weight": ["boolean"],
        "class_balance_beta": [Interval(Real, 0, 1, closed="left")],
        "consistency_weight": [Interval(Real, 0, None, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="neither"), "array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "augment": ["boolean", dict, nn.Module],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
    }

    _PLAIN_ATTRIBUTES = frozenset({"backbone", "encoder", "augment"})

    def __init__(
        self,
        backbone="resnet18",
        image_size=224,
        *,
        label_names=None,
        semantic_vectors="auto",
        encoder=None,
        backbone_kwargs=None,
        head="metric",
        loss="dual_weighted",
        embed_dims=(512, 256, 128),
        scale=10.0,
        margin=0.1,
        rank_weight=1.0,
        image_weight=True,
        image_gamma=1.0,
        category_weight=True,
        class_balance_beta=0.999,
        consistency_weight=0.1,
        threshold=0.5,
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
        module=MultiLabelMetricNet,
        criterion=MultiLabelLoss,
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
        self.label_names = label_names
        self.semantic_vectors = semantic_vectors
        self.encoder = encoder
        self.backbone_kwargs = backbone_kwargs
        self.head = head
        self.loss = loss
        self.embed_dims = embed_dims
        self.scale = scale
        self.margin = margin
        self.rank_weight = rank_weight
        self.image_weight = image_weight
        self.image_gamma = image_gamma
        self.category_weight = category_weight
        self.class_balance_beta = class_balance_beta
        self.consistency_weight = consistency_weight
        self.threshold = threshold
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
        return base + terms + extra + [("print_log", PrintLog())]

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
        if self.head == "linear" and self.loss == "dual_weighted":
            raise ValueError("loss='dual_weighted' needs head='metric' (it acts on similarities to prototypes); "
                             "use loss='bce' or 'class_balanced' with head='linear'.")
        dims = tuple(self.embed_dims)
        if not dims or any(not isinstance(d, Integral) or d < 1 for d in dims):
            raise ValueError(f"embed_dims must be a non-empty tuple of positive ints, got {self.embed_dims!r}.")

    def _resolve_semantic(self, n_labels):
        """Semantic vectors (L, d) or None, and where they came from."""
        names = None
        if self.label_names is not None:
            names = [str(n) for n in np.asarray(self.label_names, dtype=object).ravel()]
            if len(names) != n_labels:
                raise ValueError(f"label_names has {len(names)} names but y has {n_labels} label columns.")
        sv = self.semantic_vectors
        if sv is None:
            return None, "learnable"
        if isinstance(sv, str):  # "auto"
            if names is None:
                return None, "learnable"
            from ..nn.label_embeddings import known_label_names, normalize_name

            shipped = set(known_label_names())
            vecs = label_embeddings(names)
            if vecs is None:
                return None, "learnable"
            source = "shipped" if all(normalize_name(n) in shipped for n in names) else "text_encoder"
            return vecs, source
        vecs = np.asarray(sv, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != n_labels:
            raise ValueError(f"semantic_vectors must have shape ({n_labels}, text_dim), got {vecs.shape}.")
        if not np.all(np.isfinite(vecs)):
            raise ValueError("semantic_vectors contains NaN or infinity.")
        return vecs, "user"

    # ------------------------------------------------------------------ building
    def _load_encoder(self, backbone):
        enc = self.encoder
        if enc is None:
            return
        source = enc
        if not isinstance(enc, nn.Module):
            source = getattr(enc, "encoder_", None) if hasattr(enc, "module_") else None
            if source is None:
                if hasattr(enc, "fit"):
                    raise ValueError(
                        f"encoder is an unfitted {type(enc).__name__}: fit it first, or pass its fitted "
                        "`encoder_` module (sklearn's clone un-fits estimator parameters)."
                    )
                raise TypeError(f"encoder must be a fitted ContrastivePretrainer, an nn.Module or None, got {type(enc).__name__}.")
        state = {k: v.detach().clone() for k, v in source.state_dict().items()}
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"the encoder's weights ({type(source).__name__}) do not fit the backbone {self.backbone!r}: warm start "
                f"needs the same architecture. torch said: {str(exc).splitlines()[0]}"
            ) from exc

    def initialize_module(self):
        n_labels = getattr(self, "n_labels_", None)
        if n_labels is None:
            raise ValueError(f"{type(self).__name__} is initialised by fit(X, y); the number of labels comes from y.")
        backbone = copy.deepcopy(self.backbone) if isinstance(self.backbone, nn.Module) else self.backbone
        backbone = build_backbone(backbone, in_channels=1, **(self.backbone_kwargs or {}))
        self._load_encoder(backbone)
        counts = getattr(self, "label_counts_", None)
        prior = None if counts is None else (np.asarray(counts) + 0.5) / (self.n_samples_fit_ + 1.0)
        kwargs = dict(semantic=self.semantic_vectors_, head=self.head, hidden=tuple(self.embed_dims),
                      scale=float(self.scale), prior=prior, dropout=float(self.dropout))
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.module(backbone=backbone, n_labels=n_labels, **kwargs)
        vars(self)["augmenter_"] = self._build_augmenter()
        return self

    def initialize_criterion(self):
        dw = DualWeightedMetricLoss(scale=float(self.scale), margin=float(self.margin), rank_weight=float(self.rank_weight),
                                    image_weight=bool(self.image_weight), image_gamma=float(self.image_gamma),
                                    category_weight=bool(self.category_weight), beta=float(self.class_balance_beta))
        kwargs = dict(main=self.loss, dual_weighted=dw, class_balance_beta=float(self.class_balance_beta),
                      consistency_weight=float(self.consistency_weight),
                      positives_per_label=getattr(self, "label_counts_", None))
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.criterion(**kwargs)
        return self

    def initialize(self):
        super().initialize()
        aug = vars(self).get("augmenter_")
        if aug is not None:
            vars(self)["augmenter_"] = aug.to(self.device_)
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
            head = self.module_.head
            bias = head.label_bias if isinstance(head, MetricHead) else head.bias
            # The per-label thresholds start at the label priors: no weight decay pulls them to 0.
            groups = []
            for group in args[0]:
                rest = [p for p in group["params"] if p is not bias]
                if rest:
                    groups.append({**group, "params": rest})
            groups.append({"params": [bias], "weight_decay": 0.0})
            args = (groups,)
        return args, kwargs

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, masks=None, sample_weight=None):
        """Fit on images ``X`` and a multi-label indicator ``y``.

        Parameters
        ----------
        X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or sequence of paths
        y : array-like or sparse matrix of shape (n, L)
            Indicator matrix, values in {0, 1}, ``L >= 2``. A label column without positives
            is allowed (it then only learns to say "no"; a ``UserWarning`` says which).
        masks : ignored
            Accepted (and routed by metadata routing) so that the estimator drops into the
            project's pipelines next to the mask-guided ones; this model does not read masks.
        sample_weight : array-like of shape (n,), optional
            Non-negative weights multiplying each image's loss.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            ``y`` not an indicator matrix (1-D labels, one column, values other than 0/1),
            mismatched lengths, bad hyper-parameters. Nothing is fitted when it raises.
        """
        self._validate_hyperparams()
        images = check_images(X, min_samples=1)
        n = len(images)
        Y = check_indicator(y, n)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.ndim != 1 or len(sample_weight) != n:
                raise ValueError(f"sample_weight must have shape ({n},), got {sample_weight.shape}.")
            if not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
                raise ValueError("sample_weight must be finite and non-negative.")
        thr = np.asarray(self.threshold, dtype=np.float64)
        if thr.ndim > 1 or (thr.ndim == 1 and len(thr) != Y.shape[1]) or np.any((thr <= 0) | (thr >= 1)):
            raise ValueError(f"threshold must be a float in (0, 1) or {Y.shape[1]} such floats, got {self.threshold!r}.")
        semantic, source = self._resolve_semantic(Y.shape[1])
        counts = Y.sum(axis=0).astype(np.int64)
        if np.any(counts == 0):
            empty = np.flatnonzero(counts == 0)
            warnings.warn(f"label column(s) {empty.tolist()} have no positive training image: the model can only "
                          "learn to predict 'absent' for them.", UserWarning, stacklevel=2)
        dataset = self._make_dataset(images, Y.astype(np.float32))
        if sample_weight is not None:
            dataset = _WeightedDataset(dataset, sample_weight)
        for name in ("fitted_labels_", "label_names_", "label_counts_", "n_labels_", "semantic_vectors_",
                     "prototype_source_", "n_samples_fit_"):
            self.__dict__.pop(name, None)
        self.n_labels_ = Y.shape[1]
        self.n_samples_fit_ = n
        self.label_counts_ = counts
        self.semantic_vectors_ = semantic
        self.prototype_source_ = source
        super().fit(dataset, None)
        names = self.label_names
        self.label_names_ = (np.asarray([str(s) for s in np.asarray(names, dtype=object).ravel()], dtype=object)
                             if names is not None else np.asarray([f"label{i}" for i in range(Y.shape[1])], dtype=object))
        self.fitted_labels_ = np.arange(Y.shape[1])
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        if not isinstance(X, torch.utils.data.Dataset):
            raise TypeError("partial_fit is only used internally with a prepared dataset; call fit(X, y).")
        return super().partial_fit(X, y, classes=classes, **fit_params)

    @property
    def classes_(self):
        if "fitted_labels_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is not fitted yet: it has no classes_.")
        return self.fitted_labels_

    # ------------------------------------------------------------------ steps
    def prepare_batch(self, batch, training):
        x = batch["x"]
        aug = vars(self).get("augmenter_")
        if training and aug is not None:
            out = aug(x)
            x = out[0] if isinstance(out, (tuple, list)) else out
        return {"x": x}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, aux = y_pred
        y_true = torch.as_tensor(y_true).to(logits.device, non_blocking=True)
        head = self.module_.head
        bias = prototypes = semantic = None
        if isinstance(head, MetricHead):
            bias, semantic = head.label_bias, head.semantic
            if semantic is not None and self.consistency_weight > 0:
                prototypes = head.prototypes()
        sw = X.get("sample_weight") if isinstance(X, dict) else None
        if sw is not None:
            sw = sw.to(logits.device)
        total, terms = self.criterion_(logits, aux["similarity"], y_true, bias=bias, prototypes=prototypes,
                                       semantic=semantic, sample_weight=sw)
        if training:
            for name, value in terms.items():
                self.history.record_batch(name, float(value))
        return total

    # ------------------------------------------------------------------ inference
    def _outputs(self, X, key=None):
        check_is_fitted(self, "fitted_labels_")
        images = check_images(X, min_samples=1)
        dataset = self._make_dataset(images)
        logits, extra = [], []
        for yp in self.forward_iter(dataset, training=False):
            out, aux = yp
            logits.append(out.float())
            if key is not None:
                extra.append(aux[key].float())
        return torch.cat(logits), (torch.cat(extra) if key is not None else None)

    def decision_function(self, X):
        """Per-label logits ``z = scale * cos + b`` ``(n, L)``; ``z > 0`` iff ``predict_proba > 0.5``.

        (For ``head="linear"``: the linear logits.) The raw cosines are :meth:`similarity`.
        """
        return self._outputs(X)[0].numpy().astype(np.float32)

    def similarity(self, X):
        """Cosine similarities ``(n, L)`` in [-1, 1] of the images to the label prototypes."""
        if self.head != "metric":
            raise AttributeError("similarity is defined for head='metric' only.")
        return self._outputs(X, "similarity")[1].numpy().astype(np.float32)

    def predict_proba(self, X):
        """Per-label probabilities ``sigmoid(z)`` ``(n, L)``, float32; rows do not sum to 1."""
        return torch.sigmoid(self._outputs(X)[0]).numpy().astype(np.float32)

    def predict(self, X):
        """Indicator matrix ``(n, L)`` (int64): ``predict_proba >= threshold`` per label."""
        thr = np.asarray(self.threshold, dtype=np.float64)
        return (self.predict_proba(X) >= thr).astype(np.int64)

    def transform(self, X):
        """Image embeddings: unit vectors in the metric space (pooled features for ``head="linear"``)."""
        return self._outputs(X, "embedding")[1].numpy().astype(np.float32)

    def prototypes(self):
        """The label prototypes in the metric space, float32 ``(L, embed_dims[-1])``."""
        check_is_fitted(self, "fitted_labels_")
        if self.head != "metric":
            raise AttributeError("prototypes are defined for head='metric' only.")
        with torch.no_grad():
            return self.module_.head.prototypes().float().cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        tags.classifier_tags.multi_class = False
        tags.non_deterministic = False
        return tags


class _WeightedDataset(torch.utils.data.Dataset):
    """Wraps an XRayDataset so that each item's inputs carry ``"sample_weight"``."""

    def __init__(self, base, sample_weight):
        self.base = base
        self.sample_weight = torch.as_tensor(np.asarray(sample_weight, dtype=np.float32))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        inputs, y = self.base[i]
        inputs["sample_weight"] = self.sample_weight[i]
        return inputs, y
