"""Mask-alignment losses: pull a learned attention map towards the radiologist's lesion mask.

Both losses work on the backbone's feature grid ``(h, w)``: the attention logits ``a`` of
:class:`dp_sklearn.nn.attention.MaskAttentionNet` (``A = sigmoid(a)``) and the mask ``M``
downsampled to the same grid (a soft map in [0, 1] with area downsampling). Only samples that
have a mask take part (``valid``); the mean is over those samples, and a batch with none gives
an exact zero that still carries a graph (so ``backward`` works on every batch).

Deep Pneumonia (Wei et al., arXiv:2207.11393) says that an alignment loss makes the attention
follow the lesion masks; its form is not in the abstract, so two standard forms are offered:

- :class:`AttentionBCELoss`: pixel-wise binary cross-entropy, the usual loss of attention
  supervision (e.g. Li et al., "Tell Me Where to Look: Guided Attention Inference Network",
  CVPR 2018, which supervises attention maps with masks).
- :class:`AttentionDiceLoss`: soft Dice (Milletari et al., "V-Net", 3DV 2016), which is
  insensitive to the lesion's size and so does not let the large background dominate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ALIGNMENT_LOSSES", "AttentionBCELoss", "AttentionDiceLoss", "make_alignment_loss"]


def _check(logits, target, valid):
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        raise ValueError(f"logits must be a tensor (N, 1, h, w) or (N, h, w), got {getattr(logits, 'shape', None)}.")
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"target (the mask on the feature grid) has shape {tuple(target.shape)} but the attention "
            f"logits have {tuple(logits.shape)}; downsample the mask to the feature grid first."
        )
    n = logits.shape[0]
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=logits.device)
    valid = valid.to(device=logits.device, dtype=torch.bool).reshape(-1)
    if valid.shape[0] != n:
        raise ValueError(f"valid has {valid.shape[0]} entries but there are {n} samples.")
    return logits.float().flatten(1), target.float().flatten(1), valid


class AttentionBCELoss(nn.Module):
    """Binary cross-entropy between the attention map and the mask on the feature grid.

    .. math::

        L = \\frac{1}{|V|} \\sum_{n \\in V} \\frac{1}{hw} \\sum_{i} w_{ni}\\,
            \\mathrm{BCE}(a_{ni}, M_{ni}),
        \\qquad \\mathrm{BCE}(a, m) = -m \\log\\sigma(a) - (1 - m) \\log(1 - \\sigma(a)),

    where :math:`V` is the set of samples with a mask and :math:`w_{ni} = \\text{pos\\_weight}`
    where :math:`M_{ni} > 0` (1 elsewhere). Computed from the logits
    (``binary_cross_entropy_with_logits``) in float32, so it is finite for any logit and safe
    to call under autocast.

    Parameters
    ----------
    pos_weight : float or "balanced", default=1.0
        Weight of lesion cells. ``"balanced"`` uses, per sample, the ratio of background to
        lesion mass ``sum(1 - M) / sum(M)``, so that small lesions count as much as the
        background around them.

    Shape
    -----
    - logits: :math:`(N, 1, h, w)` attention logits (pre-sigmoid).
    - target: same shape, mask in [0, 1] (soft masks allowed).
    - valid: :math:`(N,)` bool, which samples have a mask (all when None).
    - output: scalar.

    Examples
    --------
    >>> import torch
    >>> loss = AttentionBCELoss()
    >>> m = torch.zeros(2, 1, 4, 4); m[:, :, :2, :2] = 1
    >>> good, bad = 20 * (2 * m - 1), -20 * (2 * m - 1)
    >>> float(loss(good, m)) < 1e-6 < float(loss(bad, m))
    True
    >>> float(loss(bad, m, valid=torch.tensor([False, False])))
    0.0
    """

    def __init__(self, pos_weight=1.0):
        super().__init__()
        if pos_weight != "balanced" and not (isinstance(pos_weight, (int, float)) and pos_weight > 0):
            raise ValueError(f"pos_weight must be a positive float or 'balanced', got {pos_weight!r}.")
        self.pos_weight = pos_weight

    def forward(self, logits, target, valid=None):
        a, m, valid = _check(logits, target, valid)
        if not bool(valid.any()):
            return logits.sum() * 0.0
        a, m = a[valid], m[valid]
        per_cell = F.binary_cross_entropy_with_logits(a, m, reduction="none")
        if self.pos_weight == "balanced":
            lesion = m.sum(1, keepdim=True).clamp_min(1e-6)
            weight = torch.where(m > 0, (m.shape[1] - lesion) / lesion, torch.ones_like(m))
            per_cell = per_cell * weight
        elif self.pos_weight != 1.0:
            per_cell = per_cell * torch.where(m > 0, torch.full_like(m, float(self.pos_weight)), torch.ones_like(m))
        return per_cell.mean(1).mean()

    def extra_repr(self):
        return f"pos_weight={self.pos_weight!r}"


class AttentionDiceLoss(nn.Module):
    """Soft Dice loss between the attention map and the mask on the feature grid.

    .. math::

        L = \\frac{1}{|V|} \\sum_{n \\in V} \\left(1 - \\frac{2 \\sum_i A_{ni} M_{ni} + s}
            {\\sum_i A_{ni} + \\sum_i M_{ni} + s}\\right), \\qquad A = \\sigma(a),

    with :math:`V` the samples that have a mask and :math:`s` the smoothing constant. The loss
    is 0 when ``A`` equals a binary ``M`` and grows with attention mass outside the lesion
    and lesion cells left out, whatever the lesion's size. Computed in float32.

    Parameters
    ----------
    smooth : float, default=1.0
        :math:`s`, keeps the ratio defined and the gradient smooth for tiny lesions.

    Shape
    -----
    - logits: :math:`(N, 1, h, w)` attention logits (pre-sigmoid).
    - target: same shape, mask in [0, 1].
    - valid: :math:`(N,)` bool (all when None).
    - output: scalar.

    Examples
    --------
    >>> import torch
    >>> loss = AttentionDiceLoss()
    >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :2] = 1
    >>> round(float(loss(20 * (2 * m - 1), m)), 4), round(float(loss(-20 * (2 * m - 1), m)), 4)
    (0.0, 0.9412)
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        if not isinstance(smooth, (int, float)) or smooth < 0:
            raise ValueError(f"smooth must be a float >= 0, got {smooth!r}.")
        self.smooth = float(smooth)

    def forward(self, logits, target, valid=None):
        a, m, valid = _check(logits, target, valid)
        if not bool(valid.any()):
            return logits.sum() * 0.0
        p, m = torch.sigmoid(a[valid]), m[valid]
        inter = (p * m).sum(1)
        dice = (2.0 * inter + self.smooth) / (p.sum(1) + m.sum(1) + self.smooth)
        return (1.0 - dice).mean()

    def extra_repr(self):
        return f"smooth={self.smooth}"


