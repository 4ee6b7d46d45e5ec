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

import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet

from .._compat import Interval, StrOptions
from ..losses.metric import DualWeightedMetricLoss
from ..losses.multilabel import MultiLabelLoss
from ..nn.label_embeddings import MetricHead, resolve_semantic_vectors
from ..nn.multilabel import MultiLabelMetricNet
from .base import TorchClassifierBase, TorchEstimatorBase, fill_doc

# MultiLabelLoss and MultiLabelMetricNet lived here before; re-exported from their old path.
__all__ = ["MultiLabelLoss", "MultiLabelMetricClassifier", "MultiLabelMetricNet", "check_indicator"]


def check_indicator(y, n_samples=None):
    """Validate a multi-label indicator matrix and return it as uint8 ``(n, L)``.

    Parameters
    ----------
    y : array-like or sparse matrix of shape (n_samples, n_labels)
        Values in {0, 1} (bool, int or float), at least one label column (one column: one
        finding, present or absent).
    n_samples : int, optional
        Expected number of rows.

    Returns
    -------
    Y : uint8 ndarray of shape (n_samples, n_labels)

    Raises
    ------
    ValueError
        ``y`` is 1-D (class labels), has no column, values other than 0/1, NaN, or the wrong
        number of rows.

    Examples
    --------
    >>> check_indicator([[1, 0], [0, 1], [1, 1]]).shape
    (3, 2)
    """
    if y is None:
        raise ValueError("MultiLabelMetricClassifier requires y to be passed, but the target y is None: it is a "
                         "supervised multi-label classifier.")
    if sp.issparse(y):
        y = y.toarray()
    try:
        Y = np.asarray(y)
    except Exception as exc:
        raise ValueError(f"y could not be converted to an indicator matrix: {exc}") from exc
    hint = ("y must be a multi-label indicator matrix of shape (n_samples, n_labels) with values in {0, 1} "
            "and at least one label (e.g. load_cxr1k().multilabel, or MultiLabelBinarizer().fit_transform "
            "of label lists)")
    if Y.ndim != 2:
        got = f"a {type_of_target(Y)!r} target" if Y.ndim == 1 and Y.size else "an array"  # e.g. 'multiclass'
        raise ValueError(f"{hint}; got {got} of shape {Y.shape}. For single-label classes use "
                         "MaskAttentionClassifier.")
    if Y.shape[1] < 1:
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


