"""Save and load fitted estimators in a format that does not run code when loaded.

A pickle (``pickle``, ``joblib``, ``torch.load(weights_only=False)``) runs whatever code the file
names, so a model file from someone else can take over the machine that loads it. scikit-learn's
ecosystem answers with ``skops.io``, which cannot store skorch nets (their tensors); this module is
the same idea for dp_sklearn's estimators. A model file is a zip archive of two members:

``model.json``
    The estimator as data: the import path of its class (only dp_sklearn's estimator classes are
    accepted), its ``get_params()`` (plain values; classes such as ``optimizer=torch.optim.AdamW``
    by import path, only classes of dp_sklearn, ``torch.nn``, ``torch.optim``, torch's ``DataLoader``
    and skorch's ``Dataset``; nested estimators recursively), its fitted attributes (``classes_``, numbers,
    arrays as lists with their dtype, the training history) and the versions that wrote it.
``tensors.safetensors``
    The weights and buffers of the fitted modules (``module_``, ``criterion_``, ``augment_``...)
    in the `safetensors <https://huggingface.co/docs/safetensors>`_ format: raw tensors only.

Loading imports the whitelisted class, builds it from its parameters, sets the fitted attributes,
``initialize()``-s the net (which builds the modules from the parameters) and loads the weights
into them. Nothing in the file is ever called or unpickled. The optimizer state is not stored: a
model file is for predicting (``predict``, ``predict_proba``, ``attention_maps``, ``transform``);
to resume training use ``checkpoint_dir``. Unzip the file to read ``model.json``; ``load_model``
reads such a folder too.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .utils.files import atomic_write

__all__ = ["FORMAT", "is_model_file", "load_model", "save_model"]

#: The ``format`` field of ``model.json``.
FORMAT = "dp_sklearn.model/1"
_JSON, _TENSORS = "model.json", "tensors.safetensors"
_MAX_JSON_BYTES = 64 * 2**20

#: Module prefixes of the classes a parameter may name (``optimizer=torch.optim.AdamW``...).
_CLASS_ROOTS = ("dp_sklearn.", "torch.nn.", "torch.optim.", "torch.utils.data.dataloader.", "skorch.dataset.")
#: Fitted attributes of a skorch net that ``initialize()`` rebuilds, or that predicting does not need.
_REBUILT = frozenset({
    "callbacks_", "optimizer_", "virtual_params_", "initialized_", "prefixes_", "cuda_dependent_attributes_",
    "init_context_", "device_", "amp_dtype_",
})
_PRIMITIVES = (type(None), bool, int, float, str)


def _estimator_classes() -> dict:
    """``{import path: (module, name)}`` of the estimator classes a model file may name."""
    from .estimators import _PUBLIC

    return {f"dp_sklearn.estimators{module}.{name}": (f"dp_sklearn.estimators{module}", name)
            for name, module in _PUBLIC.items()}


def _path_of(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _is_net(est) -> bool:
    import skorch

    return isinstance(est, skorch.NeuralNet)


class _Writer:
    """Turns an estimator into a JSON document and a dict of tensors."""

    def __init__(self):
        self.tensors = {}
        self.seen = {}  # id(estimator) -> node id, so a shared estimator is stored once

    def estimator(self, est, where):
        if id(est) in self.seen:
            return {"type": "ref", "id": self.seen[id(est)]}
        path = _path_of(type(est))
        if path not in _estimator_classes():
            raise TypeError(
                f"{where} is a {path}: the safe format stores only dp_sklearn's estimators "
                f"({', '.join(sorted(p.rsplit('.', 1)[1] for p in _estimator_classes()))}); save it with "
                "joblib instead (a pickle: only for files you will load yourself)."
            )
        node_id = len(self.seen)
        self.seen[id(est)] = node_id
        name = type(est).__name__
        params = {key: self.value(value, f"parameter {key!r} of {name}", node_id, key)
                  for key, value in est.get_params(deep=False).items()}
        fitted = {}
        initialized = _is_net(est) and bool(getattr(est, "initialized_", False))
        for key, value in vars(est).items():
            if not key.endswith("_") or key.startswith("_") or (_is_net(est) and key in _REBUILT):
                continue
            fitted[key] = self.value(value, f"fitted attribute {key!r} of {name}", node_id, key, fitted=initialized)
        return {"type": "estimator", "id": node_id, "class": path, "params": params, "initialized": initialized,
                "fitted": fitted}

    def value(self, value, where, node_id, key, fitted=False):
        from skorch.history import History

        if isinstance(value, _PRIMITIVES):
            return value
        if isinstance(value, os.PathLike):  # checkpoint_dir=Path(...): kept as its text
            return os.fspath(value)
        if isinstance(value, History):
            return {"type": "history", "data": json.loads(json.dumps(list(value), default=float))}
        if isinstance(value, list):
            return [self.value(v, where, node_id, key) for v in value]
        if isinstance(value, tuple):
            return {"type": "tuple", "items": [self.value(v, where, node_id, key) for v in value]}
        if isinstance(value, (set, frozenset)):
            items = sorted(value, key=repr)
            return {"type": "set", "items": [self.value(v, where, node_id, key) for v in items]}
        if isinstance(value, dict):
            return {"type": "dict", "items": [[self.value(k, where, node_id, key), self.value(v, where, node_id, key)]
                                              for k, v in value.items()]}
        if isinstance(value, (np.ndarray, np.generic)):
            return _encode_array(np.asarray(value), where, scalar=isinstance(value, np.generic))
        if isinstance(value, torch.Tensor):
            name = f"{node_id}/{key}"
            self.tensors[name] = value.detach().cpu().contiguous().clone()
            return {"type": "tensor", "key": name}
        if isinstance(value, nn.Module):
            if not fitted:
                raise TypeError(
                    f"{where} holds a {type(value).__name__} instance (an nn.Module): the safe format stores "
                    "classes and plain values, not objects. Give it by name or class (e.g. backbone='resnet18'), "
                    "or save with joblib (a pickle: only for files you will load yourself)."
                )
            prefix = f"{node_id}/{key}/"
            for name, tensor in value.state_dict().items():
                self.tensors[prefix + name] = tensor.detach().cpu().contiguous().clone()
            return {"type": "module_state", "class": _path_of(type(value)), "prefix": prefix}
        if hasattr(value, "get_params") and hasattr(value, "fit"):
            return self.estimator(value, where)
        if isinstance(value, type):
            path = _path_of(value)
            _check_class_path(path, where)
            return {"type": "class", "path": path}
        raise TypeError(
            f"{where} holds a {type(value).__name__} object, which the safe format cannot store (it stores "
            "plain values, arrays, classes by import path and dp_sklearn estimators); set it to a plain value, "
            "or save with joblib (a pickle: only for files you will load yourself)."
        )


def _encode_array(a, where, scalar=False):
    if a.dtype.kind not in "biufUO":
        raise TypeError(f"{where} is an array of dtype {a.dtype}, which the safe format cannot store.")
    data = a.ravel().tolist()
    if a.dtype.kind == "O" and not all(isinstance(v, _PRIMITIVES) for v in data):
        raise TypeError(f"{where} is an object array holding other than str, int, float, bool or None.")
    return {"type": "ndarray", "dtype": a.dtype.str, "shape": list(a.shape), "data": data, "scalar": scalar}


def _check_class_path(path, where):
    if "<" in path or not path.startswith(_CLASS_ROOTS):
        raise TypeError(
            f"{where} is {path}: the safe format names only classes from "
            f"{', '.join(r.rstrip('.') for r in _CLASS_ROOTS)}."
        )


def _import(path, where):
    """Import the class ``module.Qual.Name`` from one of the allowed roots."""
    _check_class_path(path, where)
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        break
    else:
        obj = None
    if not isinstance(obj, type) or _path_of(obj) != path:
        raise ValueError(f"{where}: {path} is not an importable class here.")
    return obj


def save_model(estimator, path) -> Path:
    """Save a dp_sklearn estimator (fitted or not) to a file that loading cannot run code from.

    Parameters
    ----------
    estimator : dp_sklearn estimator
        :class:`~dp_sklearn.MaskAttentionClassifier`, :class:`~dp_sklearn.DeepPneumoniaClassifier`,
        :class:`~dp_sklearn.ContrastivePretrainer` or another estimator of
        :mod:`dp_sklearn.estimators`, with plain parameter values (numbers, strings, classes, nested
        dp_sklearn estimators).
    path : str or os.PathLike
        The file to write: a zip archive holding ``model.json`` and ``tensors.safetensors``
        (see the module docstring). Written atomically (:func:`dp_sklearn.utils.files.atomic_write`):
        a failure or a kill leaves any old file intact.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        An estimator of another library, or a parameter or fitted attribute the format cannot
        store (e.g. an ``nn.Module`` instance as ``backbone``); the message names it.

    See Also
    --------
    load_model : the reverse.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from dp_sklearn import MaskAttentionClassifier
    >>> from dp_sklearn.persistence import load_model, save_model
    >>> X, y = np.random.RandomState(0).rand(8, 16, 16).astype(np.float32), np.array([0, 1] * 4)
    >>> clf = MaskAttentionClassifier(backbone="resnet10_half", image_size=16, batch_size=4, max_epochs=1,
    ...                               verbose=0, device="cpu", random_state=0).fit(X, y)
    >>> path = save_model(clf, os.path.join(tempfile.mkdtemp(), "model.dps"))
    >>> np.array_equal(load_model(path).predict_proba(X), clf.predict_proba(X))
    True
    """
    from safetensors.torch import save as save_tensors

    from . import __version__

    writer = _Writer()
    doc = {"format": FORMAT, "dp_sklearn_version": __version__, "torch_version": torch.__version__,
           "estimator": writer.estimator(estimator, "the estimator")}
    text = json.dumps(doc, indent=1)
    blob = save_tensors(writer.tensors, metadata={"format": FORMAT})
    path = Path(path)

    def write(f):
        with zipfile.ZipFile(f, "w") as z:
            z.writestr(_JSON, text, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr(_TENSORS, blob, compress_type=zipfile.ZIP_STORED)

    atomic_write(path, write)
    return path


def is_model_file(path) -> bool:
    """Whether ``path`` is a model file (or unzipped folder) written by :func:`save_model`."""
    path = Path(path)
    if path.is_dir():
        return (path / _JSON).is_file()
    try:
        with zipfile.ZipFile(path) as z:
            return _JSON in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_model(path, *, device=None):
    """Load an estimator saved by :func:`save_model`; nothing in the file is run.

    Parameters
    ----------
    path : str or os.PathLike
        The file written by :func:`save_model`, or a folder holding its unzipped members.
    device : str, optional
        Set the ``device`` parameter of every torch estimator in the model before building it
        (e.g. ``"cpu"`` for a model saved with ``device="cuda"``, on a machine without CUDA).

    Returns
    -------
    estimator
        The estimator, fitted as it was saved (without its optimizer state).

    Raises
    ------
    ValueError
        Not a dp_sklearn model file, or a file that names a class outside the whitelist
        (only dp_sklearn's estimator classes; parameter classes only from dp_sklearn,
        ``torch.nn``, ``torch.optim``, torch's ``DataLoader`` and skorch's ``Dataset``), or
        weights that do not fit the model its parameters build.

    Examples
    --------
    A model saved on a GPU machine with ``device="cuda"``, loaded on a CPU-only one:

    >>> import os, tempfile
    >>> from dp_sklearn import DeepPneumoniaClassifier
    >>> from dp_sklearn.persistence import load_model, save_model
    >>> path = save_model(DeepPneumoniaClassifier(device="cuda"), os.path.join(tempfile.mkdtemp(), "m.dps"))
    >>> load_model(path, device="cpu").device
    'cpu'

    A fitted model round-trips with identical predictions: see :func:`save_model`.
    """
    from safetensors.torch import load as load_tensors

    from . import __version__

    path = Path(path)
    try:
        if path.is_dir():
            text, blob = (path / _JSON).read_bytes(), (path / _TENSORS).read_bytes()
        else:
            with zipfile.ZipFile(path) as z:
                if z.getinfo(_JSON).file_size > _MAX_JSON_BYTES:
                    raise ValueError(f"{_JSON} is larger than {_MAX_JSON_BYTES} bytes")
                text, blob = z.read(_JSON), z.read(_TENSORS)
        doc = json.loads(text)
        tensors = load_tensors(blob)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path} is not a dp_sklearn model file ({type(exc).__name__}: {exc}). A pickle/joblib file "
            "must be loaded with joblib, which runs the code it contains: only for files you trust."
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dp_sklearn model file of format {FORMAT}.")
    if doc.get("dp_sklearn_version") != __version__:
        warnings.warn(f"{path} was saved with dp_sklearn {doc.get('dp_sklearn_version')} and is loaded with "
                      f"{__version__}; check its predictions.", UserWarning, stacklevel=2)
    try:
        return _Reader(tensors, device).estimator(doc["estimator"], "the estimator")
    except (KeyError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path} is a malformed dp_sklearn model file ({type(exc).__name__}: {exc}).") from exc


class _Reader:
    def __init__(self, tensors, device):
        self.tensors = tensors
        self.device = device
        self.nodes = {}

    def estimator(self, node, where):
        if node.get("type") == "ref":
            if node.get("id") not in self.nodes:
                raise ValueError(f"{where} refers to an estimator not stored before it.")
            return self.nodes[node["id"]]
        allowed = _estimator_classes()
        path = node.get("class")
        if path not in allowed:
            raise ValueError(
                f"{where} names the class {path!r}, which is not a dp_sklearn estimator: refused (a model "
                "file may only name dp_sklearn's estimator classes)."
            )
        module, name = allowed[path]
        cls = getattr(importlib.import_module(module), name)
        params = {key: self.value(value, f"parameter {key!r} of {name}") for key, value in node["params"].items()}
        if self.device is not None and "device" in params:
            params["device"] = self.device
        est = cls(**params)
        self.nodes[node["id"]] = est
        later = {}
        for key, value in node["fitted"].items():
            if not (key.isidentifier() and key.endswith("_") and not key.startswith("_")):
                raise ValueError(f"{where}: {key!r} is not a fitted attribute name (name_).")
            if isinstance(value, dict) and value.get("type") in ("module_state", "history"):
                later[key] = value
            else:
                setattr(est, key, self.value(value, f"fitted attribute {key!r} of {name}"))
        if node.get("initialized"):
            est.initialize()
            for key, value in later.items():
                if value["type"] == "history":
                    from skorch.history import History

                    est.history = History(value["data"])
                    continue
                module = getattr(est, key, None)
                if not isinstance(module, nn.Module) or _path_of(type(module)) != value["class"]:
                    raise ValueError(f"fitted attribute {key!r} of {name}: the model built from the parameters "
                                     f"has no {value['class']} there.")
                prefix = value["prefix"]
                state = {k[len(prefix):]: t for k, t in self.tensors.items() if k.startswith(prefix)}
                try:
                    module.load_state_dict(state)
                except RuntimeError as exc:
                    raise ValueError(f"the weights of {key!r} of {name} do not fit the model its parameters build: "
                                     f"{str(exc).splitlines()[0]}") from exc
        return est

    def value(self, value, where):
        if isinstance(value, _PRIMITIVES):
            return value
        if isinstance(value, list):
            return [self.value(v, where) for v in value]
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "tuple":
            return tuple(self.value(v, where) for v in value["items"])
        if kind == "set":
            return {self.value(v, where) for v in value["items"]}
        if kind == "dict":
            return {self.value(k, where): self.value(v, where) for k, v in value["items"]}
        if kind == "ndarray":
            dtype = np.dtype(str(value["dtype"]))
            if dtype.kind not in "biufUO":
                raise ValueError(f"{where}: arrays of dtype {dtype} are not allowed.")
            a = np.array(value["data"], dtype=dtype).reshape(value["shape"])
            return a[()] if value.get("scalar") else a
        if kind == "tensor":
            return self.tensors[value["key"]]
        if kind == "class":
            return _import(value["path"], where)
        if kind in ("estimator", "ref"):
            return self.estimator(value, where)
        raise ValueError(f"{where}: unknown value {str(value)[:80]!r} in the model file.")

