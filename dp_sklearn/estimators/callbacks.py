"""skorch callbacks shared by dp_sklearn's torch estimators.

- :class:`Throughput`: records the training images per second of every epoch in the
  history (``images_per_s``), so skorch's ``PrintLog`` shows it next to the loss.
- :class:`ResumeFromCheckpoint`: skorch's ``LoadInitState`` that also remembers how many
  epochs the checkpoint had already run (``loaded_epochs_``), so that an estimator can run
  only the epochs still missing (see :func:`remaining_epochs`).
- :func:`default_callbacks`: the list every estimator adds to skorch's defaults —
  throughput, early stopping on a plateau, and a checkpoint/resume pair.

Estimators build these lists in ``get_default_callbacks`` (called by skorch's
``initialize_callbacks`` on each ``fit``), never in ``__init__``, so a clone or a second
fit never shares callback objects or their state with another estimator.

Resuming semantics (used by :class:`~dp_sklearn.estimators.pretrainer.ContrastivePretrainer`):
when ``checkpoint_dir`` is set, the module, optimizer, criterion and history are saved
there after *every* epoch, and the next ``fit`` with the same directory loads them and
trains until the history holds ``max_epochs`` epochs in total::

    est = ContrastivePretrainer(max_epochs=5, checkpoint_dir="ckpt")
    est.fit(X)                         # killed after epoch 3: ckpt/ holds epochs 1-3
    ContrastivePretrainer(max_epochs=5, checkpoint_dir="ckpt").fit(X)  # runs epochs 4-5

Remove the directory (or use another one) to start from scratch. To take part, an
estimator overrides ``fit_loop`` to call :func:`remaining_epochs`::

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        if epochs is None:
            epochs = remaining_epochs(self)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)
"""

from __future__ import annotations

import time

from skorch.callbacks import Callback, Checkpoint, EarlyStopping, LoadInitState

__all__ = ["ResumeFromCheckpoint", "Throughput", "default_callbacks", "remaining_epochs"]


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


class ResumeFromCheckpoint(LoadInitState):
    """skorch's ``LoadInitState`` that counts the epochs it restored.

    On the first ``on_train_begin`` after ``initialize`` it loads the module, optimizer,
    criterion and history saved by ``checkpoint`` if the files exist (nothing happens on
    a fresh directory) and sets ``loaded_epochs_`` to the number of epochs in the restored
    history (0 when nothing was loaded). A checkpoint written by a different model raises
    a ``ValueError`` that names the directory instead of a bare ``state_dict`` error.

    Parameters
    ----------
    checkpoint : skorch.callbacks.Checkpoint
        The checkpoint whose files are read.
    use_safetensors : bool, default=False
        Passed to ``net.load_params``.
    """

    def initialize(self):
        super().initialize()
        self.loaded_epochs_ = 0
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if self.did_load_:
            return
        try:
            super().on_train_begin(net, X=X, y=y, **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(
                f"could not resume from the checkpoint in {self.checkpoint.dirname!r}: it was written by a "
                f"different model or settings ({type(exc).__name__}: {exc}). Remove the directory or use "
                "another checkpoint_dir to start from scratch."
            ) from exc
        self.loaded_epochs_ = len(net.history)


def remaining_epochs(net, epochs=None) -> int:
    """Epochs ``net`` still has to run so that its history ends with ``max_epochs`` in total.

    Parameters
    ----------
    net : skorch.NeuralNet
        An initialized net (``callbacks_`` set).
    epochs : int, optional
        The budget; ``net.max_epochs`` when None.

    Returns
    -------
    int
        ``epochs`` minus the epochs restored by a :class:`ResumeFromCheckpoint` callback
        in this training run (never below 0); ``epochs`` when nothing was restored.
    """
    epochs = net.max_epochs if epochs is None else epochs
    loaded = max(
        (getattr(cb, "loaded_epochs_", 0) for _, cb in getattr(net, "callbacks_", []) if isinstance(cb, ResumeFromCheckpoint)),
        default=0,
    )
    return max(0, int(epochs) - int(loaded))


def default_callbacks(patience=None, checkpoint_dir=None, monitor="train_loss", *, threshold=1e-4):
    """The callbacks dp_sklearn's torch estimators add to skorch's defaults.

    Parameters
    ----------
    patience : int or None, default=None
        Stop when ``monitor`` has not improved (by a relative ``threshold``) for this many
        epochs (skorch ``EarlyStopping``); None switches early stopping off.
    checkpoint_dir : str, os.PathLike or None, default=None
        When given, skorch ``Checkpoint(monitor=None)`` saves the module, optimizer,
        criterion and history (``params.pt``, ``optimizer.pt``, ``criterion.pt``,
        ``history.json``) to this directory after every epoch, and
        :class:`ResumeFromCheckpoint` loads them when training begins: a second ``fit``
        with the same directory continues where the first stopped.
    monitor : str, default="train_loss"
        History key watched by early stopping (lower is better).
    threshold : float, default=1e-4
        Minimum relative improvement that resets early stopping's patience.

    Returns
    -------
    list of (str, skorch.callbacks.Callback)
        New, uninitialised callback objects, in the order
        ``throughput``, ``early_stopping``, ``checkpoint``, ``resume`` (the last three only
        when enabled). Each call builds new objects.

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
        checkpoint = Checkpoint(
            monitor=None,
            dirname=str(checkpoint_dir),
            f_params="params.pt",
            f_optimizer="optimizer.pt",
            f_criterion="criterion.pt",
            f_history="history.json",
            f_pickle=None,
        )
        callbacks.append(("checkpoint", checkpoint))
        callbacks.append(("resume", ResumeFromCheckpoint(checkpoint)))
    return callbacks
