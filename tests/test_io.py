"""Reading radiographs from DICOM, PNG and JPEG (dp_sklearn.data.io), on the bundled real files.

What is pinned: the DICOM display chain (lossless codec identical to uncompressed,
lossy codec within a measured bound, MONOCHROME1 inverted, modality check), PNG
scaling, each bad input's error naming the file, batch reading that skips and
reports, and the transformer as the first step of a Pipeline.
"""

import doctest
import subprocess
import sys
import warnings
from functools import lru_cache

import numpy as np
import pydicom
import pytest
from joblib import parallel_config
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

import dp_sklearn.data.io as io
from dp_sklearn.data.io import (
    MissingDecoderError,
    NonRadiographWarning,
    UnreadableImageWarning,
    XRayReader,
    bundled_dicom_dir,
    read_image,
    read_images,
)

DICOM = bundled_dicom_dir()
CXR1K = DICOM.parent / "cxr1k" / "images"
MONO1 = DICOM / "cr_chest_monochrome1_jpeg_baseline.dcm"
SIIM = DICOM / "siim_cr_chest_jpeg_baseline.dcm"
CT = DICOM / "ct_abdomen_explicit_big_endian.dcm"


@lru_cache(maxsize=None)
def _read(name):
    """Decode each bundled file once per test session (the RG1 files are 1955x1841)."""
    return read_image(DICOM / name, on_non_radiograph="ignore")


def _raw(path):
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _pngs(label, n):
    return sorted((CXR1K / label).glob("*.png"))[:n]


# --- DICOM display chain ------------------------------------------------------


def test_dicom_output_is_float32_in_unit_range():
    for name in ("RG1_UNCR.dcm", SIIM.name, MONO1.name, CT.name):
        img = _read(name)
        assert img.dtype == np.float32 and img.ndim == 2
        assert img.min() == 0.0 and img.max() == 1.0


def test_jpeg2000_lossless_is_identical_to_uncompressed():
    assert np.array_equal(_raw(DICOM / "RG1_J2KR.dcm"), _raw(DICOM / "RG1_UNCR.dcm"))
    assert np.array_equal(_read("RG1_J2KR.dcm"), _read("RG1_UNCR.dcm"))


def test_jpeg2000_lossy_is_close_to_uncompressed():
    # Measured: max abs diff 0.01695, mean abs diff 0.00250 (after the [0, 1] pipeline).
    diff = np.abs(_read("RG1_J2KI.dcm") - _read("RG1_UNCR.dcm"))
    assert diff.max() < 0.02
    assert diff.mean() < 0.003
    assert diff.max() > 0  # it is lossy: identical output would mean the wrong file was read


def test_monochrome1_is_inverted_relative_to_stored_values():
    # The MONOCHROME1 file stores exactly the SIIM (MONOCHROME2) file's values, so
    # reading it correctly gives the SIIM output inverted (measured: r = -1.0000 both).
    assert np.array_equal(_raw(MONO1), _raw(SIIM))
    mono1 = _read(MONO1.name)
    assert _corr(mono1, _raw(MONO1)) < -0.999
    assert _corr(mono1, _read(SIIM.name)) < -0.999
    np.testing.assert_allclose(mono1, 1.0 - _read(SIIM.name), atol=1e-6)


def test_real_monochrome1_radiograph_comes_out_with_dark_lungs_like_monochrome2():
    # RG1 is a genuine MONOCHROME1 chest: inverted vs its stored values, and then it
    # looks like the MONOCHROME2 SIIM chest (measured r = 0.625 at 64x64, another patient).
    rg1 = _read("RG1_UNCR.dcm")
    assert _corr(rg1, _raw(DICOM / "RG1_UNCR.dcm")) < -0.999
    small = read_image(DICOM / "RG1_UNCR.dcm", image_size=64)
    assert _corr(small, read_image(SIIM, image_size=64)) > 0.5


