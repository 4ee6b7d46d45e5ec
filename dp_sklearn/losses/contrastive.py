"""Contrastive losses: SimCLR's NT-Xent and supervised contrastive (SupCon) with masks.

Both compute cosine similarities in at least float32 (autocast is switched off inside),
whatever the dtype of the features, because a softmax over low-temperature logits loses
too much in bfloat16.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NTXentLoss", "SupConLoss"]


def _check_temperature(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (tests); float16/bfloat16 go up to float32.
    return torch.promote_types(t.dtype, torch.float32)


def _pair_mask(mask, n: int, name: str, device) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if mask.shape != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}), got {tuple(mask.shape)}.")
    return mask.to(device).bool()


class NTXentLoss(nn.Module):
    r"""Normalised temperature-scaled cross entropy (NT-Xent) of SimCLR.

    Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020, Eq. (1). With the 2N views
    :math:`z = [z^{(1)}; z^{(2)}]`, L2-normalised, and :math:`s_{ij} = z_i^\top z_j`:

    .. math::

        \ell_i = -\log \frac{\exp(s_{i,p(i)} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)},
        \qquad L = \frac{1}{2N} \sum_{i=1}^{2N} \ell_i

    where :math:`p(i)` is the other view of the same image; the other 2N - 2 views are
    negatives. The loss is symmetric in swapping the two views.

    Parameters
    ----------
    temperature : float, default=0.5
        :math:`\tau > 0`. SimCLR found 0.5 best for CIFAR-sized images and batches of a
        few hundred (Appendix B.9) and 0.1 for ImageNet with batches of thousands; our
        runs (small radiographs, batches of 32-256) are of the first kind.

    Shapes
    ------
    - z1, z2: (N, D) projections of the two views, N >= 2, any float dtype.
    - output: scalar (float32, or float64 for float64 inputs).

    Examples
    --------
    >>> import torch
    >>> loss = NTXentLoss(temperature=0.5)
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> loss(z1, z2).shape
    torch.Size([])
    >>> bool(loss(z1, z1) < loss(z1, z2))  # identical views are easy positives
    True
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = _check_temperature(temperature, "temperature")

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if not (isinstance(z1, torch.Tensor) and isinstance(z2, torch.Tensor)):
            raise TypeError("z1 and z2 must be torch tensors of shape (N, D).")
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must both have shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}.")
        n = z1.shape[0]
        if n < 2:
            raise ValueError(f"NT-Xent needs at least 2 samples per batch (negatives), got N={n}.")
        dtype = _compute_dtype(z1)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)
            logits = z @ z.T / self.temperature
            eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
            # The most negative finite number (not -inf) removes self-similarity without NaN.
            logits = logits.masked_fill(eye, torch.finfo(dtype).min)
            targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
            return F.cross_entropy(logits, targets)


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss (SupCon), with explicit positive / contrast masks.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. (2)
    (:math:`\mathcal{L}^{sup}_{out}`). For anchors :math:`i \in I`, L2-normalised
    features :math:`z`, positives :math:`P(i)` and contrast set :math:`A(i)`:

    .. math::

        \ell_i = -\frac{\tau}{\tau_b} \frac{1}{|P(i)|} \sum_{p \in P(i)}
                 \log \frac{\exp(z_i^\top z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i^\top z_a / \tau)},
        \qquad L = \frac{1}{|I'|} \sum_{i \in I'} \ell_i

    where :math:`I'` are the anchors with at least one positive (others are left out of
    the mean, not counted as NaN or 0). By default :math:`A(i)` is every other view and
    :math:`P(i)` every other view with the same label. With ``labels=None`` and no mask,
    the positives are the other views of the same sample, so with two views this is
    exactly :class:`NTXentLoss`.

    Pair masks are given at the level of *samples* (the first axis of ``features``) and
    are expanded over views. They let one loss express the mask-attention classifier's
    *contrastive regulation*: stack whole-image, lesion and background features of a
    batch as ``M = 3B`` rows of a 2-D ``features``, mark whole/lesion pairs of the same
    image and lesion/lesion pairs of the same class as positives, keep every pair valid
    (so background features sit in every denominator as negatives) and use only
    whole-image and lesion rows as anchors (see the example).

    Parameters
    ----------
    temperature : float, default=0.1
        :math:`\tau > 0`.
    base_temperature : float or None, default=None
        :math:`\tau_b`; None means :math:`\tau_b = \tau` (factor 1). Khosla et al.'s code
        uses 0.07 for both.

    Shapes
    ------
    - features: (N, V, D) with V views per sample, or (M, D) with one view per row.
    - labels: (N,) or (M,) of any integer/float values; equal values are positives.
    - positive_mask: (N, N) bool; ``[i, j]`` True makes views of j positives of views of i.
      Exclusive with ``labels``. The diagonal refers to other views of the same sample.
    - valid_mask: (N, N) bool, default all True; pairs in the contrast set :math:`A(i)`.
      Pairs outside it are ignored entirely; positives outside it are dropped.
    - anchor_mask: (N,) bool, default all True; samples whose views act as anchors.
    - output: scalar (float32, or float64 for float64 inputs). 0 (with a graph) when no
      anchor has a positive.

    A view is never its own positive nor in its own contrast set.

    Examples
    --------
    >>> import torch
    >>> loss = SupConLoss(temperature=0.1)
    >>> feats = torch.randn(6, 2, 8)                       # 6 samples, 2 views
    >>> loss(feats, labels=torch.tensor([0, 0, 1, 1, 2, 2])).shape
    torch.Size([])

    Contrastive regulation with whole-image, lesion and background features of B images:

    >>> B, y = 4, torch.tensor([0, 1, 1, 0])
    >>> whole, lesion, background = torch.randn(3, B, 8)
    >>> feats = torch.cat([whole, lesion, background])     # (3B, D)
    >>> kind = torch.arange(3).repeat_interleave(B)        # 0 whole, 1 lesion, 2 background
    >>> image = torch.arange(B).repeat(3)
    >>> cls = y.repeat(3)
    >>> same_image = image[:, None] == image[None, :]
    >>> same_class = cls[:, None] == cls[None, :]
    >>> fg = kind < 2
    >>> positive = fg[:, None] & fg[None, :] & (same_image | (same_class & (kind[:, None] == 1) & (kind[None, :] == 1)))
    >>> value = loss(feats, positive_mask=positive, anchor_mask=fg)
    >>> bool(torch.isfinite(value))
    True
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None):
        super().__init__()
        self.temperature = _check_temperature(temperature, "temperature")
        self.base_temperature = (
            self.temperature if base_temperature is None else _check_temperature(base_temperature, "base_temperature")
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        positive_mask: torch.Tensor | None = None,
        valid_mask: torch.Tensor | None = None,
        anchor_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch tensor (N, V, D) or (M, D), got {type(features).__name__}.")
        if features.ndim == 2:
            features = features[:, None, :]
            if labels is None and positive_mask is None:
                raise ValueError("with 2-D features (one view per row) give labels or positive_mask; "
                                 "otherwise no anchor has a positive.")
        elif features.ndim != 3:
            raise ValueError(f"features must have shape (N, V, D) or (M, D), got {tuple(features.shape)}.")
        if labels is not None and positive_mask is not None:
            raise ValueError("give labels or positive_mask, not both.")
        n, v, _ = features.shape
        if n * v < 2:
            raise ValueError(f"need at least 2 views in total, got features of shape {tuple(features.shape)}.")
        device = features.device

        # Sample-level relations (N, N), expanded to views below.
        if labels is not None:
            labels = torch.as_tensor(labels, device=device)
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}.")
            pos = labels[:, None] == labels[None, :]
        elif positive_mask is not None:
            pos = _pair_mask(positive_mask, n, "positive_mask", device)
        else:
            pos = torch.eye(n, dtype=torch.bool, device=device)
        valid = (torch.ones(n, n, dtype=torch.bool, device=device) if valid_mask is None
                 else _pair_mask(valid_mask, n, "valid_mask", device))
        if anchor_mask is None:
            anchors = torch.ones(n, dtype=torch.bool, device=device)
        else:
            anchors = torch.as_tensor(anchor_mask, device=device)
            if anchors.shape != (n,):
                raise ValueError(f"anchor_mask must have shape ({n},), got {tuple(anchors.shape)}.")
            anchors = anchors.bool()

        dtype = _compute_dtype(features)
        with torch.autocast(device_type=device.type, enabled=False):
            # View-major order, as in Khosla et al.'s code: row k = view k // N of sample k % N.
            z = F.normalize(features.transpose(0, 1).reshape(n * v, -1).to(dtype), dim=1)
            not_self = ~torch.eye(n * v, dtype=torch.bool, device=device)
            valid = valid.repeat(v, v) & not_self
            pos = pos.repeat(v, v) & valid
            anchors = anchors.repeat(v)

            logits = (z @ z.T / self.temperature).masked_fill(~valid, torch.finfo(dtype).min)
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            n_pos = pos.sum(1)
            # where(), not multiply: log_prob is huge where the row has no valid pair.
            mean_log_prob_pos = torch.where(pos, log_prob, 0.0).sum(1) / n_pos.clamp(min=1)
            used = (anchors & (n_pos > 0)).to(dtype)
            loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
            # Masked mean without a host sync; 0 (graph kept) when no anchor is used.
            return (loss * used).sum() / used.sum().clamp(min=1)
