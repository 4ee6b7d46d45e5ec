"""Mask-attention classifier vs a plain CNN on cxr1k, patient-grouped k-fold.

For every fold of ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=0)`` (groups =
patients) it fits three models on the training fold with the same seed and budget:

- ``full``: MaskAttentionClassifier with its defaults (hard attention + alignment + contrastive
  regulation + class-balanced loss);
- ``no_guidance``: the same with ``attention_weight=0`` (attention learned from labels only);
- ``plain``: ``attention_weight=0, contrastive_weight=0, class_balance_beta=0, pooling="avg"``,
  i.e. a plain CNN with global average pooling trained with cross-entropy;

and reports, on the held-out fold, macro one-vs-rest ROC-AUC, balanced accuracy and, on the
held-out images that have a radiologist mask, the lesion focus (share of attention mass inside
the mask, :func:`dp_sklearn.metrics.lesion_focus`) and its lift over the mask's area share.
Mean and standard deviation over folds are printed and written as JSON.

Example (CPU-affordable)::

    python benchmarks/mask_attention_eval.py --image-size 64 --epochs 3 --folds 2

On a 2-core machine the folds can be split over two processes and summarised together::

    OMP_NUM_THREADS=1 python benchmarks/mask_attention_eval.py --fold-ids 0 2 4 --out a.json &
    OMP_NUM_THREADS=1 python benchmarks/mask_attention_eval.py --fold-ids 1 3 --out b.json
    python benchmarks/mask_attention_eval.py --merge a.json b.json

The runs are deterministic on one device (same seed, same numbers), so ``--variants`` can refit
only the variants a change touches and ``--merge`` can put runs together per fold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import check_fold_ids, patient_folds, quality_metrics, write_results  # noqa: E402

from dp_sklearn.datasets import load_cxr1k  # noqa: E402
from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier  # noqa: E402
from dp_sklearn.metrics import lesion_focus  # noqa: E402

VARIANTS = {
    "full": {},
    "no_guidance": {"attention_weight": 0.0},
    "plain": {"attention_weight": 0.0, "contrastive_weight": 0.0, "class_balance_beta": 0.0, "pooling": "avg"},
}
METRICS = ("macro_auc", "balanced_accuracy", "lesion_focus", "focus_lift")


def evaluate_fold(data, train, test, params, variants=VARIANTS):
    """Fit each variant on ``train`` and score it on ``test``; returns {variant: metrics}."""
    X, y, masks = data.images, data.target, data.masks
    has = data.mask_available[test]
    out = {}
    for name, extra in variants.items():
        start = time.perf_counter()
        clf = MaskAttentionClassifier(**{**params, **extra}).fit(X[train], y[train], masks=masks[train])
        quality = quality_metrics(y[test], clf.predict_proba(X[test]), clf.classes_)
        focus, area = lesion_focus(clf.attention_maps(X[test][has]), masks[test][has])
        out[name] = {
            "macro_auc": float(quality["macro_auc"]),
            "balanced_accuracy": float(quality["balanced_accuracy"]),
            "lesion_focus": float(np.nanmean(focus)),
            "mask_area": float(np.mean(area)),
            "focus_lift": float(np.nanmean(focus) / np.mean(area)),
            "n_test_masks": int(has.sum()),
            "fit_seconds": time.perf_counter() - start,
        }
    return out


def summarize(folds, settings):
    """Print and return mean ± std over folds of each variant's metrics, and the full - plain AUC gap."""
    variants = [v for v in VARIANTS if all(v in f for f in folds)]
    summary = {}
    for v in variants:
        summary[v] = {}
        for key in METRICS:
            vals = np.array([f[v][key] for f in folds])
            summary[v][key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    print(f"summary over {len(folds)} fold(s) ({settings}):")
    for v in variants:
        print(f"  {v:12s} " + "  ".join(f"{k} {summary[v][k]['mean']:.4f} ± {summary[v][k]['std']:.4f}" for k in METRICS))
    if {"full", "plain"} <= set(variants):
        gap = np.array([f["full"]["macro_auc"] - f["plain"]["macro_auc"] for f in folds])
        summary["full_minus_plain_auc"] = {"mean": float(gap.mean()), "per_fold": gap.round(4).tolist()}
        print(f"  macro-AUC full - plain: {gap.mean():+.4f} (per fold {gap.round(4).tolist()})")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="resnet10_half")
    parser.add_argument("--stem-stride", type=int, default=None, help="backbone_kwargs stem_stride (resnet10_half)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--folds", type=int, default=5, help="number of folds to run (of --n-splits)")
    parser.add_argument("--n-splits", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold-ids", type=int, nargs="+", default=None,
                        help="run exactly these folds (0-based) instead of the first --folds")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="fit only these variants")
    parser.add_argument("--out", default=None, help="JSON file for the per-fold and summary numbers")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="summarise the folds of earlier --out files together, train nothing")
    args = parser.parse_args(argv)
    if args.merge:
        runs = [json.load(open(path)) for path in args.merge]
        merged = {}  # fold -> {variant: metrics}; a later file's variant replaces an earlier one's
        for run in runs:
            for fold in run["folds"]:
                merged.setdefault(fold["fold"], {}).update(fold)
        folds = [merged[k] for k in sorted(merged)]
        summary = summarize(folds, [run["args"] for run in runs])
        if args.out:
            write_results(args.out, {"args": [run["args"] for run in runs], "folds": folds, "summary": summary})
        return summary

    check_fold_ids(parser, args.fold_ids, args.n_splits)
    data = load_cxr1k(image_size=args.image_size)
    params = dict(
        backbone=args.backbone, image_size=args.image_size, max_epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, device=args.device, random_state=args.seed, verbose=0,
        backbone_kwargs=None if args.stem_stride is None else {"stem_stride": args.stem_stride},
    )
    folds = []
    for k, (train, test) in enumerate(patient_folds(data.images, data.target, data.groups, args.n_splits, seed=0)):
        if (k not in args.fold_ids) if args.fold_ids is not None else (k >= args.folds):
            continue
        res = evaluate_fold(data, train, test, params, {v: VARIANTS[v] for v in args.variants})
        print(f"fold {k}: " + "; ".join(
            f"{v}: auc {m['macro_auc']:.4f} bacc {m['balanced_accuracy']:.4f} focus {m['lesion_focus']:.3f} "
            f"(area {m['mask_area']:.3f}, lift {m['focus_lift']:.2f}) {m['fit_seconds']:.0f}s"
            for v, m in res.items()), flush=True)
        folds.append({**res, "fold": k})
    summary = summarize(folds, vars(args))
    if args.out:
        write_results(args.out, {"args": vars(args), "folds": folds, "summary": summary})
    return summary


if __name__ == "__main__":
    main()
