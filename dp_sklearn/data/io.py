"""Reading chest radiographs from DICOM, PNG and JPEG files.

Every reader returns float32 pixels in [0, 1] with dark lungs (MONOCHROME2
orientation), whatever the file stored. DICOM goes through the display chain
of the standard: modality LUT (rescale slope/intercept), VOI LUT or window,
inversion of MONOCHROME1, then min-max scaling. Compressed transfer syntaxes
are decoded by pydicom's plugins (pylibjpeg with its libjpeg and openjpeg
plugins, ``pip install "dp-sklearn[dicom]"``).

Public API
----------
read_image
    One file to a float32 ``(H, W)`` array.
read_images
    Many files to a float32 ``(n, H, W)`` array, optionally skipping and
    reporting unreadable files, optionally in parallel (joblib).
XRayReader
    The same as a scikit-learn transformer, for the first step of a Pipeline.
bundled_dicom_dir
    The folder of the real DICOM files shipped with the package.

Reading is side-effect free (no global state, no caching, no writes), so a
torch ``Dataset`` can call :func:`read_image` per item from worker processes.
Resizing uses Pillow's antialiased bilinear filter on float32 pixels, which
matches ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``
to float rounding (~1e-7).
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from joblib import Parallel, delayed
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = [
    "DICOM_EXTENSIONS",
    "DicomDecodeError",
    "DicomError",
    "DicomValueError",
    "PILLOW_EXTENSIONS",
    "RADIOGRAPH_MODALITIES",
    "MissingDecoderError",
    "NonRadiographWarning",
    "ReadError",
    "ReadResult",
    "UnreadableImageWarning",
    "XRayReader",
    "bundled_dicom_dir",
    "read_image",
    "read_images",
    "read_mask",
]

DICOM_EXTENSIONS = (".dcm", ".dicom")
PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: DICOM Modality codes of projection radiographs; a missing Modality is accepted too.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})

_NON_RADIOGRAPH_OPTIONS = ("warn", "raise", "ignore")
_DECODER_HINT = (
    'install the DICOM decoders: pip install "dp-sklearn[dicom]" '
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"
)
# Pixel values of 16-bit PNGs are scaled by the largest 16-bit value.
_PILLOW_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class NonRadiographWarning(UserWarning):
    """A DICOM file's Modality says it is not a radiograph (e.g. CT, MR)."""


class UnreadableImageWarning(UserWarning):
    """:class:`XRayReader` replaced an unreadable file by an all-zero image."""


class DicomError(ValueError):
    """A DICOM file that cannot give a trustworthy image.

    The message names the file and, where one is to blame, the DICOM tag
    (keyword), which are also kept as the attributes ``path`` and ``tag``.
    A ``ValueError``, so ``read_images(on_error="skip")`` skips it.
    """

    def __init__(self, path, tag, detail):
        self.path, self.tag, self.detail = str(path), tag, detail
        where = f" (tag {tag})" if tag else ""
        super().__init__(f"{path}{where}: {detail}")

    def __reduce__(self):  # joblib workers hand errors back pickled
        return type(self), (self.path, self.tag, self.detail)


class DicomValueError(DicomError):
    """A DICOM header value that is missing, non-finite or out of range.

    Rescale slope/intercept, window centre/width, a LUT descriptor, the image
    geometry: anything that would otherwise turn into NaN or a blank image.
    """


class DicomDecodeError(DicomError):
    """DICOM pixel data that cannot be decoded: corrupt, truncated, or a transfer
    syntax that pydicom has no decoder for at all (nothing to install)."""


class MissingDecoderError(RuntimeError):
    """A DICOM file is compressed and no installed plugin can decode it.

    This is a problem of the environment, not of the file; the message names
    the packages to install.
    """


class ReadError(NamedTuple):
    """One file that :func:`read_images` could not read."""

    index: int
    path: str
    error: Exception


class ReadResult(NamedTuple):
    """What :func:`read_images` returns; unpacks as ``images, indices, errors``.

    Attributes
    ----------
    images : ndarray of float32, shape (n_read, H, W)
        The images that were read, in input order.
    indices : ndarray of int, shape (n_read,)
        Position in the input of each row of ``images``, to select the matching
        labels: ``y[result.indices]``.
    errors : list of ReadError
        ``(index, path, error)`` of each skipped file, in input order.
    """

    images: np.ndarray
    indices: np.ndarray
    errors: list[ReadError]


def bundled_dicom_dir() -> Path:
    """Return the folder of the real DICOM files bundled with dp_sklearn.

    See ``dp_sklearn/datasets/data/README.md`` for what each file is.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> from dp_sklearn.data.io import bundled_dicom_dir
    >>> (bundled_dicom_dir() / "RG1_UNCR.dcm").is_file()
    True
    """
    return Path(__file__).resolve().parent.parent / "datasets" / "data" / "dicom"


# ----------------------------------------------------------------------------
# One file
# ----------------------------------------------------------------------------


