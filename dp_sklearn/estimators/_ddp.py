"""Data-parallel training of the torch estimators on ``torch.distributed`` (DDP).

Started with ``torchrun`` (or ``accelerate launch``, which starts the same processes with the
same environment), every process runs the user's script, so every process calls ``fit`` on
the same data with the same parameters. When the environment says there are several
processes (``WORLD_SIZE > 1``), the estimators' shared base
(:class:`~dp_sklearn.estimators._torch.TorchEstimatorMixin`) trains data-parallel:

* the process group is initialised from the environment on the first ``fit`` when the script
  did not do it (``gloo`` for CPU training, ``nccl`` for CUDA; each process uses the GPU
  ``LOCAL_RANK``);
* **batches**: every process draws the same batch order (a random stream shared by all
  processes, started from rank 0's generator), and each takes a contiguous share of every
  global batch of ``batch_size`` images (``batch_size / world_size`` per process);
  augmentation and dropout draw from a stream of their own per process;
* **loss**: the module's outputs (logits, features, projections, ...) and the batch's labels
  and weights are all-gathered, with gradient, so every process computes the loss of the
  *global* batch exactly as one process would: NT-Xent negatives, supervised-contrastive
  pairs and per-batch normalisations see the whole batch, not a shard;
* **gradients**: the module is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`,
  which averages them; BatchNorm layers are converted to synchronised BatchNorm, so their
  statistics are those of the global batch (``nn.SyncBatchNorm`` on CUDA; on CPU, where
  torch's layer does not run, :class:`_SyncBatchNorm` all-reduces the sums itself);
* only rank 0 prints and writes checkpoints; all ranks keep identical weights;
* after ``fit`` the wrapper is dropped and the BatchNorm layers are put back, so ``module_``
  is the plain module: pickling, ``predict`` and ``transform`` are those of a one-process fit.

Why the loss is computed on every rank: gathering the outputs makes rank ``q`` receive
``W * dL/d(out_q)`` (the all-gather's backward sums the ``W`` identical losses' gradients)
and DDP divides by ``W``, so the averaged gradient is ``dL/dtheta`` of the one-process loss,
whatever the loss couples (see ``docs/scaling.md``).

``DP_SKLEARN_DISTRIBUTED=0`` in the environment turns all of this off (each process then fits
on its own, e.g. one hyper-parameter setting per process).
"""

from __future__ import annotations

import atexit
import contextlib
import os

import torch
from torch import nn

__all__ = ["DistributedTraining", "RankShard", "is_main_process", "world"]


def _dist():
    return torch.distributed if torch.distributed.is_available() else None


def _requested_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def world(init: bool = False):
    """``(rank, world_size)`` when this process trains data-parallel, else None.

    With ``init=True``, a process group is initialised from the environment (``env://``, as
    ``torchrun`` sets it) when ``WORLD_SIZE > 1`` and none exists yet.
    """
    if os.environ.get("DP_SKLEARN_DISTRIBUTED", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    dist = _dist()
    if dist is None:
        return None
    if not dist.is_initialized():
        if not init or _requested_world_size() <= 1:
            return None
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_destroy_default_group)
    size = dist.get_world_size()
    return (dist.get_rank(), size) if size > 1 else None


def _destroy_default_group():
    dist = _dist()
    if dist is not None and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun; the rank otherwise)."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    dist = _dist()
    return dist.get_rank() if dist is not None and dist.is_initialized() else 0


def rank_device(device: str) -> str:
    """``"cuda"`` -> ``"cuda:LOCAL_RANK"`` while training data-parallel; anything else unchanged."""
    if device == "cuda" and world() is not None:
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return device


def is_main_process() -> bool:
    """True on rank 0 of a data-parallel run, and in any plain process."""
    w = world()
    return w is None or w[0] == 0


# ----------------------------------------------------------------------------- BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each input is the sum of the outputs' gradients."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class _SyncBatchNorm(nn.Module):
    """BatchNorm whose training statistics are those of all processes' samples, on CPU.

    torch's ``nn.SyncBatchNorm`` runs on GPUs only (DDP refuses it on CPU), so CPU training
    uses this layer: in training mode the batch mean and (biased) variance are computed over
    every process's samples in two all-reduced passes in float32 (sums -> mean, squared
    deviations -> variance), with gradient through both, and the running statistics are
    updated as BatchNorm does (unbiased variance). In eval mode it is the plain BatchNorm it
    is mixed into (:data:`_SYNC_OF` has one per kind, so torch's own input checks apply).
    """

    def forward(self, input):
        if not (self.training and world() is not None):
            return super().forward(input)
        group = self.process_group
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        x = input.float()
        dims = [0] + list(range(2, x.ndim))
        shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
        count = torch.tensor([x.numel() / max(x.shape[1], 1)], dtype=torch.float32)
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        return y.to(input.dtype)


