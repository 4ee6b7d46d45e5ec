"""Validation of the image, mask and label inputs that every estimator accepts.

Errors name the argument and the problem, so users never see a tensor shape error
from deep inside torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np


class PixelRangeWarning(UserWarning):
    """Float images with values outside [0, 1], the range the estimators expect.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = check_images(np.full((2, 8, 8), 255.0, dtype=np.float32))
    >>> [w.category.__name__ for w in caught]
    ['PixelRangeWarning']
    """


def is_path_sequence(X) -> bool:
    """True when ``X`` is a non-empty sequence of file paths (str or os.PathLike)."""
    if isinstance(X, (str, os.PathLike)):
        return False
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "OUS" and X.ndim == 1 and len(X) > 0 and isinstance(X[0], (str, os.PathLike))
    if isinstance(X, Sequence) and len(X) > 0:
        return all(isinstance(p, (str, os.PathLike)) for p in X)
    return False


def check_images(X, *, name: str = "X", allow_paths: bool = True, min_samples: int = 1, min_size: int = 1):
    """Validate images and bring them to float32 ``(n, H, W)``.

    Parameters
    ----------
    X : array-like of shape (n, H, W), (n, 1, H, W) or (n, H, W, 1), or sequence of paths
        Any numeric dtype. Integer images are scaled by their dtype's maximum
        (``uint8`` by 255, ``uint16`` by 65535) so that pixel values lie in [0, 1];
        float images are taken as they are. A sequence of file paths (DICOM, PNG,
        JPEG) is returned unchanged as a list of ``str`` to be read lazily.
    name : str
        The argument's name, used in error messages.
    allow_paths : bool
        Whether a sequence of paths is accepted.
    min_samples : int
        Minimum number of images.
    min_size : int
        Minimum height and width.

    Returns
    -------
    ndarray of float32, shape (n, H, W), or list of str

    Examples
    --------
    >>> import numpy as np
    >>> check_images(np.zeros((2, 8, 8, 1), dtype=np.uint8)).shape
    (2, 8, 8)
    """
    if is_path_sequence(X):
        if not allow_paths:
            raise TypeError(f"{name} must be an image array here, got a sequence of file paths.")
        paths = [os.fspath(p) for p in X]
        if len(paths) < min_samples:
            raise ValueError(f"{name} has {len(paths)} path(s); at least {min_samples} required.")
        return paths
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(f"{name} must be an array of images or a sequence of paths, got a single path {X!r}.")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an image array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numeric pixels or file paths, got dtype {arr.dtype}.")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n, H, W), (n, 1, H, W) or (n, H, W, 1) (grayscale images); "
            f"got shape {arr.shape}."
        )
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name} has {arr.shape[0]} image(s); at least {min_samples} required.")
    if min(arr.shape[1:]) < min_size:
        raise ValueError(f"{name} images are {arr.shape[1]}x{arr.shape[2]}; at least {min_size}x{min_size} required.")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).sum())
            raise ValueError(f"{name} contains NaN or infinite pixels in {bad} image(s).")
        _warn_out_of_unit_range(arr, name)
    return arr


def _warn_out_of_unit_range(arr: np.ndarray, name: str) -> None:
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        hint = (" They look like 8-bit values: divide by 255 (or pass the uint8 array, which is scaled)."
                if lo >= 0.0 and hi <= 255.0 else
                " They look like 16-bit values: divide by 65535." if lo >= 0.0 and hi <= 65535.0 else "")
        warnings.warn(
            f"{name} holds float pixels in [{lo:g}, {hi:g}], outside [0, 1] where the estimators expect them; "
            f"float images are used as given, so the predictions may saturate.{hint}",
            PixelRangeWarning,
            stacklevel=3,
        )


def check_masks(masks, n_samples: int, image_shape=None, *, name: str = "masks", empty_means: str = "unannotated"):
    """Validate lesion masks and return them with a per-sample availability flag.

    Parameters
    ----------
    masks : None, array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or list with ``None`` entries
        Values in {0, 1}, {0, 255} or bool. List entries may be mask file paths, read with
        :func:`dp_sklearn.data.io.read_mask` and checked the same way (resized to ``image_shape``). ``None`` (or a ``None`` entry) means
        *not annotated*, which differs from *no lesion*.
    n_samples : int
        Number of images the masks belong to.
    image_shape : tuple (H, W) or None
        Spatial size the masks must have; ``None`` skips that check (path inputs).
    empty_means : {"unannotated", "no_lesion"}
        What an all-zero mask means. By default it counts as not annotated.

    Returns
    -------
    masks : ndarray of bool, shape (n, H, W), or None when no sample has a mask
    available : ndarray of bool, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((2, 4, 4), dtype=np.uint8); m[0, 1:3, 1:3] = 255
    >>> masks, available = check_masks(m, 2, (4, 4))
    >>> available.tolist()
    [True, False]
    """
    if empty_means not in ("unannotated", "no_lesion"):
        raise ValueError(f"empty_means must be 'unannotated' or 'no_lesion', got {empty_means!r}.")
    if masks is None:
        return None, np.zeros(n_samples, dtype=bool)
    if isinstance(masks, (list, tuple)) and any(isinstance(m, (str, os.PathLike)) for m in masks):
        masks = _read_mask_paths(masks, n_samples, image_shape, name)
    if isinstance(masks, (list, tuple)) and any(m is None for m in masks):
        if len(masks) != n_samples:
            raise ValueError(f"{name} has {len(masks)} entries but there are {n_samples} images.")
        shapes = {np.shape(m) for m in masks if m is not None}
        if len(shapes) > 1:
            raise ValueError(f"{name} entries have different shapes: {sorted(shapes)}.")
        shape = shapes.pop() if shapes else image_shape
        filled = [np.zeros(shape, dtype=np.uint8) if m is None else np.asarray(m) for m in masks]
        arr = _masks_to_bool(np.stack(filled), name)
        given = np.array([m is not None for m in masks])
    else:
        arr = _masks_to_bool(np.asarray(masks), name)
        given = np.ones(len(arr), dtype=bool)
    if len(arr) != n_samples:
        raise ValueError(f"{name} has {len(arr)} masks but there are {n_samples} images; they must match one to one.")
    if image_shape is not None and tuple(arr.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name} have spatial shape {tuple(arr.shape[1:])} but the images are {tuple(image_shape)}; "
            "a mask must have its image's height and width."
        )
    nonempty = arr.reshape(len(arr), -1).any(axis=1)
    available = given & (nonempty if empty_means == "unannotated" else True)
    return arr, available


def _masks_to_bool(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (n, H, W), (n, 1, H, W) or (n, H, W, 1); got {arr.shape}.")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be boolean or numeric, got dtype {arr.dtype}.")
    values = np.unique(arr)
    if np.isin(values, (0, 1)).all():
        return arr.astype(bool)
    if np.isin(values, (0, 255)).all():
        return arr > 0
    shown = ", ".join(str(v) for v in values[:6])
    raise ValueError(f"{name} must hold only {{0, 1}}, {{0, 255}} or booleans; found values {shown}.")


def _read_mask_paths(masks, n_samples: int, image_shape, name: str) -> list:
    """Read mask files (``None`` entries kept) and validate each like an array mask."""
    from ..data.io import read_mask  # lazily: Pillow/pydicom only for path input

    if len(masks) != n_samples:
        raise ValueError(f"{name} has {len(masks)} entries but there are {n_samples} images.")
    out = []
    for i, m in enumerate(masks):
        if m is None or not isinstance(m, (str, os.PathLike)):
            out.append(m)
            continue
        out.append(read_mask(m, image_size=image_shape))
    return out


def check_sample_aligned(name: str, values, n_samples: int):
    """Raise a clear error when a per-sample argument does not have ``n_samples`` rows."""
    if values is not None and len(values) != n_samples:
        raise ValueError(f"{name} has {len(values)} entries but there are {n_samples} images.")
