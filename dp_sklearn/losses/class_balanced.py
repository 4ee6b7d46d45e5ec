"""Class-balanced loss based on the effective number of samples.

Follows Cui, Jia, Lin, Song and Belongie, "Class-Balanced Loss Based on Effective
Number of Samples", CVPR 2019 (arXiv:1901.05555), and the conventions of the
authors' reference code (``richardaecn/class-balanced-loss``).

A class :math:`c` with :math:`n_c` training samples has the *effective number*
:math:`E_{n_c} = (1 - \\beta^{n_c}) / (1 - \\beta)` and gets the weight

.. math::

    w_c = \\frac{1 - \\beta}{1 - \\beta^{n_c}}, \\qquad
    \\text{normalised so that } \\sum_{c=1}^{C} w_c = C .

``beta = 0`` gives :math:`w_c = 1` (no re-weighting); ``beta -> 1`` gives
:math:`w_c \\propto 1 / n_c` (inverse-frequency weighting).

This module holds the weight functions (plain NumPy, usable as ``class_weight=`` or
``sample_weight=`` of any scikit-learn classifier), the torch loss
:class:`ClassBalancedLoss` and two helpers for the paper's training recipe
(:func:`~dp_sklearn.nn.optim.init_last_layer_bias`,
:func:`~dp_sklearn.nn.optim.param_groups_without_bias_decay`, which live in
:mod:`dp_sklearn.nn.optim` and are re-exported here).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._compat import Interval, validate_params
# The training-recipe helpers live in dp_sklearn.nn.optim; re-exported here, their old home.
from ..nn.optim import init_last_layer_bias, last_linear_bias_name, param_groups_without_bias_decay  # noqa: F401
from ._buffers import accept_unset_buffers

__all__ = [
    "BETA_GRID",
    "GAMMA_GRID",
    "ClassBalancedLoss",
    "class_balanced_class_weight",
    "class_balanced_sample_weight",
    "class_balanced_weights",
    "effective_number_weights",
    "init_last_layer_bias",
    "last_linear_bias_name",
    "param_groups_without_bias_decay",
]

#: Search space of ``beta`` used in the paper's experiments.
BETA_GRID = (0.9, 0.99, 0.999, 0.9999)
#: Search space of the focal ``gamma`` used in the paper's experiments.
GAMMA_GRID = (0.5, 1.0, 2.0)

_LOSS_TYPES = ("softmax", "sigmoid", "focal")
_BETA = Interval(Real, 0, 1, closed="left")


# --------------------------------------------------------------------------- weights


@validate_params(
    {"samples_per_class": ["array-like"], "beta": [_BETA]},
    prefer_skip_nested_validation=True,
)
def effective_number_weights(samples_per_class, beta=0.999):
    """Class-balanced weights from per-class sample counts.

    Computes :math:`w_c = (1 - \\beta) / (1 - \\beta^{n_c})`, normalised so that the
    weights sum to the number of classes :math:`C` (Cui et al., CVPR 2019, Eq. 4 and
    the reference code).

    Parameters
    ----------
    samples_per_class : array-like of shape (n_classes,)
        Number of training samples of each class, :math:`n_c`. May be fractional
        (weighted counts). Every count must be positive and there must be at least two
        classes.
    beta : float in [0, 1), default=0.999
        Hyper-parameter of the effective number. ``0`` gives equal weights, values
        close to ``1`` approach inverse-frequency weighting.

    Returns
    -------
    weights : ndarray of shape (n_classes,), dtype float64
        Per-class weights, summing to ``n_classes``.

    Raises
    ------
    ValueError
        If ``beta`` is outside ``[0, 1)``, a count is negative, zero or not finite, or
        fewer than two classes are given.

    Examples
    --------
    >>> from dp_sklearn.losses.class_balanced import effective_number_weights
    >>> effective_number_weights([500, 500, 124], beta=0.999).round(4)
    array([0.5583, 0.5583, 1.8834])
    >>> effective_number_weights([500, 500, 124], beta=0.0)
    array([1., 1., 1.])
    """
    counts = np.asarray(samples_per_class, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(
            "samples_per_class must be a 1-D array of per-class counts, got shape "
            f"{counts.shape}."
        )
    if counts.shape[0] < 2:
        raise ValueError(
            "Class-balanced weights need at least two classes; samples_per_class has "
            f"{counts.shape[0]} entry. A single class in y cannot be re-weighted."
        )
    if not np.all(np.isfinite(counts)):
        raise ValueError(f"samples_per_class must be finite, got {counts.tolist()}.")
    if np.any(counts < 0):
        raise ValueError(
            f"samples_per_class must be non-negative, got {counts.tolist()}."
        )
    if np.any(counts == 0):
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"The class at position(s) {empty} has zero samples; the class-balanced "
            "weight (1 - beta) / (1 - beta**0) is undefined. Drop the class or give "
            "it at least one sample."
        )
    beta = float(beta)
    if beta == 0.0:
        weights = np.ones_like(counts)
    else:
        # (1 - beta) / (1 - beta**n), with 1 - beta**n = -expm1(n * log(beta)) so
        # that beta close to 1 keeps full precision.
        weights = -math.expm1(math.log(beta)) / -np.expm1(counts * math.log(beta))
    return weights / weights.sum() * counts.shape[0]


def _encode_labels(y, classes):
    """Return (classes, y encoded as indices into classes) for 1-D labels."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(
            f"y must be 1-D class labels, got an array of shape {y.shape}. For "
            "multi-label indicator targets use ClassBalancedLoss.fit_counts or "
            "effective_number_weights(Y.sum(axis=0))."
        )
    if y.shape[0] == 0:
        raise ValueError("y is empty: class-balanced weights need at least one sample.")
    if classes is None:
        classes = np.unique(y)
    else:
        classes = np.asarray(classes)
        if classes.ndim != 1 or np.unique(classes).shape[0] != classes.shape[0]:
            raise ValueError("classes must be a 1-D array of distinct labels.")
    sorter = np.argsort(classes)
    pos = np.searchsorted(classes, y, sorter=sorter)
    pos = np.clip(pos, 0, classes.shape[0] - 1)
    idx = sorter[pos]
    unseen = classes[idx] != y
    if np.any(unseen):
        raise ValueError(
            f"y contains labels not in classes: {np.unique(y[unseen]).tolist()}."
        )
    return classes, idx


