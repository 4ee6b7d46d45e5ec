"""Radiomics-contrastive classifier (Han et al.) vs the plain CNN and Deep Pneumonia on cxr1k.

Protocol
--------
* Data: cxr1k (1124 real radiographs; radiologist masks on 198, 193 of them pneumonia) at
  ``--image-size``; patient-grouped stratified K-fold (``StratifiedGroupKFold``, shuffle, seed).
  Training masks come from the training fold only; held-out masks only score localization.
* Models, same backbone, epochs, batch size and learning rate:

  - ``cnn``: plain CNN, ``MaskAttentionClassifier(attention_weight=0, contrastive_weight=0,
    class_balance_beta=0)`` (cross-entropy, masks unused);
  - ``dp``: full Deep Pneumonia, ``DeepPneumoniaClassifier`` (contrastive pre-training for
    ``--pretrain-epochs``, then mask attention + contrastive regulation + class-balanced loss);
  - ``rc``: ``RadiomicsContrastiveClassifier`` (focal + NT-Xent with radiomics of the Grad-CAM /
    mask regions, feedback loop every ``--feedback-every`` epochs).

* Classification: macro one-vs-rest ROC-AUC, balanced accuracy, accuracy (mean ± std over folds).
* Localization on the held-out images that have a mask: Grad-CAM of the image branch for the
  image's true class, its box by Han et al.'s rule (:func:`dp_sklearn.explain.cam_to_region`,
  threshold 0.5, blur sigma = size / 32); box IoU against the mask's bounding box, and the
  pointing-game hit rate of the Grad-CAM maximum (chance: the mean mask area share). A fixed
  central box (half the image side) is the trivial reference for the IoU.

Run ``python benchmarks/radiomics_eval.py`` (defaults: 64 px, resnet10_half, 3 folds, 8 epochs) and
read the JSON/markdown under ``--out``. :func:`rows` gives the main benchmark
(``benchmarks/run.py``) the row to add.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _harness import fold_summary, log, patient_folds, quality_metrics, write_results  # noqa: E402

DEFAULTS = dict(image_size=64, backbone="resnet10_half", folds=3, epochs=8, pretrain_epochs=8, batch_size=64, lr=2e-3,
                feedback_every=1)


def rows(profile: dict, device: str, seed: int):
    """Rows for ``benchmarks/run.py``: ``[(name, factory, kind)]``, kind ``"cnn"`` (fit with masks).

    ``profile`` needs ``backbone``, ``image_size``, ``epochs``, ``batch_size``, ``lr``; optional
    ``feedback_every`` (default 1) and ``cam_layer`` (default None: the backbone's output).
    """
    from dp_sklearn.estimators.radiomics_contrastive import RadiomicsContrastiveClassifier

    def factory():
        return RadiomicsContrastiveClassifier(
            backbone=profile["backbone"], image_size=profile["image_size"], max_epochs=profile["epochs"],
            batch_size=profile["batch_size"], lr=profile["lr"], feedback_every=profile.get("feedback_every", 1),
            cam_layer=profile.get("cam_layer"),
            device=device, random_state=seed, verbose=0)

    return [("7. Radiomics-contrastive + Grad-CAM feedback (Han et al.)", factory, "cnn")]


def _models(p, device, seed):
    from dp_sklearn.estimators.deep_pneumonia import DeepPneumoniaClassifier
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier
    from dp_sklearn.estimators.pretrainer import ContrastivePretrainer

    common = dict(backbone=p["backbone"], image_size=p["image_size"], max_epochs=p["epochs"],
                  batch_size=p["batch_size"], lr=p["lr"], device=device, random_state=seed, verbose=0)
    return {
        "cnn": ("plain CNN (cross-entropy)",
                lambda: MaskAttentionClassifier(attention_weight=0.0, contrastive_weight=0.0, class_balance_beta=0.0,
                                                **common)),
        "dp": ("Deep Pneumonia (pre-training + mask attention + contrastive regulation + CB loss)",
               lambda: DeepPneumoniaClassifier(
                   pretrainer=ContrastivePretrainer(max_epochs=p["pretrain_epochs"], lr=p["lr"]),
                   classifier=MaskAttentionClassifier(max_epochs=p["epochs"], lr=p["lr"]),
                   **{k: v for k, v in common.items() if k not in ("max_epochs", "lr")})),
        "rc": (rows(p, device, seed)[0][0], rows(p, device, seed)[0][1]),
    }


def _cam_module(est):
    """The skorch net whose module Grad-CAM runs on."""
    return getattr(est, "classifier_", est)


def localization(est, X, masks, y_enc, size, attention=False, cam_layer=None):
    from dp_sklearn.explain import box_iou, cam_to_region, estimator_gradcam, masks_to_boxes, pointing_game

    net = _cam_module(est)
    layer = net.module_.backbone.get_submodule(cam_layer) if cam_layer else None
    with net._resolved_device():
        heat = estimator_gradcam(net, X, target=y_enc, target_layer=layer, batch_size=64)
    _, boxes = cam_to_region(heat, 0.5, size / 32.0)
    ref = masks_to_boxes(masks)
    central = np.tile([size // 4, size // 4, size // 4 + size // 2, size // 4 + size // 2], (len(X), 1))
    out = {"iou": box_iou(boxes, ref), "hit": pointing_game(heat, masks), "central_iou": box_iou(central, ref),
           "area": masks.reshape(len(masks), -1).mean(1)}
    if attention:
        out["attention_hit"] = pointing_game(est.attention_maps(X), masks)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    ap.add_argument("--backbone", default=DEFAULTS["backbone"])
    ap.add_argument("--folds", type=int, default=DEFAULTS["folds"])
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--pretrain-epochs", type=int, default=DEFAULTS["pretrain_epochs"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--feedback-every", type=int, default=DEFAULTS["feedback_every"])
    ap.add_argument("--cam-layer", default=None, help="backbone submodule for Grad-CAM (all models), e.g. layer3")
    ap.add_argument("--models", nargs="+", default=["cnn", "rc", "dp"], choices=["cnn", "rc", "dp"])
    ap.add_argument("--max-folds", type=int, default=None, help="run only the first K folds")
    ap.add_argument("--subsample", type=int, default=None, help="smoke runs: keep this many images per class")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "radiomics_eval.json"))
    args = ap.parse_args(argv)

    import torch

    from dp_sklearn.datasets import load_cxr1k
    from dp_sklearn.utils import resolve_device

    device = resolve_device(args.device)
    p = dict(image_size=args.image_size, backbone=args.backbone, epochs=args.epochs,
             pretrain_epochs=args.pretrain_epochs, batch_size=args.batch_size, lr=args.lr,
             feedback_every=args.feedback_every, cam_layer=args.cam_layer)
    log(f"settings {p}, folds {args.folds}, device {device}, torch threads {torch.get_num_threads()}")
    data = load_cxr1k(image_size=args.image_size)
    X, y, groups, masks, avail = data.images, data.target, data.groups, data.masks, data.mask_available
    if args.subsample:
        rng = np.random.RandomState(args.seed)
        keep = np.sort(np.concatenate([
            np.concatenate([rng.permutation(np.flatnonzero((y == c) & avail)),
                            rng.permutation(np.flatnonzero((y == c) & ~avail))])[:args.subsample] for c in range(3)]))
        X, y, groups, masks, avail = X[keep], y[keep], groups[keep], masks[keep], avail[keep]
    splits = patient_folds(X, y, groups, args.folds, args.seed)
    if args.max_folds:
        splits = splits[:args.max_folds]
    models = _models(p, device, args.seed)
    results = {}
    for key in args.models:
        name, factory = models[key]
        log(f"model {key}: {name}")
        folds, loc = [], {}
        for k, (train, test) in enumerate(splits):
            est = factory()
            t0 = time.perf_counter()
            est.fit(X[train], y[train], masks=np.where(avail[train, None, None], masks[train], False))
            fit_s = time.perf_counter() - t0
            proba = est.predict_proba(X[test])
            m = {**quality_metrics(y[test], proba, [0, 1, 2]), "fit_seconds": fit_s}
            held = test[avail[test]]
            lo = localization(est, X[held], masks[held], y[held], args.image_size, attention=key == "dp",
                              cam_layer=args.cam_layer)
            for name_, v in lo.items():
                loc.setdefault(name_, []).extend(np.asarray(v).tolist())
            folds.append(m)
            log(f"  fold {k + 1}/{len(splits)}: macro-AUC {m['macro_auc']:.3f} bal-acc {m['balanced_accuracy']:.3f} "
                f"| held-out masked {len(held)}: IoU {np.nanmean(lo['iou']):.3f} hit {np.nanmean(lo['hit']):.3f} "
                f"({fit_s:.0f} s fit)")
        row = {"model": name, "folds": len(folds), **fold_summary(folds, ("macro_auc", "balanced_accuracy", "accuracy"))}
        row["fit_seconds"] = float(np.sum([f["fit_seconds"] for f in folds]))
        row["n_localized"] = int(np.sum(np.isfinite(loc["hit"])))
        row["gradcam_box_iou"] = float(np.nanmean(loc["iou"]))
        row["gradcam_pointing_hit"] = float(np.nanmean(loc["hit"]))
        row["central_box_iou"] = float(np.nanmean(loc["central_iou"]))
        row["pointing_chance"] = float(np.mean(loc["area"]))
        if "attention_hit" in loc:
            row["attention_pointing_hit"] = float(np.nanmean(loc["attention_hit"]))
        results[key] = row

    lines = [f"cxr1k, {len(splits)} of {args.folds} patient-grouped folds, {args.image_size} px, `{args.backbone}`, "
             f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, device {device}", "",
             "| model | macro AUC | balanced acc. | Grad-CAM box IoU | pointing hit | attention pointing hit | fit s |",
             "|---|---|---|---|---|---|---|"]
    for r in results.values():
        att = f"{r['attention_pointing_hit']:.3f}" if "attention_pointing_hit" in r else "–"
        lines.append(f"| {r['model']} | {r['macro_auc']:.3f} ± {r['macro_auc_std']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} ± {r['balanced_accuracy_std']:.3f} | {r['gradcam_box_iou']:.3f} | "
                     f"{r['gradcam_pointing_hit']:.3f} | {att} | {r['fit_seconds']:.0f} |")
    any_row = next(iter(results.values()))
    lines += ["", f"Localization on {any_row['n_localized']} held-out masked images: chance pointing hit "
              f"{any_row['pointing_chance']:.3f} (mean mask area), central half-size box IoU {any_row['central_box_iou']:.3f}."]
    md = "\n".join(lines)
    print(md)
    write_results(args.out, {"settings": p, "folds": args.folds, "device": device, "results": results}, md + "\n")
    return results


if __name__ == "__main__":
    main()
