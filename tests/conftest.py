"""Shared fixtures. Learning tests use the bundled real data at small resolution."""

import os

import numpy as np
import pytest
import torch

# Two cores on CI: one intra-op thread per worker process avoids oversubscription when
# several torch estimators are fitted in a row.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cxr64():
    """cxr1k at 64x64 (decoded once per session)."""
    from dp_sklearn.datasets import load_cxr1k

    return load_cxr1k(image_size=64)


@pytest.fixture
def tiny_images():
    """12 random 32x32 images, 3 classes, masks on half of them (plumbing tests only)."""
    rng = np.random.RandomState(0)
    X = rng.rand(12, 32, 32).astype(np.float32)
    y = np.array([0, 1, 2] * 4)
    masks = np.zeros((12, 32, 32), dtype=bool)
    masks[::2, 8:20, 10:22] = True
    return X, y, masks


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    long_ok = torch.cuda.is_available() or os.environ.get("DP_SKLEARN_LONG_TESTS") == "1"
    skip_long = pytest.mark.skip(
        reason="long learning test (> 10 min on 2 CPU cores): runs on CUDA or with DP_SKLEARN_LONG_TESTS=1")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "long" in item.keywords and not long_ok:
            item.add_marker(skip_long)