@fill_doc
class MultiLabelMetricClassifier(TorchClassifierBase, ClassifierMixin, NeuralNet):
    """Multi-label chest X-ray classifier: image embeddings vs. label-name prototypes in one metric space.

    For ``y`` an indicator matrix ``(n, L)`` (e.g. ``load_cxr1k().multilabel``, NIH's 14
    findings; one column is one finding, present or absent; 1-D class labels are an error, they are
    :class:`~dp_sklearn.estimators.mask_attention.MaskAttentionClassifier`'s).

    Network: backbone -> global average pooling ``h`` -> visual MLP ``d -> 512 -> 256 -> 128`` ->
    unit vector ``v``; label MLP ``384 -> 512 -> 256 -> 128`` on the (fixed) semantic vectors of
    the label names -> unit prototypes ``p_c``; similarity ``s_c = v . p_c`` in [-1, 1]; logit
    ``z_c = scale * s_c + b_c`` with a learnable per-label threshold ``b_c`` (started at the label's
    training log-odds). Loss (see :mod:`dp_sklearn.losses.metric`): the dual-weighted metric loss
    (calibrated label ranking with margin; focal-like per-image weights, class-balanced per-label
    weights) plus ``consistency_weight`` times the prototype-consistency loss.

    Semantic vectors (``semantic_vectors="auto"``): the vectors shipped with dp_sklearn for the
    given ``label_names`` (all-MiniLM-L6-v2 sentence embeddings computed offline; see
    :mod:`dp_sklearn.nn.label_embeddings`), the installed text encoder for other names, or else
    learnable prototypes with a ``UserWarning``. Without ``label_names`` the prototypes are
    learnable (no names, nothing to embed; no warning). ``prototype_source_`` says which happened.

    Parameters
    ----------
    {backbone}
    {image_size}
    label_names : sequence of str or None, default=None
        Names of the ``L`` label columns (e.g. ``load_cxr1k().multilabel_names``).
    semantic_vectors : "auto", array-like (L, text_dim) or None, default="auto"
        ``"auto"``: from ``label_names`` as above; an array: your own vectors; ``None``:
        learnable prototypes.
    {encoder}
    {backbone_kwargs}
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
    max_epochs : int, default=30
        Training epochs.
    {lr}
    weight_decay : float >= 0, default=1e-4
        Weight decay of the optimizer; none on the per-label biases ``b_c``.
    batch_size : int, default=32
        Images per batch.
    augment : bool, dict or nn.Module, default=True
        Training-time :class:`~dp_sklearn.data.augment.RadiographAugment` on the device.
    patience : int or None, default=None
        Early stopping on ``train_loss``.
    {checkpoint_dir}
    {device}
    {precision}
    {num_workers}
    {random_state}
    {verbose}
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
    >>> clf = MultiLabelMetricClassifier("resnet10_half", image_size=32, label_names=["Effusion", "Mass", "Edema"],
    ...                                  max_epochs=1, batch_size=4, augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, Y).predict_proba(X[:2]).shape
    (2, 3)
    >>> clf.prototype_source_
    'shipped'
    """

    _parameter_constraints = {
        **TorchEstimatorBase._parameter_constraints,
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
    }
    _loss_terms = ("main_loss", "consistency_loss")
    _uses_masks = False  # accepted (and routed) so the estimator fits the project's pipelines; not read
    _fitted_attributes = ("label_names_", "label_counts_", "n_labels_", "semantic_vectors_", "prototype_source_",
                          "n_samples_fit_")

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
            module, criterion, backbone=backbone, image_size=image_size, max_epochs=max_epochs, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, augment=augment, patience=patience,
            checkpoint_dir=checkpoint_dir, device=device, precision=precision, num_workers=num_workers,
            random_state=random_state, verbose=verbose, optimizer=optimizer, train_split=train_split,
            torch_load_kwargs=torch_load_kwargs, **kwargs,
        )
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

    # ------------------------------------------------------------------ validation
    def _validate_hyperparams(self):
        super()._validate_hyperparams()
        if self.head == "linear" and self.loss == "dual_weighted":
            raise ValueError("loss='dual_weighted' needs head='metric' (it acts on similarities to prototypes); "
                             "use loss='bce' or 'class_balanced' with head='linear'.")
        dims = tuple(self.embed_dims)
        if not dims or any(not isinstance(d, Integral) or d < 1 for d in dims):
            raise ValueError(f"embed_dims must be a non-empty tuple of positive ints, got {self.embed_dims!r}.")

    # ------------------------------------------------------------------ building
    def initialize_module(self):
        n_labels = getattr(self, "n_labels_", None)
        if n_labels is None:
            raise ValueError(f"{type(self).__name__} is initialised by fit(X, y); the number of labels comes from y.")
        counts = getattr(self, "label_counts_", None)
        prior = None if counts is None else (np.asarray(counts) + 0.5) / (self.n_samples_fit_ + 1.0)
        kwargs = dict(semantic=self.semantic_vectors_, head=self.head, hidden=tuple(self.embed_dims),
                      scale=float(self.scale), prior=prior, dropout=float(self.dropout))
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.module(backbone=self._build_backbone(), n_labels=n_labels, **kwargs)
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

    def _no_decay_parameters(self):
        # The per-label thresholds start at the label priors: no weight decay pulls them to 0.
        head = self.module_.head
        return [head.label_bias if isinstance(head, MetricHead) else head.bias]

    # ------------------------------------------------------------------ fit
    def _check_targets(self, y, n_samples):
        Y = check_indicator(y, n_samples)
        return np.arange(Y.shape[1]), Y

    def _prepare_fit(self, images, y, masks, available, sample_weight, classes):
        thr = np.asarray(self.threshold, dtype=np.float64)
        if thr.ndim > 1 or (thr.ndim == 1 and len(thr) != y.shape[1]) or np.any((thr <= 0) | (thr >= 1)):
            raise ValueError(f"threshold must be a float in (0, 1) or {y.shape[1]} such floats, got {self.threshold!r}.")
        if y.shape[1] == 1 and self.loss == "class_balanced":
            raise ValueError("loss='class_balanced' weights the labels against each other and needs at least two "
                             "label columns; for one label it is loss='bce'.")
        semantic, source = resolve_semantic_vectors(self.label_names, self.semantic_vectors, y.shape[1])
        counts = y.sum(axis=0).astype(np.int64)
        if np.any(counts == 0):
            empty = np.flatnonzero(counts == 0)
            warnings.warn(f"label column(s) {empty.tolist()} have no positive training image: the model can only "
                          "learn to predict 'absent' for them.", UserWarning, stacklevel=3)
        self.n_labels_ = y.shape[1]
        self.n_samples_fit_ = len(images)
        self.label_counts_ = counts
        self.semantic_vectors_ = semantic
        self.prototype_source_ = source
        names = self.label_names
        self.label_names_ = (np.asarray([str(s) for s in np.asarray(names, dtype=object).ravel()], dtype=object)
                             if names is not None else np.asarray([f"label{i}" for i in range(y.shape[1])], dtype=object))
        return self._make_dataset(images, y.astype(np.float32), sample_weight=sample_weight)

    # ------------------------------------------------------------------ steps
    def prepare_batch(self, batch, training):
        x = batch["x"]
        if training:
            out = self.augment_(x)
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
        self._record_terms(terms, training)
        return total

    # ------------------------------------------------------------------ inference
    def _outputs(self, X, key=None):
        logits, extra = self._forward_outputs(self._predict_dataset(X)[1], *([key] if key else []))
        return logits, extra.get(key)

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

    def transform(self, X, out=None):
        """Image embeddings: unit vectors in the metric space (pooled features for ``head="linear"``).

        ``out``: None, a path ending in ``.npy`` or a float32 array of shape (n, ``embed_dims[-1]``)
        (for ``head="linear"``: (n, the backbone's ``out_channels``)), where the embeddings go batch
        by batch (see :func:`dp_sklearn.utils.write_rows`; a ``.npy`` path comes back as a
        ``numpy.memmap``, and memory stays flat however many paths ``X`` holds).
        """
        head = self.module_.head
        width = head.visual[-1].out_features if isinstance(head, MetricHead) else head.in_features
        return self._write_aux(self._predict_dataset(X)[1], "embedding", width, out)

    def prototypes(self):
        """The label prototypes in the metric space, float32 ``(L, embed_dims[-1])``."""
        check_is_fitted(self, "fitted_classes_")
        if self.head != "metric":
            raise AttributeError("prototypes are defined for head='metric' only.")
        with torch.no_grad():
            return self.module_.head.prototypes().float().cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        tags.classifier_tags.multi_class = False
        return tags
