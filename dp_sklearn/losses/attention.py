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

from .class_balanced import ClassBalancedLoss
from .contrastive import SupConLoss

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


# ------------------------------------------------------------------ contrastive regulation


def lesion_contrastive_pairs(labels, has_mask, background_valid=None):
    """Positive and valid pairs of the lesion contrastive regulation.

    The features of a batch of ``N`` images, ``K`` of which have a mask, are stacked as
    ``[f (N), f_L (K), f_B (K)]``: whole-image features ``pool(F * A)``, lesion features
    ``pool(F * M)`` and background features ``pool(F * (1 - M))``. Pairs ``(i, j)``, ``i != j``:

    - **positive**: two non-background features of the same class at least one of which is a
      lesion feature: ``f`` and ``f_L`` of the same image, ``f_L`` of images of the same class,
      and ``f`` with the lesion features of its class;
    - **negative**: a background feature with anything, and features of different classes;
    - **ignored**: two whole-image features of the same class (the regulation pulls images
      towards lesion evidence, it does not cluster whole images among themselves), and
      background features whose mask covers the whole grid (``background_valid`` False).

    Background features are never anchors (they have no positive); they only sit in the
    denominators.

    Parameters
    ----------
    labels : torch.Tensor of shape (N,), int
    has_mask : torch.Tensor of shape (N,), bool
    background_valid : torch.Tensor of shape (K,), bool, optional

    Returns
    -------
    positive, valid : torch.Tensor of shape (N + 2K, N + 2K), bool
        ``valid`` holds the pairs that enter the denominator (positives included).

    Examples
    --------
    >>> import torch
    >>> pos, valid = lesion_contrastive_pairs(torch.tensor([0, 1, 0]), torch.tensor([True, False, False]))
    >>> pos.int().tolist()   # order: f0 f1 f2 fL0 fB0
    [[0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    >>> valid.int()[0].tolist()   # f0: f1 (other class) and fB0 negative, f2 ignored, fL0 positive
    [0, 1, 0, 1, 1]
    """
    labels = labels.reshape(-1).long()
    has_mask = has_mask.reshape(-1).bool()
    n, k = labels.shape[0], int(has_mask.sum())
    device = labels.device
    kind = torch.cat([
        torch.zeros(n, dtype=torch.long, device=device),      # 0: whole image
        torch.ones(k, dtype=torch.long, device=device),       # 1: lesion
        torch.full((k,), 2, dtype=torch.long, device=device),  # 2: background
    ])
    lab = torch.cat([labels, labels[has_mask], labels[has_mask]])
    present = torch.ones(n + 2 * k, dtype=torch.bool, device=device)
    if background_valid is not None and k:
        present[n + k:] = background_valid.reshape(-1).bool().to(device)
    not_self = ~torch.eye(n + 2 * k, dtype=torch.bool, device=device)
    fg = kind != 2
    same = lab[:, None] == lab[None, :]
    lesion_in_pair = (kind[:, None] == 1) | (kind[None, :] == 1)
    positive = not_self & fg[:, None] & fg[None, :] & same & lesion_in_pair
    both_whole_same = (kind[:, None] == 0) & (kind[None, :] == 0) & same
    valid = not_self & ~both_whole_same & present[:, None] & present[None, :]
    positive &= valid
    return positive, valid