class _SyncBatchNorm1d(_SyncBatchNorm, nn.BatchNorm1d):
    pass


class _SyncBatchNorm2d(_SyncBatchNorm, nn.BatchNorm2d):
    pass


class _SyncBatchNorm3d(_SyncBatchNorm, nn.BatchNorm3d):
    pass


#: The CPU-synchronised layer of each BatchNorm kind.
_SYNC_OF = {nn.BatchNorm1d: _SyncBatchNorm1d, nn.BatchNorm2d: _SyncBatchNorm2d, nn.BatchNorm3d: _SyncBatchNorm3d}
_BATCHNORMS = tuple(_SYNC_OF)


def convert_batchnorm(module: nn.Module, process_group=None, cpu=True) -> dict:
    """Replace every BatchNorm layer of ``module`` by a synchronised one, in place.

    :class:`_SyncBatchNorm` (all-reducing on ``process_group``) for CPU training, torch's
    ``nn.SyncBatchNorm`` (default group) for GPUs.
    The new layers share the originals' parameters and buffers (so the optimizer, the state
    dict and checkpoints are unchanged). Returns ``{name: original layer}`` for
    :func:`restore_batchnorm`.
    """
    originals = {}
    for name, child in list(module.named_modules()):
        if not name or not isinstance(child, _BATCHNORMS) or isinstance(child, (nn.SyncBatchNorm, _SyncBatchNorm)):
            continue
        if cpu:
            kind = next(k for k in _BATCHNORMS if isinstance(child, k))
            sync = _SYNC_OF[kind](child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            sync.process_group = process_group
        else:
            sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
        if child.affine:
            sync.weight, sync.bias = child.weight, child.bias
        sync.running_mean, sync.running_var = child.running_mean, child.running_var
        sync.num_batches_tracked = child.num_batches_tracked
        sync.train(child.training)
        module.set_submodule(name, sync)
        originals[name] = child
    return originals


def restore_batchnorm(module: nn.Module, originals: dict) -> None:
    """Put back the layers :func:`convert_batchnorm` replaced (their tensors were shared)."""
    for name, original in originals.items():
        sync = module.get_submodule(name)
        original.load_state_dict(sync.state_dict())  # a no-op copy unless a tensor was swapped
        original.train(sync.training)
        module.set_submodule(name, original)


# ----------------------------------------------------------------------------- gathering


class _AllGatherRows(torch.autograd.Function):
    """All-gather along dim 0 with per-process row counts (padded to the largest share)."""

    @staticmethod
    def forward(ctx, padded, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group, ctx.rows = sizes, rank, group, padded.shape[0]
        parts = [torch.empty_like(padded) for _ in sizes]
        torch.distributed.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        # Every process holds the gradient of its own (identical) loss w.r.t. all rows: sum them.
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        mine = grad[start:start + ctx.sizes[ctx.rank]]
        out = grad.new_zeros((ctx.rows,) + tuple(grad.shape[1:]))
        out[:mine.shape[0]] = mine
        return out, None, None, None


def _leaves(obj, out):
    if isinstance(obj, torch.Tensor):
        if obj.ndim >= 1:
            out.append(obj)
    elif isinstance(obj, dict):
        for key in obj:
            _leaves(obj[key], out)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _leaves(item, out)
    return out


def _rebuild(obj, it):
    if isinstance(obj, torch.Tensor):
        return next(it) if obj.ndim >= 1 else obj
    if isinstance(obj, dict):
        return type(obj)((key, _rebuild(value, it)) for key, value in obj.items())
    if isinstance(obj, tuple):
        return type(obj)(*(_rebuild(v, it) for v in obj)) if hasattr(obj, "_fields") \
            else tuple(_rebuild(v, it) for v in obj)
    if isinstance(obj, list):
        return [_rebuild(v, it) for v in obj]
    return obj


def gather_rows(obj, rank, world_size, group):
    """All-gather every tensor (ndim >= 1) of a nested tuple/list/dict along its first axis.

    The result has the structure of ``obj`` with each tensor replaced by the concatenation of
    all processes' tensors in rank order (shares may differ in length). Floating tensors keep
    their gradient (see :class:`_AllGatherRows`); 0-d tensors and other objects stay local.
    """
    leaves = _leaves(obj, [])
    device = leaves[0].device if leaves else torch.device("cpu")
    counts = torch.tensor([len(leaves)] + [t.shape[0] for t in leaves], dtype=torch.int64, device=device)
    n_leaves = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size)]
    torch.distributed.all_gather(n_leaves, counts[:1].contiguous(), group=group)
    if len({int(t) for t in n_leaves}) != 1:
        raise RuntimeError(
            "data-parallel training: the processes' module outputs differ in structure "
            f"({[int(t) for t in n_leaves]} tensors); every process must return the same keys."
        )
    all_counts = [torch.empty_like(counts) for _ in range(world_size)]
    torch.distributed.all_gather(all_counts, counts, group=group)
    sizes = torch.stack(all_counts)[:, 1:].tolist()  # (world, leaves)
    gathered = []
    for i, t in enumerate(leaves):
        rows = [int(s[i]) for s in sizes]
        dtype = t.dtype
        if dtype == torch.bool:
            t = t.to(torch.uint8)
        elif t.is_floating_point() and t.device.type == "cpu" and dtype != torch.float32:
            t = t.float()  # gloo and half types: gather in float32
        if t.is_floating_point() and not t.requires_grad:
            t = t.detach().requires_grad_()  # the same autograd graph on every process
        pad = max(rows) - t.shape[0]
        if pad:
            t = torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))])
        out = _AllGatherRows.apply(t, rows, rank, group)
        gathered.append(out.bool() if dtype == torch.bool else out)
    return _rebuild(obj, iter(gathered))