#: Names accepted by :func:`make_alignment_loss` (and ``MaskAttentionClassifier(alignment_loss=...)``).
ALIGNMENT_LOSSES = {"bce": AttentionBCELoss, "dice": AttentionDiceLoss}


def make_alignment_loss(kind) -> nn.Module:
    """Return the alignment loss module for ``kind``.

    Parameters
    ----------
    kind : {"bce", "dice", "bce+dice"} or nn.Module
        ``"bce+dice"`` is the sum of both (a common choice in segmentation). A module is used as
        it is (it must accept ``(logits, target, valid)``).

    Examples
    --------
    >>> make_alignment_loss("dice")
    AttentionDiceLoss(smooth=1.0)
    """
    if isinstance(kind, nn.Module):
        return kind
    if kind == "bce+dice":
        return _SumLoss(AttentionBCELoss(), AttentionDiceLoss())
    if kind not in ALIGNMENT_LOSSES:
        raise ValueError(f"alignment_loss must be one of {sorted(ALIGNMENT_LOSSES) + ['bce+dice']}, got {kind!r}.")
    return ALIGNMENT_LOSSES[kind]()


class _SumLoss(nn.Module):
    """Sum of alignment losses (``"bce+dice"``)."""

    def __init__(self, *losses):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits, target, valid=None):
        return sum(loss(logits, target, valid) for loss in self.losses)
