"""Speed measurements for the benchmark: each estimator next to a hand-written PyTorch loop of the
same model, augmentations and batch size, on the same data and device, in the same process."""

from __future__ import annotations

import time

import numpy as np


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def dicom_speed(repeats: int = 3):
    """dp_sklearn.data.io.read_image (LUTs, inversion, scaling) vs plain pydicom decode (pixel_array)."""
    import pydicom

    from dp_sklearn.data.io import read_image
    from dp_sklearn.datasets import DICOM_DIR

    files = sorted(p for p in DICOM_DIR.glob("*.dcm") if not p.name.startswith("ct_"))
    for f in files:  # warm-up: imports of the decoder plugins
        read_image(f)

    def timed(fn):
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for f in files:
                fn(f)
            best = min(best, time.perf_counter() - t0)
        return len(files) / best

    ours = timed(lambda f: read_image(f))
    plain = timed(lambda f: pydicom.dcmread(f).pixel_array)
    return [{"name": f"DICOM read_image ({len(files)} chest files, vs pydicom pixel_array)",
             "images_per_s": ours, "reference": plain, "ratio": ours / plain}]
