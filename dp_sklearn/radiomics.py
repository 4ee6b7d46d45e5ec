"""Radiomic features of a region of a radiograph, computed batched in torch (CPU or GPU).

All 102 two-dimensional features of PyRadiomics (van Griethuysen et al., Cancer Research 77(21),
2017; https://pyradiomics.readthedocs.io/en/latest/features.html) with its default settings
(``force2D``, a fixed ``binWidth``, distance 1, symmetric GLCM averaged over the directions,
``gldm_a = 0``, pixel spacing 1). PyRadiomics runs one image at a time on the CPU through
SimpleITK; here one call computes the features of a whole batch of images and masks with tensor
operations on the images' device, which the radiomics-contrastive classifier needs because it
recomputes the features of every training image whenever its Grad-CAM regions change.
``tests/test_radiomics_pyradiomics.py`` checks every feature against PyRadiomics itself
(``pyradiomics-bhklab``) on the masked cxr1k radiographs; ``docs/radiomics.md`` lists the
agreement per feature.

Features (:data:`FEATURE_NAMES`, 102, grouped as in :data:`FEATURE_GROUPS`): shape2D (9),
firstorder (18), glcm (24), glrlm (16), glszm (16), gldm (14), ngtdm (5). The definitions are
PyRadiomics'; the points where an implementation has a choice are:

Grey levels (every texture class, and the first-order ``Entropy`` / ``Uniformity``)
    Fixed-width bins of width ``w`` (``bin_width``, default ``(high - low) / n_levels`` of
    ``intensity_range``, i.e. 1/32 on [0, 1]) on a grid anchored at ``low`` (0 by default, as in
    PyRadiomics). A region's levels are numbered from the bin of its own minimum:
    ``level = floor(x / w) - floor(min / w) + 1`` evaluated exactly as PyRadiomics' ``numpy.digitize``
    over the edges ``numpy.arange(min - min % w, max + 2 w, w)`` does, so a value on an edge
    (the maximum 1.0 included) opens the next bin. ``Ng`` is the highest level present.
shape2D
    Marching squares on the mask (contour through the midpoints between region and background pixel
    centres, diagonal corners separate); ``MaximumDiameter`` is the largest distance between contour
    vertices, exact: over the leftmost and rightmost vertices of each vertex row (they contain the
    convex hull), of which only those near an extreme projection in one of 36 directions can be
    endpoints; axis lengths from the biased covariance of the pixel centres.
GLCM / GLRLM
    4 directions (0, 45, 90, 135 degrees), features averaged over the directions that have pairs
    (GLCM) or runs (GLRLM); a GLRLM direction along which no line holds two region pixels is
    dropped, as PyRadiomics does. ``MCC`` is the square root of the second largest eigenvalue of
    ``Q(i, j) = sum_k p(i, k) p(j, k) / (p_x(i) p_y(k))``, computed from the symmetric matrix
    ``D^-1/2 P D^-1/2`` (whose squared eigenvalues are Q's) with ``eigvalsh``; 1 for a region with
    one grey level.
GLSZM / GLDM / NGTDM
    8-connected zones; dependence and neighbourhood over the 8 neighbours inside the region. In the
    NGTDM a pixel without a region neighbour counts in ``n_i`` with a difference of 0.

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
    "discretize",
    "firstorder_features",
    "fit_minmax",
    "glcm_features",
    "glcm_matrices",
    "gldm_features",
    "glrlm_features",
    "glszm_features",
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
              "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "MCC", "Idmn", "Id", "Idn", "InverseVariance",
              "MaximumProbability", "SumAverage", "SumEntropy", "SumSquares")
GLRLM_NAMES = ("ShortRunEmphasis", "LongRunEmphasis", "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized",
               "RunLengthNonUniformity", "RunLengthNonUniformityNormalized", "RunPercentage", "GrayLevelVariance",
               "RunVariance", "RunEntropy", "LowGrayLevelRunEmphasis", "HighGrayLevelRunEmphasis",
               "ShortRunLowGrayLevelEmphasis", "ShortRunHighGrayLevelEmphasis", "LongRunLowGrayLevelEmphasis",
               "LongRunHighGrayLevelEmphasis")
GLSZM_NAMES = ("SmallAreaEmphasis", "LargeAreaEmphasis", "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized",
               "SizeZoneNonUniformity", "SizeZoneNonUniformityNormalized", "ZonePercentage", "GrayLevelVariance",
               "ZoneVariance", "ZoneEntropy", "LowGrayLevelZoneEmphasis", "HighGrayLevelZoneEmphasis",
               "SmallAreaLowGrayLevelEmphasis", "SmallAreaHighGrayLevelEmphasis", "LargeAreaLowGrayLevelEmphasis",
               "LargeAreaHighGrayLevelEmphasis")
GLDM_NAMES = ("SmallDependenceEmphasis", "LargeDependenceEmphasis", "GrayLevelNonUniformity",
              "DependenceNonUniformity", "DependenceNonUniformityNormalized", "GrayLevelVariance",
              "DependenceVariance", "DependenceEntropy", "LowGrayLevelEmphasis", "HighGrayLevelEmphasis",
              "SmallDependenceLowGrayLevelEmphasis", "SmallDependenceHighGrayLevelEmphasis",
              "LargeDependenceLowGrayLevelEmphasis", "LargeDependenceHighGrayLevelEmphasis")
NGTDM_NAMES = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")

#: Feature groups in output order: (group, names), PyRadiomics' class names.
FEATURE_GROUPS = (("shape2D", SHAPE_NAMES), ("firstorder", FIRSTORDER_NAMES), ("glcm", GLCM_NAMES),
                  ("glrlm", GLRLM_NAMES), ("glszm", GLSZM_NAMES), ("gldm", GLDM_NAMES), ("ngtdm", NGTDM_NAMES))
#: ``"group_Name"`` for each of the 102 output columns (PyRadiomics' ``original_<group>_<Name>`` keys
#: without the ``original_`` prefix).
FEATURE_NAMES = tuple(f"{g}_{n}" for g, names in FEATURE_GROUPS for n in names)

_EPS = float(np.spacing(1))  # PyRadiomics' eps in the entropy logarithms (2.2e-16)
_TINY = torch.finfo(torch.float32).tiny  # guards divisions; representable in float32 and float64
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))  # (dy, dx): 0, 45, 90, 135 degrees
_GLCM_OFFSETS = _DIRECTIONS
_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


# ------------------------------------------------------------------------------------ inputs
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
    m = m.to(x.device) > 0.5 if m.is_floating_point() else m.to(x.device).bool()
    x = x.to(dtype)
    if not bool(torch.isfinite(x[m]).all()):
        raise ValueError("images hold NaN or infinite values inside the masks.")
    return x, m, as_numpy


def _bin_width(n_levels, intensity_range, bin_width):
    lo, hi = (float(v) for v in intensity_range)
    if not hi > lo:
        raise ValueError(f"intensity_range must be (low, high) with high > low, got {intensity_range!r}.")
    if bin_width is None:
        if not isinstance(n_levels, (int, np.integer)) or isinstance(n_levels, bool) or n_levels < 1:
            raise ValueError(f"n_levels must be an int >= 1, got {n_levels!r}.")
        return lo, (hi - lo) / int(n_levels)
    w = float(bin_width)
    if not (w > 0 and math.isfinite(w)):
        raise ValueError(f"bin_width must be a positive finite number, got {bin_width!r}.")
    return lo, w


def quantize(images, n_levels=32, intensity_range=(0.0, 1.0)):
    """Absolute grey levels ``1..n_levels`` (int64) of fixed-width bins over ``intensity_range``.

    ``level = clip(floor((x - lo) / (hi - lo) * n_levels), 0, n_levels - 1) + 1``. This is the
    discretisation of dp_sklearn before 0.2; the features use :func:`discretize` (PyRadiomics').

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


def _pymod(a, b):
    """Python's float ``a % b`` (exact, sign of ``b``) on tensors."""
    r = torch.fmod(a, b)
    return torch.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


def _discretize(x, m, lo, w):
    """PyRadiomics' fixed-bin-width levels of ``x`` (float64 math) inside ``m``; 0 outside; and ``Ng``."""
    v = x.double()
    if lo != 0.0:
        v = v - lo
    inf = torch.tensor(float("inf"), dtype=v.dtype, device=v.device)
    mn = torch.where(m, v, inf).flatten(1).amin(1)
    has = m.flatten(1).any(1)
    mn = torch.where(has, mn, torch.zeros_like(mn))
    wt = torch.tensor(w, dtype=v.dtype, device=v.device)
    low = mn - _pymod(mn, wt)
    # numpy.arange(low, high, w) fills edge k as low + k * delta with delta = (low + w) - low.
    delta = ((low + wt) - low)[:, None, None]
    low3 = low[:, None, None]
    k = torch.floor((v - low3) / delta).clamp_min(0)
    k = torch.where(v < low3 + k * delta, k - 1, k)
    k = torch.where(v >= low3 + (k + 1) * delta, k + 1, k)
    levels = torch.where(m, k.long() + 1, torch.zeros_like(k, dtype=torch.long))
    ng = levels.flatten(1).amax(1)
    return levels, ng


def discretize(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """PyRadiomics' grey levels of each region: ``(levels, Ng)``.

    Parameters
    ----------
    images, masks : array or Tensor (N, H, W)
        Intensities and regions (bool or {0, 1}).
    n_levels : int, default=32
        Bins across ``intensity_range`` (sets the bin width when ``bin_width`` is None).
    intensity_range : (float, float), default=(0, 1)
        ``low`` anchors the bin grid; ``(high - low) / n_levels`` is the default bin width.
    bin_width : float, optional
        PyRadiomics' ``binWidth``; overrides ``n_levels``.

    Returns
    -------
    levels : int64 Tensor (N, H, W)
        ``1..Ng`` inside the region, numbered from the bin of the region's minimum; 0 outside.
    ng : int64 Tensor (N,)
        Highest level present (0 for an empty region).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.array([[[0.30, 0.40, 1.0]]]); mask = np.ones((1, 1, 3), bool)
    >>> levels, ng = discretize(img, mask, bin_width=0.25)
    >>> levels.tolist(), ng.tolist()   # bins [0.25, 0.5) -> 1, [1.0, 1.25) -> 4
    ([[[1, 1, 4]]], [4])
    """
    lo, w = _bin_width(n_levels, intensity_range, bin_width)
    x, m, _ = _as_tensors(images, masks)
    return _discretize(x, m, lo, w)


def _levels_of(images, masks, n_levels, intensity_range, bin_width):
    lo, w = _bin_width(n_levels, intensity_range, bin_width)
    x, m, as_numpy = _as_tensors(images, masks)
    levels, ng = _discretize(x, m, lo, w)
    return x, m, levels, ng, as_numpy


def _out(t, as_numpy):
    return t.cpu().numpy() if as_numpy else t


# ------------------------------------------------------------------------------- first order
def _masked_sorted_quantile(sorted_vals, counts, q):
    """Linear-interpolation quantile of the first ``counts[i]`` values of each sorted row."""
    pos = (counts - 1).clamp_min(0).to(sorted_vals.dtype) * q
    lo = pos.floor().long()
    hi = pos.ceil().long()
    v_lo = sorted_vals.gather(1, lo[:, None])[:, 0]
    v_hi = sorted_vals.gather(1, hi[:, None])[:, 0]
    out = v_lo + (v_hi - v_lo) * (pos - lo.to(pos.dtype))
    return torch.where(counts > 0, out, torch.full_like(out, float("nan")))


def _firstorder(x, m, levels, g_max):
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
    hist = torch.zeros(n, g_max + 1, dtype=x.dtype, device=x.device).scatter_add_(1, levels.flatten(1), w)[:, 1:]
    p = hist / safe[:, None]
    entropy = -(p * torch.log2(p + _EPS)).sum(1)
    flat = m2 <= 0
    feats = torch.stack([
        energy, energy, entropy, pct[0.0], pct[0.1], pct[0.9], pct[1.0], mean, pct[0.5],
        pct[0.75] - pct[0.25], pct[1.0] - pct[0.0], (d.abs()).sum(1) / safe, rmad, torch.sqrt(energy / safe),
        torch.where(flat, torch.zeros_like(m3), m3 / m2.clamp_min(_TINY) ** 1.5),
        torch.where(flat, torch.zeros_like(m4), m4 / m2.clamp_min(_TINY) ** 2), m2, (p ** 2).sum(1),
    ], 1)
    return torch.where((cnt > 0)[:, None], feats, nan[:, None].expand_as(feats))


def firstorder_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """The 18 first-order features ``(N, 18)`` of each region, in ``FIRSTORDER_NAMES`` order.

    Over the raw values (no shift; ``TotalEnergy`` = ``Energy`` at pixel spacing 1); ``Entropy``
    and ``Uniformity`` over the histogram of :func:`discretize`'s levels; percentiles interpolate
    linearly; ``Kurtosis`` is not excess; ``Skewness`` and ``Kurtosis`` are 0 for a flat region.
    Parameters as in :func:`radiomic_features`.
    """
    x, m, levels, ng, as_numpy = _levels_of(images, masks, n_levels, intensity_range, bin_width)
    return _out(_firstorder(x, m, levels, int(ng.max()) if ng.numel() else 1), as_numpy)


# -------------------------------------------------------------------------------------- GLCM
def glcm_matrices(levels, masks, n_levels, dtype=torch.float64):
    """Symmetric co-occurrence counts ``(N, 4, Ng, Ng)`` at distance 1 in 4 directions.

    ``levels``: int64 ``(N, H, W)`` in ``1..n_levels`` inside the mask; only pairs with both pixels in
    the mask count. Entry ``[:, a, i-1, j-1]`` is the number of (ordered, both orders) pairs with
    levels ``(i, j)`` in direction ``a`` (0, 45, 90, 135 degrees as ``(dy, dx)`` = (0,1), (1,1),
    (1,0), (1,-1)).
    """
    n, h, w = levels.shape
    out = torch.zeros(n, len(_GLCM_OFFSETS), n_levels * n_levels, dtype=dtype, device=levels.device)
    for a, (dy, dx) in enumerate(_GLCM_OFFSETS):
        y0, y1 = 0, h - dy
        x0, x1 = max(0, -dx), w - max(0, dx)
        l1 = levels[:, y0:y1, x0:x1]
        l2 = levels[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
        valid = (masks[:, y0:y1, x0:x1] & masks[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]).flatten(1)
        i1 = (l1 - 1).clamp(0, n_levels - 1).flatten(1)
        i2 = (l2 - 1).clamp(0, n_levels - 1).flatten(1)
        vw = valid.to(out.dtype)
        out[:, a].scatter_add_(1, i1 * n_levels + i2, vw)
        out[:, a].scatter_add_(1, i2 * n_levels + i1, vw)
    return out.view(n, len(_GLCM_OFFSETS), n_levels, n_levels)


def _entropy(p, dims):
    return -(p * torch.log2(p + _EPS)).sum(dims)


def _mcc(p, px):
    """Maximal correlation coefficient per (image, direction) of symmetric normalised GLCMs ``p``."""
    if p.shape[-1] < 2:  # one grey level everywhere: PyRadiomics' flat-region value
        return torch.ones(p.shape[:-2], dtype=p.dtype, device=p.device)
    inv = torch.where(px > 0, px.clamp_min(_TINY).rsqrt(), torch.zeros_like(px))
    s = inv[..., :, None] * p * inv[..., None, :]
    s = (s + s.transpose(-1, -2)) / 2
    lam2 = (torch.linalg.eigvalsh(s) ** 2).sort(-1).values
    return lam2[..., -2].clamp_min(0).sqrt()


def _glcm(levels, m, ng, g_max, dtype):
    counts = glcm_matrices(levels, m, g_max, dtype)  # (N, A, G, G)
    total = counts.sum((2, 3), keepdim=True)
    p = counts / total.clamp_min(1)
    has = total[..., 0, 0] > 0  # (N, A)
    dev = levels.device
    g = torch.arange(1, g_max + 1, dtype=dtype, device=dev)
    i, j = g[:, None], g[None, :]
    px, py = p.sum(3), p.sum(2)  # (N, A, G)
    ux = (px * g).sum(-1)
    uy = (py * g).sum(-1)
    sx = torch.sqrt(((g - ux[..., None]) ** 2 * px).sum(-1))
    sy = torch.sqrt(((g - uy[..., None]) ** 2 * py).sum(-1))
    ngf = ng.to(dtype)[:, None].clamp_min(1)  # (N, 1): PyRadiomics' Ng, the highest level present
    diff = (i - j).abs()
    p_flat = p.flatten(2)
    pxmy = torch.zeros(*p.shape[:2], g_max, dtype=dtype, device=dev).scatter_add_(
        2, diff.long().flatten().expand(*p.shape[:2], -1), p_flat)
    pxpy = torch.zeros(*p.shape[:2], 2 * g_max - 1, dtype=dtype, device=dev).scatter_add_(
        2, (i + j - 2).long().flatten().expand(*p.shape[:2], -1), p_flat)
    kd = torch.arange(g_max, dtype=dtype, device=dev)
    ks = torch.arange(2, 2 * g_max + 1, dtype=dtype, device=dev)
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
    corm = (p * (i - ux[..., None, None]) * (j - uy[..., None, None])).sum((2, 3))
    corr = torch.where(sxsy > 0, corm / (sxsy + _EPS), torch.ones_like(sxsy))
    inv_var = (pxmy[..., 1:] / kd[1:] ** 2).sum(-1)
    one_level = ((px > 0).sum(-1) < 2)
    mcc = torch.where(one_level, torch.ones_like(ux), _mcc(p, px))
    ngd = ngf[:, :, None, None]
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
        mcc,                                             # MCC
        (p / (1 + (i - j) ** 2 / ngd ** 2)).sum((2, 3)),  # Idmn
        (p / (1 + diff)).sum((2, 3)),                    # Id
        (p / (1 + diff / ngd)).sum((2, 3)),              # Idn
        inv_var,                                         # InverseVariance
        p.flatten(2).max(-1).values,                     # MaximumProbability
        (pxpy * ks).sum(-1),                             # SumAverage
        _entropy(pxpy, 2),                               # SumEntropy
        (p * (i - ux[..., None, None]) ** 2).sum((2, 3)),  # SumSquares
    ], -1)  # (N, A, 24)
    return _mean_over(feats, has)


def _mean_over(feats, valid):
    """Mean of ``feats (N, A, F)`` over the directions where ``valid (N, A)``; NaN where none is."""
    w = valid.to(feats.dtype)[..., None]
    n_dir = w.sum(1)
    out = (torch.where(valid[..., None], feats, torch.zeros_like(feats))).sum(1) / n_dir.clamp_min(1)
    return torch.where(n_dir > 0, out, torch.full_like(out, float("nan")))


def glcm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """The 24 GLCM features ``(N, 24)`` in ``GLCM_NAMES`` order, averaged over 4 directions.

    Parameters as in :func:`radiomic_features`; a region without any pair of neighbouring pixels
    gives NaN.
    """
    x, m, levels, ng, as_numpy = _levels_of(images, masks, n_levels, intensity_range, bin_width)
    g_max = max(int(ng.max()) if ng.numel() else 1, 1)
    return _out(_glcm(levels, m, ng, g_max, x.dtype), as_numpy)


# ------------------------------------------------- GLRLM / GLSZM / GLDM: one table of entries
def _table_features(group, lv, size, n_groups, g_max, dtype):
    """The 16 emphasis / non-uniformity / variance / entropy features of a (level, size) table.

    Each entry (a run, a zone, or a pixel with its dependence) belongs to ``group`` (an image, or an
    image and direction), has grey level ``lv`` (1-based) and size ``size`` (run length, zone size,
    dependence count + 1). Returns ``(n_groups, 16)`` in GLRLM order (``SRE, LRE, GLN, GLNN, RLN,
    RLNN, RP, GLV, RV, RE, LGLRE, HGLRE, SRLGLE, SRHGLE, LRLGLE, LRHGLE``) and the entry count.
    """
    dev = lv.device
    i = lv.to(dtype)
    j = size.to(dtype)
    ones = torch.ones_like(i)

    def gsum(values):
        return torch.zeros(n_groups, dtype=dtype, device=dev).index_add_(0, group, values)

    nz = gsum(ones)
    npx = gsum(j)
    safe = nz.clamp_min(1)
    i2, j2 = i * i, j * j
    j_max = int(size.max()) if size.numel() else 1
    pg = torch.zeros(n_groups * g_max, dtype=dtype, device=dev).index_add_(
        0, group * g_max + (lv - 1), ones).view(n_groups, g_max)
    ps = torch.zeros(n_groups * j_max, dtype=dtype, device=dev).index_add_(
        0, group * j_max + (size - 1), ones).view(n_groups, j_max)
    gv = torch.arange(1, g_max + 1, dtype=dtype, device=dev)
    jv = torch.arange(1, j_max + 1, dtype=dtype, device=dev)
    pgn, psn = pg / safe[:, None], ps / safe[:, None]
    mu_i = (pgn * gv).sum(1, keepdim=True)
    mu_j = (psn * jv).sum(1, keepdim=True)
    key = (group * g_max + (lv - 1)) * j_max + (size - 1)
    uniq, cnt = torch.unique(key, return_counts=True)
    q = cnt.to(dtype) / safe[uniq // (g_max * j_max)]
    ent = torch.zeros(n_groups, dtype=dtype, device=dev).index_add_(
        0, uniq // (g_max * j_max), -q * torch.log2(q + _EPS))
    feats = torch.stack([
        gsum(1 / j2) / safe, gsum(j2) / safe, (pg ** 2).sum(1) / safe, (pg ** 2).sum(1) / safe ** 2,
        (ps ** 2).sum(1) / safe, (ps ** 2).sum(1) / safe ** 2, nz / npx.clamp_min(1),
        (pgn * (gv - mu_i) ** 2).sum(1), (psn * (jv - mu_j) ** 2).sum(1), ent,
        gsum(1 / i2) / safe, gsum(i2) / safe, gsum(1 / (i2 * j2)) / safe, gsum(i2 / j2) / safe,
        gsum(j2 / i2) / safe, gsum(i2 * j2) / safe,
    ], 1)
    return feats, nz


_LINE_CACHE: dict = {}


def _lines(h, w, dy, dx, device):
    """Flat pixel indices ``(L, P)`` of the lines along ``(dy, dx)``; ``h * w`` pads short lines."""
    key = (h, w, dy, dx, str(device))
    if key not in _LINE_CACHE:
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        if (dy, dx) == (0, 1):
            idx = np.arange(h * w).reshape(h, w)
        elif (dy, dx) == (1, 0):
            idx = np.arange(h * w).reshape(h, w).T
        else:
            line = (xs - ys + h - 1) if dx == 1 else (xs + ys)  # diagonal id; position along it is y
            idx = np.full((h + w - 1, h), h * w)
            idx[line.ravel(), ys.ravel()] = np.arange(h * w)
        _LINE_CACHE[key] = torch.as_tensor(np.ascontiguousarray(idx), device=device)
    return _LINE_CACHE[key]


def _glrlm(levels, m, g_max, dtype):
    n, h, w = levels.shape
    small = torch.int16 if g_max < 2 ** 15 else torch.int64
    pad_lv = torch.cat([levels.flatten(1), levels.new_zeros(n, 1)], 1).to(small)  # level 0 marks "outside"
    feats, valid = [], []
    for dy, dx in _DIRECTIONS:
        lv = pad_lv[:, _lines(h, w, dy, dx, levels.device)]  # (N, L, P)
        inside = lv > 0
        start = inside.clone()
        start[:, :, 1:] &= lv[:, :, :-1] != lv[:, :, 1:]
        end = inside.clone()
        end[:, :, :-1] &= lv[:, :, 1:] != lv[:, :, :-1]
        pos = torch.arange(lv.shape[2], dtype=torch.int32, device=lv.device)
        start_pos = torch.where(start, pos, 0).cummax(2).values
        b, line, q = end.nonzero(as_tuple=True)
        length = (q - start_pos[b, line, q] + 1).long()
        f, nr = _table_features(b, lv[b, line, q].long(), length, n, g_max, dtype)
        # PyRadiomics drops a direction along which no line holds two region pixels.
        multi = (inside.sum(2) > 1).any(1)
        feats.append(f)
        valid.append((nr > 0) & multi)
    return _mean_over(torch.stack(feats, 1), torch.stack(valid, 1))


def _zone_labels(levels, m):
    """8-connected components of equal level inside ``m``: per pixel (flat) the smallest flat index in its zone.

    Min-label hooking with full pointer jumping on a parent forest over the pixels (a few rounds
    even for long, winding zones); ``h * w`` marks pixels outside the region.
    """
    n, h, w = levels.shape
    big = h * w
    ar = torch.arange(big, device=levels.device).expand(n, big)
    sentinel = torch.full((n, 1), big, dtype=torch.long, device=levels.device)
    parent = torch.cat([torch.where(m.flatten(1), ar, big), sentinel], 1)  # (N, HW + 1)
    lv_pad = F.pad(levels, (1, 1, 1, 1))
    links = [(lv_pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == levels) & m for dy, dx in _NEIGHBOURS]
    while True:
        old = parent
        lab = parent[:, :big].view(n, h, w)
        lab_pad = F.pad(lab, (1, 1, 1, 1), value=big)
        best = lab
        for (dy, dx), link in zip(_NEIGHBOURS, links):
            best = torch.minimum(best, torch.where(link, lab_pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w], best))
        # Hook: the root that p points to takes the smallest label among p's zone neighbours.
        parent = parent.scatter_reduce(1, lab.flatten(1), best.flatten(1), reduce="amin")
        while True:  # pointer jumping to the roots
            nxt = parent.gather(1, parent)
            if torch.equal(nxt, parent):
                break
            parent = nxt
        if torch.equal(parent, old):
            return parent[:, :big].view(n, h, w)


def _glszm(levels, m, g_max, dtype):
    n, h, w = levels.shape
    lab = _zone_labels(levels, m).flatten(1)
    mk = m.flatten(1)
    sizes = torch.zeros(n, h * w + 1, dtype=torch.long, device=levels.device).scatter_add_(
        1, lab, mk.long())[:, :h * w]
    roots = sizes > 0
    img = torch.arange(n, device=levels.device)[:, None].expand(n, h * w)[roots]
    f, nz = _table_features(img, levels.flatten(1)[roots], sizes[roots], n, g_max, dtype)
    return torch.where((nz > 0)[:, None], f, torch.full_like(f, float("nan")))


def _neighbour_maps(levels, m):
    """For each of the 8 neighbours: (neighbour in region, neighbour's level)."""
    n, h, w = levels.shape
    lv_pad = F.pad(levels, (1, 1, 1, 1))
    m_pad = F.pad(m, (1, 1, 1, 1))
    for dy, dx in _NEIGHBOURS:
        yield m_pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w], lv_pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


_GLDM_PICK = (0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15)  # the table features that GLDM has


def _gldm(levels, m, g_max, dtype, alpha=0):
    n = levels.shape[0]
    dep = torch.zeros_like(levels)
    for nb_in, nb_lv in _neighbour_maps(levels, m):
        dep += (nb_in & ((nb_lv - levels).abs() <= alpha)).long()
    img = torch.arange(n, device=levels.device)[:, None, None].expand_as(levels)[m]
    f, nz = _table_features(img, levels[m], dep[m] + 1, n, g_max, dtype)
    f = f[:, list(_GLDM_PICK)]
    return torch.where((nz > 0)[:, None], f, torch.full_like(f, float("nan")))


def _features_of_table(fn, images, masks, n_levels, intensity_range, bin_width):
    x, m, levels, ng, as_numpy = _levels_of(images, masks, n_levels, intensity_range, bin_width)
    g_max = max(int(ng.max()) if ng.numel() else 1, 1)
    return _out(fn(levels, m, g_max, x.dtype), as_numpy)


def glrlm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """The 16 GLRLM features ``(N, 16)`` in ``GLRLM_NAMES`` order, averaged over 4 directions.

    Runs of equal grey level along 0, 45, 90 and 135 degrees inside the region. Parameters as in
    :func:`radiomic_features`.
    """
    return _features_of_table(_glrlm, images, masks, n_levels, intensity_range, bin_width)


def glszm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """The 16 GLSZM features ``(N, 16)`` in ``GLSZM_NAMES`` order (8-connected zones of equal level).

    Parameters as in :func:`radiomic_features`.
    """
    return _features_of_table(_glszm, images, masks, n_levels, intensity_range, bin_width)


def gldm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """The 14 GLDM features ``(N, 14)`` in ``GLDM_NAMES`` order.

    A pixel's dependence is 1 + the number of its 8 neighbours inside the region with the same grey
    level (PyRadiomics' ``gldm_a = 0``). Parameters as in :func:`radiomic_features`.
    """
    return _features_of_table(_gldm, images, masks, n_levels, intensity_range, bin_width)


# ------------------------------------------------------------------------------------- NGTDM
def _ngtdm(levels, m, g_max, dtype):
    n = levels.shape[0]
    lv = levels.to(dtype)
    nb_sum = torch.zeros_like(lv)
    nb_cnt = torch.zeros_like(lv)
    for nb_in, nb_lv in _neighbour_maps(levels, m):
        nb_sum += nb_lv.to(dtype) * nb_in
        nb_cnt += nb_in
    # Every region pixel counts in n_i; one without a region neighbour adds a difference of 0.
    dev = torch.where(nb_cnt > 0, (lv - nb_sum / nb_cnt.clamp_min(1)).abs(), torch.zeros_like(lv)) * m
    vw = m.flatten(1).to(dtype)
    idx = levels.flatten(1).clamp_min(1) - 1
    n_i = torch.zeros(n, g_max, dtype=dtype, device=lv.device).scatter_add_(1, idx, vw)
    s_i = torch.zeros(n, g_max, dtype=dtype, device=lv.device).scatter_add_(1, idx, dev.flatten(1))
    nvp = n_i.sum(1)
    p = n_i / nvp.clamp_min(1)[:, None]
    nz = p > 0
    ngp = nz.sum(1).to(dtype)
    g = torch.arange(1, g_max + 1, dtype=dtype, device=lv.device)
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
    return torch.where((nvp > 0)[:, None], out, torch.full_like(out, float("nan")))


def ngtdm_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), bin_width=None):
    """The 5 NGTDM features ``(N, 5)`` over the 8-neighbourhood inside the region.

    ``Coarseness`` is 1e6 where the sum it inverts is 0 (PyRadiomics' convention). Parameters as in
    :func:`radiomic_features`.
    """
    return _features_of_table(_ngtdm, images, masks, n_levels, intensity_range, bin_width)


