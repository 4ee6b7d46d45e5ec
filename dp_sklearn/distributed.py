"""Beyond one machine: scoring on a Dask cluster (data-parallel training: see below).

Both parts are thin layers over the engines that do the work; ``docs/scaling.md`` has the
commands to copy. The libraries come with the ``[distributed]`` extra
(``pip install "dp-sklearn[distributed]"``) and are imported only when used.

Scoring a list of files on Dask
-------------------------------
scikit-learn's ecosystem parallelises prediction with :class:`dask_ml.wrappers.ParallelPostFit`:
a fitted estimator is shipped once to every worker and ``predict``/``predict_proba`` run on
each block of a Dask array, block by block. This module adapts it to image *paths*:

* :func:`paths_to_dask` turns a list of DICOM/PNG/JPEG paths into a Dask array of shape
  ``(n, 1)`` (object dtype) in partitions of ``partition_size`` paths.
* :func:`parallel_post_fit` wraps a fitted estimator as ``ParallelPostFit`` over a two-step
  pipeline, :class:`PathColumn` (the ``(k, 1)`` block back to a list of ``k`` paths) then the
  estimator, with the output metadata given so that Dask never calls the model on dummy data.
* :func:`score_paths` computes the scores: with a ``distributed.Client`` it scatters the model
  to every worker once and maps one task per partition; without one it computes the
  ``ParallelPostFit`` graph on Dask's local scheduler.

A worker reads only the images of the partition it is scoring (the estimators read path input
lazily, batch by batch), so its memory is the model plus one partition, whatever the number
of files; results are ``n`` labels or ``n x n_classes`` probabilities.

Data-parallel training
----------------------
Needs nothing from this module: started by ``torchrun`` (or ``accelerate launch``), the torch
estimators train data-parallel on torch's DDP by themselves (see
:mod:`dp_sklearn.estimators._ddp` and ``docs/scaling.md``).
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

__all__ = [
    "PathColumn",
    "list_images",
    "paths_to_dask",
    "parallel_post_fit",
    "score_paths",
]


def _require(module, extra="distributed"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is needed here: pip install \"dp-sklearn[{extra}]\" ({type(e).__name__}: {e})"
        ) from e


# ----------------------------------------------------------------------------- Dask scoring


class PathColumn(TransformerMixin, BaseEstimator):
    """Stateless step: a ``(k, 1)`` (or ``(k,)``) array of paths -> a 1-D object array of ``str``.

    The estimators take a sequence of paths; Dask arrays (and so ``ParallelPostFit``) are 2-D
    with samples along the first axis. Nothing is learnt; ``fit`` only validates.

    Examples
    --------
    >>> import numpy as np
    >>> PathColumn().transform(np.array([["a.png"], ["b.dcm"]], dtype=object)).tolist()
    ['a.png', 'b.dcm']
    """

    def fit(self, X, y=None):
        self.transform(X)
        return self

    def transform(self, X):
        arr = np.asarray(X, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"PathColumn expects paths of shape (n,) or (n, 1), got {arr.shape}.")
        bad = [p for p in arr[:3] if not isinstance(p, (str, os.PathLike))]
        if bad:
            raise TypeError(f"PathColumn expects file paths (str or os.PathLike), got {type(bad[0]).__name__}.")
        return np.array([os.fspath(p) for p in arr], dtype=object)

    def __sklearn_is_fitted__(self):
        return True


def paths_to_dask(paths, partition_size=256):
    """A Dask array ``(n, 1)`` of paths in partitions of ``partition_size`` rows.

    Parameters
    ----------
    paths : sequence of str or os.PathLike, or a directory
        The files to score. A directory is listed recursively for ``*.dcm``, ``*.png``,
        ``*.jpg`` and ``*.jpeg`` (sorted).
    partition_size : int, default=256
        Paths per partition (per task); a worker holds this many decoded images at most.
    """
    da = _require("dask.array")
    if isinstance(paths, (str, os.PathLike)) and os.path.isdir(paths):
        paths = list_images(paths)
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths must be a sequence of file paths or a directory, got the file {paths!r}.")
    arr = np.array([os.fspath(p) for p in paths], dtype=object)
    if arr.size == 0:
        raise ValueError("paths is empty: nothing to score.")
    if int(partition_size) < 1:
        raise ValueError(f"partition_size must be >= 1, got {partition_size!r}.")
    return da.from_array(arr[:, None], chunks=(int(partition_size), 1))


def list_images(directory, suffixes=(".dcm", ".png", ".jpg", ".jpeg")):
    """Sorted image files (by suffix, case-insensitive) under ``directory``, recursively."""
    found = []
    for root, _, files in os.walk(directory):
        found.extend(os.path.join(root, f) for f in files if f.lower().endswith(tuple(suffixes)))
    return sorted(found)


def parallel_post_fit(estimator):
    """``dask_ml.wrappers.ParallelPostFit`` that scores a Dask array of paths with ``estimator``.

    Parameters
    ----------
    estimator : fitted classifier of this package (anything taking a list of paths)

    Returns
    -------
    dask_ml.wrappers.ParallelPostFit
        ``predict(paths_to_dask(...))`` and ``predict_proba(...)`` return lazy Dask arrays,
        one task per partition.
    """
    wrappers = _require("dask_ml.wrappers")
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    classes = np.asarray(estimator.classes_)
    pipe = Pipeline([("paths", PathColumn()), ("model", estimator)])
    return wrappers.ParallelPostFit(
        pipe,
        predict_meta=np.empty((0,), dtype=classes.dtype),
        predict_proba_meta=np.empty((0, len(classes)), dtype=np.float32),
    )


def score_paths(estimator, paths, *, method="predict_proba", partition_size=256, client=None):
    """Score many image files on a Dask cluster; returns a NumPy array in the order of ``paths``.

    Parameters
    ----------
    estimator : fitted classifier
    paths : sequence of paths or a directory (see :func:`paths_to_dask`)
    method : {"predict_proba", "predict"}, default="predict_proba"
    partition_size : int, default=256
    client : distributed.Client or None, default=None
        The cluster to run on; None uses the current default client, or Dask's local
        scheduler when there is none.

    Examples
    --------
    On a cluster started with ``dask scheduler`` / ``dask worker tcp://host:8786``::

        from distributed import Client
        client = Client("tcp://scheduler-host:8786")
        proba = score_paths(joblib.load("model.joblib"), "/data/dicoms", client=client)
    """
    if method not in ("predict_proba", "predict"):
        raise ValueError(f"method must be 'predict_proba' or 'predict', got {method!r}.")
    if client is None:
        lazy = getattr(parallel_post_fit(estimator), method)(paths_to_dask(paths, partition_size))
        return np.asarray(lazy.compute())
    # On a cluster: the model goes to every worker once (scatter, broadcast) instead of inside
    # the task graph, then one task per partition of paths.
    column = paths_to_dask(paths, partition_size)  # validates; its chunks give the partitions
    flat = np.asarray(column.compute())[:, 0]
    bounds = np.cumsum((0,) + column.chunks[0])
    parts = [flat[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    model = client.scatter(estimator, broadcast=True)
    futures = client.map(_score_partition, parts, estimator=model, method=method, pure=False)
    return np.concatenate(client.gather(futures))


def _score_partition(paths, estimator, method):
    return np.asarray(getattr(estimator, method)(list(paths)))
