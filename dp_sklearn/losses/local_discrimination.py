r"""Losses of unsupervised local discrimination (LD) for pixel-wise embeddings and soft regions.

Chen, Zhou, Wang, Chen, Zhou, Qiao, Heng, "Unsupervised Local Discrimination for Medical
Images" (2022; MICCAI 2021 conference version "Unsupervised local discrimination for medical
images"). A network maps an image to L2-normalised pixel embeddings
:math:`e_n(p) \in \mathbb{R}^D` and, through a clustering branch, to ``K`` soft region
assignments :math:`a_{nk}(p) \ge 0` with :math:`\sum_k a_{nk}(p) = 1`. Four terms train it:

- :class:`PatchDiscriminationLoss` (stage 1): patches of the two views of an image are told
  apart from every other patch of the batch, the same patch of the other view being the positive;
- :class:`MixupEmbeddingLoss` (stage 1): the embedding of a mixed image equals the mix of the
  embeddings;
- :class:`RegionDiscriminationLoss` (stage 2): region embeddings are pulled to their batch-wide
  region centre and pushed from the other centres, which ties the clustering branch to the
  embedding and makes regions of the same structure agree across images;
- :class:`AssignmentEntropyLoss` (stage 2): per-pixel entropy of the assignments, so that each
  pixel ends up in one region.

:class:`LocalDiscriminationLoss` combines them as
:math:`L = w_{mix} L_{mix} + L_{pd} + [\text{stage 2}] (w_{ld} L_{ld} + w_{ent} L_{ent})`
with the reference weights ``1, 1, 10, 0.1``. This is our own implementation of the losses as
described by the paper and its public code (not a copy); the exact choices are documented on
each class. Every loss computes in at least float32 with autocast switched off.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AssignmentEntropyLoss",
    "LocalDiscriminationLoss",
    "MixupEmbeddingLoss",
    "PatchDiscriminationLoss",
    "RegionDiscriminationLoss",
    "region_embeddings",
]


def _positive(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _non_negative(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def _dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _check_map(t, name: str, ndim: int = 4) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor (N, C, H, W), got shape {tuple(t.shape)}.")


class PatchDiscriminationLoss(nn.Module):
    r"""Patch discrimination: instance discrimination over the patches of two aligned views.

    The pixel embeddings of each view are average-pooled to a ``grid x grid`` array of
    patches and re-normalised, :math:`q^{(v)}_{n,g} = \mathrm{norm}(\mathrm{mean}_{p \in g}
    e^{(v)}_n(p))`. The :math:`2M` patches (:math:`M = N \cdot grid^2`) then enter the
    NT-Xent loss (SimCLR, Chen et al. 2020, Eq. 1), in which the positive of a patch is the
    same patch of the other view and the other :math:`2M - 2` patches — of the same image and
    of the other images — are negatives:

    .. math::

        \ell_i = -\log \frac{\exp(q_i^\top q_{p(i)} / \tau)}{\sum_{j \ne i} \exp(q_i^\top q_j / \tau)},
        \qquad L_{pd} = \frac{1}{2M} \sum_i \ell_i

    The two views must already be aligned (same geometry on the embedding grid): the
    estimator undoes the second view's flip / rot90 on its embedding map before the loss.

    Parameters
    ----------
    grid : int, default=8
        Patches per side (the reference pools to 8 x 8).
    temperature : float, default=0.1
        :math:`\tau` (reference value 0.1).

    Shapes
    ------
    - e1, e2: (N, D, H, W) pixel embeddings of the two views, ``H, W >= grid``.
    - output: scalar.

    Examples
    --------
    >>> import torch
    >>> e = torch.nn.functional.normalize(torch.randn(2, 8, 16, 16), dim=1)
    >>> loss = PatchDiscriminationLoss(grid=4)
    >>> bool(loss(e, e) < loss(e, e.flip(-1)))
    True
    """

    def __init__(self, grid: int = 8, temperature: float = 0.1):
        super().__init__()
        if not isinstance(grid, numbers.Integral) or isinstance(grid, bool) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}.")
        self.grid = int(grid)
        self.temperature = _positive(temperature, "temperature")

    def extra_repr(self) -> str:
        return f"grid={self.grid}, temperature={self.temperature}"

    def patches(self, e: torch.Tensor) -> torch.Tensor:
        """``(N, D, H, W) -> (N * grid * grid, D)`` normalised patch embeddings (row-major per image)."""
        q = F.adaptive_avg_pool2d(e, self.grid)
        return F.normalize(q.flatten(2).transpose(1, 2).reshape(-1, e.shape[1]), dim=1)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        _check_map(e1, "e1")
        _check_map(e2, "e2")
        if e1.shape != e2.shape:
            raise ValueError(f"e1 and e2 must have the same shape, got {tuple(e1.shape)} and {tuple(e2.shape)}.")
        if min(e1.shape[-2:]) < self.grid:
            raise ValueError(f"embedding maps of size {tuple(e1.shape[-2:])} are smaller than grid={self.grid}.")
        dtype = _dtype(e1)
        with torch.autocast(device_type=e1.device.type, enabled=False):
            q = torch.cat([self.patches(e1.to(dtype)), self.patches(e2.to(dtype))])
            m = q.shape[0] // 2
            logits = q @ q.T / self.temperature
            eye = torch.eye(2 * m, dtype=torch.bool, device=q.device)
            logits = logits.masked_fill(eye, torch.finfo(dtype).min)
            targets = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(q.device)
            return F.cross_entropy(logits, targets)


class MixupEmbeddingLoss(nn.Module):
    r"""Mixup consistency of pixel embeddings.

    For a mixed image :math:`x = w\,x_a + (1 - w)\,x_b` the target embedding is the
    detached, re-normalised mix :math:`t(p) = \mathrm{norm}(w\,e_a(p) + (1 - w)\,e_b(p))`, and

    .. math::

        L_{mix} = \frac{1}{N H W} \sum_{n, p} \left(1 - e_{mix,n}(p)^\top t_n(p)\right)

    i.e. half the squared distance between unit vectors. Gradients flow only through the
    embedding of the mixed image (the target is detached), as in the reference.

    Shapes
    ------
    - e_mix: (N, D, H, W) embeddings of the mixed images (unit norm along D).
    - e_a, e_b: (N, D, H, W) embeddings of the two source images.
    - weight: (N,) mixing weights ``w`` in [0, 1].
    - output: scalar.

    Examples
    --------
    >>> import torch
    >>> e = torch.nn.functional.normalize(torch.randn(2, 4, 3, 3), dim=1)
    >>> float(MixupEmbeddingLoss()(e, e, e, torch.rand(2))) < 1e-6
    True
    """

    def forward(self, e_mix, e_a, e_b, weight) -> torch.Tensor:
        for name, t in (("e_mix", e_mix), ("e_a", e_a), ("e_b", e_b)):
            _check_map(t, name)
        if not (e_mix.shape == e_a.shape == e_b.shape):
            raise ValueError(f"e_mix, e_a and e_b must have the same shape, got {tuple(e_mix.shape)}, "
                             f"{tuple(e_a.shape)}, {tuple(e_b.shape)}.")
        weight = torch.as_tensor(weight, device=e_mix.device)
        if weight.shape != (e_mix.shape[0],):
            raise ValueError(f"weight must have shape ({e_mix.shape[0]},), got {tuple(weight.shape)}.")
        dtype = _dtype(e_mix)
        with torch.autocast(device_type=e_mix.device.type, enabled=False):
            w = weight.to(dtype).view(-1, 1, 1, 1)
            target = F.normalize(w * e_a.detach().to(dtype) + (1 - w) * e_b.detach().to(dtype), dim=1)
            return (1 - (e_mix.to(dtype) * target).sum(1)).mean()


def region_embeddings(embeddings: torch.Tensor, assignments: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r"""Region embeddings :math:`r_{nk} = \mathrm{norm}(\mathrm{mean}_p\, a_{nk}(p)\, e_n(p))`.

    Parameters
    ----------
    embeddings : Tensor (N, D, H, W)
    assignments : Tensor (N, K, H, W)

    Returns
    -------
    Tensor (N, K, D), unit norm along D (a region with zero mass gives the zero vector).
    """
    r = torch.einsum("nkhw,ndhw->nkd", assignments, embeddings) / (embeddings.shape[-1] * embeddings.shape[-2])
    return F.normalize(r, dim=-1, eps=eps)


class RegionDiscriminationLoss(nn.Module):
    r"""Region discrimination: each image's region ``k`` close to the batch's centre ``k``.

    With region embeddings :math:`r_{nk}` (:func:`region_embeddings`) and the batch centres
    :math:`c_k = \mathrm{norm}(\frac{1}{N} \sum_n r_{nk})`,

    .. math::

        L_{ld} = -\frac{1}{N K} \sum_{n, k}
                 \log \frac{\exp(r_{nk}^\top c_k / \tau_r)}{\sum_{j=1}^K \exp(r_{nk}^\top c_j / \tau_r)}

    Pixels with similar embeddings are thereby gathered into the same region (the pooled
    embedding must match one centre only) and the same region of different images is made
    consistent (the centres are shared by the batch), while distinct regions are pushed apart.
    Gradients flow through both the region embeddings and the centres, into the embedding
    and the clustering branches. Uniform assignments give exactly :math:`\log K`.

    Parameters
    ----------
    temperature : float, default=0.2
        :math:`\tau_r` (reference value 0.2).

    Shapes
    ------
    - embeddings: (N, D, H, W) unit-norm pixel embeddings.
    - assignments: (N, K, H, W) soft assignments (non-negative, sum to 1 over K).
    - output: scalar.

    Examples
    --------
    >>> import torch
    >>> e = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4), dim=1)
    >>> a = torch.full((2, 3, 4, 4), 1 / 3)
    >>> round(float(RegionDiscriminationLoss()(e, a)), 4) == round(float(torch.log(torch.tensor(3.0))), 4)
    True
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = _positive(temperature, "temperature")

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, embeddings, assignments) -> torch.Tensor:
        _check_map(embeddings, "embeddings")
        _check_map(assignments, "assignments")
        if embeddings.shape[0] != assignments.shape[0] or embeddings.shape[-2:] != assignments.shape[-2:]:
            raise ValueError(f"embeddings {tuple(embeddings.shape)} and assignments {tuple(assignments.shape)} "
                             "must share N, H and W.")
        dtype = _dtype(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            r = region_embeddings(embeddings.to(dtype), assignments.to(dtype))  # (N, K, D)
            c = F.normalize(r.mean(0), dim=-1)  # (K, D)
            logits = r @ c.T / self.temperature  # (N, K, K)
            k = logits.shape[1]
            targets = torch.arange(k, device=logits.device).repeat(logits.shape[0])
            return F.cross_entropy(logits.reshape(-1, k), targets)


class AssignmentEntropyLoss(nn.Module):
    r"""Mean per-pixel entropy of the soft assignments, pushing them towards one-hot (0/1).

    .. math::

        L_{ent} = -\frac{1}{N H W} \sum_{n, p} \sum_k a_{nk}(p) \log a_{nk}(p)

    (with :math:`0 \log 0 = 0`). It is 0 for hard assignments and :math:`\log K` for uniform ones.

    Shapes
    ------
    - assignments: (N, K, H, W), non-negative, summing to 1 over K.
    - output: scalar.

    Examples
    --------
    >>> import torch
    >>> a = torch.zeros(1, 4, 2, 2); a[:, 0] = 1
    >>> float(AssignmentEntropyLoss()(a)) == 0.0
    True
    """

    def forward(self, assignments) -> torch.Tensor:
        _check_map(assignments, "assignments")
        dtype = _dtype(assignments)
        with torch.autocast(device_type=assignments.device.type, enabled=False):
            a = assignments.to(dtype)
            return -torch.xlogy(a, a).sum(1).mean()


class LocalDiscriminationLoss(nn.Module):
    r"""The LD objective: :math:`L_{pd} + w_{mix} L_{mix} + [\text{stage} = 2](w_{ld} L_{ld} + w_{ent} L_{ent})`.

    Stage 1 trains the embedding (patch discrimination and mixup); stage 2 adds region
    discrimination and the assignment entropy, which train the clustering branch and feed
    it back into the embedding. The estimator sets :attr:`stage`.

    Parameters
    ----------
    patch_grid : int, default=8
    temperature : float, default=0.1
        Patch-discrimination temperature.
    region_temperature : float, default=0.2
    ld_weight : float, default=10
    entropy_weight : float, default=0.1
    mixup_weight : float, default=1
        A weight of 0 skips that term.

    Shapes
    ------
    ``forward(out)`` takes the dict returned by
    :class:`dp_sklearn.nn.local_discrimination.LocalDiscriminationNet` in training:
    ``e1, e2`` (N, D, H, W) aligned view embeddings, ``a1, a2`` (N, K, H, W) aligned
    assignments, and optionally ``e_mix`` (N, D, H, W), ``mix_index`` (N,) (row of the
    second source image in view 1) and ``mix_weight`` (N,). Returns ``(total, terms)`` where
    ``terms`` maps ``pd_loss``, ``mixup_loss``, ``ld_loss``, ``entropy_loss`` to detached
    scalars (terms not computed are absent).

    Examples
    --------
    >>> import torch
    >>> n = lambda t: torch.nn.functional.normalize(t, dim=1)
    >>> out = {"e1": n(torch.randn(2, 4, 8, 8)), "e2": n(torch.randn(2, 4, 8, 8)),
    ...        "a1": torch.softmax(torch.randn(2, 3, 8, 8), 1), "a2": torch.softmax(torch.randn(2, 3, 8, 8), 1)}
    >>> loss = LocalDiscriminationLoss(patch_grid=4)
    >>> total, terms = loss(out); sorted(terms)
    ['pd_loss']
    >>> loss.stage = 2; sorted(loss(out)[1])
    ['entropy_loss', 'ld_loss', 'pd_loss']
    """

    def __init__(self, patch_grid: int = 8, temperature: float = 0.1, region_temperature: float = 0.2,
                 ld_weight: float = 10.0, entropy_weight: float = 0.1, mixup_weight: float = 1.0):
        super().__init__()
        self.patch = PatchDiscriminationLoss(patch_grid, temperature)
        self.mixup = MixupEmbeddingLoss()
        self.region = RegionDiscriminationLoss(region_temperature)
        self.entropy = AssignmentEntropyLoss()
        self.ld_weight = _non_negative(ld_weight, "ld_weight")
        self.entropy_weight = _non_negative(entropy_weight, "entropy_weight")
        self.mixup_weight = _non_negative(mixup_weight, "mixup_weight")
        self.stage = 1

    def extra_repr(self) -> str:
        return (f"stage={self.stage}, ld_weight={self.ld_weight}, entropy_weight={self.entropy_weight}, "
                f"mixup_weight={self.mixup_weight}")

    def forward(self, out: dict):
        e1, e2 = out["e1"].float(), out["e2"].float()
        pd = self.patch(e1, e2)
        total, terms = pd, {"pd_loss": pd.detach()}
        if self.mixup_weight > 0 and out.get("e_mix") is not None:
            index = out["mix_index"]
            mix = self.mixup(out["e_mix"].float(), e1, e1[index], out["mix_weight"])
            total = total + self.mixup_weight * mix
            terms["mixup_loss"] = mix.detach()
        if self.stage >= 2:
            e = torch.cat([e1, e2])
            a = torch.cat([out["a1"].float(), out["a2"].float()])
            if self.ld_weight > 0:
                ld = self.region(e, a)
                total = total + self.ld_weight * ld
                terms["ld_loss"] = ld.detach()
            if self.entropy_weight > 0:
                ent = self.entropy(a)
                total = total + self.entropy_weight * ent
                terms["entropy_loss"] = ent.detach()
        return total, terms
