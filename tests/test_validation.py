"""Input validation gives clear errors that name the argument (plumbing, tiny arrays)."""

import numpy as np
import pytest
import torch

from dp_sklearn._compat import cpu_has_native_bfloat16
from dp_sklearn.utils import check_images, check_masks, resolve_device, resolve_precision


@pytest.mark.parametrize("shape", [(3, 8, 9), (3, 1, 8, 9), (3, 8, 9, 1)])
def test_image_layouts_are_accepted(shape):
    assert check_images(np.zeros(shape)).shape == (3, 8, 9)


def test_integer_images_are_scaled_to_unit_range():
    out = check_images(np.full((1, 4, 4), 255, dtype=np.uint8))
    assert out.dtype == np.float32 and out.max() == 1.0
    assert check_images(np.full((1, 4, 4), 65535, dtype=np.uint16)).max() == 1.0


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.zeros((2, 3, 8, 8)), ValueError, "shape"),
        (np.zeros((8, 8)), ValueError, "shape"),
        (np.zeros((0, 8, 8)), ValueError, "at least 1"),
        (np.array([[[np.nan]]]), ValueError, "NaN"),
        (np.array([["a"]]), TypeError, "dtype"),
        ("image.png", TypeError, "single path"),
    ],
)
def test_bad_images(X, error, match):
    with pytest.raises(error, match=match):
        check_images(X)


def test_paths_pass_through():
    assert check_images(["a.png", "b.dcm"]) == ["a.png", "b.dcm"]
    with pytest.raises(TypeError, match="paths"):
        check_images(["a.png"], allow_paths=False)


def test_masks_availability_and_encodings():
    m = np.zeros((3, 4, 4), dtype=np.uint8)
    m[0, :2] = 255
    masks, available = check_masks(m, 3, (4, 4))
    assert masks.dtype == bool and available.tolist() == [True, False, False]
    _, available = check_masks(m, 3, (4, 4), empty_means="no_lesion")
    assert available.all()
    masks, available = check_masks([None, np.ones((4, 4)), None], 3, (4, 4))
    assert available.tolist() == [False, True, False] and masks[1].all()
    assert check_masks(None, 3)[1].tolist() == [False] * 3


@pytest.mark.parametrize(
    "masks, match",
    [
        (np.zeros((2, 4, 4)), "3 images"),
        (np.zeros((3, 5, 4)), "spatial shape"),
        (np.full((3, 4, 4), 7), "values"),
    ],
)
def test_bad_masks(masks, match):
    with pytest.raises(ValueError, match=match):
        check_masks(masks, 3, (4, 4))


def test_device_and_precision():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    # "auto" on CPU: bfloat16 exactly where the CPU has bfloat16 instructions.
    expected = torch.bfloat16 if cpu_has_native_bfloat16() else None
    assert resolve_precision("auto", "cpu") is expected
    assert resolve_precision("float32", "cpu") is None
    assert resolve_precision("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("float16", "cpu")
