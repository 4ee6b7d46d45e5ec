"""``out=`` on ``attention_maps``/``transform``: outputs written batch by batch into a .npy file or an array.

Plumbing tests: tiny arrays and a few real PNG paths, one-epoch models.
"""

import numpy as np
import pytest

from dp_sklearn import DeepPneumoniaClassifier
from dp_sklearn.data.io import bundled_dicom_dir
from dp_sklearn.estimators import (ContrastivePretrainer, LocalDiscriminationPretrainer, MaskAttentionClassifier,
                                   MultiLabelMetricClassifier, RadiomicsContrastiveClassifier)
from dp_sklearn.utils import write_rows

CXR1K = bundled_dicom_dir().parent / "cxr1k" / "images"  # the package's bundled copy, present in every clone


@pytest.fixture(scope="module")
def fitted():
    X = np.random.RandomState(0).rand(10, 32, 32).astype(np.float32)
    clf = MaskAttentionClassifier(image_size=32, max_epochs=1, batch_size=4, verbose=0, random_state=0)
    return clf.fit(X, [0, 1] * 5), X


def test_npy_out_equals_in_memory_result(fitted, tmp_path):
    clf, X = fitted
    for method in ("attention_maps", "transform"):
        expected = getattr(clf, method)(X)
        got = getattr(clf, method)(X, out=tmp_path / f"{method}.npy")
        assert isinstance(got, np.memmap) and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)  # batch by batch gives the very same numbers
        np.testing.assert_array_equal(np.load(tmp_path / f"{method}.npy"), expected)


def test_array_out_is_filled_and_returned(fitted, tmp_path):
    clf, X = fitted
    out = np.lib.format.open_memmap(tmp_path / "maps.npy", mode="w+", dtype=np.float32, shape=(10, 32, 32))
    assert clf.attention_maps(X, out=out) is out
    np.testing.assert_array_equal(out, clf.attention_maps(X))


@pytest.mark.parametrize("out, message", [
    (np.zeros((10, 16, 16), np.float32), r"shape \(10, 32, 32\) \(dtype float32\)"),
    (np.zeros((10, 32, 32), np.float64), r"shape \(10, 32, 32\) \(dtype float32\)"),
    ("maps.txt", "ending in .npy"),
])
def test_bad_out_raises_before_any_work(fitted, tmp_path, out, message):
    clf, X = fitted
    if isinstance(out, str):
        out = tmp_path / out
    with pytest.raises(ValueError, match=message):
        clf.attention_maps(X, out=out)
    with pytest.raises(TypeError, match="out must be None, a path"):
        clf.transform(X, out=[0.0] * 10)
    assert not list(tmp_path.iterdir())


def test_path_list_input_streams_to_npy(fitted, tmp_path):
    clf, _ = fitted
    paths = [str(p) for label in ("normal", "pneumonia") for p in sorted((CXR1K / label).glob("*.png"))[:3]]
    maps = clf.attention_maps(paths, out=tmp_path / "maps.npy")
    assert maps.shape == (6, 32, 32)
    np.testing.assert_array_equal(maps, clf.attention_maps(paths))


def test_pretrainer_and_deep_pneumonia_transform_out(tmp_path):
    X = np.random.RandomState(1).rand(8, 32, 32).astype(np.float32)
    ssl = ContrastivePretrainer(image_size=32, max_epochs=1, batch_size=4, verbose=0, random_state=0).fit(X)
    np.testing.assert_array_equal(ssl.transform(X, out=tmp_path / "ssl.npy"), ssl.transform(X))
    dp = DeepPneumoniaClassifier(image_size=32, batch_size=4, pretrain=False, verbose=0, random_state=0,
                                 classifier=MaskAttentionClassifier(max_epochs=1)).fit(X, [0, 1] * 4)
    np.testing.assert_array_equal(dp.transform(X, out=tmp_path / "dp.npy"), dp.transform(X))
    np.testing.assert_array_equal(dp.attention_maps(X, out=tmp_path / "att.npy"), dp.attention_maps(X))


