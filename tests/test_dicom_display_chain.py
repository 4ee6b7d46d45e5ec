"""The DICOM display chain of ``read_image`` against pydicom's public reference.

``read_image`` folds the rescale, a LINEAR / LINEAR_EXACT window, the MONOCHROME1 inversion and
the min-max scaling into one float32 linear map (``_linear_display``); everything else (LUT
sequences, SIGMOID, ...) goes through pydicom on the whole image. Both must give what pydicom's
``apply_modality_lut`` then ``apply_voi_lut``, inverted for MONOCHROME1 and min-max scaled in
float64, gives: on every bundled file, and on synthetic files for the cases they lack (negative
slope, signed pixels, windows that cut one or both ends, LINEAR_EXACT, LUT sequences, SIGMOID,
stored values far from zero).
"""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dp_sklearn.data import io
from dp_sklearn.data.io import bundled_dicom_dir, read_image

TOL = 1e-5  # max abs difference on the [0, 1] image


def reference(path):
    """pydicom's display chain in float64, then min-max scaling (the reader's documented output)."""
    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = -arr
    lo, hi = arr.min(), arr.max()
    return (arr - lo) / (hi - lo)


def uses_fast_path(path):
    ds = pydicom.dcmread(path)
    return io._linear_display(ds.pixel_array, ds, path) is not None


def check(path, fast):
    img = read_image(path, on_non_radiograph="ignore")
    ref = reference(path)
    assert img.dtype == np.float32 and img.shape == ref.shape
    assert np.abs(img - ref).max() <= TOL
    assert img.min() == 0.0 and img.max() == 1.0
    assert uses_fast_path(path) is fast


@pytest.mark.parametrize("name", sorted(p.name for p in bundled_dicom_dir().glob("*.dcm")))
def test_bundled_files_match_pydicom(name):
    # MONOCHROME1 with a window (RG1_*), MONOCHROME1 and 2 without one (JPEG baseline), and the
    # CT's rescale with a window that cuts both ends: all on the fast path.
    check(bundled_dicom_dir() / name, fast=True)


def _synthetic(path, arr, photometric="MONOCHROME2", bits_stored=None, **elements):
    """A little-endian DICOM of ``arr`` (uint8, uint16 or int16) with the given header values."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * arr.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _pixels(dtype, lo, hi, shape=(48, 40), seed=0):
    """A gradient with noise spanning [lo, hi] exactly."""
    rng = np.random.RandomState(seed)
    x = np.linspace(0, 1, shape[0] * shape[1]).reshape(shape) + 0.05 * rng.randn(*shape)
    x = lo + (x - x.min()) / (x.max() - x.min()) * (hi - lo)
    return np.round(x).astype(dtype)


U16 = _pixels(np.uint16, 300, 3800)
I16 = _pixels(np.int16, -1500, 2600)
U8 = _pixels(np.uint8, 3, 250)


@pytest.mark.parametrize(
    "arr, photometric, bits, elements",
    [
        (U16, "MONOCHROME2", 12, {}),
        (U16, "MONOCHROME1", 12, {}),
        (U8, "MONOCHROME1", 8, {"RescaleSlope": "-2", "RescaleIntercept": "100"}),
        (U16, "MONOCHROME2", 12, {"RescaleSlope": "-0.5", "RescaleIntercept": "-1024",
                                  "WindowCenter": "-900", "WindowWidth": "800"}),
        (U16, "MONOCHROME1", 12, {"RescaleSlope": "1", "RescaleIntercept": "-1024",
                                  "WindowCenter": "40", "WindowWidth": "400"}),  # cuts both ends
        (U16, "MONOCHROME2", 12, {"WindowCenter": "3000", "WindowWidth": "1600"}),  # cuts the top only
        (U16, "MONOCHROME2", 12, {"WindowCenter": "500", "WindowWidth": "1000"}),  # cuts the bottom only
        (U16, "MONOCHROME2", 12, {"WindowCenter": "2048", "WindowWidth": "4096"}),  # wider than the data
        (U16, "MONOCHROME1", 12, {"WindowCenter": "1000", "WindowWidth": "700", "VOILUTFunction": "LINEAR_EXACT"}),
        (I16, "MONOCHROME2", 16, {"RescaleSlope": "0.75", "RescaleIntercept": "10",
                                  "WindowCenter": "100", "WindowWidth": "900"}),
        (I16, "MONOCHROME1", 16, {}),
        (U16, "MONOCHROME2", 16, {"WindowCenter": ["2000", "600"], "WindowWidth": ["2500", "100"]}),  # first view
        (U16 + np.uint16(61000), "MONOCHROME2", 16, {}),  # far from zero: the float64 branch
        (U16 + np.uint16(61000), "MONOCHROME1", 16, {"WindowCenter": "63000", "WindowWidth": "300"}),
    ],
)
def test_linear_chains_take_the_fast_path_and_match_pydicom(tmp_path, arr, photometric, bits, elements):
    check(_synthetic(tmp_path / "x.dcm", arr, photometric, bits, **elements), fast=True)


def _lut_item(n_entries, first, values):
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [n_entries, first, 16])
    item.add_new("LUTData", "US", [int(v) for v in values])
    return item


@pytest.mark.parametrize(
    "photometric, elements",
    [
        ("MONOCHROME2", {"WindowCenter": "2000", "WindowWidth": "1500", "VOILUTFunction": "SIGMOID"}),
        ("MONOCHROME1", {"WindowCenter": "2000.5", "WindowWidth": "1"}),  # LINEAR of width 1: a step
        ("MONOCHROME2", {"VOILUTSequence": [_lut_item(4096, 0, (np.arange(4096) ** 2 // 300) % 40000)]}),
        ("MONOCHROME1", {"ModalityLUTSequence": [_lut_item(4096, 0, 4095 - np.arange(4096))]}),
    ],
)
def test_other_chains_go_through_pydicom_and_match_it(tmp_path, photometric, elements):
    path = tmp_path / "x.dcm"
    _synthetic(path, U16, photometric, 12)
    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    check(path, fast=False)


def test_fast_path_keeps_the_checks_of_the_full_chain(tmp_path):
    # A window that misses every pixel: the same error, naming the same tag, as before.
    path = _synthetic(tmp_path / "x.dcm", U16, "MONOCHROME2", 12, WindowCenter="60000", WindowWidth="10")
    with pytest.raises(io.DicomValueError) as err:
        read_image(path)
    assert err.value.tag == "WindowCenter" and "one value" in str(err.value)
    # A constant image: zeros.
    path = _synthetic(tmp_path / "c.dcm", np.full((8, 8), 77, np.uint16), "MONOCHROME1", 12)
    assert not read_image(path).any()
