"""Speed measurements for the benchmark: each estimator next to a hand-written PyTorch loop of the
same model, augmentations and batch size, on the same data and device, in the same process."""

from __future__ import annotations

import time

import numpy as np


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def dicom_speed(repeats: int = 7):
    """dp_sklearn.data.io.read_image (LUTs, inversion, scaling) vs plain pydicom decode (pixel_array):
    the median of ``repeats`` alternating windows each (a window reads every file once), so a drift in
    the machine's speed hits both alike, as in the other speed rows."""
    import pydicom

    from dp_sklearn.data.io import read_image
    from dp_sklearn.datasets import DICOM_DIR

    files = sorted(p for p in DICOM_DIR.glob("*.dcm") if not p.name.startswith("ct_"))
    for f in files:  # warm-up: imports of the decoder plugins
        read_image(f)

    def window(fn):
        t0 = time.perf_counter()
        for f in files:
            fn(f)
        return len(files) / (time.perf_counter() - t0)

    ours, plain = [], []
    for _ in range(repeats):
        ours.append(window(read_image))
        plain.append(window(lambda f: pydicom.dcmread(f).pixel_array))
    ours, plain = float(np.median(ours)), float(np.median(plain))
    return [{"name": f"DICOM read_image ({len(files)} chest files, vs pydicom pixel_array, median of {repeats} windows)",
             "images_per_s": ours, "reference": plain, "ratio": ours / plain}]


def _classifier(p, device, seed, **overrides):
    """The full Deep Pneumonia classifier with row 6's recipe (the profile's settings)."""
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    params = dict(backbone=p["backbone"], image_size=p["image_size"], max_epochs=1, batch_size=p["batch_size"],
                  lr=p["lr"], weight_decay=p["weight_decay"], augment=p["augment"], device=device,
                  random_state=seed, verbose=0)
    params.update(overrides)
    return MaskAttentionClassifier(**params)