# ------------------------------------------------------------------------------------- shape
# Marching squares per 2x2 cell, code = a + 2b + 4c + 8d (a top-left, b top-right, c bottom-left,
# d bottom-right): enclosed area and contour length. Diagonal pairs (codes 6, 9) are two corners.
_R = math.sqrt(0.5)
_MS_AREA = (0, 1 / 8, 1 / 8, 1 / 2, 1 / 8, 1 / 2, 1 / 4, 7 / 8, 1 / 8, 1 / 4, 1 / 2, 7 / 8, 1 / 2, 7 / 8, 7 / 8, 1)
_MS_PERIM = (0, _R, _R, 1, _R, 1, 2 * _R, _R, _R, 2 * _R, 1, _R, 1, _R, _R, 0)


def _compact(pts, keep):
    """Move each row's kept points ``(N, P, 2)`` to the front and drop columns no row keeps."""
    order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices
    k = max(int(keep.sum(1).max()), 1) if keep.shape[0] else 1
    order = order[:, :k]
    return pts.gather(1, order[..., None].expand(-1, -1, 2)), keep.gather(1, order)


def shape_features(masks, n_directions=None, dtype=torch.float64):
    """The 9 shape2D features ``(N, 9)`` of each mask, in ``SHAPE_NAMES`` order, in ``dtype``.

    Parameters
    ----------
    masks : array or Tensor (N, H, W) or (H, W)
        Regions (bool, {0, 1} or {0, 255}); pixel spacing 1.
    n_directions : int, optional
        None (default): ``MaximumDiameter`` is exact, the largest distance between contour vertices
        as in PyRadiomics. An int: the largest Feret diameter over that many directions (faster,
        relative error about ``(pi / n_directions)^2 / 8``).
    dtype : torch.dtype, default=torch.float64

    Returns
    -------
    Tensor for tensor input, else ndarray; NaN rows for empty masks.
    """
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
    hist = torch.zeros(n, 16, dtype=dtype, device=m.device).scatter_add_(
        1, code.flatten(1), torch.ones(1, 1, dtype=dtype, device=m.device).expand(n, code[0].numel()))
    area = hist @ area_t  # cells of each marching-squares case times that case's area / length
    perim = hist @ perim_t
    wts = m.flatten(1).to(dtype)
    npix = wts.sum(1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=m.device),
                            torch.arange(w, dtype=dtype, device=m.device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    safe = npix.clamp_min(1)
    my, mx = (wts * ys).sum(1) / safe, (wts * xs).sum(1) / safe
    dy, dx = ys - my[:, None], xs - mx[:, None]
    wdy = wts * dy
    cyy = (wdy * dy).sum(1) / safe
    cxy = (wdy * dx).sum(1) / safe
    cxx = (wts * dx * dx).sum(1) / safe
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
    diam = torch.zeros(n, dtype=dtype, device=m.device)
    if n_directions is None:
        # Exact. The diameter's endpoints lie, in the sampled direction nearest to theirs (at most
        # half a step away), within D (1 - cos(step / 2)) of the extreme projections; keep only such
        # points (a few per region), then take the largest distance over all their pairs.
        pts, on = _compact(pts, on)
        n_dir = 36
        step = math.pi / n_dir
        theta = torch.arange(n_dir, dtype=dtype, device=m.device) * step
        dirs = torch.stack([torch.sin(theta), torch.cos(theta)])
        proj = pts @ dirs  # (N, P, n_dir)
        hi = torch.where(on[..., None], proj, -float("inf")).amax(1, keepdim=True)
        lo = torch.where(on[..., None], proj, float("inf")).amin(1, keepdim=True)
        d_up = ((hi - lo).amax(2, keepdim=True) / math.cos(step / 2)).nan_to_num(0.0, posinf=0.0, neginf=0.0)
        tol = d_up * (1 - math.cos(step / 2)) + 1e-9 * (1 + d_up)
        cand = on & ((proj >= hi - tol) | (proj <= lo + tol)).any(2)
        cp, co = _compact(pts, cand)
        k = cp.shape[1]
        chunk = max(1, int(2e7 // max(1, k * k)))
        for s in range(0, n, chunk):
            p, o = cp[s:s + chunk], co[s:s + chunk]
            d2 = ((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1)
            d2 = torch.where(o[:, :, None] & o[:, None, :], d2, torch.zeros_like(d2))
            diam[s:s + chunk] = d2.flatten(1).amax(1).sqrt()
    else:  # largest Feret diameter over n_directions directions (the approximation before 0.2)
        theta = torch.arange(n_directions, dtype=dtype, device=m.device) * (math.pi / n_directions)
        dirs = torch.stack([torch.sin(theta), torch.cos(theta)])  # (2, D)
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


def _crop_to_regions(x, m):
    """Each image's region bounding box, top-left aligned in a common (smaller) canvas.

    Every feature depends only on the region's pixels and their positions relative to each other,
    so this changes no value and cuts the work to the size of the largest region.
    """
    n, h, w = m.shape
    rows, cols = m.any(2), m.any(1)
    if n == 0 or not bool(rows.any()):
        return x, m
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y0 = torch.where(rows, ar_h, h).amin(1).clamp_max(h - 1)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    x0 = torch.where(cols, ar_w, w).amin(1).clamp_max(w - 1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    hb = int((y1 - y0).max()) + 1
    wb = int((x1 - x0).max()) + 1
    if hb >= h and wb >= w:
        return x, m
    yy = (y0[:, None] + torch.arange(hb, device=m.device)).clamp_max(h - 1)  # (N, hb)
    xx = (x0[:, None] + torch.arange(wb, device=m.device)).clamp_max(w - 1)  # (N, wb)
    inside = ((y0[:, None] + torch.arange(hb, device=m.device)) < h)[:, :, None] \
        & ((x0[:, None] + torch.arange(wb, device=m.device)) < w)[:, None, :]
    idx = torch.arange(n, device=m.device)[:, None, None]
    return x[idx, yy[:, :, None], xx[:, None, :]], m[idx, yy[:, :, None], xx[:, None, :]] & inside


def radiomic_features(images, masks, n_levels=32, intensity_range=(0.0, 1.0), chunk_size=256, bin_width=None):
    """All 102 radiomic features ``(N, 102)`` of each image's masked region, in :data:`FEATURE_NAMES` order.

    Parameters
    ----------
    images : Tensor or array (N, H, W) or (N, 1, H, W)
        Intensities (dp_sklearn's images are in [0, 1]); NaN or inf inside a mask is an error.
    masks : Tensor or array, same shape, bool or {0, 1}
        The region of each image; an empty mask gives a row of NaN.
    n_levels : int, default=32
        Bins across ``intensity_range``: the bin width is ``(high - low) / n_levels`` (PyRadiomics'
        ``binWidth``, 1/32 by default) unless ``bin_width`` is given. Levels are numbered from the bin
        of each region's minimum (see :func:`discretize`), so a region may have more or fewer levels.
    intensity_range : (float, float), default=(0, 1)
        ``low`` anchors the bin grid (PyRadiomics anchors it at 0); values outside are not clipped.
    chunk_size : int, default=256
        At most this many images per internal piece (bounds memory). Images are processed in
        pieces of similar region size (sorted by bounding box; at most ``max(16, N / 8)`` each),
        each cropped to its largest region's box; the output keeps the input order.
    bin_width : float, optional
        PyRadiomics' ``binWidth``; overrides ``n_levels``.

    Returns
    -------
    Tensor when ``images`` is a tensor, else ndarray; float64 for float64 images, else float32
    (grey levels are always computed in float64, so both see the same levels).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.RandomState(0).rand(2, 16, 16)
    >>> mask = np.zeros((2, 16, 16), bool); mask[:, 4:12, 4:12] = True
    >>> feats = radiomic_features(img, mask)
    >>> feats.shape, float(feats[0, FEATURE_NAMES.index("shape2D_PixelSurface")])
    ((2, 102), 64.0)
    """
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    lo, w = _bin_width(n_levels, intensity_range, bin_width)
    x, m, as_numpy = _as_tensors(images, masks)
    # Regions sorted by bounding-box area and cut into pieces, so that each piece's canvas (the
    # largest box in it) is close to its regions' own size; results go back to the input order.
    n = len(x)
    rows, cols = m.any(2), m.any(1)
    ar_h, ar_w = torch.arange(m.shape[1], device=m.device), torch.arange(m.shape[2], device=m.device)
    h_box = torch.where(rows, ar_h, -1).amax(1) - torch.where(rows, ar_h, m.shape[1]).amin(1) + 1
    w_box = torch.where(cols, ar_w, -1).amax(1) - torch.where(cols, ar_w, m.shape[2]).amin(1) + 1
    order = torch.argsort((h_box.clamp_min(0) * w_box.clamp_min(0)), stable=True)
    piece = int(min(chunk_size, max(16, -(-n // 8))))
    out = x.new_zeros((n, len(FEATURE_NAMES)))
    for s in range(0, n, piece):
        idx = order[s:s + piece]
        xs, ms = _crop_to_regions(x[idx], m[idx])
        levels, ng = _discretize(xs, ms, lo, w)
        g_max = max(int(ng.max()), 1)
        dt = xs.dtype
        out[idx] = torch.cat([
            shape_features(ms, dtype=dt),
            _firstorder(xs, ms, levels, g_max),
            _glcm(levels, ms, ng, g_max, dt),
            _glrlm(levels, ms, g_max, dt),
            _glszm(levels, ms, g_max, dt),
            _gldm(levels, ms, g_max, dt),
            _ngtdm(levels, ms, g_max, dt),
        ], 1)
    return _out(out, as_numpy)


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
