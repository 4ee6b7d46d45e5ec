"""Loader for cxr1k: 1124 real chest radiographs (normal / pneumonia / covid19) with partial lesion masks."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.utils import Bunch

DATA_DIR = Path(__file__).resolve().parent / "data"
CXR1K_DIR = DATA_DIR / "cxr1k"
DICOM_DIR = DATA_DIR / "dicom"

TARGET_NAMES = ("covid19", "normal", "pneumonia")
# The 14 findings of NIH ChestX-ray14, in the order the dataset paper lists them alphabetically.
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)

DESCR = """\
cxr1k: real chest radiographs for class-imbalanced lesion recognition
---------------------------------------------------------------------
1124 frontal chest X-rays, 8-bit grayscale, stored at 256x256:
  normal     500  NIH ChestX-ray14 "No Finding"
  pneumonia  500  NIH ChestX-ray14 "Pneumonia"
  covid19    124  ieee8023 covid-chestxray-dataset
This is the image set of the DarkCovidNet study (Ozturk et al., Comput Biol Med 121, 2020; 5-fold
3-class accuracy 87.02%). 198 images carry radiologist lesion masks (RSNA Pneumonia Detection
Challenge opacity boxes and ChestX-Det polygons); an image without a mask is *not annotated*,
which is not the same as *no lesion*. 806 patients: split by ``groups`` (e.g. StratifiedGroupKFold),
never by image. covid19 images come from other sources and processing than the NIH ones, so a model
can separate them by shortcut cues: report per-class results and look at attention maps.
Licences: NIH images unrestricted with citation; ChestX-Det annotations Apache-2.0; RSNA labels via
torchxrayvision Apache-2.0; ieee8023 images per-image licences (many CC BY-NC-SA), research use only.
See dp_sklearn/datasets/data/README.md for the full description.
"""


@functools.lru_cache(maxsize=1)
def _read_rows():
    with open(CXR1K_DIR / "labels.csv", newline="") as f:
        return tuple(csv.DictReader(f))


@functools.lru_cache(maxsize=4)
def _read_pixels(image_size):
    """Decode every image and mask once per size; the result is cached read-only."""
    rows = _read_rows()
    images = np.stack([_load_png(CXR1K_DIR / r["image"], image_size, is_mask=False) for r in rows])
    masks = np.stack([
        _load_png(CXR1K_DIR / r["mask"], image_size, is_mask=True) if r["mask"]
        else np.zeros(image_size, dtype=bool)
        for r in rows
    ])
    images.setflags(write=False)
    masks.setflags(write=False)
    return images, masks


def _load_png(path: Path, size, *, is_mask: bool) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (size[1], size[0]):
            # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im)
    if is_mask:
        return arr >= 128
    return arr.astype(np.float32) / 255.0


def load_cxr1k(image_size=224, *, return_paths: bool = False, classes=None, as_frame: bool = False):
    """Load the bundled cxr1k chest X-ray dataset (real images, partial lesion masks).

    Parameters
    ----------
    image_size : int or (int, int), default=224
        Height and width to resize to (the files are 256x256). Images use bilinear
        resampling with antialiasing; masks are resampled the same way and
        thresholded at one half.
    return_paths : bool, default=False
        If True, ``images`` and ``masks`` hold file paths instead of arrays (``None``
        where an image has no mask), for streaming from disk through
        :class:`dp_sklearn.data.io.XRayReader` or the estimators' path input.
    classes : sequence of str, optional
        Keep only these classes (e.g. ``["covid19", "normal"]``); ``target`` is
        re-encoded to ``0..k-1`` in the order of ``target_names``.
    as_frame : bool, default=False
        Unused placeholder for scikit-learn's loader signature; raises if True.

    Returns
    -------
    data : sklearn.utils.Bunch
        images : float32 ndarray (n, H, W) in [0, 1], or list of paths
        masks : bool ndarray (n, H, W), or list of paths / None
        mask_available : bool ndarray (n,) — whether a radiologist mask exists
        target : int ndarray (n,); target_names : list of str
        groups : object ndarray (n,) of patient ids, for GroupKFold / StratifiedGroupKFold
        multilabel : uint8 ndarray (n, 14) of NIH findings; multilabel_names : list of str
        rsna_class : object ndarray (n,) ('' where the image is not in RSNA)
        paths : list of str (absolute image paths); DESCR : str

    Examples
    --------
    >>> from dp_sklearn.datasets import load_cxr1k
    >>> data = load_cxr1k(image_size=64)
    >>> data.images.shape, int(data.mask_available.sum())
    ((1124, 64, 64), 198)
    """
    if as_frame:
        raise ValueError("as_frame=True is not supported: the images are arrays, not table columns.")
    size = (image_size, image_size) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be an int >= 8 or a (height, width) pair, got {image_size!r}.")

    rows = _read_rows()
    target_names = list(TARGET_NAMES if classes is None else [c for c in TARGET_NAMES if c in set(classes)])
    if classes is not None and len(target_names) != len(set(classes)):
        unknown = sorted(set(classes) - set(TARGET_NAMES))
        raise ValueError(f"Unknown class(es) {unknown}; cxr1k has {list(TARGET_NAMES)}.")
    keep = np.array([r["label"] in target_names for r in rows])
    rows_kept = [r for r, k in zip(rows, keep) if k]

    target = np.array([target_names.index(r["label"]) for r in rows_kept], dtype=np.int64)
    multilabel = np.array(
        [[name in r["nih_findings"].split("|") for name in NIH_FINDINGS] for r in rows_kept], dtype=np.uint8
    )
    paths = [str(CXR1K_DIR / r["image"]) for r in rows_kept]
    mask_available = np.array([bool(r["mask"]) for r in rows_kept])
    if return_paths:
        images = paths
        masks = [str(CXR1K_DIR / r["mask"]) if r["mask"] else None for r in rows_kept]
    else:
        all_images, all_masks = _read_pixels(size)
        images, masks = all_images[keep].copy(), all_masks[keep].copy()

    return Bunch(
        images=images,
        masks=masks,
        mask_available=mask_available,
        target=target,
        target_names=target_names,
        groups=np.array([r["patient_id"] for r in rows_kept], dtype=object),
        multilabel=multilabel,
        multilabel_names=list(NIH_FINDINGS),
        rsna_class=np.array([r["rsna_class"] for r in rows_kept], dtype=object),
        view=np.array([r["view"] for r in rows_kept], dtype=object),
        paths=paths,
        DESCR=DESCR,
    )
