"""skorch callbacks shared by dp_sklearn's torch estimators.

- :class:`Throughput`: records the training images per second of every epoch in the
  history (``images_per_s``), so skorch's ``PrintLog`` shows it next to the loss.
- :class:`AtomicCheckpoint`: saves the whole training state (module, optimizer, criterion,
  history, random generators, learning-rate schedulers) after every epoch in one file written
  atomically, tagged with a fingerprint of the fit (:func:`fit_fingerprint`), and resumes from it
  (loaded with ``weights_only=True``), refusing a checkpoint of another fit.
- :class:`WarmupCosineLR`: the training recipe's learning rate, set before every optimizer
  step: linear warm-up, then a half cosine to 0 (a function of the global step, so a resumed fit
  sees the uninterrupted rates).
- :func:`remaining_epochs`: the epochs a resumed fit still has to run, with the early-stopping
  counters recomputed from the restored history (:func:`replay_early_stopping`).
- :func:`default_callbacks`: the list every estimator adds to skorch's defaults —
  throughput, early stopping on a plateau, and the checkpoint.

Estimators build these lists in ``get_default_callbacks`` (called by skorch's
``initialize_callbacks`` on each ``fit``), never in ``__init__``, so a clone or a second
fit never shares callback objects or their state with another estimator.

Resuming semantics: when ``checkpoint_dir`` is set, the state is saved there after *every*
epoch, and the next ``fit`` of the same data with the same parameters and the same directory
loads it and trains until the history holds ``max_epochs`` epochs in total, exactly as the
uninterrupted fit would have (same batches, same learning rate every epoch)::

    est = MaskAttentionClassifier(max_epochs=5, checkpoint_dir="ckpt")
    est.fit(X, y)                      # killed in epoch 4: ckpt/ holds epochs 1-3
    MaskAttentionClassifier(max_epochs=5, checkpoint_dir="ckpt").fit(X, y)  # runs epochs 4-5

Use one folder per fit (:func:`dp_sklearn.tuning.tune` makes one per trial and fold): a folder
written by a fit of other data or other parameters is refused with a ``ValueError`` that says
what differs. Early stopping continues too: its best score and epochs without improvement are
recomputed from the restored history, so a resumed fit stops where the uninterrupted one would
have. ``max_epochs``, ``patience``, ``verbose``, ``device`` and ``num_workers`` may
change between runs (a larger ``max_epochs`` trains longer, unless a learning-rate schedule
depends on it). Remove the directory (or use another one) to start from scratch. The torch
estimators' base (:class:`dp_sklearn.estimators.base.TorchEstimatorBase`) runs only the
:func:`remaining_epochs` of a resumed fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import time
import types
from collections.abc import Mapping

import numpy as np
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.history import History

from ..utils.files import atomic_write
from ._ddp import is_main_process

__all__ = [
    "AtomicCheckpoint", "Throughput", "WarmupCosineLR", "atomic_torch_save", "default_callbacks",
    "fit_fingerprint", "remaining_epochs", "replay_early_stopping", "training_steps_done",
]


_CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


class Throughput(Callback):
    """Record the training throughput of each epoch as ``images_per_s`` in the history.

    ``images_per_s`` is the number of training samples seen in the epoch (the sum of
    skorch's ``train_batch_size`` entries, i.e. source images, not augmented views)
    divided by the wall time from the start of the epoch to the end of its last training
    batch: data loading, augmentation, forward, backward and optimizer steps are in it,
    the validation pass and the end-of-epoch callbacks are not. skorch calls ``loss.item()``
    after every batch, which synchronises CUDA, so the time is the device's time too.

    Parameters
    ----------
    name : str, default="images_per_s"
        History key to write.
    clock : {"wall", "process"}, default="wall"
        ``"wall"``: elapsed time (``time.perf_counter``). ``"process"``: CPU time of this
        process, all threads (``time.process_time``), i.e. images per CPU-second — for
        comparing overheads on a CPU shared with other jobs, where wall time mostly
        measures the other jobs.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetRegressor
    >>> net = NeuralNetRegressor(torch.nn.Linear(3, 1), max_epochs=2, train_split=None,
    ...                          verbose=0, callbacks=[("throughput", Throughput())])
    >>> X, y = np.zeros((8, 3), np.float32), np.zeros((8, 1), np.float32)
    >>> net.fit(X, y).history[-1, "images_per_s"] > 0
    True
    """

    def __init__(self, name: str = "images_per_s", clock: str = "wall"):
        self.name = name
        self.clock = clock

    def initialize(self):
        if self.clock not in _CLOCKS:
            raise ValueError(f"clock must be one of {sorted(_CLOCKS)}, got {self.clock!r}.")
        self._now = _CLOCKS[self.clock]
        self.epoch_start_ = None
        self.last_train_batch_end_ = None
        return self

    def on_epoch_begin(self, net, **kwargs):
        self.epoch_start_ = self._now()
        self.last_train_batch_end_ = None

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training:
            self.last_train_batch_end_ = self._now()

    def on_epoch_end(self, net, **kwargs):
        if self.epoch_start_ is None or self.last_train_batch_end_ is None:
            return
        n_images = sum(b.get("train_batch_size", 0) for b in net.history[-1]["batches"])
        elapsed = max(self.last_train_batch_end_ - self.epoch_start_, 1e-9)
        net.history.record(self.name, n_images / elapsed)


CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = "dp_sklearn.checkpoint/1"
# Parameters that change how a fit is run or reported, not what it computes: a checkpoint
# stays valid when they change (``max_epochs`` may grow to train longer; a learning-rate
# schedule that depends on it is fingerprinted through its scheduler callback instead).
_RUN_CONTROL = frozenset({
    "verbose", "checkpoint_dir", "device", "num_workers", "callbacks", "max_epochs", "patience",
    "torch_load_kwargs", "warm_start",
})
_SKORCH_FILES = ("params.pt", "optimizer.pt", "criterion.pt", "history.json")


def _feed(h, obj, depth=0):
    """Feed a canonical byte form of ``obj`` to the hash ``h`` (stable across processes)."""
    if depth > 8:
        h.update(b"<deep>")
        return
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        if isinstance(obj, str) and len(obj) < 4096 and os.path.isfile(obj):
            st = os.stat(obj)  # a path: its content is identified by size and modification time
            h.update(f"file:{st.st_size}:{st.st_mtime_ns};".encode())
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        if obj.dtype == object:
            h.update(f"objarray:{obj.shape};".encode())
            for item in obj.ravel():
                _feed(h, item, depth + 1)
        else:
            a = np.ascontiguousarray(obj)
            h.update(f"ndarray:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
    elif isinstance(obj, np.generic):
        _feed(h, obj.item(), depth + 1)
    elif isinstance(obj, Mapping):
        h.update(f"map:{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key, depth + 1)
            _feed(h, obj[key], depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        h.update(f"{type(obj).__name__}:{len(items)};".encode())
        for item in items:
            _feed(h, item, depth + 1)
    elif isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") and not isinstance(obj, torch.nn.Module):
        h.update(f"callable:{getattr(obj, '__module__', '')}.{obj.__qualname__};".encode())
    elif isinstance(obj, torch.nn.Module):
        h.update(f"module:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        _feed(h, obj.state_dict(), depth + 1)
    elif isinstance(obj, torch.utils.data.Dataset) or hasattr(obj, "get_params"):
        h.update(f"object:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        if hasattr(obj, "get_params"):
            _feed(h, {k: v for k, v in obj.get_params(deep=False).items() if k not in _RUN_CONTROL}, depth + 1)
        # Public attributes: a dataset's tensors, a fitted estimator's modules (``module_``).
        for key, value in sorted(vars(obj).items()):
            if key.startswith("_"):
                continue
            if hasattr(obj, "get_params") and not (key.endswith("_") and isinstance(value, torch.nn.Module)):
                continue
            _feed(h, key, depth + 1)
            _feed(h, value, depth + 1)
    else:
        # Strip memory addresses so that the same object gives the same text in every process.
        h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(obj).__qualname__}:{obj!r};").encode())


def _digest(obj) -> str:
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj)
    return h.hexdigest()


def fit_fingerprint(net, X=None, y=None) -> dict:
    """What identifies one fit: a digest of the training data and one per parameter.

    Parameters
    ----------
    net : skorch.NeuralNet
        An initialized net; its ``get_params(deep=False)`` (without run-control parameters
        such as ``verbose``, ``device``, ``max_epochs`` or ``checkpoint_dir``) and the settings
        of its learning-rate scheduler callbacks are fingerprinted. Module instances among the
        parameters (a warm-start ``encoder``, a ``module`` instance) count with their weights,
        fitted estimators with their fitted modules (``module_``).
    X, y : training data as passed to ``on_train_begin`` (arrays, tensors, a dataset whose
        public attributes hold them, or lists of file paths, identified by name, size and
        modification time)

    Returns
    -------
    dict
        ``{"data": hex digest, "params": {name: hex digest}}``.
    """
    params = {k: v for k, v in net.get_params(deep=False).items()
              if k not in _RUN_CONTROL and not k.startswith("callbacks__")}
    digests = {name: _digest(value) for name, value in params.items()}
    for name, cb in getattr(net, "callbacks_", []):
        if isinstance(cb, LRScheduler):
            digests[f"callbacks__{name}"] = _digest(
                {k: v for k, v in cb.get_params().items() if k not in ("event_name",)})
        elif isinstance(cb, WarmupCosineLR):  # its curve spans max_epochs: another budget, another fit
            digests[f"callbacks__{name}"] = _digest({**cb.get_params(), "max_epochs": net.max_epochs})
    return {"data": _digest((X, y)), "params": digests}


def _describe_mismatch(saved: dict, now: dict) -> str:
    parts = []
    if saved.get("data") != now.get("data"):
        parts.append("the training data differ")
    old, new = saved.get("params", {}), now.get("params", {})
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        parts.append("parameters differ: " + ", ".join(changed))
    return "; ".join(parts) or "fingerprints differ"


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path) -> None:
    """``torch.save(obj, path)`` so that ``path`` is always either the old or the new file
    (:func:`dp_sklearn.utils.files.atomic_write`: temporary file, fsync, ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def training_steps_done(history) -> int:
    """Optimizer steps recorded in a skorch ``history`` (training batches of every epoch).

    Examples
    --------
    >>> from skorch.history import History
    >>> h = History(); h.new_epoch(); h.new_batch(); h.record_batch("train_loss", 1.0)
    >>> h.new_batch(); h.record_batch("valid_loss", 1.0)
    >>> training_steps_done(h)
    1
    """
    return sum(1 for epoch in history for batch in epoch["batches"] if "train_loss" in batch)


class WarmupCosineLR(Callback):
    """Linear warm-up then cosine decay to 0, set before every training step.

    ``lr(t) = base * (t + 1) / W`` for ``t < W`` and
    ``lr(t) = base * (1 + cos(pi * (t - W) / (T - W))) / 2`` afterwards, where ``T`` is
    ``max_epochs`` times the training batches per epoch, ``W = round(warmup * T)`` and ``base``
    is each parameter group's learning rate when training first began (kept in the optimizer's
    state as ``base_lr``, so a resumed fit continues the same curve). The learning rate of the
    last step is recorded in the history as ``lr``.

    Parameters
    ----------
    warmup : float in [0, 1), default=0.1
        Share of all training steps spent warming up.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetRegressor
    >>> net = NeuralNetRegressor(torch.nn.Linear(3, 1), max_epochs=4, batch_size=4, lr=0.1,
    ...                          train_split=None, verbose=0,
    ...                          callbacks=[("schedule", WarmupCosineLR(warmup=0.25))])
    >>> X, y = np.zeros((8, 3), np.float32), np.zeros((8, 1), np.float32)
    >>> [round(v, 4) for v in net.fit(X, y).history[:, "lr"]]   # 8 steps, 2 of warm-up
    [0.1, 0.0933, 0.05, 0.0067]
    """

    def __init__(self, warmup: float = 0.1):
        self.warmup = warmup

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if not 0.0 <= float(self.warmup) < 1.0:
            raise ValueError(f"warmup must lie in [0, 1), got {self.warmup!r}.")
        dataset = net.get_dataset(X, y)
        steps_per_epoch = max(1, len(net.get_iterator(dataset, training=True)))
        self.total_steps_ = max(1, int(net.max_epochs) * steps_per_epoch)
        self.warmup_steps_ = int(round(float(self.warmup) * self.total_steps_))
        self.step_ = training_steps_done(net.history)
        for group in net.optimizer_.param_groups:
            group.setdefault("base_lr", group["lr"])

    def lr_factor(self, step: int) -> float:
        """The factor on ``base_lr`` at 0-based training step ``step``."""
        if step < self.warmup_steps_:
            return (step + 1) / self.warmup_steps_
        span = max(1, self.total_steps_ - self.warmup_steps_)
        progress = min(1.0, (step - self.warmup_steps_) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        factor = self.lr_factor(self.step_)
        for group in net.optimizer_.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.step_ += 1

    def on_epoch_end(self, net, **kwargs):
        net.history.record("lr", net.optimizer_.param_groups[0]["lr"])


class AtomicCheckpoint(Callback):
    """Save the whole training state after every epoch in one atomic file; resume from it.

    One file, ``<dirname>/checkpoint.pt``, holds the module, optimizer and criterion state
    dicts, the history, the random-number generators (torch, CUDA, NumPy, Python), the state
    of every skorch ``LRScheduler`` callback with the optimizer's learning rates, and a
    fingerprint of the fit (:func:`fit_fingerprint`: the training data and the parameters).
    It is written with :func:`atomic_torch_save`, so a process killed at any instant, during
    a write included, leaves the last complete epoch loadable.

    An epoch is saved once every callback has seen its end (at the next epoch's start, or
    when training ends), so the order of callbacks does not matter: the learning-rate
    scheduler has stepped and early stopping has counted.

    Resuming (``resume=True``): on the first ``on_train_begin`` after ``initialize``, an
    existing checkpoint is loaded with ``torch.load(weights_only=True)`` (a planted file
    cannot run code), after checking that it was written by the same fit; a checkpoint of
    other data or other parameters raises ``ValueError`` naming what differs. The estimator
    then runs only the epochs still missing (:func:`remaining_epochs`). Because the RNG and
    the scheduler are restored too, a resumed fit trains exactly as the uninterrupted one
    would have (same batches, same augmentations, the same learning rate every epoch;
    bit-identical on CPU).

    Parameters
    ----------
    dirname : str or os.PathLike
        Folder of this fit's checkpoint (one folder per fit; created when missing).
    resume : bool, default=True
        Load an existing checkpoint when training begins.

    Attributes
    ----------
    loaded_epochs_ : int
        Epochs restored from the checkpoint in this training run (0 when none).
    fingerprint_ : dict
        Fingerprint of the current fit.

    Examples
    --------
    >>> import numpy as np, os, tempfile, torch
    >>> from skorch import NeuralNetRegressor
    >>> d = tempfile.mkdtemp()
    >>> def make():
    ...     return NeuralNetRegressor(torch.nn.Linear, module__in_features=3, module__out_features=1,
    ...                               max_epochs=2, train_split=None, verbose=0,
    ...                               callbacks=[("checkpoint", AtomicCheckpoint(d))])
    >>> X, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    >>> _ = make().fit(X, y)
    >>> sorted(os.listdir(d))
    ['checkpoint.pt']
    >>> dict(make().fit(X, y).callbacks_)["checkpoint"].loaded_epochs_
    2
    """

    def __init__(self, dirname, resume: bool = True):
        self.dirname = dirname
        self.resume = resume

    @property
    def path(self) -> str:
        return os.path.join(os.fspath(self.dirname), CHECKPOINT_FILE)

    def initialize(self):
        self.loaded_epochs_ = 0
        self.fingerprint_ = None
        self._did_load = False
        self._pending = False
        self._restore = None
        return self

    # -------------------------------------------------------------- loading
    def load(self):
        """The saved checkpoint as a dict (``torch.load(weights_only=True)``), or None."""
        path = self.path
        if not os.path.exists(path):
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"could not read the checkpoint {path!r} ({type(exc).__name__}: {exc}); it is not a "
                "dp_sklearn checkpoint or it holds more than tensors and plain values (refused: loading "
                "it could run code). Remove it or use another checkpoint_dir."
            ) from exc
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a dp_sklearn checkpoint ({_FORMAT}); remove it or use another "
                             "checkpoint_dir.")
        return state

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.fingerprint_ = fit_fingerprint(net, X, y)
        if not self.resume or self._did_load:
            return
        self._did_load = True
        dirname = os.fspath(self.dirname)
        os.makedirs(dirname, exist_ok=True)
        for name in os.listdir(dirname):
            if name.startswith(CHECKPOINT_FILE + ".tmp-"):  # left by a process killed mid-write
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(dirname, name))
        state = self.load()
        if state is None:
            old = [f for f in _SKORCH_FILES if os.path.exists(os.path.join(dirname, f))]
            if old:
                raise ValueError(
                    f"checkpoint_dir {dirname!r} holds {', '.join(old)} from an older dp_sklearn (no "
                    "fingerprint, written non-atomically); it cannot be resumed safely. Remove them or use "
                    "another checkpoint_dir.")
            return
        if state["fingerprint"] != self.fingerprint_:
            raise ValueError(
                f"checkpoint_dir {dirname!r} holds the checkpoint of another fit "
                f"({_describe_mismatch(state['fingerprint'], self.fingerprint_)}); resuming it would return "
                "a model of that fit. Use one checkpoint_dir per fit, or remove the folder to start from scratch."
            )
        try:
            net.module_.load_state_dict(state["module"])
            net.criterion_.load_state_dict(state["criterion"])
            net.optimizer_.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(
                f"could not resume from the checkpoint in {dirname!r}: it does not fit this model "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Remove the folder or use another "
                "checkpoint_dir to start from scratch."
            ) from exc
        net.history = History(json.loads(state["history"]))
        _set_rng_state(state["rng"])
        self.loaded_epochs_ = len(net.history)
        # Schedulers are built in their own on_train_begin (before or after this one): restore
        # them when the first epoch begins, when every callback is ready.
        self._restore = state

    def _restore_schedules(self, net):
        state, self._restore = self._restore, None
        schedulers = dict(self._schedulers(net))
        for name, sched_state in state["schedulers"].items():
            if name in schedulers:
                schedulers[name].lr_scheduler_.load_state_dict(sched_state)
        for group, lr in zip(net.optimizer_.param_groups, state["lrs"]):
            group["lr"] = lr

    @staticmethod
    def _schedulers(net):
        for name, cb in getattr(net, "callbacks_", []):
            if isinstance(cb, LRScheduler) and getattr(cb, "lr_scheduler_", None) is not None \
                    and hasattr(cb.lr_scheduler_, "state_dict"):
                yield name, cb

    # -------------------------------------------------------------- saving
    def on_epoch_begin(self, net, **kwargs):
        if self._restore is not None:
            self._restore_schedules(net)
        if self._pending:
            # skorch has already opened the new epoch's history row: save the ones before it.
            self.save(net, history=list(net.history)[:-1])

    def on_epoch_end(self, net, **kwargs):
        self._pending = True

    def on_train_end(self, net, **kwargs):
        if self._pending:
            self.save(net)

    def save(self, net, history=None):
        """Write the current state atomically to :attr:`path` (on rank 0 only in data-parallel training)."""
        if not is_main_process():  # every rank holds the same state: one writer
            self._pending = False
            return
        history = list(net.history) if history is None else history
        state = {
            "format": _FORMAT,
            "epochs": len(history),
            "fingerprint": self.fingerprint_ if self.fingerprint_ is not None else fit_fingerprint(net),
            "module": net.module_.state_dict(),
            "criterion": net.criterion_.state_dict(),
            "optimizer": net.optimizer_.state_dict(),
            "history": json.dumps(history),
            "rng": _rng_state(),
            "schedulers": {name: cb.lr_scheduler_.state_dict() for name, cb in self._schedulers(net)},
            "lrs": [float(g["lr"]) for g in net.optimizer_.param_groups],
        }
        os.makedirs(os.fspath(self.dirname), exist_ok=True)
        atomic_torch_save(state, self.path)
        self._pending = False