def read_image(path, *, image_size=None, on_non_radiograph="warn") -> np.ndarray:
    """Read a chest radiograph file into a float32 ``(H, W)`` array in [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM file (``.dcm``, ``.dicom``, or any file with the ``DICM``
        preamble), a PNG or a JPEG.
    image_size : int or (int, int), default=None
        Output ``(H, W)`` (an int means square). Resized with antialiased
        bilinear resampling; the aspect ratio is not kept. ``None`` keeps the
        stored size.
    on_non_radiograph : {"warn", "raise", "ignore"}, default="warn"
        What to do with a DICOM whose Modality is not a radiograph modality
        (CR, DX, RG; a missing Modality is accepted): issue a
        :class:`NonRadiographWarning`, raise ``ValueError``, or read it silently.

    Returns
    -------
    ndarray of float32, shape (H, W)
        Dark lungs, bright bone. DICOM: modality LUT, VOI LUT or window,
        MONOCHROME1 inverted, then min-max scaled (a constant image gives
        zeros). PNG/JPEG: 8-bit divided by 255, 16-bit by 65535, colour
        converted to grayscale.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unknown file type, a file that cannot be decoded (corrupt, truncated),
        a DICOM without pixel data, multi-frame or colour, or a non-radiograph
        with ``on_non_radiograph="raise"``. The message names the file.
    MissingDecoderError
        A compressed DICOM for which no decoder is installed; the message names
        the packages to install.

    Examples
    --------
    >>> from dp_sklearn.data.io import bundled_dicom_dir, read_image
    >>> img = read_image(bundled_dicom_dir() / "siim_cr_chest_jpeg_baseline.dcm")
    >>> img.shape, img.dtype, float(img.min()), float(img.max())
    ((1024, 1024), dtype('float32'), 0.0, 1.0)
    >>> read_image(bundled_dicom_dir() / "siim_cr_chest_jpeg_baseline.dcm", image_size=(128, 96)).shape
    (128, 96)
    """
    _check_option("on_non_radiograph", on_non_radiograph, _NON_RADIOGRAPH_OPTIONS)
    size = _check_image_size(image_size)
    image, note = _read(path, size, on_non_radiograph)
    if note is not None:
        warnings.warn(
            f"{note}. Pass on_non_radiograph='ignore' to read it silently or 'raise' to reject it.",
            NonRadiographWarning,
            stacklevel=2,
        )
    return image


def _read(path, size, on_non_radiograph) -> tuple[np.ndarray, str | None]:
    """Read one file; return the image and a non-radiograph note (or None).

    Warnings are returned, not issued, so that joblib workers can hand them
    back to the parent process.
    """
    path = _as_path(path)
    if _file_kind(path) == "dicom":
        image, note = _read_dicom(path, on_non_radiograph)
    else:
        image, note = _read_pillow(path), None
    if not np.isfinite(image).all():  # the checks above should make this unreachable
        raise DicomError(path, None, "the image has non-finite pixels after decoding.")
    if size is not None and image.shape != size:
        image = _resize(image, size)
    return image, note


def _as_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"An image path must be a str or os.PathLike, got {type(path).__name__}: {path!r}.")
    return Path(path)


def _file_kind(path: Path) -> str:
    """Return "dicom" or "pillow", or raise for a missing or unknown file."""
    if not path.exists():
        raise FileNotFoundError(2, "No such image file", str(path))
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file.")
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return "dicom"
    if suffix in PILLOW_EXTENSIONS:
        return "pillow"
    if _has_dicm_preamble(path):
        return "dicom"
    raise ValueError(
        f"Unknown image file type {suffix or '(no extension)'!r} for {path}: supported are DICOM "
        f"({', '.join(DICOM_EXTENSIONS)}, or any file with the DICM preamble), PNG and JPEG "
        f"({', '.join(PILLOW_EXTENSIONS)})."
    )


def _has_dicm_preamble(path: Path) -> bool:
    """True if the file has the DICOM Part 10 marker 'DICM' at byte 128."""
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


# ----------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------