def handwritten_classifier_epochs(X, y, masks, available, p, device, seed, epochs):
    """A plain PyTorch loop training the full Deep Pneumonia network: the same module, criterion,
    augmentation, optimizer parameter groups, per-step learning-rate schedule and batch size as
    MaskAttentionClassifier builds, on tensors sliced per batch. Returns the images/s of each epoch
    (time from the epoch's start to the end of its last step, as the estimator's ``images_per_s``)."""
    import math

    import torch

    from dp_sklearn.utils.device import autocast, resolve_precision

    est = _classifier(p, device, seed)
    est.n_classes_ = int(y.max()) + 1
    est.class_counts_ = np.bincount(y, minlength=est.n_classes_).astype(float)
    with est._resolved_device():
        est.initialize()
    module, criterion, augment = est.module_, est.criterion_, est.augment_
    params = list(module.parameters())
    opt = torch.optim.AdamW([{"params": [q for q in params if q.ndim > 1]},
                             {"params": [q for q in params if q.ndim <= 1], "weight_decay": 0.0}],
                            lr=p["lr"], weight_decay=p["weight_decay"])
    steps = epochs * -(-len(y) // p["batch_size"])
    warm = round(0.1 * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (t + 1) / warm if t < warm else 0.5 * (1 + math.cos(math.pi * min(1, (t - warm) / (steps - warm)))))
    amp = resolve_precision("auto", device)
    Xt = torch.from_numpy(X)[:, None]
    Mt = torch.from_numpy(masks.astype(np.float32))[:, None]
    At = torch.from_numpy(available)
    yt = torch.from_numpy(y.astype(np.int64))
    if device.startswith("cuda"):
        Xt, Mt = Xt.pin_memory(), Mt.pin_memory()
    module.train()
    rates = []
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(yt))
        for start in range(0, len(yt), p["batch_size"]):
            idx = perm[start:start + p["batch_size"]]
            x = Xt[idx].to(device, non_blocking=True)
            m = Mt[idx].to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            x, m = augment(x, m)
            with autocast(device, amp):
                logits, aux = module(x=x, mask=m, has_mask=At[idx].to(device))
            loss, _ = criterion(logits, aux, yt[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            loss.item()  # skorch reads the loss every batch too
        _sync(device)
        rates.append(len(yt) / (time.perf_counter() - t0))
    return rates


def _handwritten_predict(module, X, p, device, amp_dtype, tta):
    """Images/s of a plain inference loop with the same test-time views as predict_proba."""
    import torch

    from dp_sklearn.data.augment import tta_view
    from dp_sklearn.utils.device import autocast

    module.eval()
    Xt = torch.from_numpy(X)[:, None]
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = []
        # As predict_proba: each batch is read once and every view of it runs before the next batch.
        for start in range(0, len(X), p["batch_size"]):
            x = Xt[start:start + p["batch_size"]].to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            proba = 0.0
            for k in range(1 + tta):
                with autocast(device, amp_dtype):
                    logits, _ = module(x=tta_view(x, k))
                proba = proba + torch.softmax(logits.float(), dim=1).cpu().double()
            out.append((proba / (1 + tta)).float())
        torch.cat(out)
    _sync(device)
    return len(X) / (time.perf_counter() - t0)


def classifier_speed(data, p, device, seed, epochs=4, rounds=2):
    """Training and prediction images/s: MaskAttentionClassifier vs the hand-written loop.

    Each side runs ``rounds`` windows of ``epochs`` epochs, alternating (estimator, loop,
    estimator, ...), so that a slow phase of a shared machine hits both; the rate is the median
    over all epochs but each window's first (warm-up). Prediction: the median of ``2 * rounds + 1``
    alternating passes over the same images, with the estimator's test-time views on both sides.
    """
    X, y = data.images, data.target
    masks, available = data.masks, data.mask_available
    n = min(len(y), p["batch_size"] * p["speed_batches"])
    rows = np.sort(np.random.RandomState(seed).permutation(len(y))[:n])  # every class present
    X, y, masks, available = X[rows], y[rows], masks[rows], available[rows]
    est_rates, hand_rates = [], []
    for _ in range(rounds):
        est = _classifier(p, device, seed, max_epochs=epochs).fit(X, y, masks=masks)
        est_rates += list(est.history[1:, "images_per_s"])
        hand_rates += handwritten_classifier_epochs(X, y, masks, available, p, device, seed, epochs)[1:]
    est.predict_proba(X)  # warm-up
    est_pred, hand_pred = [], []
    for _ in range(2 * rounds + 1):
        _sync(device)
        t0 = time.perf_counter()
        est.predict_proba(X)
        _sync(device)
        est_pred.append(n / (time.perf_counter() - t0))
        hand_pred.append(_handwritten_predict(est.module_, X, p, device, est.amp_dtype_, est.tta))
    train, train_ref = float(np.median(est_rates)), float(np.median(hand_rates))
    pred, pred_ref = float(np.median(est_pred)), float(np.median(hand_pred))
    return [
        {"name": f"train MaskAttentionClassifier (full loss, {n} images, batch {p['batch_size']}, "
                 f"median of {len(est_rates)} epochs)",
         "images_per_s": train, "reference": train_ref, "ratio": train / train_ref},
        {"name": f"predict MaskAttentionClassifier.predict_proba ({est.tta} test-time views, "
                 f"median of {len(est_pred)} passes)",
         "images_per_s": pred, "reference": pred_ref, "ratio": pred / pred_ref},
    ]


def pretrainer_speed(data, p, device, seed, epochs=4, rounds=2):
    """Pre-training images/s: ContrastivePretrainer.fit vs the hand-written SimCLR loop (same
    module, augmentation, loss and batch size), in alternating windows as :func:`classifier_speed`;
    the first epoch of each window is warm-up."""
    from pretrain_throughput import estimator_run, handwritten_simclr_loop

    n = min(len(data.images), p["pretrain_batch_size"] * p["speed_batches"])
    images = data.images[np.sort(np.random.RandomState(seed).permutation(len(data.images))[:n])]
    settings = dict(backbone=p["backbone"], image_size=p["image_size"], batch_size=p["pretrain_batch_size"],
                    lr=p["pretrain_lr"], temperature=0.2, device=device)
    est_rates, hand_rates = [], []
    for _ in range(rounds):
        est_rates += estimator_run(images, epochs=epochs, seed=seed, **settings)["images_per_s"][1:]
        hand_rates += handwritten_simclr_loop(images, epochs=epochs, seed=seed, **settings)["images_per_s"][1:]
    est_rate, hand_rate = float(np.median(est_rates)), float(np.median(hand_rates))
    return [{"name": f"train ContrastivePretrainer (SimCLR, {n} images, batch {p['pretrain_batch_size']}, "
                     f"median of {len(est_rates)} epochs)",
             "images_per_s": est_rate, "reference": hand_rate, "ratio": est_rate / hand_rate}]