def remaining_epochs(net, epochs=None) -> int:
    """Epochs ``net`` still has to run so that its history ends with ``max_epochs`` in total.

    When an :class:`AtomicCheckpoint` restored epochs in this training run, every skorch
    ``EarlyStopping`` callback first gets its counters back (:func:`replay_early_stopping`), so
    a resumed fit stops at the epoch the uninterrupted one would have stopped at; a fit that
    early stopping had already ended has no epoch left.

    Parameters
    ----------
    net : skorch.NeuralNet
        An initialized net (``callbacks_`` set), after ``on_train_begin``.
    epochs : int, optional
        The budget; ``net.max_epochs`` when None.

    Returns
    -------
    int
        ``epochs`` minus the epochs restored by an :class:`AtomicCheckpoint` callback
        in this training run (never below 0); ``epochs`` when nothing was restored; 0 when
        the restored history already met an early-stopping criterion.
    """
    epochs = net.max_epochs if epochs is None else epochs
    loaded = max(
        (getattr(cb, "loaded_epochs_", 0) for _, cb in getattr(net, "callbacks_", []) if isinstance(cb, AtomicCheckpoint)),
        default=0,
    )
    if loaded and replay_early_stopping(net):
        return 0
    return max(0, int(epochs) - int(loaded))


def replay_early_stopping(net) -> bool:
    """Give every ``EarlyStopping`` callback of ``net`` the state it had after ``net.history``.

    Each callback is reset (its ``on_train_begin``) and shown the history epoch by epoch (its
    ``on_epoch_end`` on a view of the net whose history ends at that epoch), so its own rule,
    subclasses' included, recomputes the best score and the epochs without improvement: nothing
    but the history needs to be saved. (``load_best=True`` would keep the current weights as the
    best ones: the checkpoint does not hold them.)

    Parameters
    ----------
    net : skorch.NeuralNet
        An initialized net whose ``history`` was restored.

    Returns
    -------
    bool
        Whether a callback had stopped the training within that history.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from skorch.callbacks import EarlyStopping
    >>> from skorch.history import History
    >>> es = EarlyStopping(monitor="train_loss", patience=2)
    >>> rows = [{"epoch": i + 1, "train_loss": v} for i, v in enumerate([1.0, 0.5, 0.6])]
    >>> net = SimpleNamespace(callbacks_=[("es", es)], history=History(rows), verbose=0, module_=None)
    >>> replay_early_stopping(net), es.misses_, es.best_epoch_
    (False, 1, 2)
    """
    rows = list(net.history)
    stopped = False
    for _, cb in getattr(net, "callbacks_", []):
        if not isinstance(cb, EarlyStopping):
            continue
        view = types.SimpleNamespace(history=History(), verbose=0, module_=getattr(net, "module_", None))
        cb.on_train_begin(view)
        for row in rows:
            view.history.append(row)
            try:
                cb.on_epoch_end(view)
            except KeyboardInterrupt:  # its way of saying "stop here"
                stopped = True
                break
    return stopped