def _share(n, rank, world_size):
    """Contiguous share ``[start, stop)`` of ``n`` rows for ``rank`` (sizes differ by at most 1)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _slice_rows(obj, start, stop, n):
    if isinstance(obj, torch.Tensor) and obj.ndim >= 1 and obj.shape[0] == n:
        return obj[start:stop]
    if isinstance(obj, dict):
        return type(obj)((k, _slice_rows(v, start, stop, n)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not isinstance(obj, str):
        return type(obj)(_slice_rows(v, start, stop, n) for v in obj)
    return obj


def _batch_len(x):
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return len(x)


class RankShard:
    """This process's share of every global batch of ``iterator`` (drawn from the shared stream)."""

    def __init__(self, state, iterator):
        self.state, self.iterator = state, iterator
        self.global_sizes = []

    def __len__(self):
        return len(self.iterator)

    def __iter__(self):
        it = None
        while True:
            with self.state.shared_rng():
                if it is None:
                    it = iter(self.iterator)
                try:
                    batch = next(it)
                except StopIteration:
                    return
            n = _batch_len(batch[0] if isinstance(batch, (tuple, list)) else batch)
            self.global_sizes.append(n)
            start, stop = _share(n, self.state.rank, self.state.world_size)
            yield _slice_rows(batch, start, stop, n)


class DistributedTraining:
    """What one data-parallel ``fit_loop`` holds: groups, DDP wrapper, shared random stream.

    Built by the estimator on entering ``fit_loop`` on every process and closed in its
    ``finally`` (:meth:`close` restores the plain module).
    """

    def __init__(self, net, rank, world_size):
        dist = torch.distributed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(net.device_)
        # Our own communicators: the gathers and the CPU BatchNorm sums must not interleave with
        # DDP's gradient buckets on the default group; random states travel on CPU (gloo).
        self.group = dist.new_group()
        self.cpu_group = dist.new_group(backend="gloo")
        self._shared = None
        module = net.module_
        cpu = self.device.type == "cpu"
        self.originals = convert_batchnorm(module, process_group=self.group if cpu else None, cpu=cpu)
        kwargs = {"device_ids": [self.device.index or 0]} if self.device.type == "cuda" else {}
        # find_unused_parameters: a share without annotated images leaves the lesion head idle.
        self.ddp = nn.parallel.DistributedDataParallel(module, find_unused_parameters=True, **kwargs)

    @contextlib.contextmanager
    def shared_rng(self):
        """Run a block on the random stream shared by all processes (batch order, the loss).

        The stream starts, at the first training batch (after a checkpoint's generators were
        restored), from rank 0's generator; each process's own stream is then re-seeded from
        it and its rank, so that augmentation and dropout differ between processes.
        """
        if self._shared is None:
            state = torch.get_rng_state()
            torch.distributed.broadcast(state, src=0, group=self.cpu_group)
            self._shared = state
            g = torch.Generator()
            g.set_state(state)
            base = int(torch.randint(0, 2**62, (1,), generator=g))
            torch.manual_seed((base + 7919 * (self.rank + 1)) % 2**63)
        local = torch.get_rng_state()
        torch.set_rng_state(self._shared)
        try:
            yield
        finally:
            self._shared = torch.get_rng_state()
            torch.set_rng_state(local)

    def close(self, net):
        """Drop the DDP wrapper and the groups; put the BatchNorm layers back."""
        module = self.ddp.module
        self.ddp = None
        restore_batchnorm(module, self.originals)
        for group in (self.group, self.cpu_group):
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group(group)