def _weighted_counts(idx, n_classes, sample_weight):
    if sample_weight is None:
        return np.bincount(idx, minlength=n_classes).astype(np.float64)
    sample_weight = np.asarray(sample_weight, dtype=np.float64).ravel()
    if sample_weight.shape[0] != idx.shape[0]:
        raise ValueError(
            f"sample_weight has {sample_weight.shape[0]} entries but y has "
            f"{idx.shape[0]}."
        )
    if not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
        raise ValueError("sample_weight must be finite and non-negative.")
    return np.bincount(idx, weights=sample_weight, minlength=n_classes)


@validate_params(
    {
        "y": ["array-like"],
        "beta": [_BETA],
        "classes": ["array-like", None],
        "sample_weight": ["array-like", None],
    },
    prefer_skip_nested_validation=True,
)
def class_balanced_weights(y, beta=0.999, *, classes=None, sample_weight=None):
    """Per-class class-balanced weights, like ``compute_class_weight``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of the training set.
    beta : float in [0, 1), default=0.999
        Effective-number hyper-parameter (``0``: no re-weighting; ``-> 1``:
        inverse frequency). The paper searches ``{0.9, 0.99, 0.999, 0.9999}``.
    classes : array-like of shape (n_classes,), default=None
        Labels the weights are aligned to; ``np.unique(y)`` by default. A class that
        has no sample in ``y`` is an error (its weight is undefined).
    sample_weight : array-like of shape (n_samples,), default=None
        If given, class counts are the sums of the sample weights of each class, so
        an integer weight ``k`` is the same as repeating the sample ``k`` times.

    Returns
    -------
    weights : ndarray of shape (n_classes,)
        ``weights[i]`` is the weight of ``classes[i]``; the weights sum to
        ``n_classes``.

    Raises
    ------
    ValueError
        ``beta`` outside ``[0, 1)``, ``y`` with a single class, a class of
        ``classes`` with zero samples, labels not in ``classes``.

    See Also
    --------
    class_balanced_class_weight : the same weights as a ``class_weight`` dict.
    class_balanced_sample_weight : the weight of each sample's class.

    Examples
    --------
    >>> import numpy as np
    >>> from dp_sklearn.losses.class_balanced import class_balanced_weights
    >>> y = np.array(["normal"] * 500 + ["pneumonia"] * 500 + ["covid19"] * 124)
    >>> class_balanced_weights(y, beta=0.9999).round(4)   # covid19, normal, pneumonia
    array([1.9929, 0.5036, 0.5036])
    """
    classes, idx = _encode_labels(y, classes)
    counts = _weighted_counts(idx, classes.shape[0], sample_weight)
    if classes.shape[0] < 2:
        raise ValueError(
            f"y has a single class ({classes[0]!r}); class-balanced weights need at "
            "least two classes."
        )
    if np.any(counts == 0):
        empty = classes[counts == 0].tolist()
        raise ValueError(
            f"The class(es) {empty} have zero samples (or zero total sample_weight) "
            "at fit time; their class-balanced weight is undefined."
        )
    return effective_number_weights(counts, beta)


