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
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = [
    "DICOM_EXTENSIONS",
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
    ds = _dcmread(path)
    _check_single_gray_image(ds, path)
    note = _non_radiograph_note(ds, path)
    if note is not None and on_non_radiograph == "raise":
        raise ValueError(f"{note}; on_non_radiograph='raise' rejects it.")
    arr = _decode_pixels(ds, path)
    arr = apply_modality_lut(arr, ds)
    # float64 before any arithmetic: negating unsigned ints would wrap around.
    arr = np.asarray(_apply_voi(arr, ds), dtype=np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        # MONOCHROME1 stores air as the highest value: flip so that lungs are dark.
        arr = -arr
    return _minmax(arr), (note if on_non_radiograph == "warn" else None)


def _dcmread(path: Path):
    # Files named .dcm without the 128-byte preamble (old exports) need force=True;
    # a non-DICOM file read that way yields no image elements, caught below.
    has_preamble = _has_dicm_preamble(path)
    try:
        ds = pydicom.dcmread(path, force=not has_preamble)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"{path} is not a readable DICOM file: {exc}") from exc
    if not has_preamble and "PixelData" not in ds and "Rows" not in ds:
        raise ValueError(f"{path} is not a DICOM file: no 'DICM' preamble and no DICOM image elements.")
    return ds


def _check_single_gray_image(ds, path: Path) -> None:
    """Reject what is not one grayscale image, before the costly decode."""
    if "PixelData" not in ds:
        raise ValueError(
            f"{path} has no pixel data (no PixelData element): it is not an image DICOM "
            "(e.g. a structured report), or the file is truncated."
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ValueError(f"{path} is a multi-frame DICOM ({frames} frames); only single radiographs are supported.")
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"{path} is not a grayscale DICOM (SamplesPerPixel={samples}, PhotometricInterpretation="
            f"{photometric or 'missing'!s}); only MONOCHROME1/MONOCHROME2 radiographs are supported."
        )


def _non_radiograph_note(ds, path: Path) -> str | None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not modality or modality in RADIOGRAPH_MODALITIES:
        return None
    return (
        f"{path} has DICOM Modality {modality!r}, which is not a radiograph modality "
        f"({', '.join(sorted(RADIOGRAPH_MODALITIES))})"
    )


def _decode_pixels(ds, path: Path) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        if _is_missing_decoder_error(exc):
            raise _missing_decoder_error(path, ds, exc) from exc
        raise ValueError(f"Could not decode the pixel data of {path}: {exc}") from exc
    except (ValueError, AttributeError, KeyError, TypeError, EOFError, OSError) as exc:
        raise ValueError(f"Could not decode the pixel data of {path}: {exc}") from exc
    if arr.ndim != 2:  # guards files whose headers disagree with their pixels
        raise ValueError(f"{path} decoded to shape {arr.shape}, not one 2-D grayscale image.")
    return arr


def _is_missing_decoder_error(exc: BaseException) -> bool:
    """True for pydicom's "no usable decoder" errors (vs a corrupt stream).

    pydicom 3 raises RuntimeError "... because all plugins are missing
    dependencies" (or "the specified plugin is missing dependencies") and
    NotImplementedError "No pixel data decoders have been implemented for ..."
    for a transfer syntax it cannot decode at all; pydicom 2 said "no
    available image handler".
    """
    msg = str(exc).lower()
    return isinstance(exc, NotImplementedError) or any(
        s in msg for s in ("missing dependencies", "no available image handler", "no pixel data decoders")
    )


def _missing_decoder_error(path, ds, exc: BaseException) -> MissingDecoderError:
    """Build the error for a compressed DICOM that nothing installed can decode."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = getattr(file_meta, "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
    return MissingDecoderError(
        f"Cannot decode {path}: its pixel data is compressed ({name}) and no installed "
        f"decoder supports it; {_DECODER_HINT}. pydicom said: {exc}"
    )


def _apply_voi(arr: np.ndarray, ds) -> np.ndarray:
    """VOI LUT or window when the file has one; otherwise the values as they are."""
    try:
        return apply_voi_lut(arr, ds)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        # A malformed window is a display hint only: the pixels are still good,
        # and the min-max scaling that follows does the job of a full window.
        return arr


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Scale a float64 array to float32 [0, 1]."""
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