def _read_dicom(path: Path, on_non_radiograph: str) -> tuple[np.ndarray, str | None]:
    """The display chain, with every failure a :class:`DicomError` naming the file and tag.

    Anything the checks below did not foresee (pydicom parsing a mangled element
    lazily, a decoder's own exception type) is still turned into a ``DicomError``
    naming the step it happened in, so a bad file can never escape
    ``read_images(on_error="skip")`` as some other exception type.
    """
    step = {"tag": None}
    try:
        return _display_chain(path, on_non_radiograph, step)
    except (DicomError, MissingDecoderError, FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the file's content, whatever pydicom made of it
        raise DicomError(path, step["tag"], f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc


def _display_chain(path: Path, on_non_radiograph: str, step: dict) -> tuple[np.ndarray, str | None]:
    step["tag"] = "file header"
    ds = _dcmread(path)
    _check_single_gray_image(ds, path)
    step["tag"] = "Modality"
    note = _non_radiograph_note(ds, path)
    if note is not None and on_non_radiograph == "raise":
        raise DicomValueError(
            path, "Modality",
            f"DICOM Modality {_modality(ds)!r} is not a radiograph modality "
            f"({', '.join(sorted(RADIOGRAPH_MODALITIES))}); on_non_radiograph='raise' rejects it.",
        )
    step["tag"] = "PixelData"
    _check_pixel_module(ds, path)
    step["tag"] = "ModalityLUT"
    _check_modality(ds, path)  # header values first: cheap, and before a costly decode
    step["tag"] = "VOILUT"
    _check_voi(ds, path)
    step["tag"] = "PixelData"
    raw = _decode_pixels(ds, path)
    step["tag"] = "ModalityLUT"
    image = _linear_display(raw, ds, path)
    if image is None:
        image = _minmax(_display_values(raw, ds, path, step))
    return image, (note if on_non_radiograph == "warn" else None)


def _display_values(arr: np.ndarray, ds, path: Path, step=None) -> np.ndarray:
    """The display chain before scaling, in float64 through pydicom: modality LUT or rescale,
    VOI LUT or window, MONOCHROME1 inverted. Works on the whole image (any LUT, any VOI
    function) or, for :func:`_linear_display`, on a few stored values."""
    step = {} if step is None else step
    step["tag"] = "ModalityLUT"
    arr = _apply_modality(arr, ds, path)
    step["tag"] = "VOILUT"
    arr = _apply_voi(arr, ds, path)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        # MONOCHROME1 stores air as the highest value: flip so that lungs are dark.
        arr = -arr
    return arr


# Largest ratio (|lo| + |hi|) / (hi - lo) of the stored-value interval [lo, hi] that the float32
# fast path accepts: its error is below about (ratio + 2) * 2**-24 (4e-6 at 64) of the [0, 1] output.
_FLOAT32_SPREAD = 64.0


def _linear_display(raw: np.ndarray, ds, path: Path) -> np.ndarray | None:
    """The display chain and min-max scaling in one linear map, or None when it does not apply.

    With a rescale (no Modality LUT Sequence) and a LINEAR / LINEAR_EXACT window or none (no VOI
    LUT Sequence), the chain is monotonic in the stored value x: constant below and above an
    interval [lo, hi] (the stored range cut by the window) and affine on it. The scaled image is
    thus ``clip((x - lo) / (hi - lo), 0, 1)`` or its mirror ``(hi - x) / (hi - lo)``, which is
    two or three float32 passes over the pixels instead of pydicom's float64 window on the
    image. Which of the two, and every check of the full chain (finite rescale, finite window,
    a window that misses every pixel), comes from :func:`_display_values` run on the stored
    values min, lo, (lo + hi) / 2, hi and max: since the chain is monotonic, they carry its
    extremes, and they confirm the model (flat outside [lo, hi], affine inside) against pydicom.
    Anything else (LUT sequences, SIGMOID, a LINEAR window of width 1, a constant image, a
    failed check) returns None and goes through the full chain, errors included.
    """
    if raw.dtype.kind not in "ui" or raw.size == 0:
        return None
    tag, slope, intercept = _check_modality(ds, path)
    voi = _check_voi(ds, path)
    if tag == "ModalityLUTSequence" or voi == "VOILUTSequence":
        return None
    xmin, xmax = int(raw.min()), int(raw.max())
    if xmin == xmax:
        return None
    lo, hi = float(xmin), float(xmax)
    if voi is not None:  # a window; None: no VOI step at all
        function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper() or "LINEAR"
        center, width = _float_value(ds, "WindowCenter", path), _float_value(ds, "WindowWidth", path)
        if function == "LINEAR":  # PS3.3 C.11.2.1.2.1, as pydicom's apply_windowing
            center, width = center - 0.5, width - 1
        if function not in ("LINEAR", "LINEAR_EXACT") or not width > 0:
            return None
        s = 1.0 if slope is None else slope
        b = 0.0 if intercept is None else intercept
        with np.errstate(all="ignore"):
            edges = (np.array([center - width / 2, center + width / 2]) - b) / s
        if not np.isfinite(edges).all():
            return None
        lo, hi = max(lo, float(edges.min())), min(hi, float(edges.max()))
        if not lo < hi:
            return None
    try:
        with np.errstate(all="ignore"):
            v = _display_values(np.array([xmin, lo, (lo + hi) / 2, hi, xmax], dtype=np.float64), ds, path)
    except DicomError:
        return None  # the full chain raises it again, with the image's own values
    span = v[3] - v[1]
    # The model checked against pydicom's own values: constant outside [lo, hi], affine inside.
    tol = 1e-9 * abs(span)
    if not (np.isfinite(v).all() and np.isfinite(span) and span != 0 and abs(v[0] - v[1]) <= tol
            and abs(v[4] - v[3]) <= tol and abs(v[2] - (v[1] + v[3]) / 2) <= tol):
        return None
    exact32 = max(-xmin, xmax) <= 2**24 and (abs(lo) + abs(hi)) <= _FLOAT32_SPREAD * (hi - lo)
    dtype = np.float32 if exact32 else np.float64
    out = np.empty(raw.shape, dtype=dtype)
    if span > 0:
        np.subtract(raw, dtype(lo), out=out, dtype=dtype, casting="unsafe")
    else:
        np.subtract(dtype(hi), raw, out=out, dtype=dtype, casting="unsafe")
    np.divide(out, dtype(hi - lo), out=out)
    if lo > xmin or hi < xmax:  # the window cuts the stored range
        np.clip(out, 0.0, 1.0, out=out)
    return out if dtype is np.float32 else out.astype(np.float32)


def _dcmread(path: Path):
    # Files named .dcm without the 128-byte preamble (old exports) need force=True;
    # a non-DICOM file read that way yields no image elements, caught below.
    has_preamble = _has_dicm_preamble(path)
    try:
        ds = pydicom.dcmread(path, force=not has_preamble)
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, EOFError, zlib.error, struct.error, ...
        raise DicomError(path, "file header", f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if not has_preamble and "PixelData" not in ds and "Rows" not in ds:
        raise DicomError(path, None, "not a DICOM file: no 'DICM' preamble and no DICOM image elements.")
    return ds


def _int_value(ds, keyword: str, path: Path, default=None) -> int:
    """An integer header value, or a DicomValueError naming the tag."""
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise DicomValueError(path, keyword, f"{keyword} is missing; it is required to read the pixels.")
        return default
    try:
        out = float(value)
        if not np.isfinite(out) or out != int(out):
            raise ValueError
    except (TypeError, ValueError):
        raise DicomValueError(path, keyword, f"{keyword} must be an integer, got {value!r}.") from None
    return int(out)


def _float_value(ds, keyword: str, path: Path) -> float | None:
    """The first value of a DS element as a finite float; None when absent or empty."""
    # No warnings.catch_warnings here: it is not thread-safe, and read_images may use threads.
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    first = value[0] if isinstance(value, (list, tuple, MultiValue)) else value
    try:
        out = float(first)
    except (TypeError, ValueError):
        raise DicomValueError(path, keyword, f"{keyword} is not a number: {value!r}.") from None
    if not np.isfinite(out):
        raise DicomValueError(path, keyword, f"{keyword} is {out} (not finite); the image would be NaN.")
    return out


def _check_single_gray_image(ds, path: Path) -> None:
    """Reject what is not one grayscale image, before the costly decode."""
    if "PixelData" not in ds:
        raise DicomError(
            path, "PixelData",
            "no pixel data (no PixelData element): it is not an image DICOM (e.g. a structured report), "
            "or the file is truncated."
        )
    frames = _int_value(ds, "NumberOfFrames", path, default=1)
    if frames > 1:
        raise DicomValueError(
            path, "NumberOfFrames", f"a multi-frame DICOM ({frames} frames); only single radiographs are supported."
        )
    if frames < 1:
        raise DicomValueError(path, "NumberOfFrames", f"NumberOfFrames is {frames}; it must be at least 1.")
    samples = _int_value(ds, "SamplesPerPixel", path, default=1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomValueError(
            path, "PhotometricInterpretation" if samples == 1 else "SamplesPerPixel",
            f"not a grayscale DICOM (SamplesPerPixel={samples}, PhotometricInterpretation="
            f"{photometric or 'missing'!s}); only MONOCHROME1/MONOCHROME2 radiographs are supported."
        )


def _check_pixel_module(ds, path: Path) -> None:
    """The Image Pixel module's geometry and bit depths, each in its legal range."""
    for keyword in ("Rows", "Columns"):
        if _int_value(ds, keyword, path) < 1:
            raise DicomValueError(path, keyword, f"{keyword} is {ds.get(keyword)}; an image needs at least 1.")
    allocated = _int_value(ds, "BitsAllocated", path)
    if allocated not in (1, 8, 16, 32):
        raise DicomValueError(path, "BitsAllocated", f"BitsAllocated is {allocated}; a grayscale image has 1, 8, 16 or 32.")
    stored = _int_value(ds, "BitsStored", path, default=allocated)
    if not 1 <= stored <= allocated:
        raise DicomValueError(path, "BitsStored", f"BitsStored is {stored}; it must be in 1..BitsAllocated ({allocated}).")
    high = _int_value(ds, "HighBit", path, default=stored - 1)
    if not 0 <= high < allocated:
        raise DicomValueError(path, "HighBit", f"HighBit is {high}; it must be in 0..BitsAllocated-1 ({allocated - 1}).")
    representation = _int_value(ds, "PixelRepresentation", path, default=0)
    if representation not in (0, 1):
        raise DicomValueError(
            path, "PixelRepresentation", f"PixelRepresentation is {representation}; it must be 0 (unsigned) or 1 (signed)."
        )


def _modality(ds) -> str:
    return str(ds.get("Modality", "") or "").strip().upper()


def _non_radiograph_note(ds, path: Path) -> str | None:
    modality = _modality(ds)
    if not modality or modality in RADIOGRAPH_MODALITIES:
        return None
    return (
        f"{path} has DICOM Modality {modality!r}, which is not a radiograph modality "
        f"({', '.join(sorted(RADIOGRAPH_MODALITIES))})"
    )


# Codestreams that end with an end-of-image marker (FF D9: JPEG EOI, JPEG 2000 EOC).
_MARKER_TERMINATED = frozenset(
    (*pydicom.uid.JPEGTransferSyntaxes, *pydicom.uid.JPEGLSTransferSyntaxes, *pydicom.uid.JPEG2000TransferSyntaxes)
)


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    # A file without file meta (read with force=True) is implicit VR little endian.
    return pydicom.uid.UID(str(uid).strip()) if uid else pydicom.uid.ImplicitVRLittleEndian


def _decode_pixels(ds, path: Path) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    known = syntax in pydicom.uid.AllTransferSyntaxes
    name = syntax.name if known else "unknown"
    if not known or syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DicomDecodeError(
                path, "TransferSyntaxUID",
                f"transfer syntax {str(syntax)!r} ({name}) is unknown or not one that pydicom can decode; "
                "no package to install would help: convert the file (e.g. to explicit VR little endian)."
            ) from None
        if not decoder.is_available:
            raise _missing_decoder_error(path, name, decoder.missing_dependencies)
    if syntax in _MARKER_TERMINATED:
        _check_codestream_complete(ds, path, name)
    elif not syntax.is_compressed:
        expected = -(-int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8)
        if len(ds.PixelData) < expected:
            raise DicomDecodeError(
                path, "PixelData",
                f"the pixel data is truncated: {len(ds.PixelData)} of the {expected} bytes that Rows, Columns "
                "and BitsAllocated announce.",
            )
    try:
        arr = ds.pixel_array
    except (MemoryError, MissingDecoderError):
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder raises its own types
        if _is_missing_decoder_error(exc):
            raise _missing_decoder_error(path, name, [str(exc)]) from exc
        raise DicomDecodeError(
            path, "PixelData", f"could not decode the pixel data ({name}): {type(exc).__name__}: {exc}"
        ) from exc
    expected = (int(ds.Rows), int(ds.Columns))
    if arr.ndim != 2 or arr.shape != expected:  # headers that disagree with the pixels
        raise DicomDecodeError(
            path, "PixelData", f"decoded to shape {arr.shape}, not the {expected[0]}x{expected[1]} image of Rows/Columns."
        )
    return arr


def _check_codestream_complete(ds, path: Path, name: str) -> None:
    """A JPEG-family codestream cut short decodes with its missing rows constant: refuse it."""
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (MemoryError, DicomError):
        raise
    except Exception as exc:  # noqa: BLE001 - a mangled item structure
        raise DicomDecodeError(path, "PixelData", f"the encapsulated pixel data is malformed ({name}): {exc}") from exc
    if not bytes(frame[-16:]).rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise DicomDecodeError(
            path, "PixelData",
            f"the compressed pixel data is truncated ({name} codestream of {len(frame)} bytes without its "
            "end-of-image marker): part of the image would be missing."
        )


def _is_missing_decoder_error(exc: BaseException) -> bool:
    """True for pydicom's "plugins are missing dependencies" errors (vs a corrupt stream)."""
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("missing dependencies", "no available image handler")
    )


def _missing_decoder_error(path, name, missing) -> MissingDecoderError:
    """Build the error for a compressed DICOM whose decoder plugins are not installed."""
    return MissingDecoderError(
        f"Cannot decode {path}: its pixel data is compressed ({name}) and no installed "
        f"decoder supports it; {_DECODER_HINT}. pydicom reports the plugins' missing dependencies: "
        + "; ".join(map(str, missing))
    )


def _check_lut_item(item, path: Path, tag: str) -> None:
    """A LUT item's descriptor: 3 values, 8 or 16 bits per entry, as many LUTData values as entries."""
    descriptor = item.get("LUTDescriptor", None)
    if descriptor is None or "LUTData" not in item:
        raise DicomValueError(path, tag, "a LUT item without LUTDescriptor or LUTData.")
    try:
        n_entries, _, bits = (int(v) for v in descriptor)
    except (TypeError, ValueError):
        raise DicomValueError(path, tag, f"LUTDescriptor must hold 3 integers, got {descriptor!r}.") from None
    if bits not in (8, 16):
        raise DicomValueError(path, tag, f"LUTDescriptor gives {bits} bits per LUT entry; the standard allows 8 or 16.")
    n_entries = n_entries or 65536  # 0 means 2**16 entries
    data = item.LUTData
    n_data = len(data) if isinstance(data, (list, tuple, MultiValue)) else (
        len(data) // 2 if isinstance(data, bytes) else 1)
    if n_data != n_entries:
        raise DicomValueError(path, tag, f"LUTDescriptor announces {n_entries} entries but LUTData holds {n_data}.")


def _check_modality(ds, path: Path):
    """Validate the modality LUT or rescale values; return ``(tag, slope, intercept)``."""
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        _check_lut_item(ds.ModalityLUTSequence[0], path, "ModalityLUTSequence")
        return "ModalityLUTSequence", None, None
    slope = _float_value(ds, "RescaleSlope", path)
    intercept = _float_value(ds, "RescaleIntercept", path)
    if slope == 0:
        raise DicomValueError(path, "RescaleSlope", "RescaleSlope is 0: every pixel would get the same value.")
    return ("RescaleSlope" if slope not in (None, 1.0) else "RescaleIntercept"), slope, intercept


def _apply_modality(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    """Modality LUT: a LUT sequence or rescale slope/intercept, to float64 that must stay finite."""
    tag, slope, intercept = _check_modality(ds, path)
    if tag == "ModalityLUTSequence":
        try:
            out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DicomValueError(path, tag, f"the modality LUT cannot be applied: {type(exc).__name__}: {exc}") from exc
    else:
        # float64 before any arithmetic: negating or scaling unsigned ints would wrap around.
        out = arr.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if slope is not None:
                out *= slope
            if intercept is not None:
                out += intercept
    if not np.isfinite(out).all():
        raise DicomValueError(path, tag, "the modality LUT / rescale overflows to non-finite values: out of range.")
    return out


def _check_voi(ds, path: Path) -> str | None:
    """Validate the VOI LUT or window; return the tag to blame, or None when there is none."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        _check_lut_item(ds.VOILUTSequence[0], path, "VOILUTSequence")
        return "VOILUTSequence"
    center = _float_value(ds, "WindowCenter", path)
    width = _float_value(ds, "WindowWidth", path)
    if center is None or width is None:
        return None  # no window: min-max scaling does the job of a full window
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper() or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise DicomValueError(
            path, "VOILUTFunction", f"VOILUTFunction is {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID."
        )
    if width < (1 if function == "LINEAR" else np.finfo(np.float64).tiny):
        raise DicomValueError(
            path, "WindowWidth", f"WindowWidth is {width}; the standard requires at least 1 for a LINEAR window "
            "and more than 0 otherwise."
        )
    return "WindowWidth"


def _apply_voi(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    """VOI LUT or window when the file has one; the values must stay finite and not turn blank."""
    tag = _check_voi(ds, path)
    if tag is None:
        return arr
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DicomValueError(path, tag, f"the VOI LUT / window cannot be applied: {type(exc).__name__}: {exc}") from exc
    if not np.isfinite(out).all():
        raise DicomValueError(path, tag, "the VOI LUT / window gives non-finite values: out of range.")
    if out.size and out.min() == out.max() and arr.min() != arr.max():
        which = "the VOI LUT" if tag == "VOILUTSequence" else (
            f"the window (WindowCenter {_float_value(ds, 'WindowCenter', path)}, WindowWidth "
            f"{_float_value(ds, 'WindowWidth', path)})")
        raise DicomValueError(
            path, tag if tag == "VOILUTSequence" else "WindowCenter",
            f"{which} maps every pixel (values {arr.min():g}..{arr.max():g}) to one value: out of the "
            "image's range, the image would be blank.",
        )
    return out


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Scale a finite float64 array to float32 [0, 1]."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:  # constant image: no contrast to scale
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


# ----------------------------------------------------------------------------
# PNG / JPEG
# ----------------------------------------------------------------------------


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return _pillow_to_float(img)
    except PermissionError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError (not an image) and truncated files are OSErrors.
        raise ValueError(f"Could not decode image file {path}: {exc}") from exc


def _pillow_to_float(img: Image.Image) -> np.ndarray:
    if img.mode in _PILLOW_16BIT_MODES:
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return np.clip(arr, 0.0, 1.0)
    if img.mode != "L":  # RGB(A), palette, bilevel, CMYK: ITU-R 601 luma
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a float image to ``size = (H, W)``."""
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def read_mask(path, *, image_size=None) -> np.ndarray:
    """Read a lesion mask file into a boolean ``(H, W)`` array, checked like an array mask.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG (or JPEG, not advised: lossy) whose pixels are only 0 and 1, or 0 and
        the largest value of its bit depth (255, 65535). Colour masks must be gray.
    image_size : int or (int, int), default=None
        Output ``(H, W)``; resized bilinearly and thresholded at one half.

    Returns
    -------
    ndarray of bool, shape (H, W)

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Not an image, or pixel values other than {0, 1} / {0, max}; the message
        names the file and the values found.

    Examples
    --------
    >>> from pathlib import Path
    >>> from dp_sklearn.data.io import bundled_dicom_dir, read_mask
    >>> m = next((bundled_dicom_dir().parent / "cxr1k" / "masks" / "pneumonia").glob("*.png"))
    >>> mask = read_mask(m, image_size=64)
    >>> mask.dtype, mask.shape
    (dtype('bool'), (64, 64))
    """
    path = _as_path(path)
    size = _check_image_size(image_size)
    if _file_kind(path) != "pillow":
        raise ValueError(f"Mask file {path} must be a PNG or JPEG image.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("1", "L", "P", *_PILLOW_16BIT_MODES):
                img = img.convert("L")
            elif img.mode == "P":
                img = img.convert("L")
            arr = np.asarray(img)
    except PermissionError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"Could not decode mask file {path}: {exc}") from exc
    if arr.dtype == bool:
        mask = arr
    else:
        values = np.unique(arr)
        top = 65535 if arr.dtype.itemsize > 1 else 255
        if np.isin(values, (0, 1)).all():
            mask = arr > 0
        elif np.isin(values, (0, top)).all():
            mask = arr > 0
        else:
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise ValueError(
                f"Mask file {path} must hold only 0 and 1, or 0 and {top}; found {len(values)} values: {shown}. "
                "Is it an image rather than a mask?"
            )
    if size is not None and mask.shape != size:
        mask = _resize(mask.astype(np.float32), size) >= 0.5
    return mask


# ----------------------------------------------------------------------------
# Many files
# ----------------------------------------------------------------------------


def read_images(paths, *, image_size, on_error="raise", on_non_radiograph="warn", n_jobs=None) -> ReadResult:
    """Read many radiograph files into one float32 ``(n, H, W)`` array.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        A list, a 1-D array, or an ``(n, 1)`` array (a one-column DataFrame).
    image_size : int, (int, int) or None
        Output ``(H, W)`` of every image, see :func:`read_image`. ``None`` keeps
        the stored sizes, which must then all be equal.
    on_error : {"raise", "skip"}, default="raise"
        ``"raise"`` raises the first file's error (in input order); ``"skip"``
        leaves unreadable files out and reports them in ``errors``.
    on_non_radiograph : {"warn", "raise", "ignore"}, default="warn"
        As in :func:`read_image`. ``"warn"`` issues one
        :class:`NonRadiographWarning` for the whole batch; ``"raise"`` makes such
        files errors, skipped under ``on_error="skip"``.
    n_jobs : int, default=None
        Number of joblib workers; ``None`` means 1 unless in a
        ``joblib.parallel_config`` context, ``-1`` means all CPUs.

    Returns
    -------
    ReadResult
        A named tuple ``(images, indices, errors)``: the images read, their
        positions in ``paths``, and a :class:`ReadError` per skipped file.

    Raises
    ------
    FileNotFoundError, ValueError, MissingDecoderError
        With ``on_error="raise"``, as :func:`read_image`; also ``ValueError``
        when ``image_size=None`` and the sizes differ.

    Examples
    --------
    >>> from dp_sklearn.data.io import bundled_dicom_dir, read_images
    >>> d = bundled_dicom_dir()
    >>> images, indices, errors = read_images(
    ...     [d / "siim_cr_chest_jpeg_baseline.dcm", d / "missing.dcm"], image_size=64, on_error="skip")
    >>> images.shape, indices.tolist()
    ((1, 64, 64), [0])
    >>> errors[0].index, type(errors[0].error).__name__
    (1, 'FileNotFoundError')
    """
    _check_option("on_error", on_error, ("raise", "skip"))
    _check_option("on_non_radiograph", on_non_radiograph, _NON_RADIOGRAPH_OPTIONS)
    size = _check_image_size(image_size)
    path_list = _as_path_list(paths)
    _check_n_jobs(n_jobs)

    outcomes = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_read_or_catch)(p, size, on_non_radiograph) for p in path_list
    )
    images, indices, errors, notes = [], [], [], []
    for i, (image, note, error) in enumerate(outcomes):
        if error is not None:
            if on_error == "raise":
                raise error
            errors.append(ReadError(i, path_list[i], error))
            continue
        images.append(image)
        indices.append(i)
        if note is not None:
            notes.append(note)
    _warn_non_radiographs(notes, len(path_list))
    return ReadResult(_stack(images, path_list, indices, size), np.asarray(indices, dtype=np.intp), errors)


# What read_images may skip; anything else is a bug and propagates.
_SKIPPABLE = (OSError, ValueError, MissingDecoderError)


def _read_or_catch(path, size, on_non_radiograph):
    """Worker: return ``(image, note, error)``; errors are returned, not raised."""
    try:
        image, note = _read(path, size, on_non_radiograph)
    except _SKIPPABLE as exc:
        return None, None, exc
    return image, note, None


def _warn_non_radiographs(notes: list[str], n_total: int) -> None:
    if not notes:
        return
    shown = "; ".join(notes[:3]) + ("; ..." if len(notes) > 3 else "")
    warnings.warn(
        f"{len(notes)} of {n_total} files are not radiographs by their DICOM Modality: {shown}. "
        "Pass on_non_radiograph='ignore' to read them silently or 'raise' to reject them.",
        NonRadiographWarning,
        stacklevel=3,
    )


def _stack(images, paths, indices, size) -> np.ndarray:
    if not images:
        return np.empty((0, *(size or (0, 0))), dtype=np.float32)
    first = images[0].shape
    for img, i in zip(images, indices):
        if img.shape != first:
            raise ValueError(
                f"Images differ in size ({paths[indices[0]]} is {first}, {paths[i]} is {img.shape}); "
                "pass image_size to resize them to one size."
            )
    return np.stack(images).astype(np.float32, copy=False)


def _as_path_list(paths) -> list[str]:
    """Validate a collection of paths and return it as a list of str."""
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(
            f"Expected a sequence of image paths, got a single path {os.fspath(paths)!r}; wrap it in a list."
        )
    if hasattr(paths, "__array__"):
        arr = np.asarray(paths)
        if arr.dtype.kind in "biufc":
            raise TypeError(
                f"Expected image paths, got a numeric array of shape {arr.shape}; images already in memory "
                "need no reader."
            )
        arr = arr.astype(object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"Expected a 1-D sequence of image paths, got an array of shape {arr.shape}.")
        paths = list(arr)
    try:
        path_list = list(paths)
    except TypeError as exc:
        raise TypeError(f"Expected a sequence of image paths, got {type(paths).__name__}.") from exc
    for i, p in enumerate(path_list):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(
                f"Expected image paths (str or os.PathLike); item {i} is {type(p).__name__}. "
                "Images already in memory need no reader."
            )
    return [os.fspath(p) for p in path_list]


# ----------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------


def _check_option(name: str, value, options) -> None:
    if not isinstance(value, (str, type(None))) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.")


def _check_image_size(image_size) -> tuple[int, int] | None:
    """Return ``(H, W)`` or None; accept a positive int or a pair of them."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, Integral) else image_size
    try:
        h, w = pair
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be None, a positive int or a pair (H, W); got {image_size!r}.") from None
    if not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in (h, w)):
        raise ValueError(f"image_size must be None, a positive int or a pair (H, W); got {image_size!r}.")
    return int(h), int(w)


def _check_n_jobs(n_jobs) -> None:
    if n_jobs is not None and (not isinstance(n_jobs, Integral) or isinstance(n_jobs, bool) or n_jobs == 0):
        raise ValueError(f"n_jobs must be None or a non-zero int; got {n_jobs!r}.")


# ----------------------------------------------------------------------------
# scikit-learn transformer
# ----------------------------------------------------------------------------


class XRayReader(TransformerMixin, BaseEstimator):
    """Read radiograph files into an image array, as a Pipeline step.

    Stateless: ``fit`` only validates the parameters, and ``transform`` works
    on any paths. Put it first in a Pipeline so that ``X`` can be file paths.

    Parameters
    ----------
    image_size : int, (int, int) or None, default=224
        Output ``(H, W)``; see :func:`read_image`. ``None`` keeps the stored
        sizes, which must then all be equal.
    normalize : {None, "minmax", "zscore"}, default=None
        Per-image intensity normalisation after resizing: ``None`` keeps the
        reader's [0, 1] values, ``"minmax"`` stretches each image to [0, 1],
        ``"zscore"`` gives each image mean 0 and standard deviation 1 (a constant
        image gives zeros in both).
    on_error : {"raise", "zeros"}, default="raise"
        ``"zeros"`` puts an all-zero image in the row of an unreadable file and
        issues an :class:`UnreadableImageWarning` naming it, so that rows stay
        aligned with ``y``. (A transformer cannot drop rows; to drop them, use
        :func:`read_images` with ``on_error="skip"`` and ``y[result.indices]``.)
    on_non_radiograph : {"warn", "raise", "ignore"}, default="warn"
        See :func:`read_image`.
    n_jobs : int, default=None
        Number of joblib workers for reading.

    See Also
    --------
    read_images : the function this transformer calls.

    Examples
    --------
    >>> from dp_sklearn.data.io import XRayReader, bundled_dicom_dir
    >>> d = bundled_dicom_dir()
    >>> paths = [d / "siim_cr_chest_jpeg_baseline.dcm", d / "cr_chest_monochrome1_jpeg_baseline.dcm"]
    >>> X = XRayReader(image_size=64, normalize="zscore").fit_transform(paths)
    >>> X.shape, X.dtype
    ((2, 64, 64), dtype('float32'))
    >>> [round(float(m), 4) + 0.0 for m in X.mean(axis=(1, 2))]
    [0.0, 0.0]
    """

    def __init__(self, image_size=224, normalize=None, on_error="raise", on_non_radiograph="warn", n_jobs=None):
        self.image_size = image_size
        self.normalize = normalize
        self.on_error = on_error
        self.on_non_radiograph = on_non_radiograph
        self.n_jobs = n_jobs

    def fit(self, X=None, y=None):
        """Validate the parameters (and ``X`` if given); nothing is learned.

        Parameters
        ----------
        X : sequence of str or os.PathLike, default=None
            Image paths; only their form is checked, the files are not read.
        y : None
            Ignored.

        Returns
        -------
        self : XRayReader
        """
        self._validate()
        if X is not None:
            _as_path_list(X)
        return self

    def transform(self, X):
        """Read the files.

        Parameters
        ----------
        X : sequence of str or os.PathLike, shape (n,) or (n, 1)
            Image paths.

        Returns
        -------
        ndarray of float32, shape (n, H, W)
        """
        self._validate()
        paths = _as_path_list(X)
        result = read_images(
            paths,
            image_size=self.image_size,
            on_error="raise" if self.on_error == "raise" else "skip",
            on_non_radiograph=self.on_non_radiograph,
            n_jobs=self.n_jobs,
        )
        images = self._fill_failed_rows(result, len(paths))
        return _normalize(images, self.normalize)

    def _fill_failed_rows(self, result: ReadResult, n: int) -> np.ndarray:
        if not result.errors:
            return result.images
        size = _check_image_size(self.image_size) or (result.images.shape[1:] if len(result.images) else None)
        if size is None:
            raise ValueError("No file could be read and image_size is None, so no output size is known.")
        images = np.zeros((n, *size), dtype=np.float32)
        images[result.indices] = result.images
        listed = "; ".join(f"{e.path}: {e.error}" for e in result.errors[:3])
        warnings.warn(
            f"{len(result.errors)} of {n} files could not be read and were replaced by zeros: {listed}"
            + ("; ..." if len(result.errors) > 3 else ""),
            UnreadableImageWarning,
            stacklevel=3,
        )
        return images

    def _validate(self) -> None:
        _check_image_size(self.image_size)
        _check_option("normalize", self.normalize, (None, "minmax", "zscore"))
        _check_option("on_error", self.on_error, ("raise", "zeros"))
        _check_option("on_non_radiograph", self.on_non_radiograph, _NON_RADIOGRAPH_OPTIONS)
        _check_n_jobs(self.n_jobs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


def _normalize(images: np.ndarray, how) -> np.ndarray:
    """Per-image normalisation; constant images become zeros."""
    if how is None or len(images) == 0:
        return images
    axes = (1, 2)
    if how == "minmax":
        lo = images.min(axis=axes, keepdims=True)
        span = images.max(axis=axes, keepdims=True) - lo
        out = (images - lo) / np.where(span > 0, span, 1.0)
    else:  # "zscore"
        mean = images.mean(axis=axes, keepdims=True)
        std = images.std(axis=axes, keepdims=True)
        out = (images - mean) / np.where(std > 0, std, 1.0)
    return out.astype(np.float32, copy=False)