def class_balanced_class_weight(y, beta=0.999, *, sample_weight=None):
    """Class-balanced weights as a ``{label: weight}`` dict for ``class_weight=``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of the training set.
    beta : float in [0, 1), default=0.999
        Effective-number hyper-parameter.
    sample_weight : array-like of shape (n_samples,), default=None
        Weighted class counts, see :func:`class_balanced_weights`.

    Returns
    -------
    class_weight : dict
        Maps each label of ``np.unique(y)`` to its weight.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from dp_sklearn.losses.class_balanced import class_balanced_class_weight
    >>> y = [0] * 90 + [1] * 10
    >>> cw = class_balanced_class_weight(y, beta=0.99)
    >>> {k: round(v, 3) for k, v in cw.items()}
    {0: 0.277, 1: 1.723}
    >>> clf = LogisticRegression(class_weight=cw)
    """
    classes = np.unique(np.asarray(y).ravel())
    weights = class_balanced_weights(
        y, beta, classes=classes, sample_weight=sample_weight
    )
    return {c.item() if hasattr(c, "item") else c: float(w) for c, w in zip(classes, weights)}


def class_balanced_sample_weight(y, beta=0.999, *, classes=None, sample_weight=None):
    """Per-sample weights ``w_{y_n}``: the class-balanced weight of each sample's class.

    This is the per-sample factor :math:`\\alpha_{y_n}` of the paper's softmax loss
    :math:`\\frac{1}{N}\\sum_n \\alpha_{y_n} CE_n`, so passing it as ``sample_weight``
    to a classifier that minimises a mean (or sum) of per-sample losses gives the
    class-balanced objective. The weights are not re-normalised.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    beta : float in [0, 1), default=0.999
        Effective-number hyper-parameter.
    classes : array-like of shape (n_classes,), default=None
        Labels to compute weights for; ``np.unique(y)`` by default.
    sample_weight : array-like of shape (n_samples,), default=None
        Weighted class counts, see :func:`class_balanced_weights`. The result is *not*
        multiplied by it.

    Returns
    -------
    sample_weight : ndarray of shape (n_samples,)

    Examples
    --------
    >>> from dp_sklearn.losses.class_balanced import class_balanced_sample_weight
    >>> class_balanced_sample_weight([0, 0, 0, 1], beta=0.5).round(4)
    array([0.7273, 0.7273, 0.7273, 1.2727])
    """
    classes, idx = _encode_labels(y, classes)
    weights = class_balanced_weights(
        y, beta, classes=classes, sample_weight=sample_weight
    )
    return weights[idx]


# ---------------------------------------------------------------------------- loss