def test_write_rows_leaves_no_file_when_the_batches_fail(tmp_path):
    def blocks():
        yield np.zeros((2, 3), np.float32)
        raise RuntimeError("reading failed")

    with pytest.raises(RuntimeError, match="reading failed"):
        write_rows(blocks(), (4, 3), out=tmp_path / "rows.npy")
    with pytest.raises(ValueError, match="gave 2 rows, the output has 4"):
        write_rows(iter([np.zeros((2, 3), np.float32)]), (4, 3), out=tmp_path / "rows.npy")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def other_transformers():
    """The other transformers with ``out=`` on ``transform``, fitted for one epoch on tiny arrays."""
    X = np.random.RandomState(2).rand(8, 32, 32).astype(np.float32)
    ld = LocalDiscriminationPretrainer(image_size=32, patch_grid=4, batch_size=4, max_epochs=1, stage1_epochs=1,
                                       device="cpu", verbose=0, random_state=0).fit(X)
    rc = RadiomicsContrastiveClassifier("resnet10_half", image_size=32, max_epochs=1, batch_size=4, augment=False,
                                        device="cpu", verbose=0, random_state=0).fit(X, [0, 1] * 4)
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 2)
    ml = MultiLabelMetricClassifier("resnet10_half", image_size=32, max_epochs=1, batch_size=4, augment=False,
                                    device="cpu", verbose=0, random_state=0).fit(X, Y)
    ml_linear = MultiLabelMetricClassifier("resnet10_half", image_size=32, head="linear", loss="bce", max_epochs=1,
                                           batch_size=4, augment=False, device="cpu", verbose=0,
                                           random_state=0).fit(X, Y)
    return X, {"ld": ld, "radiomics": rc, "multilabel": ml, "multilabel_linear": ml_linear}


@pytest.mark.parametrize("name", ["ld", "radiomics", "multilabel", "multilabel_linear"])
def test_other_transformers_out_equals_in_memory_result(other_transformers, name, tmp_path):
    X, estimators = other_transformers
    est = estimators[name]
    expected = est.transform(X)
    got = est.transform(X, out=tmp_path / "features.npy")
    assert isinstance(got, np.memmap) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    out = np.zeros(expected.shape, np.float32)
    assert est.transform(X, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["ld", "radiomics", "multilabel", "multilabel_linear"])
def test_other_transformers_bad_out_raises_before_any_work(other_transformers, name, monkeypatch):
    X, estimators = other_transformers
    est = estimators[name]
    width = est.transform(X[:1]).shape[1]

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before out was checked")

    monkeypatch.setattr(est, "forward_iter", no_work)
    with pytest.raises(AssertionError, match="the model ran"):  # the patch is on transform's path
        est.transform(X)
    with pytest.raises(ValueError, match=rf"shape \(8, {width}\) \(dtype float32\)"):
        est.transform(X, out=np.zeros((8, width + 1), np.float32))
    with pytest.raises(ValueError, match=rf"shape \(8, {width}\) \(dtype float32\)"):
        est.transform(X, out=np.zeros((7, width), np.float32))


def test_write_rows_sizes_known_from_the_first_batch(tmp_path):
    blocks = [np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32), 2 * np.ones((1, 3), np.float32)]
    np.testing.assert_array_equal(write_rows(iter(blocks), (3, None), out=tmp_path / "rows.npy"),
                                  write_rows(iter(blocks), (3, None)))
    out = np.full((3, 4), -1, np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 3\)"):
        write_rows(iter(blocks), (3, None), out=out)
    assert (out == -1).all()  # checked against the first batch's size before anything is written
    with pytest.raises(ValueError, match=r"a batch of shape \(1, 4\) does not fit"):
        write_rows(iter([np.ones((2, 3)), np.ones((1, 4))]), (3, None), out=tmp_path / "bad.npy")
    assert not (tmp_path / "bad.npy").exists()
