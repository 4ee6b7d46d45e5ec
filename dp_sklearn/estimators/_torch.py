"""Plumbing shared by the skorch-based estimators: devices, precision, batches, persistence.

Every torch estimator in dp_sklearn mixes :class:`TorchEstimatorMixin` in front of a
skorch ``NeuralNet`` subclass. The mixin adds what skorch leaves to the user:

* ``device="auto"``: resolved to CUDA or CPU on each call, while the parameter keeps the
  user's value (so ``get_params``/``clone`` and pickles stay device independent);
* mixed precision where the hardware has it (bfloat16 autocast on CUDA and on CPUs with
  AVX512-BF16/AMX, no gradient scaler needed) and ``channels_last`` memory format;
* batches given as dicts from :class:`~dp_sklearn.data.dataset.XRayDataset` moved to the
  device with their masks, and augmented there;
* pinned memory and worker processes for loading;
* a fitted CUDA model that unpickles on a CPU-only machine;
* data-parallel training when started by ``torchrun`` / ``accelerate launch`` (see
  :mod:`dp_sklearn.estimators._ddp`): ``fit_loop`` wraps the module in DDP, each process takes
  its share of every global batch and the loss is that of the global batch.

Subclasses implement ``prepare_batch`` (what the module receives) and ``get_loss``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import skorch
import torch
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target

from .._compat import set_training
from ..data.augment import build_augment
from ..data.batches import InMemoryBatches, XRayBatches
from ..data.dataset import XRayDataset
from ..utils.device import autocast, resolve_device, resolve_precision, seed_everything
from ..utils.validation import check_images, check_masks
from . import _ddp


def _as_size(image_size):
    if image_size is None:
        return None
    if np.isscalar(image_size):
        return (int(image_size), int(image_size))
    return tuple(int(s) for s in image_size)


class TorchEstimatorMixin:
    """Shared behaviour of dp_sklearn's skorch estimators (see the module docstring)."""

    # ------------------------------------------------------------------ device
    @contextlib.contextmanager
    def _resolved_device(self):
        """Let skorch see a concrete device while the ``device`` parameter keeps e.g. ``"auto"``.

        skorch reads its public ``device`` attribute whenever it moves modules or tensors; for the
        time of the call it holds the resolved device, then the user's value again.
        """
        requested = getattr(self, "device", "auto")
        self.device = _ddp.rank_device(resolve_device(requested))
        try:
            yield self.device
        finally:
            self.device = requested

    def initialize(self):
        _ddp.world(init=True)  # under torchrun: join the process group before choosing the device
        with self._resolved_device() as device:
            seed_everything(self.random_state)
            super().initialize()
            self.device_ = device
            self.amp_dtype_ = resolve_precision(getattr(self, "precision", "auto"), device)
            # channels_last lets cuDNN and oneDNN pick their NHWC convolution kernels: faster on
            # both, most under bfloat16 (1.3x in float32, 2.7x with bfloat16 on an AVX512-BF16 CPU).
            self.module_.to(memory_format=torch.channels_last)
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        with self._resolved_device():
            return super().partial_fit(X, y, classes=classes, **fit_params)

    # ------------------------------------------------------------------ data-parallel training
    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        w = _ddp.world()
        if w is None:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        state = _ddp.DistributedTraining(self, *w)
        vars(self)["_distributed"] = state
        verbose = self.verbose
        if w[0] != 0:
            self.verbose = 0  # only rank 0 prints (and writes checkpoints, see callbacks)
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        finally:
            self.verbose = verbose
            vars(self).pop("_distributed", None)
            state.close(self)

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        state = vars(self).get("_distributed")
        if state is None or not training or iterator is None:
            return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        shard = _ddp.RankShard(state, iterator)
        super().run_single_epoch(shard, training, prefix, step_fn, **fit_params)
        # skorch recorded this process's share; the epoch's loss and throughput are the global batch's.
        batches = [b for b in self.history[-1]["batches"] if prefix + "_batch_size" in b]
        for row, size in zip(batches[-len(shard.global_sizes):] if shard.global_sizes else [], shard.global_sizes):
            row[prefix + "_batch_size"] = size

    def train_step_single(self, batch, **fit_params):
        state = vars(self).get("_distributed")
        if state is None:
            return super().train_step_single(batch, **fit_params)
        set_training(self, True)
        Xi, yi = skorch.dataset.unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        # The global batch's outputs, labels and per-sample inputs (images stay where they are).
        extra = {k: v for k, v in Xi.items() if not (isinstance(v, torch.Tensor) and v.ndim >= 4)} \
            if isinstance(Xi, dict) else None
        y_all, yi_all, extra_all = _ddp.gather_rows(
            (y_pred, yi if isinstance(yi, torch.Tensor) else None, extra), state.rank, state.world_size, state.group)
        with state.shared_rng():  # a loss that draws at random draws the same on every process
            loss = self.get_loss(y_all, yi_all if yi_all is not None else yi,
                                 X=extra_all if extra_all is not None else Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    def _training_module(self):
        state = vars(self).get("_distributed")
        return state.ddp if state is not None and self.module_.training else self.module_

    def forward_iter(self, X, training=False, device="cpu"):
        with self._resolved_device():
            yield from super().forward_iter(X, training=training, device=device)

    def load_params(self, *args, **kwargs):
        with self._resolved_device():
            return super().load_params(*args, **kwargs)

    def __setstate__(self, state):
        # skorch maps tensors to state["device"]; give it a concrete device that exists here.
        requested = state.get("device", "auto")
        if requested in (None, "auto"):
            state["device"] = resolve_device("auto")
        super().__setstate__(state)
        if requested in (None, "auto"):
            self.device = requested
        if "device_" in vars(self):
            # skorch mapped the tensors to state["device"] (CPU when CUDA is missing here); follow it.
            self.device_ = resolve_device("auto") if requested in (None, "auto") else str(self.device)
            self.amp_dtype_ = resolve_precision(getattr(self, "precision", "auto"), self.device_)

    # ------------------------------------------------------------------ data
    def _image_size(self):
        return _as_size(getattr(self, "image_size", None))

    def _check_inputs(self, X, masks=None):
        """Validate images (array or paths) and masks; returns ``(images, masks, available)``."""
        images = check_images(X, min_samples=1)
        empty_means = getattr(self, "empty_mask_means", "unannotated")
        if isinstance(images, list):  # paths: masks may be paths too, or arrays of the working size
            if masks is None:
                return images, None, np.zeros(len(images), dtype=bool)
            if isinstance(masks, (list, tuple)) and all(m is None or isinstance(m, str) for m in masks):
                if len(masks) != len(images):
                    raise ValueError(f"masks has {len(masks)} entries but there are {len(images)} images.")
                return images, list(masks), np.array([m is not None for m in masks])
            masks, available = check_masks(masks, len(images), self._image_size(), empty_means=empty_means)
            return images, masks, available
        masks, available = check_masks(masks, len(images), images.shape[1:], empty_means=empty_means)
        return images, masks, available

    def _encode_y(self, y, n_samples):
        """Validate class labels and encode them to ``0..k-1``; returns ``(classes, encoded int64)``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None: it is a "
                             "supervised classifier.")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels, got an array of shape {y.shape}.")
        if len(y) != n_samples:
            raise ValueError(f"X has {n_samples} images but y has {len(y)} labels.")
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"y must hold class labels (binary or multi-class), got target type {kind!r}.")
        encoder = LabelEncoder()
        if getattr(self, "classes", None) is not None:
            encoder.fit(np.asarray(self.classes))
            unknown = np.setdiff1d(np.unique(y), encoder.classes_)
            if len(unknown):
                raise ValueError(f"y has labels {unknown.tolist()} that are not in classes={list(self.classes)}.")
        else:
            encoder.fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y has a single class ({encoder.classes_.tolist()}); a classifier needs at least two classes."
            )
        return encoder.classes_, encoder.transform(y).astype(np.int64)

    #: RadiographAugment arguments that ``augment=True`` (or a dict on top) means for this estimator.
    _augment_defaults = {}

    def _build_augmenter(self):
        """The module the ``augment`` parameter asks for, producing images at ``image_size``."""
        size = self._image_size()
        defaults = dict(self._augment_defaults, **({} if size is None else {"output_size": size}))
        return build_augment(self.augment, defaults)

    def _make_dataset(self, images, y=None, masks=None, mask_available=None, sample_weight=None):
        return XRayDataset(images, y=y, masks=masks, mask_available=mask_available, image_size=self._image_size(),
                           sample_weight=sample_weight)

    def _unlabelled_iterator(self, dataset, training):
        """``get_iterator`` of the label-free pre-trainers.

        In-memory arrays go through :class:`InMemoryBatches` (one tensor slice per batch) unless
        the user set iterator parameters or classes; training batches are shuffled and drop the
        last incomplete batch when there is more than one (contrastive losses need full batches).
        """
        prefix = "iterator_train" if training else "iterator_valid"
        custom = bool(self.get_params_for(prefix)) or (
            self.iterator_train if training else self.iterator_valid) is not torch.utils.data.DataLoader
        if isinstance(dataset, XRayDataset) and not dataset.streaming and not self.num_workers and not custom:
            return InMemoryBatches(dataset.images, self.batch_size, shuffle=training,
                                   drop_last=training and len(dataset) > self.batch_size)
        if not training:
            return TorchEstimatorMixin.get_iterator(self, dataset, training=False)
        kwargs = self.get_params_for("iterator_train")
        kwargs.setdefault("batch_size", self.batch_size)
        kwargs.setdefault("shuffle", True)
        kwargs.setdefault("drop_last", len(dataset) > kwargs["batch_size"])
        kwargs.setdefault("num_workers", self.num_workers)
        kwargs.setdefault("pin_memory", str(self.device_).startswith("cuda"))
        return self.iterator_train(dataset, **kwargs)

    def get_iterator(self, dataset, training=False):
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        default_loader = (self.iterator_train if training else self.iterator_valid) is torch.utils.data.DataLoader
        if (isinstance(dataset, XRayDataset) and not dataset.streaming and not isinstance(dataset.masks, list)
                and not getattr(self, "num_workers", 0) and default_loader
                and set(kwargs) <= {"shuffle", "batch_size"}):
            # Fast path for in-memory arrays: slice tensors per batch instead of collating per image.
            batch_size = kwargs.get("batch_size", self.batch_size if self.batch_size != -1 else len(dataset))
            drop_last = training and getattr(self, "drop_last", False) and len(dataset) > batch_size
            return XRayBatches(dataset, batch_size, shuffle=kwargs.get("shuffle", training), drop_last=drop_last)
        kwargs.setdefault("batch_size", self.batch_size if self.batch_size != -1 else len(dataset))
        if training and "sampler" not in kwargs and "batch_sampler" not in kwargs:
            kwargs.setdefault("shuffle", True)  # skorch's DataLoader default would keep one batch order
        num_workers = getattr(self, "num_workers", 0) or 0
        kwargs.setdefault("num_workers", num_workers)
        if num_workers > 0:
            kwargs.setdefault("persistent_workers", False)
        # Pinned host memory makes the host-to-GPU copy asynchronous (non_blocking=True below).
        kwargs.setdefault("pin_memory", str(self.device_).startswith("cuda"))
        if training and getattr(self, "drop_last", False):
            kwargs.setdefault("drop_last", len(dataset) > kwargs["batch_size"])
        iterator = self.iterator_train if training else self.iterator_valid
        return iterator(dataset, **kwargs)

    def _to_device(self, batch: dict) -> dict:
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device_, non_blocking=True)
                if value.ndim == 4:
                    value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    # ------------------------------------------------------------------ steps
    def prepare_batch(self, batch: dict, training: bool) -> dict:
        """Return the keyword arguments for ``module_.forward`` from a batch on the device."""
        raise NotImplementedError

    def infer(self, x, **fit_params):
        batch = self._to_device(x)
        kwargs = self.prepare_batch(batch, training=self.module_.training)
        with autocast(self.device_, self.amp_dtype_):
            return self._training_module()(**kwargs)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        raise NotImplementedError
