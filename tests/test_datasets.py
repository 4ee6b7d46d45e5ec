"""load_cxr1k returns the bundled real data with the documented counts and shapes."""

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from dp_sklearn.datasets import load_cxr1k


def test_counts_match_the_published_dataset(cxr64):
    d = cxr64
    assert d.images.shape == (1124, 64, 64) and d.images.dtype == np.float32
    assert d.target_names == ["covid19", "normal", "pneumonia"]
    counts = dict(zip(d.target_names, np.bincount(d.target)))
    assert counts == {"covid19": 124, "normal": 500, "pneumonia": 500}
    assert int(d.mask_available.sum()) == 198
    assert len(set(d.groups)) == 806
    assert d.multilabel.shape == (1124, 14) and len(d.multilabel_names) == 14
    # every NIH pneumonia image carries the Pneumonia finding; covid19 images have no NIH findings
    pneu = d.multilabel_names.index("Pneumonia")
    assert d.multilabel[d.target == 2, pneu].all()
    assert d.multilabel[d.target == 0].sum() == 0


def test_pixels_and_masks_are_real_and_aligned(cxr64):
    d = cxr64
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert d.images.std() > 0.1  # real radiographs, not blank
    assert d.masks.dtype == bool
    # masks only where annotated; at 64x64 one very small lesion vanishes in the resize
    has_pixels = d.masks.reshape(len(d.masks), -1).any(axis=1)
    assert not has_pixels[~d.mask_available].any()
    assert has_pixels[d.mask_available].mean() > 0.99
    area = d.masks[d.mask_available].mean()
    assert 0.02 < area < 0.4


def test_native_size_and_paths():
    d = load_cxr1k(image_size=256, classes=["covid19", "normal"])
    assert d.images.shape == (624, 256, 256)
    assert d.target_names == ["covid19", "normal"] and set(np.unique(d.target)) == {0, 1}
    p = load_cxr1k(return_paths=True)
    assert len(p.images) == 1124 and p.images[0].endswith(".png")
    assert sum(m is not None for m in p.masks) == 198


def test_groups_make_patient_disjoint_folds(cxr64):
    d = cxr64
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(d.images, d.target, d.groups):
        assert not set(d.groups[train]) & set(d.groups[test])


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown class"):
        load_cxr1k(image_size=32, classes=["flu"])
    with pytest.raises(ValueError, match="image_size"):
        load_cxr1k(image_size=4)
