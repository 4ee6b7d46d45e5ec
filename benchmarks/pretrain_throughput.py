"""Pre-training throughput: ContrastivePretrainer.fit vs a hand-written PyTorch SimCLR loop.

Both sides train the same :class:`~dp_sklearn.nn.simclr.SimCLRModule`
(backbone + pooling + projection head), make views with the same
:class:`~dp_sklearn.data.augment.RadiographAugment` through the same
:func:`~dp_sklearn.estimators.pretrainer.two_views`, use the same
:class:`~dp_sklearn.losses.contrastive.NTXentLoss`, AdamW settings, batch size, device,
precision (``precision="auto"``: bfloat16 autocast where the device has it natively, channels_last) and data (cxr1k at a
small size). The hand-written loop slices a host tensor with a random permutation per epoch,
drops the last incomplete batch, copies each batch to the device and calls ``loss.item()``
after every step (as skorch does, and as any loop that logs its loss does).

Images per second are counted per epoch from the start of the epoch to the end of its last
training step (the same definition as the :class:`~dp_sklearn.estimators.callbacks.Throughput`
callback), the first epoch of each run is excluded (warm-up), and the two sides run
interleaved, ``--repeats`` times each after ``--warmup`` untimed runs, so that load from other processes hits both alike.
The reported ratio is median(estimator) / median(hand-written); the target is >= 0.95.
Whole-``fit`` wall time (initialisation and end-of-epoch callbacks included) is reported too.

Usage::

    python benchmarks/pretrain_throughput.py                       # CPU quick setting
    python benchmarks/pretrain_throughput.py --device cuda --image-size 128 --backbone resnet18 \\
        --n-images 1124 --batch-size 128 --epochs 4 --out benchmarks/results/pretrain_throughput.json

:func:`handwritten_simclr_loop` is importable (``benchmarks/run.py`` reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_sklearn.data.dataset import resize_images  # noqa: E402
from dp_sklearn.estimators.callbacks import Throughput  # noqa: E402
from dp_sklearn.data.augment import build_augment, two_views  # noqa: E402
from dp_sklearn.estimators.pretrainer import ContrastivePretrainer  # noqa: E402
from dp_sklearn.nn.simclr import SimCLRModule  # noqa: E402
from dp_sklearn.losses.contrastive import NTXentLoss  # noqa: E402
from dp_sklearn.utils.device import autocast, resolve_device, resolve_precision, seed_everything  # noqa: E402


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def handwritten_simclr_loop(
    images,
    *,
    backbone="resnet10_half",
    image_size=64,
    projection_dim=128,
    hidden_dim=512,
    temperature=0.2,
    batch_size=64,
    epochs=3,
    lr=1e-3,
    weight_decay=1e-4,
    augment=True,
    device="auto",
    precision="auto",
    seed=0,
    clock="wall",
):
    """Train SimCLR with a plain PyTorch loop; the reference for the estimator's overhead.

    Parameters
    ----------
    images : float32 ndarray (n, H, W) in [0, 1]
        Training images; resized once to ``image_size`` (as the estimator does).
    backbone, image_size, projection_dim, hidden_dim, temperature, batch_size, lr, weight_decay, augment
        As in :class:`~dp_sklearn.estimators.pretrainer.ContrastivePretrainer`.
    epochs : int
        Number of passes over the data.
    device : {"auto", "cpu", "cuda"}
    precision : {"auto", "float32", "bfloat16", "float16"}
    seed : int
    clock : {"wall", "process"}
        ``"process"`` counts CPU time of this process instead of elapsed time (for a CPU
        shared with other jobs; see :class:`~dp_sklearn.estimators.callbacks.Throughput`).

    Returns
    -------
    dict
        ``images_per_s`` (list, per epoch: images / time from epoch start to the end of
        its last step), ``train_loss`` (list, per epoch mean), ``wall_s`` (whole call, set-up
        included), ``model`` (the trained :class:`SimCLRModule`).

    Examples
    --------
    >>> import numpy as np
    >>> out = handwritten_simclr_loop(np.random.rand(8, 32, 32).astype(np.float32), image_size=32,
    ...                               batch_size=4, epochs=1, projection_dim=8, hidden_dim=16, device="cpu")
    >>> len(out["images_per_s"]), out["images_per_s"][0] > 0
    (1, True)
    """
    start = time.perf_counter()
    now = time.process_time if clock == "process" else time.perf_counter
    device = resolve_device(device)
    amp_dtype = resolve_precision(precision, device)
    size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    seed_everything(seed)
    model = SimCLRModule(backbone, projection_dim=projection_dim, hidden_dim=hidden_dim).to(device)
    model = model.to(memory_format=torch.channels_last)  # as the estimators do
    aug = build_augment(augment, {"output_size": tuple(size)}).to(device)
    criterion = NTXentLoss(temperature).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    data = torch.from_numpy(np.ascontiguousarray(resize_images(np.asarray(images, dtype=np.float32), size)))
    n = len(data)
    n_batches = n // batch_size if n > batch_size else 1

    rates, losses = [], []
    model.train()
    for _ in range(epochs):
        t0 = now()
        order = torch.randperm(n)
        epoch_losses, seen = [], 0
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = data[idx].unsqueeze(1).to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            x1, x2 = two_views(aug, x)
            with autocast(device, amp_dtype):
                z1, z2 = model(x1=x1, x2=x2)
            loss = criterion(z1.float(), z2.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            seen += len(idx)
        _sync(device)
        rates.append(seen / (now() - t0))
        losses.append(float(np.mean(epoch_losses)))
    return {"images_per_s": rates, "train_loss": losses, "wall_s": time.perf_counter() - start, "model": model}


def estimator_run(images, *, epochs, seed=0, clock="wall", **settings):
    """Fit :class:`ContrastivePretrainer` with the same settings; same return keys as the loop."""
    start = time.perf_counter()
    callbacks = [("cpu_throughput", Throughput(name="images_per_cpu_s", clock="process"))] if clock == "process" else None
    est = ContrastivePretrainer(max_epochs=epochs, patience=None, verbose=0, random_state=seed, callbacks=callbacks,
                                **settings)
    est.fit(images)
    _sync(est.device_)
    key = "images_per_cpu_s" if clock == "process" else "images_per_s"
    return {
        "images_per_s": list(est.history[:, key]),
        "train_loss": list(est.history[:, "train_loss"]),
        "wall_s": time.perf_counter() - start,
        "model": est.module_,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet10_half")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=512, help="first N cxr1k images (all: 1124)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1, help="untimed 1-epoch runs of each side first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: images per CPU-second of this process (CPU shared with other jobs)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from dp_sklearn.datasets import load_cxr1k

    images = load_cxr1k(image_size=max(args.image_size, 64)).images[: args.n_images]
    device = resolve_device(args.device)
    settings = dict(backbone=args.backbone, image_size=args.image_size, projection_dim=args.projection_dim,
                    hidden_dim=args.hidden_dim, temperature=0.2, batch_size=args.batch_size, lr=1e-3,
                    weight_decay=1e-4, device=device)

    for _ in range(args.warmup):  # CUDA context, cuDNN plans, allocator, imports
        handwritten_simclr_loop(images, **settings, epochs=1)
        estimator_run(images, **settings, epochs=1)

    runs = {"handwritten": [], "estimator": []}
    for r in range(args.repeats):
        order = ("handwritten", "estimator") if r % 2 == 0 else ("estimator", "handwritten")
        for name in order:
            fn = handwritten_simclr_loop if name == "handwritten" else estimator_run
            kwargs = dict(settings, epochs=args.epochs, seed=r, clock=args.clock)
            out = fn(images, **kwargs)
            out.pop("model")
            runs[name].append(out)
            print(f"repeat {r} {name:11s} images/s per epoch: "
                  + ", ".join(f"{v:.1f}" for v in out["images_per_s"])
                  + f"  (wall {out['wall_s']:.1f} s)", flush=True)

    n_steps = (len(images) // args.batch_size) * args.batch_size
    summary = {}
    for name, outs in runs.items():
        steady = [v for out in outs for v in out["images_per_s"][1:]]
        wall = [args.epochs * n_steps / out["wall_s"] for out in outs]
        summary[name] = {"images_per_s_median": float(np.median(steady)), "images_per_s_steady": steady,
                         "images_per_s_whole_fit_median": float(np.median(wall))}
    ratio = summary["estimator"]["images_per_s_median"] / summary["handwritten"]["images_per_s_median"]
    ratio_wall = (summary["estimator"]["images_per_s_whole_fit_median"]
                  / summary["handwritten"]["images_per_s_whole_fit_median"])
    dev_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    print()
    print(f"device {device} ({dev_name}), threads {torch.get_num_threads()}, clock {args.clock}, {args.backbone}, "
          f"{args.image_size}px, batch {args.batch_size}, {len(images)} images, {args.epochs} epochs x {args.repeats} repeats")
    unit = "img/cpu-s" if args.clock == "process" else "img/s"
    print(f"{'':12s} {'steady ' + unit:>17s} {'whole-fit img/s':>16s}")
    for name in ("handwritten", "estimator"):
        s = summary[name]
        print(f"{name:12s} {s['images_per_s_median']:17.1f} {s['images_per_s_whole_fit_median']:16.1f}")
    print(f"{'ratio':12s} {ratio:17.3f} {ratio_wall:16.3f}   (target >= 0.95)")
    result = {"settings": {**settings, **vars(args), "device": device, "device_name": dev_name,
                           "torch": torch.__version__, "threads": torch.get_num_threads()},
              "summary": summary, "ratio": ratio, "ratio_whole_fit": ratio_wall, "runs": runs}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
