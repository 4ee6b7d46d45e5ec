"""Issue 17, "Unvalidated inputs": mask files are checked like mask arrays, and float images
outside [0, 1] warn with the range found. Both failed silently before (a grayscale image given
as a mask was thresholded at 0.5; float images in 0-255 were used as they were)."""

import warnings

import numpy as np
import pytest
from PIL import Image

from dp_sklearn.data.dataset import XRayDataset
from dp_sklearn.data.io import bundled_dicom_dir, read_mask
from dp_sklearn.utils import PixelRangeWarning, check_images, check_masks

CXR1K = bundled_dicom_dir().parent / "cxr1k"
MASK = sorted((CXR1K / "masks" / "pneumonia").glob("*.png"))[0]
IMAGE = CXR1K / "images" / "pneumonia" / MASK.name  # a radiograph, not a mask


def test_a_real_mask_file_reads_as_its_binary_mask():
    mask = read_mask(MASK)
    raw = np.asarray(Image.open(MASK))
    assert mask.dtype == bool and np.array_equal(mask, raw > 0) and mask.any()
    assert read_mask(MASK, image_size=32).shape == (32, 32)


def test_an_image_given_as_a_mask_path_is_rejected_naming_the_file():
    with pytest.raises(ValueError, match=rf"{IMAGE.name}.*only 0 and 1, or 0 and 255"):
        read_mask(IMAGE)
    with pytest.raises(ValueError, match=IMAGE.name):
        check_masks([str(IMAGE), None], 2, (64, 64))
    # The torch dataset that streams path masks during fit reads them the same way.
    ds = XRayDataset([str(IMAGE)], masks=[str(IMAGE)], mask_available=np.array([True]), image_size=(32, 32))
    with pytest.raises(ValueError, match=IMAGE.name):
        ds[0]


def test_check_masks_reads_and_validates_path_masks():
    masks, available = check_masks([str(MASK), None], 2, (32, 32))
    assert masks.shape == (2, 32, 32) and available.tolist() == [True, False]


def test_float_images_outside_unit_range_warn_with_the_range():
    X = np.linspace(0, 255, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    with pytest.warns(PixelRangeWarning, match=r"\[0, 255\].*divide by 255"):
        check_images(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_images(X / 255.0)  # in range: silent
        check_images(X.astype(np.uint8))  # integers are scaled by their dtype: silent
