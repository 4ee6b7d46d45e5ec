"""Per-image outputs written batch by batch: into memory, into a given array, or into a ``.npy`` file."""

from __future__ import annotations

import os

import numpy as np

from .files import atomic_write

__all__ = ["check_out", "write_rows"]


def check_out(out, shape, dtype=np.float32):
    """Check the ``out=`` argument of an output method against the output's ``shape``, before any work.

    ``out`` is None (the output is returned as a new array), a path ending in ``.npy`` (a file to
    create), or a writeable array of ``shape`` and ``dtype`` to fill, such as a ``numpy.memmap``.
    A ``None`` in ``shape`` is a size known only from the first batch; :func:`write_rows` checks it there.

    Examples
    --------
    >>> import numpy as np
    >>> check_out(np.zeros((3, 2), np.float32), (3, 2)).shape
    (3, 2)
    >>> check_out(np.zeros((3, 5), np.float32), (3, 2))
    Traceback (most recent call last):
        ...
    ValueError: out must have shape (3, 2) (dtype float32), got an array of shape (3, 5) (dtype float32).
    """
    if out is None:
        return None
    if isinstance(out, (str, os.PathLike)):
        if not os.fspath(out).endswith(".npy"):
            raise ValueError(f"out must be a path ending in .npy or an array, got the path {os.fspath(out)!r}.")
        return os.fspath(out)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be None, a path ending in .npy or a numpy array, got {type(out).__name__}.")
    expected = " x ".join("?" if s is None else str(s) for s in shape) if None in shape else str(tuple(shape))
    fits = out.ndim == len(shape) and all(s is None or s == o for s, o in zip(shape, out.shape))
    if not fits or out.dtype != np.dtype(dtype):
        raise ValueError(f"out must have shape {expected} (dtype {np.dtype(dtype)}), got an array of shape "
                         f"{out.shape} (dtype {out.dtype}).")
    if not out.flags.writeable:
        raise ValueError("out is a read-only array; give a writeable one (a memmap opened with mode 'r+' or 'w+').")
    return out


def write_rows(blocks, shape, out=None, dtype=np.float32):
    """Write consecutive row blocks into ``out`` (see :func:`check_out`) and return the filled output.

    ``blocks`` is an iterable of arrays whose rows follow each other; make it a generator that
    runs the work, so that ``out`` is checked before the first block is computed. ``out=None``
    concatenates the blocks in memory. A ``.npy`` path is written through a file handle, block by
    block, so the process's memory does not grow with the number of rows (pages of a memory map
    that is written count towards the resident set until it is unmapped); the file appears
    complete or not at all (:func:`~dp_sklearn.utils.atomic_write`) and is returned opened with
    ``numpy.lib.format.open_memmap`` (mode ``"r+"``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> blocks = (np.full((2, 3), i, np.float32) for i in range(2))
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.npy")
    >>> write_rows(blocks, (4, 3), out=path)[:, 0]
    memmap([0., 0., 1., 1.], dtype=float32)
    """
    dest = check_out(out, shape, dtype)
    if dest is None:
        return np.concatenate([np.asarray(block, dtype=dtype) for block in blocks])
    if isinstance(dest, str):
        atomic_write(dest, lambda f: _write_npy(f, blocks, shape, dtype))
        return np.lib.format.open_memmap(dest, mode="r+")
    _fill_array(dest, blocks, shape, dtype)
    return dest


def _checked_blocks(blocks, shape, dtype):
    """``(start, block, full)`` for each non-empty block: the row it starts at, the block as a contiguous
    ``dtype`` array, and the output's shape with its ``None`` sizes taken from the first block.

    Raises ``ValueError`` when a block does not fit, or when the blocks do not give ``shape[0]`` rows.
    """
    n, written, full = shape[0], 0, None
    for block in blocks:
        block = np.ascontiguousarray(block, dtype=dtype)
        if not len(block):
            continue
        if full is None:
            full = (n, *(b if s is None else s for s, b in zip(shape[1:], block.shape[1:])))
        if block.shape[1:] != full[1:] or written + len(block) > n:
            raise ValueError(f"a batch of shape {block.shape} does not fit rows {written}.. of an output "
                             f"of shape {full}.")
        yield written, block, full
        written += len(block)
    if written != n:
        raise ValueError(f"the batches gave {written} rows, the output has {n}.")


def _fill_array(dest, blocks, shape, dtype):
    """Write the blocks into the array ``dest``, checked again once the first block gives every size."""
    for start, block, full in _checked_blocks(blocks, shape, dtype):
        if start == 0:
            check_out(dest, full, dtype)
        dest[start:start + len(block)] = block


def _write_npy(f, blocks, shape, dtype):
    """Write a ``.npy`` file to the open file ``f``: its header once the first block gives every size,
    then the rows as they come."""
    for start, block, full in _checked_blocks(blocks, shape, dtype):
        if start == 0:
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": full})
        f.write(block.tobytes())
