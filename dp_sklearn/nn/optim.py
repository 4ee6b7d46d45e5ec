"""Optimizer helpers of the training recipe: last-layer bias initialisation and weight-decay groups.

Moved here from :mod:`dp_sklearn.losses.class_balanced` (which re-exports them): they shape the
network and its optimizer, not a loss.

- :func:`init_last_layer_bias`: the prior initialisation of Cui et al. (CVPR 2019) for sigmoid
  and focal losses.
- :func:`param_groups_without_bias_decay`: parameter groups in which chosen parameters (the
  last-layer bias by default; every bias and normalisation parameter with
  ``norms_and_biases=True``) get no weight decay. The torch estimators build their optimizer
  groups with it (see ``TorchEstimatorBase.get_params_for_optimizer``).
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import nn

__all__ = [
    "init_last_layer_bias",
    "last_linear_bias_name",
    "norm_and_bias_parameters",
    "param_groups_without_bias_decay",
]

_LOSS_TYPES = ("softmax", "sigmoid", "focal")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def init_last_layer_bias(linear, loss_type, n_classes=None):
    """Initialise a classifier's last-layer bias as the paper does.

    For the sigmoid and focal variants the bias starts at :math:`b = -\\log((1-\\pi)/\\pi)`
    with prior :math:`\\pi = 1/C`, i.e. :math:`b = -\\log(C - 1)`, so the initial
    one-vs-all probabilities are :math:`1/C` and the many negative terms do not
    dominate the first steps. For :math:`C = 2` that is ``0``. The softmax variant
    leaves the bias unchanged.

    Parameters
    ----------
    linear : torch.nn.Linear
        The last layer (``out_features == C``), must have a bias.
    loss_type : {"softmax", "sigmoid", "focal"}
        The loss the layer is trained with.
    n_classes : int, default=None
        :math:`C`; ``linear.out_features`` by default. Must be at least 2.

    Returns
    -------
    linear : torch.nn.Linear
        The same layer, modified in place.

    Examples
    --------
    >>> from torch import nn
    >>> from dp_sklearn.nn.optim import init_last_layer_bias
    >>> head = init_last_layer_bias(nn.Linear(8, 3), "focal")
    >>> head.bias
    Parameter containing:
    tensor([-0.6931, -0.6931, -0.6931], requires_grad=True)
    """
    if loss_type not in _LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {_LOSS_TYPES}, got {loss_type!r}.")
    bias = getattr(linear, "bias", None)
    if bias is None:
        raise ValueError("The last layer has no bias to initialise (bias=False?).")
    if n_classes is None:
        n_classes = bias.shape[0]
    if not isinstance(n_classes, Integral) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}.")
    if loss_type in ("sigmoid", "focal"):
        with torch.no_grad():
            bias.fill_(-math.log(n_classes - 1))
    return linear


def _last_linear(module):
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            last = m
    if last is None:
        raise ValueError("The module has no nn.Linear layer with a bias.")
    return last


def last_linear_bias_name(module):
    """Name of the bias of the last ``nn.Linear`` in ``module`` (registration order).

    Use it to exempt that bias from weight decay in skorch:
    ``optimizer__param_groups=[(last_linear_bias_name(module), {"weight_decay": 0.0})]``
    (skorch matches these patterns against ``module.named_parameters()`` names).

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    name : str

    Examples
    --------
    >>> from torch import nn
    >>> from dp_sklearn.nn.optim import last_linear_bias_name
    >>> last_linear_bias_name(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    '2.bias'
    """
    target = _last_linear(module).bias
    for name, p in module.named_parameters():
        if p is target:
            return name
    raise ValueError("The last linear bias is not a registered parameter.")  # pragma: no cover


def norm_and_bias_parameters(module):
    """Every bias and every normalisation-layer parameter of ``module`` (the usual no-decay set).

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    list of torch.nn.Parameter
        In registration order, without duplicates.

    Examples
    --------
    >>> from torch import nn
    >>> len(norm_and_bias_parameters(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))))
    3
    """
    seen, out = set(), []
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if (isinstance(m, _NORMS) or name == "bias") and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def param_groups_without_bias_decay(module, weight_decay, bias=None, *, groups=None, norms_and_biases=False):
    """Optimizer parameter groups in which the last-layer bias (or more) gets no weight decay.

    The paper keeps weight decay off the last-layer bias so that the prior
    initialisation of :func:`init_last_layer_bias` is not pulled towards zero.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    weight_decay : float
        Weight decay of every other trainable parameter.
    bias : torch.nn.Parameter or list of them, default=None
        The parameter(s) to exempt; the bias of the last ``nn.Linear`` by default.
    groups : list of dict, default=None
        Existing parameter groups to split (e.g. skorch's, with per-group settings kept);
        ``[{"params": <trainable parameters of module>}]`` by default. The exempt
        parameters are taken out of every group and put in one last group.
    norms_and_biases : bool, default=False
        Also exempt every bias and normalisation parameter (:func:`norm_and_bias_parameters`).

    Returns
    -------
    param_groups : list of dict
        ``[{"params": [...], "weight_decay": weight_decay},
        {"params": [bias], "weight_decay": 0.0}]`` for any ``torch.optim`` optimizer.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from dp_sklearn.nn.optim import param_groups_without_bias_decay
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> groups = param_groups_without_bias_decay(net, 1e-4)
    >>> opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    >>> [len(g["params"]) for g in opt.param_groups], opt.param_groups[1]["weight_decay"]
    ([3, 1], 0.0)
    """
    if bias is None and not norms_and_biases:
        bias = _last_linear(module).bias
    exempt = [] if bias is None else (list(bias) if isinstance(bias, (list, tuple)) else [bias])
    if norms_and_biases:
        exempt += [p for p in norm_and_bias_parameters(module) if all(p is not q for q in exempt)]
    exempt_ids = {id(p) for p in exempt}
    if groups is None:
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not any(id(p) in exempt_ids for p in trainable):
            raise ValueError("bias is not a trainable parameter of module.")
        groups = [{"params": trainable, "weight_decay": float(weight_decay)}]
    out = []
    for group in groups:
        rest = [p for p in group["params"] if id(p) not in exempt_ids]
        if rest:
            out.append({**group, "params": rest})
    present = {id(p) for group in groups for p in group["params"]}
    kept = [p for p in exempt if id(p) in present]
    if kept:
        out.append({"params": kept, "weight_decay": 0.0})
    return out