class ClassBalancedLoss(nn.Module):
    """Class-balanced softmax, sigmoid or focal loss (Cui et al., CVPR 2019).

    Each sample is weighted by the class-balanced weight of its ground-truth class,
    :math:`\\alpha_{y} = w_{y}` with :math:`w_c = (1-\\beta)/(1-\\beta^{n_c})` normalised
    to :math:`\\sum_c w_c = C`. With logits :math:`z \\in \\mathbb{R}^{N\\times C}`, one-hot
    (or multi-label indicator) targets :math:`t \\in \\{0,1\\}^{N\\times C}`:

    - ``"softmax"``: :math:`L = \\frac{1}{N}\\sum_n \\alpha_{y_n}
      \\big(-\\log \\operatorname{softmax}(z_n)_{y_n}\\big)`. This is the reference code's
      scale; ``nn.CrossEntropyLoss(weight=w)`` instead divides by
      :math:`\\sum_n w_{y_n}`.
    - ``"sigmoid"``: :math:`L = \\frac{1}{N}\\sum_n \\alpha_n \\sum_c
      \\mathrm{BCE}(z_{nc}, t_{nc})` (one-vs-all; the ground-truth weight multiplies
      every class term of the sample).
    - ``"focal"``: :math:`L = \\frac{1}{N}\\sum_n \\alpha_n \\sum_c m_{nc}\\,
      \\mathrm{BCE}(z_{nc}, t_{nc})` with the sigmoid focal modulator
      :math:`m = (1-p_t)^{\\gamma} = \\exp(-\\gamma\\,(t z + \\log(1+e^{-z})))`,
      computed as ``exp(-gamma * (t * z + softplus(-z)))``. ``gamma = 0`` is exactly
      the sigmoid variant.

    Multi-label targets (sigmoid and focal only): the per-sample weight
    :math:`\\alpha_n` is the mean of the weights of the sample's positive labels,
    :math:`\\alpha_n = \\sum_c t_{nc} w_c / \\sum_c t_{nc}`; a sample with no positive
    label gets :math:`\\alpha_n = 1`, the mean class weight. For one-hot targets this
    is :math:`w_{y_n}`. The loss is still divided by the number of samples :math:`N`
    (the reference code divides the focal loss by the number of positive labels,
    which is :math:`N` for single-label data). Class counts for multi-label data are
    the numbers of positives per class (:meth:`fit_counts`).

    Computation is in float32 when the logits come in half precision or bfloat16
    (float64 stays float64), with ``binary_cross_entropy_with_logits``,
    ``log_softmax`` and ``softplus`` so losses and gradients are finite for logits as
    large as ``+-1e4``.

    Parameters
    ----------
    loss_type : {"softmax", "sigmoid", "focal"}, default="softmax"
        Which loss is re-weighted.
    beta : float in [0, 1), default=0.999
        Effective-number hyper-parameter (paper's large-scale default 0.999; search
        space ``BETA_GRID``).
    gamma : float >= 0, default=0.5
        Focal-loss focusing parameter, used by ``"focal"`` only (paper's large-scale
        default 0.5; search space ``GAMMA_GRID``).
    samples_per_class : array-like of shape (n_classes,), default=None
        Training-set class counts. If None, set them before training with
        :meth:`set_samples_per_class` or :meth:`fit_counts` (with ``beta=0`` the
        weights are all ones and counts are not needed).
    label_smoothing : float in [0, 1), default=0.0
        Single-label targets only: the one-hot target becomes ``(1 - s) * onehot + s / C``
        (Szegedy et al. 2016), for the softmax and the sigmoid/focal variants alike.

    Attributes
    ----------
    weight : torch.Tensor of shape (n_classes,), float32, or None
        The class weights, a registered buffer: it follows ``.to(device)``, is part of
        ``state_dict`` and pickles with the module.

    Shape
    -----
    - logits: :math:`(N, C)`, any floating dtype.
    - target: :math:`(N,)` int64 class indices, or for ``"sigmoid"``/``"focal"`` a
      :math:`(N, C)` multi-label indicator in :math:`[0, 1]`.
    - output: scalar.

    Notes
    -----
    As a skorch criterion: ``NeuralNetClassifier(module, criterion=ClassBalancedLoss,
    criterion__loss_type="softmax", criterion__samples_per_class=counts, ...)``. skorch
    applies a softmax in ``predict_proba`` only for its own cross-entropy criteria, so
    also pass ``predict_nonlinearity=functools.partial(torch.softmax, dim=-1)``
    (softmax variant) or ``torch.sigmoid`` (sigmoid/focal, one-vs-all scores that do
    not sum to one). Pair the sigmoid/focal variants with
    :func:`init_last_layer_bias` and :func:`param_groups_without_bias_decay` (or
    skorch's ``optimizer__param_groups`` with :func:`last_linear_bias_name`), as in
    the paper.

    Examples
    --------
    >>> import torch
    >>> from dp_sklearn.losses.class_balanced import ClassBalancedLoss
    >>> crit = ClassBalancedLoss("focal", beta=0.999, gamma=0.5,
    ...                          samples_per_class=[500, 500, 124])
    >>> crit.weight
    tensor([0.5583, 0.5583, 1.8834])
    >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 3.0]], requires_grad=True)
    >>> loss = crit(logits, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> bool(torch.isfinite(logits.grad).all())
    True
    """

    def __init__(self, loss_type="softmax", beta=0.999, gamma=0.5, samples_per_class=None, label_smoothing=0.0):
        super().__init__()
        if loss_type not in _LOSS_TYPES:
            raise ValueError(
                f"loss_type must be one of {_LOSS_TYPES}, got {loss_type!r}."
            )
        if not isinstance(beta, Real) or isinstance(beta, bool) or not 0 <= beta < 1:
            raise ValueError(f"beta must be a float in [0, 1), got {beta!r}.")
        if (
            not isinstance(gamma, Real)
            or isinstance(gamma, bool)
            or not (gamma >= 0 and math.isfinite(gamma))
        ):
            raise ValueError(f"gamma must be a finite float >= 0, got {gamma!r}.")
        if not isinstance(label_smoothing, Real) or isinstance(label_smoothing, bool) or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)
        self.loss_type = loss_type
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.samples_per_class = None
        self.register_buffer("weight", None)
        accept_unset_buffers(self, "weight")  # a module created without counts accepts the weights of a trained one
        if samples_per_class is not None:
            self.set_samples_per_class(samples_per_class)

    # ---------------------------------------------------------------- weights

    def set_samples_per_class(self, samples_per_class):
        """Set the class weights from per-class counts.

        Parameters
        ----------
        samples_per_class : array-like of shape (n_classes,)
            Positive class counts (see :func:`effective_number_weights`).

        Returns
        -------
        self : ClassBalancedLoss
        """
        if isinstance(samples_per_class, torch.Tensor):
            samples_per_class = samples_per_class.detach().cpu().numpy()
        weights = effective_number_weights(samples_per_class, self.beta)
        device = self.weight.device if self.weight is not None else None
        self.samples_per_class = tuple(
            float(c) for c in np.asarray(samples_per_class, dtype=np.float64)
        )
        self.weight = torch.as_tensor(weights, dtype=torch.float32, device=device)
        return self

    def fit_counts(self, y, n_classes=None):
        """Count the classes in ``y`` and set the weights from the counts.

        Parameters
        ----------
        y : array-like or tensor
            Either class indices of shape (n_samples,) in ``[0, n_classes)``, or a
            multi-label indicator of shape (n_samples, n_classes) (counts are the
            numbers of positives per class).
        n_classes : int, default=None
            Number of classes; ``max(y) + 1`` (or ``y.shape[1]``) by default. A class
            with no sample raises ``ValueError``.

        Returns
        -------
        self : ClassBalancedLoss
        """
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        y = np.asarray(y)
        if y.size == 0:
            raise ValueError("y is empty: cannot count classes.")
        if y.ndim == 2 and y.shape[1] > 1:
            if n_classes is not None and n_classes != y.shape[1]:
                raise ValueError(
                    f"n_classes={n_classes} but the indicator y has {y.shape[1]} columns."
                )
            if np.any((y < 0) | (y > 1)):
                raise ValueError("A multi-label indicator y must have values in [0, 1].")
            counts = y.sum(axis=0, dtype=np.float64)
        else:
            y = y.ravel()
            if not np.issubdtype(y.dtype, np.integer):
                if not np.all(np.mod(y, 1) == 0):
                    raise ValueError(
                        "fit_counts expects integer class indices (encode labels with "
                        "LabelEncoder first)."
                    )
                y = y.astype(np.int64)
            if y.min() < 0:
                raise ValueError("Class indices in y must be non-negative.")
            if n_classes is None:
                n_classes = int(y.max()) + 1
            elif y.max() >= n_classes:
                raise ValueError(
                    f"y has class index {int(y.max())} >= n_classes={n_classes}."
                )
            counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        return self.set_samples_per_class(counts)

    def extra_repr(self):
        w = None if self.weight is None else [round(float(v), 4) for v in self.weight]
        return (
            f"loss_type={self.loss_type!r}, beta={self.beta}, gamma={self.gamma}, "
            f"weight={w}"
        )

    # ---------------------------------------------------------------- forward

    def _class_weights(self, n_classes, device, dtype):
        if self.weight is None:
            if self.beta == 0.0:
                return torch.ones(n_classes, device=device, dtype=dtype)
            raise RuntimeError(
                "ClassBalancedLoss has no class counts: pass samples_per_class=... or "
                "call set_samples_per_class(counts) / fit_counts(y) before training."
            )
        if self.weight.shape[0] != n_classes:
            raise ValueError(
                f"logits have {n_classes} classes but the loss was set up for "
                f"{self.weight.shape[0]} (samples_per_class)."
            )
        return self.weight.to(device=device, dtype=dtype)

    def forward(self, logits, target, sample_weight=None):
        """Class-balanced loss of a batch.

        Parameters
        ----------
        logits : torch.Tensor of shape (N, C)
            Unnormalised scores.
        target : torch.Tensor of shape (N,) or (N, C)
            Integer class indices, or (sigmoid/focal) a multi-label indicator.
        sample_weight : torch.Tensor of shape (N,), default=None
            Per-sample weights :math:`s_n` multiplying each sample's term; the loss is then
            :math:`\\frac{1}{N}\\sum_n s_n \\alpha_n l_n` (still divided by :math:`N`).

        Returns
        -------
        loss : torch.Tensor, scalar
        """
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            shape = getattr(logits, "shape", None)
            raise ValueError(f"logits must be a 2-D tensor (N, C), got shape {shape}.")
        if not torch.is_floating_point(logits):
            raise TypeError(f"logits must be floating point, got {logits.dtype}.")
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        n, n_classes = logits.shape
        if not isinstance(target, torch.Tensor):
            target = torch.as_tensor(target, device=logits.device)
        target = target.to(logits.device)
        w = self._class_weights(n_classes, logits.device, logits.dtype)
        if sample_weight is not None:
            sample_weight = torch.as_tensor(sample_weight).to(device=logits.device, dtype=logits.dtype).reshape(-1)
            if sample_weight.shape[0] != n:
                raise ValueError(f"sample_weight has {sample_weight.shape[0]} entries but logits have {n} rows.")

        if target.ndim == 1 or (target.ndim == 2 and target.shape[1] == 1 and n_classes > 1):
            target = target.reshape(-1)
            if target.shape[0] != n:
                raise ValueError(
                    f"target has {target.shape[0]} samples but logits have {n}."
                )
            if torch.is_floating_point(target) or target.dtype == torch.bool:
                raise TypeError(
                    "Single-label targets must be integer class indices (int64), got "
                    f"{target.dtype}."
                )
            target = target.long()
            if n and bool(((target < 0) | (target >= n_classes)).any()):
                raise ValueError(
                    f"target class indices must be in [0, {n_classes}), got "
                    f"min {int(target.min())}, max {int(target.max())}."
                )
            if n == 0:
                return logits.sum() * 0.0
            alpha = w[target]
            if sample_weight is not None:
                alpha = alpha * sample_weight
            if self.loss_type == "softmax":
                ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
                return (alpha * ce).mean()
            labels = F.one_hot(target, n_classes).to(logits.dtype)
            if self.label_smoothing:
                labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / n_classes
        elif target.ndim == 2:
            if self.loss_type == "softmax":
                raise ValueError(
                    "The softmax variant takes class indices of shape (N,); a (N, C) "
                    "multi-label target needs loss_type='sigmoid' or 'focal'."
                )
            if tuple(target.shape) != (n, n_classes):
                raise ValueError(
                    f"Multi-label target must have the logits' shape {(n, n_classes)}, "
                    f"got {tuple(target.shape)}."
                )
            labels = target.to(logits.dtype)
            if n == 0:
                return logits.sum() * 0.0
            n_pos = labels.sum(dim=1)
            alpha = torch.where(
                n_pos > 0, labels @ w / n_pos.clamp_min(1e-12), torch.ones_like(n_pos)
            )
            if sample_weight is not None:
                alpha = alpha * sample_weight
        else:
            raise ValueError(
                f"target must have shape (N,) or (N, C), got {tuple(target.shape)}."
            )

        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if self.loss_type == "focal" and self.gamma != 0.0:
            modulator = torch.exp(-self.gamma * (labels * logits + F.softplus(-logits)))
            bce = modulator * bce
        return (alpha[:, None] * bce).sum() / n
