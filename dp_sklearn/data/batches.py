"""Batching of in-memory data sets by tensor slicing: the fast path of the torch estimators.

A ``DataLoader`` indexes and collates image by image; for arrays already in memory one tensor
slice per batch is several times faster on CPU for small images. The estimators use these
iterators when the data set is in memory, no worker processes are asked for and the user did
not customise the iterator (see ``TorchEstimatorBase.get_iterator``).
"""

from __future__ import annotations

import torch

from .._compat import dataloader_order
from .dataset import XRayDataset

__all__ = ["InMemoryBatches", "XRayBatches"]


class InMemoryBatches:
    """Batches ``({"x": (b, 1, H, W)}, None)`` sliced from one in-memory tensor.

    A fast path for unlabelled pre-training on arrays: one tensor slice per batch instead of
    indexing and collating image by image. A new random order each pass when ``shuffle`` (from
    torch's global generator, which ``random_state`` seeds).
    """

    def __init__(self, images: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool):
        self.images, self.batch_size, self.shuffle, self.drop_last = images, batch_size, shuffle, drop_last

    def __len__(self):
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n, b = len(self.images), self.batch_size
        order = torch.randperm(n) if self.shuffle else None
        stop = (n // b) * b if self.drop_last else n
        for start in range(0, stop, b):
            idx = order[start:start + b] if order is not None else slice(start, start + b)
            yield {"x": self.images[idx].unsqueeze(1)}, None


class XRayBatches:
    """Batches of an in-memory :class:`XRayDataset` by tensor slicing (no per-item collate).

    Yields the same ``(inputs, y)`` batches as a ``DataLoader`` over the dataset would — ``x``,
    ``mask``, ``has_mask``, ``index`` (and ``sample_weight`` when the dataset has one) — but
    with one slice per tensor per batch, which matters for small images on CPU.
    """

    def __init__(self, dataset: XRayDataset, batch_size: int, shuffle: bool, drop_last: bool):
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last

    def __len__(self):
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        ds, b = self.dataset, self.batch_size
        n = len(ds)
        # The order a DataLoader would give, drawing the same numbers from the global RNG, so both
        # paths give one batch order and one augmentation stream (see dp_sklearn._compat).
        order = dataloader_order(n, self.shuffle)
        stop = (n // b) * b if self.drop_last else n
        weights = getattr(ds, "sample_weight", None)
        for start in range(0, stop, b):
            idx = order[start:start + b]
            x = ds.images[idx].unsqueeze(1)
            available = ds.mask_available[idx]
            if ds.masks is None:
                mask = torch.zeros_like(x)
            else:
                mask = (ds.masks[idx] & available[:, None, None]).unsqueeze(1).to(torch.float32)
            inputs = {"x": x, "mask": mask, "has_mask": available, "index": idx}
            if isinstance(weights, torch.Tensor):
                inputs["sample_weight"] = weights[idx]
            yield inputs, ds.y[idx]
