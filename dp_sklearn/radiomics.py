"""Radiomic features of a region of a radiograph, computed batched in torch (CPU or GPU).

The features follow the definitions of PyRadiomics (van Griethuysen et al., Cancer Research 77(21),
2017; https://pyradiomics.readthedocs.io/en/latest/features.html) for 2-D regions. PyRadiomics itself
is not a dependency: its sdists do not build here (3.1.0's sdist lacks a C header and carries a
wrong version, 3.0.1 imports numpy in setup.py, so pip's isolated build fails), it runs one image at
a time on the CPU through SimpleITK, and the radiomics-contrastive classifier recomputes the
features of every training image each time its Grad-CAM regions are updated. Here one call computes
them for a whole batch of images and masks with tensor operations, on the images' device.

Features (:data:`FEATURE_NAMES`, 54 in this order; 9 + 18 + 22 + 5 of PyRadiomics' 102 2-D
features). ``X`` are the region's pixel values, ``N_p`` their number, ``i, j`` grey levels:

**shape2D (9)**, from marching squares on the mask (contour through the midpoints between region
and background pixel centres, a diagonal pair of corners counted as two separate corners; pixel
spacing 1):

- ``MeshSurface`` ``A``: area inside the contour (a single pixel: 0.5; an ``s x s`` square: ``s^2 - 0.5``);
- ``PixelSurface``: ``N_p``;
- ``Perimeter`` ``P``: contour length (a single pixel: ``2 sqrt 2``);
- ``PerimeterSurfaceRatio``: ``P / A``; ``Sphericity``: ``2 sqrt(pi A) / P``;
- ``MaximumDiameter``: largest distance between contour vertices, as the largest Feret
  diameter over 180 directions (1 degree steps, relative error < 4e-5);
- ``MajorAxisLength`` / ``MinorAxisLength``: ``4 sqrt(lambda_max)``, ``4 sqrt(lambda_min)`` of the
  (biased) covariance of the pixel-centre coordinates; ``Elongation``: ``sqrt(lambda_min / lambda_max)``.

**firstorder (18)**, over the raw values ``X`` (no shift; ``TotalEnergy`` = pixel area x
``Energy`` = ``Energy`` at spacing 1): ``Energy`` (sum X^2), ``TotalEnergy``, ``Entropy``
(-sum p log2(p + eps) of the grey-level histogram), ``Minimum``, ``10Percentile``,
``90Percentile``, ``Maximum``, ``Mean``, ``Median``, ``InterquartileRange``, ``Range``,
``MeanAbsoluteDeviation``, ``RobustMeanAbsoluteDeviation`` (over the values between the 10th and
90th percentiles), ``RootMeanSquared``, ``Skewness`` (m3 / m2^1.5, 0 for a flat region),
``Kurtosis`` (m4 / m2^2, not excess; 0 for a flat region), ``Variance`` (m2), ``Uniformity``
(sum p^2). Percentiles interpolate linearly (numpy's default).

**glcm (22)**: symmetric grey-level co-occurrence matrices at distance 1 in the 4 directions
(0, 45, 90, 135 degrees), pairs counted only inside the region, each normalised to sum 1; every
feature is computed per direction and averaged over the directions that have pairs (PyRadiomics'
default). ``Autocorrelation``, ``JointAverage``, ``ClusterProminence``, ``ClusterShade``,
``ClusterTendency``, ``Contrast``, ``Correlation`` (1 for a flat region), ``DifferenceAverage``,
``DifferenceEntropy``, ``DifferenceVariance``, ``JointEnergy``, ``JointEntropy``, ``Imc1``,
``Imc2``, ``Idm``, ``Idmn``, ``Id``, ``Idn``, ``InverseVariance``, ``MaximumProbability``,
``SumEntropy``, ``SumSquares``. ``Ng`` in ``Idmn``/``Idn`` is the number of grey levels present in the
region, as in PyRadiomics. Left out: ``MCC`` (needs eigenvalues of a non-symmetric matrix).

**ngtdm (5)**: neighbouring grey-tone difference matrix over the 8-neighbourhood inside the region
(pixels without a region neighbour are left out): ``Coarseness`` (1e6 when the sum is 0),
``Contrast``, ``Busyness``, ``Complexity``, ``Strength``.

Not implemented (GLDM 14, GLRLM 16, GLSZM 16 features, and MCC): run-length and size-zone matrices
need connected runs / zones per grey level, which do not batch well.

Grey levels: the values are discretised with a fixed bin count over a fixed intensity range
(``n_levels`` bins over ``intensity_range``, default 32 over [0, 1]), i.e. absolute bins, like
PyRadiomics' fixed ``binWidth`` (``binWidth = 1 / 32`` on [0, 1] images); levels are numbered
``1..n_levels``. The first-order histogram (``Entropy``, ``Uniformity``) uses the same bins.

Empty regions give NaN features; :func:`apply_minmax` maps NaN to 0 after min-max scaling, as
Han et al. do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "apply_minmax",
    "fit_minmax",
    "firstorder_features",
    "glcm_features",
    "glcm_matrices",
    "ngtdm_features",
    "quantize",
    "radiomic_features",
    "shape_features",
]

SHAPE_NAMES = ("MeshSurface", "PixelSurface", "Perimeter", "PerimeterSurfaceRatio", "Sphericity",
               "MaximumDiameter", "MajorAxisLength", "MinorAxisLength", "Elongation")
FIRSTORDER_NAMES = ("Energy", "TotalEnergy", "Entropy", "Minimum", "10Percentile", "90Percentile", "Maximum",
                    "Mean", "Median", "InterquartileRange", "Range", "MeanAbsoluteDeviation",
                    "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "Kurtosis", "Variance",
                    "Uniformity")
GLCM_NAMES = ("Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency",
              "Contrast", "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance",
              "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "Idmn", "Id", "Idn", "InverseVariance",
              "MaximumProbability", "SumEntropy", "SumSquares")
NGTDM_NAMES = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")

#: Feature groups in output order: (group, names).
FEATURE_GROUPS = (("shape2D", SHAPE_NAMES), ("firstorder", FIRSTORDER_NAMES), ("glcm", GLCM_NAMES),
                  ("ngtdm", NGTDM_NAMES))
#: ``"group_Name"`` for each of the 54 output columns.
FEATURE_NAMES = tuple(f"{g}_{n}" for g, names in FEATURE_GROUPS for n in names)

_EPS = 2.2e-16  # PyRadiomics' eps in the entropy logarithms
_TINY = torch.finfo(torch.float32).tiny  # guards divisions; representable in float32 and float64
_GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))  # (dy, dx): 0, 45, 90, 135 degrees


def _as_tensors(images, masks):
    as_numpy = not isinstance(images, torch.Tensor)
    x = torch.as_tensor(np.asarray(images)) if as_numpy else images
    m = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if x.ndim == 2:
        x, m = x[None], m[None] if m.ndim == 2 else m
    if x.ndim != 3 or tuple(m.shape) != tuple(x.shape):
        raise ValueError(f"images must be (N, H, W) and masks the same shape, got {tuple(x.shape)} and {tuple(m.shape)}.")
    # float64 inputs are computed in float64 (exact checks), anything else in float32 (speed).
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.to(dtype), (m.to(x.device) > 0.5 if m.is_floating_point() else m.to(x.device).bool()), as_numpy


def quantize(images, n_levels=32, intensity_range=(0.0, 1.0)):
    """Grey levels ``1..n_levels`` (int64) of fixed-width bins over ``intensity_range``.

    ``level = clip(floor((x - lo) / (hi - lo) * n_levels), 0, n_levels - 1) + 1``.

    Examples
    --------
    >>> import torch
    >>> quantize(torch.tensor([0.0, 0.24, 0.26, 1.0]), n_levels=4).tolist()
    [1, 1, 2, 4]
    """
    lo, hi = (float(v) for v in intensity_range)
    if not hi > lo:
        raise ValueError(f"intensity_range must be (low, high) with high > low, got {intensity_range!r}.")
    x = torch.as_tensor(images)
    q = torch.floor((x.double() - lo) / (hi - lo) * n_levels).clamp_(0, n_levels - 1)
    return q.long() + 1


def _masked_sorted_quantile(sorted_vals, counts, q):
    """Linear-interpolation quantile of the first ``counts[i]`` values of each sorted row."""
    pos = (counts - 1).clamp_min(0).to(sorted_vals.dtype) * q
    lo = pos.floor().long()
    hi = pos.ceil().long()
    v_lo = sorted_vals.gather(1, lo[:, None])[:, 0]
    v_hi = sorted_vals.gather(1, hi[:, None])[:, 0]
    out = v_lo + (v_hi - v_lo) * (pos - lo.to(pos.dtype))
    return torch.where(counts > 0, out, torch.full_like(out, float("nan")))


def firstorder_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0)):
    """The 18 first-order features ``(N, 18)`` of each region (see the module docstring)."""
    x, m, as_numpy = _as_tensors(images, masks)
    n = x.shape[0]
    v = x.flatten(1)
    mk = m.flatten(1)
    w = mk.to(x.dtype)
    cnt = w.sum(1)
    nan = torch.full_like(cnt, float("nan"))
    safe = cnt.clamp_min(1)
    mean = (v * w).sum(1) / safe
    d = (v - mean[:, None]) * w
    m2 = (d ** 2).sum(1) / safe
    m3 = (d ** 3).sum(1) / safe
    m4 = (d ** 4).sum(1) / safe
    energy = (v ** 2 * w).sum(1)
    sorted_vals = torch.where(mk, v, torch.full_like(v, float("inf"))).sort(1).values
    counts = cnt.long()
    pct = {q: _masked_sorted_quantile(sorted_vals, counts, q) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
    robust = mk & (v >= pct[0.1][:, None]) & (v <= pct[0.9][:, None])
    rw = robust.to(x.dtype)
    rmean = (v * rw).sum(1) / rw.sum(1).clamp_min(1)
    rmad = ((v - rmean[:, None]).abs() * rw).sum(1) / rw.sum(1).clamp_min(1)
    levels = quantize(v, n_levels, intensity_range) - 1
    hist = torch.zeros(n, n_levels, dtype=x.dtype, device=x.device).scatter_add_(1, levels, w)
    p = hist / safe[:, None]
    entropy = -(p * torch.log2(p + _EPS)).sum(1)
    flat = m2 <= 0
    feats = torch.stack([
        energy, energy, entropy, pct[0.0], pct[0.1], pct[0.9], pct[1.0], mean, pct[0.5],
        pct[0.75] - pct[0.25], pct[1.0] - pct[0.0], (d.abs()).sum(1) / safe, rmad, torch.sqrt(energy / safe),
        torch.where(flat, torch.zeros_like(m3), m3 / m2.clamp_min(_TINY) ** 1.5),
        torch.where(flat, torch.zeros_like(m4), m4 / m2.clamp_min(_TINY) ** 2), m2, (p ** 2).sum(1),
    ], 1)
    feats = torch.where((cnt > 0)[:, None], feats, nan[:, None].expand_as(feats))
    return feats.cpu().numpy() if as_numpy else feats


def glcm_matrices(levels, masks, n_levels, dtype=torch.float64):
    """Symmetric co-occurrence counts ``(N, 4, Ng, Ng)`` at distance 1 in 4 directions.

    ``levels``: int64 ``(N, H, W)`` in ``1..n_levels``; only pairs with both pixels in the mask
    count. Entry ``[:, a, i-1, j-1]`` is the number of (ordered, both orders) pairs with levels
    ``(i, j)`` in direction ``a`` (0, 45, 90, 135 degrees as ``(dy, dx)`` = (0,1), (1,1), (1,0), (1,-1)).
    """
    n, h, w = levels.shape
    out = torch.zeros(n, len(_GLCM_OFFSETS), n_levels * n_levels, dtype=dtype, device=levels.device)
    for a, (dy, dx) in enumerate(_GLCM_OFFSETS):
        y0, y1 = 0, h - dy
        x0, x1 = max(0, -dx), w - max(0, dx)
        l1 = levels[:, y0:y1, x0:x1]
        l2 = levels[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
        valid = (masks[:, y0:y1, x0:x1] & masks[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]).flatten(1).to(out.dtype)
        i1, i2 = (l1 - 1).flatten(1), (l2 - 1).flatten(1)
        out[:, a].scatter_add_(1, i1 * n_levels + i2, valid)
        out[:, a].scatter_add_(1, i2 * n_levels + i1, valid)
    return out.view(n, len(_GLCM_OFFSETS), n_levels, n_levels)


def _entropy(p, dims):
    return -(p * torch.log2(p + _EPS)).sum(dims)


def glcm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0)):
    """The 22 GLCM features ``(N, 22)`` (see the module docstring), averaged over 4 directions."""
    x, m, as_numpy = _as_tensors(images, masks)
    levels = quantize(x, n_levels, intensity_range)
    counts = glcm_matrices(levels, m, n_levels, x.dtype)  # (N, A, Ng, Ng)
    dtype = counts.dtype
    total = counts.sum((2, 3), keepdim=True)
    p = counts / total.clamp_min(1)
    has = total[..., 0, 0] > 0  # (N, A)
    g = torch.arange(1, n_levels + 1, dtype=dtype, device=x.device)
    i, j = g[:, None], g[None, :]
    px, py = p.sum(3), p.sum(2)  # (N, A, Ng)
    ux = (px * g).sum(-1)
    uy = (py * g).sum(-1)
    sx = torch.sqrt(((g - ux[..., None]) ** 2 * px).sum(-1))
    sy = torch.sqrt(((g - uy[..., None]) ** 2 * py).sum(-1))
    # Grey levels present in the region (PyRadiomics' Ng after removing empty levels).
    present = torch.zeros(x.shape[0], n_levels, dtype=dtype, device=x.device).scatter_add_(
        1, (levels - 1).flatten(1), m.flatten(1).to(dtype))
    ng = (present > 0).sum(1).to(dtype)[:, None].clamp_min(1)  # (N, 1)
    diff = (i - j).abs()
    k_diff = torch.arange(n_levels, device=x.device)
    k_sum = torch.arange(2, 2 * n_levels + 1, device=x.device)
    p_flat = p.flatten(2)
    pxmy = torch.zeros(*p.shape[:2], n_levels, dtype=dtype, device=x.device).scatter_add_(
        2, diff.long().flatten().expand(*p.shape[:2], -1), p_flat)
    pxpy = torch.zeros(*p.shape[:2], 2 * n_levels - 1, dtype=dtype, device=x.device).scatter_add_(
        2, (i + j - 2).long().flatten().expand(*p.shape[:2], -1), p_flat)
    del k_sum
    kd = k_diff.to(dtype)
    shift = i + j - (ux + uy)[..., None, None]
    hxy = _entropy(p, (2, 3))
    hx, hy = _entropy(px, 2), _entropy(py, 2)
    pxy_prod = px[..., :, None] * py[..., None, :]
    hxy1 = -(p * torch.log2(pxy_prod + _EPS)).sum((2, 3))
    hxy2 = -(pxy_prod * torch.log2(pxy_prod + _EPS)).sum((2, 3))
    hmax = torch.maximum(hx, hy)
    imc1 = torch.where(hmax > 0, (hxy - hxy1) / hmax.clamp_min(_TINY), torch.zeros_like(hmax))
    imc2 = torch.sqrt((1 - torch.exp(-2 * (hxy2 - hxy))).clamp_min(0))
    da = (pxmy * kd).sum(-1)
    sxsy = sx * sy
    corr = torch.where(sxsy > 0, ((p * i * j).sum((2, 3)) - ux * uy) / sxsy.clamp_min(_TINY), torch.ones_like(sxsy))
    inv_var = (pxmy[..., 1:] / kd[1:] ** 2).sum(-1)
    ngd = ng[:, :, None, None]
    feats = torch.stack([
        (p * i * j).sum((2, 3)),                         # Autocorrelation
        ux,                                              # JointAverage
        (p * shift ** 4).sum((2, 3)),                    # ClusterProminence
        (p * shift ** 3).sum((2, 3)),                    # ClusterShade
        (p * shift ** 2).sum((2, 3)),                    # ClusterTendency
        (p * (i - j) ** 2).sum((2, 3)),                  # Contrast
        corr,                                            # Correlation
        da,                                              # DifferenceAverage
        _entropy(pxmy, 2),                               # DifferenceEntropy
        (pxmy * (kd - da[..., None]) ** 2).sum(-1),      # DifferenceVariance
        (p ** 2).sum((2, 3)),                            # JointEnergy
        hxy,                                             # JointEntropy
        imc1,                                            # Imc1
        imc2,                                            # Imc2
        (p / (1 + (i - j) ** 2)).sum((2, 3)),            # Idm
        (p / (1 + (i - j) ** 2 / ngd ** 2)).sum((2, 3)),  # Idmn
        (p / (1 + diff)).sum((2, 3)),                    # Id
        (p / (1 + diff / ngd)).sum((2, 3)),              # Idn
        inv_var,                                         # InverseVariance
        p.flatten(2).max(-1).values,                     # MaximumProbability
        _entropy(pxpy, 2),                               # SumEntropy
        (p * (i - ux[..., None, None]) ** 2).sum((2, 3)),  # SumSquares
    ], -1)  # (N, A, 22)
    w = has.to(dtype)[..., None]
    n_dir = w.sum(1)
    out = (feats * w).sum(1) / n_dir.clamp_min(1)
    out = torch.where(n_dir > 0, out, torch.full_like(out, float("nan")))
    return out.cpu().numpy() if as_numpy else out


def ngtdm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0)):
    """The 5 NGTDM features ``(N, 5)`` over the 8-neighbourhood inside the region."""
    x, m, as_numpy = _as_tensors(images, masks)
    dtype = x.dtype
    lv = quantize(x, n_levels, intensity_range).to(dtype)
    w = m.to(dtype)
    kernel = torch.ones(1, 1, 3, 3, dtype=dtype, device=x.device)
    kernel[0, 0, 1, 1] = 0
    nb_sum = F.conv2d((lv * w)[:, None], kernel, padding=1)[:, 0]
    nb_cnt = F.conv2d(w[:, None], kernel, padding=1)[:, 0]
    valid = m & (nb_cnt > 0)
    vw = valid.to(dtype).flatten(1)
    avg = nb_sum / nb_cnt.clamp_min(1)
    dev = (lv - avg).abs().flatten(1) * vw
    idx = (lv.long() - 1).flatten(1)
    n = x.shape[0]
    n_i = torch.zeros(n, n_levels, dtype=dtype, device=x.device).scatter_add_(1, idx, vw)
    s_i = torch.zeros(n, n_levels, dtype=dtype, device=x.device).scatter_add_(1, idx, dev)
    nvp = n_i.sum(1)
    p = n_i / nvp.clamp_min(1)[:, None]
    nz = p > 0
    ngp = nz.sum(1).to(dtype)
    g = torch.arange(1, n_levels + 1, dtype=dtype, device=x.device)
    ps = (p * s_i).sum(1)
    pair = (nz[:, :, None] & nz[:, None, :]).to(dtype)
    gi, gj = g[:, None], g[None, :]
    pi, pj = p[:, :, None], p[:, None, :]
    s_sum = s_i.sum(1)
    coarse = torch.where(ps > 0, 1 / ps.clamp_min(_TINY), torch.full_like(ps, 1e6))
    contrast = torch.where(
        ngp > 1,
        (pi * pj * (gi - gj) ** 2 * pair).sum((1, 2)) / (ngp * (ngp - 1)).clamp_min(1) * s_sum / nvp.clamp_min(1),
        torch.zeros_like(ngp))
    busy_den = ((gi * pi - gj * pj).abs() * pair).sum((1, 2))
    busy = torch.where(busy_den > 0, ps / busy_den.clamp_min(_TINY), torch.zeros_like(ps))
    si, sj = s_i[:, :, None], s_i[:, None, :]
    complexity = ((gi - gj).abs() * (pi * si + pj * sj) / (pi + pj).clamp_min(_TINY) * pair).sum((1, 2)) \
        / nvp.clamp_min(1)
    strength = torch.where(s_sum > 0, ((pi + pj) * (gi - gj) ** 2 * pair).sum((1, 2)) / s_sum.clamp_min(_TINY),
                           torch.zeros_like(s_sum))
    out = torch.stack([coarse, contrast, busy, complexity, strength], 1)
    out = torch.where((nvp > 0)[:, None], out, torch.full_like(out, float("nan")))
    return out.cpu().numpy() if as_numpy else out


# Marching squares per 2x2 cell, code = a + 2b + 4c + 8d (a top-left, b top-right, c bottom-left,
# d bottom-right): enclosed area and contour length. Diagonal pairs (codes 6, 9) are two corners.
_R = math.sqrt(0.5)
_MS_AREA = (0, 1 / 8, 1 / 8, 1 / 2, 1 / 8, 1 / 2, 1 / 4, 7 / 8, 1 / 8, 1 / 4, 1 / 2, 7 / 8, 1 / 2, 7 / 8, 7 / 8, 1)
_MS_PERIM = (0, _R, _R, 1, _R, 1, 2 * _R, _R, _R, 2 * _R, 1, _R, 1, _R, _R, 0)


def shape_features(masks, n_directions=180, dtype=torch.float64):
    """The 9 shape2D features ``(N, 9)`` of each mask (see the module docstring), in ``dtype``."""
    m = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    as_numpy = not isinstance(masks, torch.Tensor)
    if m.ndim == 2:
        m = m[None]
    m = (m > 0.5) if m.is_floating_point() else m.bool()
    n, h, w = m.shape
    pad = F.pad(m.to(torch.uint8), (1, 1, 1, 1))
    code = (pad[:, :-1, :-1] + 2 * pad[:, :-1, 1:] + 4 * pad[:, 1:, :-1] + 8 * pad[:, 1:, 1:]).long()
    area_t = torch.tensor(_MS_AREA, dtype=dtype, device=m.device)
    perim_t = torch.tensor(_MS_PERIM, dtype=dtype, device=m.device)
    area = area_t[code].sum((1, 2))
    perim = perim_t[code].sum((1, 2))
    wts = m.flatten(1).to(dtype)
    npix = wts.sum(1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=m.device),
                            torch.arange(w, dtype=dtype, device=m.device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    safe = npix.clamp_min(1)
    my, mx = (wts * ys).sum(1) / safe, (wts * xs).sum(1) / safe
    cyy = (wts * (ys - my[:, None]) ** 2).sum(1) / safe
    cxx = (wts * (xs - mx[:, None]) ** 2).sum(1) / safe
    cxy = (wts * (ys - my[:, None]) * (xs - mx[:, None])).sum(1) / safe
    tr, det = cxx + cyy, cxx * cyy - cxy ** 2
    disc = torch.sqrt(((tr / 2) ** 2 - det).clamp_min(0))
    lmax, lmin = (tr / 2 + disc).clamp_min(0), (tr / 2 - disc).clamp_min(0)
    # Contour vertices: midpoints between 4-adjacent region / background pixel centres (padded
    # grid). A Feret diameter is attained at convex-hull vertices, which are among the leftmost
    # and rightmost vertices of each vertex row, so only those (2 per row) are projected.
    pb = pad.bool()
    hor = pb[:, :, :-1] ^ pb[:, :, 1:]  # (N, H+2, W+1): vertex at (row r - 1, col c - 0.5)
    ver = pb[:, :-1, :] ^ pb[:, 1:, :]  # (N, H+1, W+2): vertex at (row r - 0.5, col c - 1)

    def row_extremes(on, y_off, x_off):
        cols = torch.arange(on.shape[2], device=m.device)
        first = torch.where(on, cols, on.shape[2]).amin(2)
        last = torch.where(on, cols, -1).amax(2)
        rows = torch.arange(on.shape[1], dtype=dtype, device=m.device)[None].expand(on.shape[0], -1) + y_off
        ok = on.any(2)
        pts = torch.stack([torch.cat([rows, rows], 1),
                           torch.cat([first, last], 1).to(dtype) + x_off], -1)  # (N, 2R, 2)
        return pts, torch.cat([ok, ok], 1)

    p1, o1 = row_extremes(hor, -1.0, -0.5)
    p2, o2 = row_extremes(ver, -0.5, -1.0)
    pts, on = torch.cat([p1, p2], 1), torch.cat([o1, o2], 1)
    theta = torch.arange(n_directions, dtype=dtype, device=m.device) * (math.pi / n_directions)
    dirs = torch.stack([torch.sin(theta), torch.cos(theta)])  # (2, D)
    diam = torch.zeros(n, dtype=dtype, device=m.device)
    chunk = max(1, int(2e7 // max(1, pts.shape[1] * n_directions)))
    for s in range(0, n, chunk):
        proj = pts[s:s + chunk] @ dirs  # (n, P, D)
        o = on[s:s + chunk, :, None]
        hi = torch.where(o, proj, -float("inf")).amax(1)
        lo = torch.where(o, proj, float("inf")).amin(1)
        diam[s:s + chunk] = (hi - lo).amax(1).clamp_min(0).nan_to_num(0.0)
    pos_area = area > 0
    feats = torch.stack([
        area, npix, perim,
        torch.where(pos_area, perim / area.clamp_min(_TINY), torch.full_like(area, float("nan"))),
        torch.where(perim > 0, 2 * torch.sqrt(math.pi * area) / perim.clamp_min(_TINY), torch.full_like(area, float("nan"))),
        diam, 4 * torch.sqrt(lmax), 4 * torch.sqrt(lmin),
        torch.where(lmax > 0, torch.sqrt(lmin / lmax.clamp_min(_TINY)), torch.full_like(lmax, float("nan"))),
    ], 1)
    feats = torch.where((npix > 0)[:, None], feats, torch.full_like(feats, float("nan")))
    return feats.cpu().numpy() if as_numpy else feats


def radiomic_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), chunk_size=256):
    """All 54 radiomic features ``(N, 54)`` of each image's masked region, in :data:`FEATURE_NAMES` order.

    Parameters
    ----------
    images : Tensor or array (N, H, W) or (N, 1, H, W)
        Intensities (dp_sklearn's images are in [0, 1]).
    masks : Tensor or array, same shape, bool or {0, 1}
        The region of each image; an empty mask gives a row of NaN.
    n_levels : int, default=32
        Grey levels of the fixed-bin discretisation (GLCM, NGTDM, entropy, uniformity).
    intensity_range : (float, float), default=(0, 1)
        Range the bins cover; values outside go to the first / last bin.
    chunk_size : int, default=256
        Images per internal chunk (bounds memory).

    Returns
    -------
    Tensor when ``images`` is a tensor, else ndarray; float64 for float64 images, else float32.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.RandomState(0).rand(2, 16, 16)
    >>> mask = np.zeros((2, 16, 16), bool); mask[:, 4:12, 4:12] = True
    >>> feats = radiomic_features(img, mask)
    >>> feats.shape, float(feats[0, FEATURE_NAMES.index("shape2D_PixelSurface")])
    ((2, 54), 64.0)
    """
    if not isinstance(n_levels, (int, np.integer)) or n_levels < 2:
        raise ValueError(f"n_levels must be an int >= 2, got {n_levels!r}.")
    x, m, as_numpy = _as_tensors(images, masks)
    parts = []
    for s in range(0, len(x), chunk_size):
        xs, ms = x[s:s + chunk_size], m[s:s + chunk_size]
        parts.append(torch.cat([
            shape_features(ms, dtype=xs.dtype),
            firstorder_features(xs, ms, n_levels, intensity_range),
            glcm_features(xs, ms, n_levels, intensity_range),
            ngtdm_features(xs, ms, n_levels, intensity_range),
        ], 1))
    out = torch.cat(parts) if parts else x.new_zeros((0, len(FEATURE_NAMES)))
    return out.cpu().numpy() if as_numpy else out


def fit_minmax(features):
    """Per-feature ``(min, max)`` over the rows, ignoring NaN (all-NaN columns give 0, 0)."""
    f = torch.as_tensor(features)
    finite = torch.isfinite(f)
    lo = torch.where(finite, f, torch.full_like(f, float("inf"))).amin(0)
    hi = torch.where(finite, f, torch.full_like(f, -float("inf"))).amax(0)
    ok = torch.isfinite(lo) & torch.isfinite(hi)
    return torch.where(ok, lo, torch.zeros_like(lo)), torch.where(ok, hi, torch.zeros_like(hi))


def apply_minmax(features, lo, hi, clip=True):
    """Min-max scale to [0, 1] with a fitted ``(lo, hi)``; NaN/inf -> 0; constant columns -> 0."""
    f = torch.as_tensor(features)
    lo, hi = torch.as_tensor(lo, dtype=f.dtype, device=f.device), torch.as_tensor(hi, dtype=f.dtype, device=f.device)
    span = hi - lo
    out = torch.where(span > 0, (f - lo) / span.clamp_min(_TINY), torch.zeros_like(f))
    if clip:
        out = out.clamp(0, 1)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
