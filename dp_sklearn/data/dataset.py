"""Torch datasets that give the estimators images, masks and labels, in memory or streamed from disk."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


def resize_images(images: np.ndarray, size, *, masks: bool = False, chunk: int = 256) -> np.ndarray:
    """Resize a stack ``(n, H, W)`` to ``size`` (H, W) in chunks, without a Python loop over pixels.

    Images use antialiased bilinear resampling; masks (``masks=True``) are resampled
    the same way and thresholded at one half, so they stay binary.
    """
    size = tuple(size)
    if tuple(images.shape[1:]) == size:
        return images
    out = []
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk], dtype=np.float32))[:, None]
        block = F.interpolate(block, size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]
        out.append((block >= 0.5).numpy() if masks else block.numpy())
    return np.concatenate(out) if out else np.zeros((0, *size), dtype=bool if masks else np.float32)


class XRayDataset(Dataset):
    """Images (and optionally masks, availability flags and labels) as a torch ``Dataset``.

    Each item is ``(inputs, y)`` where ``inputs`` is a dict with ``"x"`` (float32
    ``(1, H, W)``), ``"mask"`` (float32 ``(1, H, W)``, zeros when not annotated),
    ``"has_mask"`` (bool) and ``"index"`` (the row number, so tests can check that
    every batch gets its own masks). skorch collates the dicts into batches, so masks
    are sliced and shuffled with their images.

    Parameters
    ----------
    images : float32 ndarray (n, H, W) or list of str
        In-memory images, or file paths read lazily with
        :func:`dp_sklearn.data.io.read_image` (a data set larger than memory streams).
    y : ndarray (n,) or (n, k), optional
        Encoded targets; 0 placeholders when None (unsupervised use).
    masks : bool ndarray (n, H, W), or list of mask paths / None, optional
    mask_available : bool ndarray (n,), optional
    image_size : (int, int), optional
        Size every image is brought to. Arrays are resized once up front; paths at read time.
    sample_weight : array-like (n,), optional
        Per-sample loss weights; when given, every item's inputs also carry ``"sample_weight"``
        (a float32 scalar), which the estimators hand to their loss as a tensor.
    """

    def __init__(self, images, y=None, masks=None, mask_available=None, image_size=None, sample_weight=None):
        self.streaming = isinstance(images, list)
        self.image_size = None if image_size is None else tuple(image_size)
        n = len(images)
        if self.streaming:
            self.images = images
        else:
            if self.image_size is not None:
                images = resize_images(images, self.image_size)
            self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.masks = None
        if masks is not None:
            if isinstance(masks, list):
                self.masks = masks
            else:
                if self.image_size is not None:
                    masks = resize_images(masks, self.image_size, masks=True)
                self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
        if mask_available is None:
            mask_available = np.zeros(n, dtype=bool)
        self.mask_available = torch.as_tensor(np.asarray(mask_available, dtype=bool))
        self.y = torch.zeros(n, dtype=torch.int64) if y is None else torch.as_tensor(np.asarray(y))
        self.sample_weight = (None if sample_weight is None
                              else torch.as_tensor(np.asarray(sample_weight, dtype=np.float32)))

    def __len__(self):
        return len(self.y)

    def _image(self, i):
        if not self.streaming:
            return self.images[i][None]
        from .io import read_image  # imported lazily: pydicom is only needed for path input

        return torch.from_numpy(read_image(self.images[i], image_size=self.image_size))[None]

    def _mask(self, i, shape):
        if self.masks is None or not bool(self.mask_available[i]):
            return torch.zeros((1, *shape), dtype=torch.float32)
        mask = self.masks[i]
        if isinstance(mask, str):
            from .io import read_mask  # checks the values like an array mask, naming the file

            mask = torch.from_numpy(read_mask(mask, image_size=self.image_size))
        return mask[None].to(torch.float32)

    def __getitem__(self, i):
        x = self._image(i)
        inputs = {
            "x": x,
            "mask": self._mask(i, x.shape[-2:]),
            "has_mask": self.mask_available[i],
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if self.sample_weight is not None:
            inputs["sample_weight"] = self.sample_weight[i]
        return inputs, self.y[i]