class LesionContrastiveLoss(nn.Module):
    """Contrastive regulation of whole-image, lesion and background features.

    Deep Pneumonia's "feature learning with contrastive regulation" (reconstructed): a
    supervised-contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020)
    over ``[f, f_L, f_B]`` with the pairs of :func:`lesion_contrastive_pairs`: each image's
    feature is pulled towards its own lesion feature and the lesion features of its class,
    and pushed away from background features and other classes' lesions, so that the
    representation concentrates on lesion evidence.

    Parameters
    ----------
    temperature : float, default=0.1
        :math:`\\tau` of the :class:`~dp_sklearn.losses.contrastive.SupConLoss` that computes
        the loss (the same module as the pre-training's supervised variant), with
        ``positive_mask`` and ``valid_mask`` from :func:`lesion_contrastive_pairs` and the
        non-background rows as anchors.

    Shape
    -----
    - z: :math:`(N, D)`, z_lesion and z_background: :math:`(K, D)`, L2-normalised.
    - labels: :math:`(N,)` int; has_mask: :math:`(N,)` bool with ``K`` True entries.
    - output: scalar (0 when no image of the batch has a mask).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.supcon = SupConLoss(temperature=temperature)
        self.temperature = self.supcon.temperature

    def forward(self, z, z_lesion, z_background, labels, has_mask, background_valid=None):
        if z_lesion.shape[0] == 0:
            return z.sum() * 0.0
        positive, valid = lesion_contrastive_pairs(labels, has_mask, background_valid)
        feats = torch.cat([z, z_lesion, z_background]).float()
        anchors = torch.ones(len(feats), dtype=torch.bool, device=feats.device)
        anchors[len(z) + len(z_lesion):] = False  # background features are never anchors
        return self.supcon(feats, positive_mask=positive, valid_mask=valid, anchor_mask=anchors)

    def extra_repr(self):
        return f"temperature={self.temperature}"


# ------------------------------------------------------------------ the full objective


class MaskAttentionLoss(nn.Module):
    """Classification + ``attention_weight`` x alignment + ``contrastive_weight`` x contrastive.

    .. math::

        L = L_{cls}(\\text{logits}, y) + \\lambda_{att} L_{align}(a, M)
            + \\lambda_{con} L_{con}(f, f_L, f_B),

    the objective of :class:`~dp_sklearn.estimators.mask_attention.MaskAttentionClassifier`.
    The mask terms use only the samples that have a mask (``aux["has_mask"]``); a weight of 0
    skips its term entirely (it is not even computed).

    Parameters
    ----------
    classification : nn.Module
        Loss of ``(logits, target)`` with mean reduction, e.g.
        :class:`~dp_sklearn.losses.class_balanced.ClassBalancedLoss` or ``nn.CrossEntropyLoss``.
    alignment : nn.Module or str, default="dice"
        See :func:`make_alignment_loss`.
    contrastive : nn.Module or None, default=None
        A :class:`LesionContrastiveLoss`; a default one when None.
    attention_weight, contrastive_weight : float >= 0
        :math:`\\lambda_{att}` and :math:`\\lambda_{con}`.

    Notes
    -----
    ``forward(logits, aux, target, sample_weight=None)`` returns ``(total, terms)`` where
    ``terms`` maps ``"cls_loss"``, ``"align_loss"``, ``"contrast_loss"`` to detached scalars.
    ``aux`` is the dict returned by :class:`~dp_sklearn.nn.attention.MaskAttentionNet`.
    ``sample_weight`` ``(N,)`` multiplies each sample's classification loss (the batch loss is
    then ``sum_n s_n l_n / N``); it does not weight the mask terms.
    """

    def __init__(self, classification, alignment="dice", contrastive=None, attention_weight=1.0, contrastive_weight=0.1):
        super().__init__()
        self.classification = classification
        self.alignment = make_alignment_loss(alignment)
        self.contrastive = LesionContrastiveLoss() if contrastive is None else contrastive
        self.attention_weight = float(attention_weight)
        self.contrastive_weight = float(contrastive_weight)

    def _classification(self, logits, target, sample_weight):
        cls = self.classification
        if sample_weight is None:
            return cls(logits, target)
        sample_weight = sample_weight.to(logits)
        if isinstance(cls, ClassBalancedLoss):
            return cls(logits, target, sample_weight=sample_weight)
        if isinstance(cls, nn.CrossEntropyLoss):
            # Each sample's own cross-entropy l_n (what a one-sample mean would give), weighted.
            losses = F.cross_entropy(logits, target, reduction="none", label_smoothing=cls.label_smoothing)
            return (losses * sample_weight).sum() / max(len(logits), 1)
        raise TypeError(
            f"sample_weight needs a classification loss that takes per-sample weights (ClassBalancedLoss or "
            f"nn.CrossEntropyLoss), got {type(cls).__name__}."
        )

    def forward(self, logits, aux, target, sample_weight=None):
        aux = aux or {}
        cls = self._classification(logits.float(), target, sample_weight)
        total, zero = cls, cls.detach() * 0.0
        terms = {"cls_loss": cls.detach(), "align_loss": zero, "contrast_loss": zero}
        if "mask_grid" in aux:
            has = aux["has_mask"]
            if self.attention_weight > 0:
                align = self.alignment(aux["attention_logits"], aux["mask_grid"], has)
                total = total + self.attention_weight * align
                terms["align_loss"] = align.detach()
            if self.contrastive_weight > 0 and "z" in aux:
                con = self.contrastive(
                    aux["z"], aux["z_lesion"], aux["z_background"], target.reshape(-1), has, aux.get("background_valid")
                )
                total = total + self.contrastive_weight * con
                terms["contrast_loss"] = con.detach()
        return total, terms
