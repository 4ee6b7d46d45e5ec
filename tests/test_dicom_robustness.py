"""Bad DICOM headers and pixel streams: a clear error naming the file and the tag, never NaN.

Each test below reproduces one failure of issue 17 ("Silent garbage from DICOM") on a mutation
of a real bundled file, and fails on the reader before that issue (commit 9f80c73): there a NaN
rescale or window gave an all-NaN image, a truncated JPEG stream decoded with two thirds of its
rows constant, a 0-bit LUT or a deflated stream raised types that ``read_images(on_error="skip")``
did not skip, and an unknown transfer syntax asked to install decoders that were installed.
The last test runs the seeded fuzzer of ``dicom_fuzz.py`` over a few hundred mutations.
"""

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence

from dp_sklearn.data.io import (
    DicomDecodeError,
    DicomError,
    DicomValueError,
    MissingDecoderError,
    bundled_dicom_dir,
    read_image,
    read_images,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicom_fuzz  # noqa: E402

DICOM = bundled_dicom_dir()
SIIM = DICOM / "siim_cr_chest_jpeg_baseline.dcm"
CT = DICOM / "ct_abdomen_explicit_big_endian.dcm"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's "invalid value for VR DS"


def _with_raw(src, out, **text_values):
    """Copy ``src`` to ``out`` with text elements set to raw (possibly invalid) values, e.g. 'NaN'."""
    ds = pydicom.dcmread(src)
    for keyword, value in text_values.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        vr = pydicom.datadict.dictionary_VR(tag)
        raw = value.encode("ascii") + b" " * (len(value) % 2)
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, *ds.original_encoding)
    with pydicom.config.disable_value_validation():
        ds.save_as(out, enforce_file_format=False)
    return out


@pytest.mark.parametrize(
    "values, tag",
    [
        ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "RescaleSlope"),
        ({"RescaleSlope": "1", "RescaleIntercept": "inf"}, "RescaleIntercept"),
        ({"RescaleSlope": "1e308", "RescaleIntercept": "0"}, "RescaleSlope"),  # overflows to inf
        ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "RescaleSlope"),  # a blank image
        ({"WindowCenter": "100", "WindowWidth": "NaN"}, "WindowWidth"),
        ({"WindowCenter": "nan", "WindowWidth": "400"}, "WindowCenter"),
        ({"WindowCenter": "100", "WindowWidth": "-5"}, "WindowWidth"),
        ({"WindowCenter": "1e30", "WindowWidth": "10"}, "WindowCenter"),  # the window misses every pixel
    ],
)
def test_non_finite_or_out_of_range_lut_values_name_the_tag(tmp_path, values, tag):
    path = _with_raw(CT, tmp_path / "bad_values.dcm", **values)
    with pytest.raises(DicomValueError) as info:
        read_image(path, on_non_radiograph="ignore")
    assert info.value.tag == tag and tag in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def _truncated_jpeg(tmp_path, keep=0.7):
    ds = pydicom.dcmread(SIIM)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    cut = frame[: int(len(frame) * keep) // 2 * 2]
    ds.PixelData = encapsulate([cut])
    out = tmp_path / "truncated_stream.dcm"
    ds.save_as(out)
    return out


def test_truncated_jpeg_stream_is_refused_not_decoded_with_constant_rows(tmp_path):
    path = _truncated_jpeg(tmp_path)
    # The decoder alone accepts it, filling the missing rows: the failure this test guards against.
    rows = pydicom.dcmread(path).pixel_array
    assert (np.ptp(rows, axis=1) == 0).sum() > 100
    with pytest.raises(DicomDecodeError, match="truncated") as info:
        read_image(path)
    assert info.value.tag == "PixelData" and str(path) in str(info.value)


def _lut_file(tmp_path, bits):
    ds = pydicom.dcmread(SIIM)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", list(range(256)))  # LUTData
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    out = tmp_path / f"lut_{bits}bits.dcm"
    ds.save_as(out)
    return out


def _deflated_garbage(tmp_path):
    """A Deflated Explicit VR file whose deflated body is corrupt (zlib.error in pydicom)."""
    ds = pydicom.dcmread(SIIM)
    raw = SIIM.read_bytes()
    old = str(ds.file_meta.TransferSyntaxUID).encode()
    start = raw.index(old, 128)
    uid = b"1.2.840.10008.1.2.1.99".ljust(len(old) + len(old) % 2, b"\x00")
    out = tmp_path / "deflated.dcm"
    out.write_bytes(raw[:start] + uid + raw[start + len(uid):])
    return out


def test_lut_and_decoder_failures_are_dicom_errors_that_read_images_skips(tmp_path):
    zero_bits = _lut_file(tmp_path, 0)  # pydicom: NotImplementedError "0 bits per LUT entry"
    deflated = _deflated_garbage(tmp_path)  # pydicom: zlib.error
    with pytest.raises(DicomValueError, match="bits per LUT entry") as info:
        read_image(zero_bits)
    assert info.value.tag == "ModalityLUTSequence"
    with pytest.raises(DicomError) as info:
        read_image(deflated)
    assert str(deflated) in str(info.value)
    bad = [zero_bits, deflated, _truncated_jpeg(tmp_path), _with_raw(CT, tmp_path / "nan.dcm", RescaleSlope="NaN")]
    result = read_images([SIIM, *bad], image_size=16, on_error="skip", on_non_radiograph="ignore")
    assert result.indices.tolist() == [0]
    assert [e.index for e in result.errors] == [1, 2, 3, 4]
    assert all(isinstance(e.error, DicomError) for e in result.errors)
    assert np.isfinite(result.images).all()


def test_unknown_transfer_syntax_does_not_ask_to_install_decoders(tmp_path):
    raw = SIIM.read_bytes()
    old = str(pydicom.dcmread(SIIM).file_meta.TransferSyntaxUID).encode()
    start = raw.index(old, 128)
    path = tmp_path / "unknown_syntax.dcm"
    path.write_bytes(raw[:start] + b"1.2.3.4.5.6".ljust(len(old), b"\x00") + raw[start + len(old):])
    with pytest.raises(DicomDecodeError) as info:
        read_image(path)
    assert not isinstance(info.value, MissingDecoderError)
    assert info.value.tag == "TransferSyntaxUID" and "1.2.3.4.5.6" in str(info.value)
    assert "pip install" not in str(info.value)


def test_dicom_errors_survive_joblib_workers(tmp_path):
    import pickle

    err = DicomValueError(tmp_path / "x.dcm", "WindowWidth", "WindowWidth is nan")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DicomValueError and back.tag == "WindowWidth" and str(back) == str(err)


def test_unmutated_files_still_read():
    # Guards the fuzzer's catch-all: a reader that raised for everything would pass it.
    for path in dicom_fuzz.dicom_files()[:3]:
        img = read_image(path, image_size=32, on_non_radiograph="ignore")
        assert img.dtype == np.float32 and np.isfinite(img).all() and 0.5 < img.max() <= 1.0


def test_fuzz_gives_only_documented_errors_and_no_nan(tmp_path):
    counts, records = dicom_fuzz.fuzz(tmp_path, n_cases=300, seed=0, timeout=60)
    bad = [r for r in records if r[3] not in ("clear", "image")]
    assert not bad, bad[:5]
    assert all(r[5] for r in records if r[3] == "clear"), "every error names the file"
    assert counts["clear"] > 100 and counts["image"] > 20  # both outcomes are exercised
