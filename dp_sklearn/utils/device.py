"""Device, precision and seeding choices shared by every torch estimator."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from .._compat import cpu_has_native_bfloat16

_VALID_DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device="auto") -> str:
    """Turn the user's ``device`` argument into a concrete torch device string.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or str or torch.device
        ``"auto"`` picks ``"cuda"`` when a CUDA device is present, else ``"cpu"``.
        Indexed devices such as ``"cuda:1"`` pass through.

    Returns
    -------
    str

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of {_VALID_DEVICES} (or 'cuda:N'), got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA device is available; use device='auto'.")
    return device


def resolve_precision(precision, device: str):
    """Return the autocast dtype for ``precision`` on ``device``, or ``None`` for float32.

    ``"auto"`` means bfloat16 autocast where the hardware computes in bfloat16 natively: CUDA
    devices that support it (no gradient scaler needed, unlike float16) and CPUs with AVX512-BF16
    or AMX (:func:`dp_sklearn._compat.cpu_has_native_bfloat16`; there oneDNN's bfloat16
    convolutions train the compact backbones 2-3x faster); float32 elsewhere. Losses are computed
    in float32 in either case. ``"bfloat16"`` asks for bfloat16 on any device (emulated, slow, on
    a CPU without native support); ``"float16"`` needs CUDA.

    Examples
    --------
    >>> resolve_precision("float32", "cpu") is None
    True
    >>> resolve_precision("bfloat16", "cpu")
    torch.bfloat16
    """
    if precision not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"precision must be 'auto', 'float32', 'bfloat16' or 'float16', got {precision!r}.")
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if on_cuda else cpu_has_native_bfloat16()
        return torch.bfloat16 if native else None
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if not on_cuda:
        raise ValueError(f"precision='float16' needs a CUDA device; use 'bfloat16', 'float32' or 'auto' on {device}.")
    return torch.float16


def autocast(device: str, dtype):
    """An autocast context for ``dtype`` on ``device``, or a no-op context for float32.

    Examples
    --------
    >>> import torch
    >>> with autocast("cpu", None):   # float32: nothing changes
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    >>> with autocast("cpu", torch.bfloat16):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def seed_everything(random_state) -> int | None:
    """Seed python, numpy and torch from ``random_state`` (int, RandomState or None).

    Returns the integer seed used, or ``None`` when ``random_state`` is None (no seeding).

    Examples
    --------
    >>> import torch
    >>> seed_everything(0)
    0
    >>> a = torch.rand(2); _ = seed_everything(0); bool((torch.rand(2) == a).all())
    True
    """
    if random_state is None:
        return None
    if isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    else:
        seed = int(random_state)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed
