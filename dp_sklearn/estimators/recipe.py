"""The training recipe shared by dp_sklearn's torch estimators: the learning-rate schedule.

A data set of a thousand radiographs gives a CNN a few hundred optimizer steps, so the recipe
counts steps, not epochs.

* :class:`WarmupCosineLR`: the learning rate rises linearly from 0 for the first ``warmup``
  share of all training steps, then follows a half cosine down to 0 at the last step. It is a
  function of the global step alone, which a resumed fit recomputes from the restored history,
  so an interrupted and resumed fit sees the same learning rate at every step.

The estimators build it in ``get_default_callbacks`` from their ``lr_schedule`` and ``warmup``
parameters. (An exponential moving average of the weights was measured on top of this schedule and
did not pay: see docs/method.md.)
"""

from __future__ import annotations

import math

from skorch.callbacks import Callback

__all__ = ["WarmupCosineLR", "training_steps_done"]


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
