"""dp_sklearn.radiomics' discretisation and run / zone / dependence tables against direct loops.

These run without PyRadiomics (tests/test_radiomics_pyradiomics.py compares with it where installed).
"""

import numpy as np
import pytest
from scipy import ndimage

from dp_sklearn.radiomics import (
    FEATURE_NAMES,
    discretize,
    gldm_features,
    glrlm_features,
    glszm_features,
    ngtdm_features,
    radiomic_features,
)

W = 0.25


def _img(levels):
    """Intensities whose PyRadiomics levels (bin width 0.25, region minimum in level 1) are ``levels``."""
    return (np.asarray(levels, float) - 1) * W + 0.1


def _table(entries):
    """The 16 GLRLM-ordered features of a list of (grey level, size) entries, by the textbook formulas."""
    e = np.array(entries, float)
    i, j = e[:, 0], e[:, 1]
    nz, npx = len(e), j.sum()
    gl, cg = np.unique(i, return_counts=True)
    sz, cs = np.unique(j, return_counts=True)
    _, cij = np.unique(e, axis=0, return_counts=True)
    p = cij / nz
    pg, ps = cg / nz, cs / nz
    return np.array([
        (1 / j ** 2).sum() / nz, (j ** 2).sum() / nz, (cg ** 2).sum() / nz, (cg ** 2).sum() / nz ** 2,
        (cs ** 2).sum() / nz, (cs ** 2).sum() / nz ** 2, nz / npx,
        (pg * (gl - (pg * gl).sum()) ** 2).sum(), (ps * (sz - (ps * sz).sum()) ** 2).sum(),
        -(p * np.log2(p + np.spacing(1))).sum(), (1 / i ** 2).sum() / nz, (i ** 2).sum() / nz,
        (1 / (i * j) ** 2).sum() / nz, (i ** 2 / j ** 2).sum() / nz, (j ** 2 / i ** 2).sum() / nz,
        ((i * j) ** 2).sum() / nz,
    ])


@pytest.fixture
def region():
    rng = np.random.RandomState(4)
    lv = rng.randint(1, 5, size=(9, 10))
    lv[2:5, 3:7] = 2  # a larger zone and longer runs
    mask = rng.rand(9, 10) > 0.25
    mask[0, 0] = True
    lv[0, 0] = 1  # the region's minimum is in level 1
    return lv, mask


def test_discretize_numbers_levels_from_the_region_minimum_and_gives_one_its_own_bin():
    img = np.array([[[0.30, 0.40, 0.74, 0.75, 1.0, 0.0]]])
    mask = np.array([[[1, 1, 1, 1, 1, 0]]], bool)
    levels, ng = discretize(img, mask, bin_width=0.25)
    assert levels.tolist() == [[[1, 1, 2, 3, 4, 0]]] and ng.tolist() == [4]
    # Default bins: width 1/32 on [0, 1]; 1.0 alone in the level above 31/32.
    levels, _ = discretize(np.array([[[0.5, 0.99, 1.0]]]), np.ones((1, 1, 3), bool))
    assert levels.tolist() == [[[1, 16, 17]]]


def test_glrlm_matches_a_loop_over_runs(region):
    lv, mask = region
    h, w = lv.shape
    per_dir = []
    for dy, dx in ((0, 1), (1, 1), (1, 0), (1, -1)):
        runs = []
        for y in range(h):
            for x in range(w):
                py, px = y - dy, x - dx
                prev_same = 0 <= py < h and 0 <= px < w and mask[py, px] and lv[py, px] == lv[y, x]
                if not mask[y, x] or prev_same:
                    continue
                n = 1
                while 0 <= y + n * dy < h and 0 <= x + n * dx < w and mask[y + n * dy, x + n * dx] \
                        and lv[y + n * dy, x + n * dx] == lv[y, x]:
                    n += 1
                runs.append((lv[y, x], n))
        per_dir.append(_table(runs))
    got = glrlm_features(_img(lv)[None], mask[None], bin_width=W)[0]
    np.testing.assert_allclose(got, np.mean(per_dir, 0), rtol=1e-12)


def test_glszm_matches_scipy_labelling(region):
    lv, mask = region
    zones = []
    for g in np.unique(lv[mask]):
        lab, k = ndimage.label(mask & (lv == g), structure=np.ones((3, 3)))
        zones += [(g, (lab == z).sum()) for z in range(1, k + 1)]
    got = glszm_features(_img(lv)[None], mask[None], bin_width=W)[0]
    np.testing.assert_allclose(got, _table(zones), rtol=1e-12)


def test_gldm_matches_a_loop(region):
    lv, mask = region
    h, w = lv.shape
    deps = []
    for y, x in zip(*np.nonzero(mask)):
        same = sum(1 for a in (-1, 0, 1) for b in (-1, 0, 1) if (a or b) and 0 <= y + a < h and 0 <= x + b < w
                   and mask[y + a, x + b] and lv[y + a, x + b] == lv[y, x])
        deps.append((lv[y, x], same + 1))
    got = gldm_features(_img(lv)[None], mask[None], bin_width=W)[0]
    np.testing.assert_allclose(got, _table(deps)[[0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]], rtol=1e-12)


def test_ngtdm_counts_isolated_pixels_with_zero_difference():
    lv = np.array([[1, 2, 0, 0], [2, 3, 0, 3], [0, 0, 0, 0]])
    mask = lv > 0
    got = ngtdm_features(_img(np.where(mask, lv, 1))[None], mask[None], bin_width=W)[0]
    # n_i: level 1: 1, level 2: 2, level 3: 2 (the isolated 3 included); s_i from the 2x2 block only.
    n_i = np.array([1, 2, 2.0])
    s_i = np.array([abs(1 - 7 / 3), 2 * abs(2 - 2), abs(3 - 5 / 3)])
    p = n_i / n_i.sum()
    assert got[0] == pytest.approx(1 / (p * s_i).sum(), rel=1e-12)  # Coarseness
    g = np.arange(1, 4)
    strength = sum((p[a] + p[b]) * (g[a] - g[b]) ** 2 for a in range(3) for b in range(3)) / s_i.sum()
    assert got[4] == pytest.approx(strength, rel=1e-12)


def test_mcc_is_one_for_two_halves_and_errors_are_clear():
    img = np.zeros((1, 8, 8))
    img[0, :, 4:] = 0.5
    f = dict(zip(FEATURE_NAMES, radiomic_features(img, np.ones((1, 8, 8), bool))[0]))
    assert 0 < f["glcm_MCC"] <= 1
    flat = dict(zip(FEATURE_NAMES, radiomic_features(np.full((1, 6, 6), 0.3), np.ones((1, 6, 6), bool))[0]))
    assert flat["glcm_MCC"] == 1 and flat["gldm_LargeDependenceEmphasis"] > 1
    bad = np.zeros((1, 4, 4))
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        radiomic_features(bad, np.ones((1, 4, 4), bool))
    radiomic_features(bad, np.zeros((1, 4, 4), bool))  # NaN outside the region is fine
    with pytest.raises(ValueError, match="bin_width"):
        radiomic_features(img, np.ones((1, 8, 8), bool), bin_width=0)
    with pytest.raises(ValueError, match="masks the same shape"):
        radiomic_features(img, np.ones((1, 8, 7), bool))