def test_ct_triggers_the_modality_check():
    with pytest.warns(NonRadiographWarning, match=r"ct_abdomen.*Modality 'CT'"):
        img = read_image(CT)
    assert img.shape == (512, 512)
    with pytest.raises(ValueError, match=r"ct_abdomen.*Modality 'CT'"):
        read_image(CT, on_non_radiograph="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(CT, on_non_radiograph="ignore")
        read_image(SIIM)  # CR: no warning


def test_dicom_without_extension_is_recognised_by_its_preamble(tmp_path):
    copy = tmp_path / "IM0001"
    copy.write_bytes(SIIM.read_bytes())
    assert np.array_equal(read_image(copy), _read(SIIM.name))


def test_constant_image_scales_to_zeros():
    assert not io._minmax(np.full((4, 5), 7.0)).any()


# --- PNG / JPEG ---------------------------------------------------------------


def test_png_reads_as_float32_unit_range_and_resizes():
    path = _pngs("normal", 1)[0]
    img = read_image(path)
    assert img.shape == (256, 256) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    np.testing.assert_array_equal(img, np.asarray(Image.open(path), dtype=np.float32) / 255)
    small = read_image(path, image_size=(128, 96))
    assert small.shape == (128, 96) and small.dtype == np.float32
    assert abs(float(small.mean()) - float(img.mean())) < 0.01  # resize keeps the intensity


def test_16bit_and_rgb_png_and_jpeg_match_the_8bit_png(tmp_path):
    path = _pngs("normal", 1)[0]
    gray8 = np.asarray(Image.open(path))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    Image.fromarray(np.stack([gray8] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(gray8).save(tmp_path / "gray.jpg", quality=95)
    expected = read_image(path)
    assert Image.open(tmp_path / "16bit.png").mode.startswith("I")
    np.testing.assert_allclose(read_image(tmp_path / "16bit.png"), expected, atol=1e-6)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), expected)
    assert np.abs(read_image(tmp_path / "gray.jpg") - expected).mean() < 0.01


# --- bad input ----------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path):
    """Each kind of bad file, and the error and message it must raise."""
    truncated = tmp_path / "truncated.dcm"
    raw = (DICOM / "RG1_UNCR.dcm").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    truncated_jpeg = tmp_path / "truncated_jpeg.dcm"
    truncated_jpeg.write_bytes(SIIM.read_bytes()[:50_000])
    no_pixels = tmp_path / "no_pixels.dcm"
    ds = pydicom.dcmread(SIIM)
    del ds.PixelData
    ds.save_as(no_pixels)
    colour = tmp_path / "colour.dcm"
    ds = pydicom.dcmread(SIIM)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    ds.save_as(colour)
    multi = tmp_path / "multi.dcm"
    ds = pydicom.dcmread(SIIM)
    ds.NumberOfFrames = 2
    ds.save_as(multi)
    text_png = tmp_path / "text.png"
    text_png.write_text("not an image\n")
    text_dcm = tmp_path / "text.dcm"
    text_dcm.write_text("not a dicom file\n")
    unknown = tmp_path / "image.xyz"
    unknown.write_text("whatever\n")
    return [
        (truncated, io.DicomDecodeError, "pixel data is truncated"),
        (truncated_jpeg, ValueError, "no pixel data.*truncated"),
        (no_pixels, ValueError, "no pixel data"),
        (colour, io.DicomValueError, "not a grayscale DICOM"),
        (multi, io.DicomValueError, r"NumberOfFrames.*multi-frame"),
        (text_png, ValueError, "Could not decode image file"),
        (text_dcm, ValueError, "not a DICOM file"),
        (unknown, ValueError, r"Unknown image file type '\.xyz'.*\.png"),
        (tmp_path / "missing.png", FileNotFoundError, "No such image file"),
    ]


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom, on the truncated JPEG file
def test_each_bad_input_raises_its_error_naming_the_file(bad_files):
    for path, error, message in bad_files:
        with pytest.raises(error, match=message) as info:
            read_image(path)
        assert str(path) in str(info.value), path


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_read_images_skips_and_reports_bad_files(bad_files):
    bad = [path for path, _, _ in bad_files]
    paths = [SIIM, *bad, _pngs("normal", 1)[0]]
    images, indices, errors = read_images(paths, image_size=32, on_error="skip")
    assert images.shape == (2, 32, 32) and images.dtype == np.float32
    assert indices.tolist() == [0, len(paths) - 1]
    assert [e.index for e in errors] == list(range(1, len(bad) + 1))
    for e, (path, error, message) in zip(errors, bad_files):
        assert e.path == str(path) and isinstance(e.error, error)
    with pytest.raises(ValueError, match="truncated.dcm"):  # the first bad file, in input order
        read_images(paths, image_size=32)


def test_read_images_with_threads_warns_once_for_the_batch():
    paths = [CT, SIIM, CT]
    with parallel_config(backend="threading"):
        with pytest.warns(NonRadiographWarning, match="2 of 3 files") as record:
            result = read_images(paths, image_size=16, n_jobs=2)
    assert len([w for w in record if w.category is NonRadiographWarning]) == 1
    assert result.images.shape == (3, 16, 16)
    skipped = read_images(paths, image_size=16, on_error="skip", on_non_radiograph="raise")
    assert skipped.indices.tolist() == [1] and [e.index for e in skipped.errors] == [0, 2]


def test_read_images_rejects_a_single_path_and_mixed_sizes():
    with pytest.raises(TypeError, match="single path"):
        read_images(str(SIIM), image_size=16)
    with pytest.raises(ValueError, match="differ in size"):
        read_images([SIIM, _pngs("normal", 1)[0]], image_size=None)
    with pytest.raises(ValueError, match="image_size"):
        read_image(SIIM, image_size=0)


def test_missing_decoder_names_the_packages_to_install():
    # A fresh interpreter where pydicom's decoder plugins cannot import their
    # libraries (pylibjpeg, gdcm, Pillow), i.e. a real "not installed" situation:
    # pydicom itself registers them as missing and raises its own RuntimeError.
    code = f"""
import sys
for name in ("pylibjpeg", "openjpeg", "libjpeg", "gdcm", "PIL"):
    sys.modules[name] = None
import pydicom.pixels.decoders  # registers the decoding plugins, here all unavailable
for name in ("PIL",):
    del sys.modules[name]  # dp_sklearn itself needs Pillow for PNG
from dp_sklearn.data.io import read_image, MissingDecoderError
try:
    read_image({str(DICOM / "RG1_J2KR.dcm")!r})
except MissingDecoderError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RG1_J2KR.dcm" in out.stdout
    assert 'pip install "dp-sklearn[dicom]"' in out.stdout
    assert "pylibjpeg-openjpeg" in out.stdout
    assert "missing dependencies" in out.stdout  # pydicom's own message is kept


def test_missing_decoder_detection_matches_pydicom_errors():
    err = RuntimeError(
        "Unable to decompress 'JPEG 2000 Image Compression' pixel data because all plugins are missing dependencies:"
    )
    assert io._is_missing_decoder_error(err)
    # pydicom's NotImplementedError for a transfer syntax it has no decoder for is *not* a missing
    # decoder: nothing to install would help (see test_dicom_robustness.py).
    assert not io._is_missing_decoder_error(NotImplementedError("No pixel data decoders have been implemented for 'x'"))
    assert not io._is_missing_decoder_error(RuntimeError("Unable to decode as exceptions were raised by all"))
    assert issubclass(MissingDecoderError, RuntimeError)


# --- transformer --------------------------------------------------------------


def test_xray_reader_in_a_pipeline_fits_on_png_paths():
    paths = [str(p) for p in _pngs("normal", 4) + _pngs("covid19", 4)]
    y = np.array([0] * 4 + [1] * 4)
    pipe = Pipeline(
        [
            ("read", XRayReader(image_size=32, normalize="zscore")),
            ("flat", FunctionTransformer(lambda a: a.reshape(len(a), -1))),
            ("lr", LogisticRegression(max_iter=200)),
        ]
    )
    pipe.fit(paths, y)
    assert pipe.predict(paths).shape == (8,)
    assert pipe.predict_proba(np.array(paths)[:, None]).shape == (8, 2)  # a one-column table of paths


def test_xray_reader_params_normalisation_and_zero_rows(tmp_path):
    reader = XRayReader(image_size=16, normalize="minmax", on_error="zeros")
    assert clone(reader).get_params() == reader.get_params()
    missing = tmp_path / "gone.png"
    with pytest.warns(UnreadableImageWarning, match="gone.png"):
        X = reader.fit_transform([_pngs("normal", 1)[0], missing])
    assert X.shape == (2, 16, 16) and X.dtype == np.float32
    assert X[0].min() == 0.0 and X[0].max() == 1.0 and not X[1].any()
    z = XRayReader(image_size=16, normalize="zscore").transform(_pngs("normal", 2))
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1, atol=1e-4)
    for bad in ({"normalize": "l2"}, {"on_error": "skip"}, {"image_size": -1}, {"on_non_radiograph": "no"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            XRayReader(**bad).fit([SIIM])
    with pytest.raises(TypeError, match="numeric array"):
        XRayReader().fit_transform(np.zeros((2, 8, 8)))


def test_docstring_examples_run():
    failures, tried = doctest.testmod(io, optionflags=doctest.ELLIPSIS)[:2]
    assert tried > 0 and failures == 0