def default_callbacks(patience=None, checkpoint_dir=None, monitor="train_loss", *, threshold=1e-4):
    """The callbacks dp_sklearn's torch estimators add to skorch's defaults.

    Parameters
    ----------
    patience : int or None, default=None
        Stop when ``monitor`` has not improved (by a relative ``threshold``) for this many
        epochs (skorch ``EarlyStopping``); None switches early stopping off.
    checkpoint_dir : str, os.PathLike or None, default=None
        When given, :class:`AtomicCheckpoint` saves the training state to
        ``checkpoint_dir/checkpoint.pt`` after every epoch (atomically) and resumes from it
        when training begins: a second ``fit`` of the same data with the same parameters and
        directory continues where the first stopped; another fit's folder is refused.
    monitor : str, default="train_loss"
        History key watched by early stopping (lower is better).
    threshold : float, default=1e-4
        Minimum relative improvement that resets early stopping's patience.

    Returns
    -------
    list of (str, skorch.callbacks.Callback)
        New, uninitialised callback objects, in the order
        ``throughput``, ``early_stopping``, ``checkpoint`` (the last two only when
        enabled). Each call builds new objects.

    Examples
    --------
    >>> [name for name, _ in default_callbacks(patience=5)]
    ['throughput', 'early_stopping']
    """
    callbacks = [("throughput", Throughput())]
    if patience is not None:
        callbacks.append(
            ("early_stopping", EarlyStopping(monitor=monitor, patience=int(patience), threshold=threshold, lower_is_better=True))
        )
    if checkpoint_dir is not None:
        callbacks.append(("checkpoint", AtomicCheckpoint(checkpoint_dir)))
    return callbacks
