"""Speed measurements for the benchmark: each estimator next to a hand-written PyTorch loop of the
same model, augmentations and batch size, on the same data and device, in the same process."""

from __future__ import annotations

import time

import numpy as np


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def dicom_speed(repeats: int = 3):
    """dp_sklearn.data.io.read_image (LUTs, inversion, scaling) vs plain pydicom decode (pixel_array)."""
    import pydicom

    from dp_sklearn.data.io import read_image
    from dp_sklearn.datasets import DICOM_DIR

    files = sorted(p for p in DICOM_DIR.glob("*.dcm") if not p.name.startswith("ct_"))
    for f in files:  # warm-up: imports of the decoder plugins
        read_image(f)

    def timed(fn):
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for f in files:
                fn(f)
            best = min(best, time.perf_counter() - t0)
        return len(files) / best

    ours = timed(lambda f: read_image(f))
    plain = timed(lambda f: pydicom.dcmread(f).pixel_array)
    return [{"name": f"DICOM read_image ({len(files)} chest files, vs pydicom pixel_array)",
             "images_per_s": ours, "reference": plain, "ratio": ours / plain}]


def _classifier(p, device, seed, **overrides):
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    params = dict(backbone=p["backbone"], image_size=p["image_size"], max_epochs=1, batch_size=p["batch_size"],
                  lr=p["lr"], device=device, random_state=seed, verbose=0, attention_weight=1.0,
                  contrastive_weight=0.1, class_balance_beta=0.999)
    params.update(overrides)
    return MaskAttentionClassifier(**params)


def handwritten_classifier_epochs(X, y, masks, available, p, device, seed, epochs):
    """A plain PyTorch loop training the full Deep Pneumonia network: the same module, criterion,
    augmentation, optimizer and batch size as MaskAttentionClassifier builds, on tensors sliced per
    batch. Returns seconds per epoch (best of ``epochs``, the first one dropped as warm-up)."""
    import torch

    from dp_sklearn.utils.device import autocast, resolve_precision

    est = _classifier(p, device, seed)
    est.n_classes_ = int(y.max()) + 1
    est.class_counts_ = np.bincount(y, minlength=est.n_classes_).astype(float)
    with est._resolved_device():
        est.initialize()
    module, criterion, augment = est.module_, est.criterion_, est.augment_
    opt = torch.optim.AdamW(module.parameters(), lr=p["lr"], weight_decay=1e-4)
    amp = resolve_precision("auto", device)
    Xt = torch.from_numpy(X)[:, None]
    Mt = torch.from_numpy(masks.astype(np.float32))[:, None]
    At = torch.from_numpy(available)
    yt = torch.from_numpy(y.astype(np.int64))
    if device.startswith("cuda"):
        Xt, Mt = Xt.pin_memory(), Mt.pin_memory()
    module.train()
    times = []
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(yt))
        for start in range(0, len(yt), p["batch_size"]):
            idx = perm[start:start + p["batch_size"]]
            x = Xt[idx].to(device, non_blocking=True)
            m = Mt[idx].to(device, non_blocking=True)
            if device.startswith("cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            x, m = augment(x, m)
            with autocast(device, amp):
                logits, aux = module(x=x, mask=m, has_mask=At[idx].to(device))
            loss, _ = criterion(logits, aux, yt[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()  # skorch reads the loss every batch too
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times[1:]) if len(times) > 1 else times[0]


def classifier_speed(data, p, device, seed, epochs=3):
    """Training and prediction images/s: MaskAttentionClassifier.fit vs the hand-written loop."""
    X, y = data.images, data.target
    masks, available = data.masks, data.mask_available
    n = min(len(y), p["batch_size"] * p["speed_batches"])
    rows = np.sort(np.random.RandomState(seed).permutation(len(y))[:n])  # every class present
    X, y, masks, available = X[rows], y[rows], masks[rows], available[rows]

    est = _classifier(p, device, seed, max_epochs=epochs)
    est.fit(X, y, masks=masks)
    durations = [row["dur"] for row in est.history]
    est_epoch = min(durations[1:]) if len(durations) > 1 else durations[0]
    hand_epoch = handwritten_classifier_epochs(X, y, masks, available, p, device, seed, epochs)

    import torch

    est.predict_proba(X)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    est.predict_proba(X)
    _sync(device)
    pred_s = time.perf_counter() - t0
    module = est.module_
    module.eval()
    Xt = torch.from_numpy(X)[:, None]
    from dp_sklearn.utils.device import autocast

    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, p["batch_size"]):
            x = Xt[start:start + p["batch_size"]].to(device)
            if device.startswith("cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, est.amp_dtype_):
                logits, _ = module(x=x)
            torch.softmax(logits.float(), dim=1).cpu()
    _sync(device)
    hand_pred_s = time.perf_counter() - t0
    return [
        {"name": f"train MaskAttentionClassifier (full loss, {n} images, batch {p['batch_size']})",
         "images_per_s": n / est_epoch, "reference": n / hand_epoch, "ratio": hand_epoch / est_epoch},
        {"name": "predict MaskAttentionClassifier.predict_proba", "images_per_s": n / pred_s,
         "reference": n / hand_pred_s, "ratio": hand_pred_s / pred_s},
    ]


def pretrainer_speed(data, p, device, seed, epochs=3):
    """Pre-training images/s: ContrastivePretrainer.fit vs the hand-written SimCLR loop (same
    module, augmentation, loss and batch size; the first epoch of each is warm-up)."""
    from pretrain_throughput import estimator_run, handwritten_simclr_loop

    n = min(len(data.images), p["batch_size"] * p["speed_batches"])
    images = data.images[np.sort(np.random.RandomState(seed).permutation(len(data.images))[:n])]
    settings = dict(backbone=p["backbone"], image_size=p["image_size"], batch_size=p["batch_size"], lr=p["lr"],
                    temperature=0.2, device=device)
    hand = handwritten_simclr_loop(images, epochs=epochs, seed=seed, **settings)
    est = estimator_run(images, epochs=epochs, seed=seed, **settings)
    hand_rate = float(np.median(hand["images_per_s"][1:]))
    est_rate = float(np.median(est["images_per_s"][1:]))
    return [{"name": f"train ContrastivePretrainer (SimCLR, {n} images, batch {p['batch_size']})",
             "images_per_s": est_rate, "reference": hand_rate, "ratio": est_rate / hand_rate}]
