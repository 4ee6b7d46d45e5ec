"""Tune MaskAttentionClassifier on cxr1k with an Optuna study (masks, patient groups, pruning).

The study is stored in an SQLite file (or any Optuna RDB URL), so running the same command
again resumes it, and several workers can share it::

    # ~1-2 minutes on CPU:
    python examples/optuna_study.py --trials 4 --image-size 32 --epochs 2 --storage sqlite:///study.sqlite3
    # the same again: 4 more trials in the same study
    python examples/optuna_study.py --trials 4 --image-size 32 --epochs 2 --storage sqlite:///study.sqlite3
    # many machines, one PostgreSQL database: run the same command on each machine (the same
    # --seed everywhere: it fixes the folds; the sampler seeds each trial by its number, so
    # workers and resumed runs never replay each other's parameters)
    python examples/optuna_study.py --storage postgresql://user:pw@db-host/optuna \\
        --study-name cxr-mask-attention --total-trials 100

Each trial cross-validates on patient-disjoint folds (StratifiedGroupKFold); every epoch the
held-out fold's ROC AUC is reported to Optuna and bad trials are pruned. The best parameters
are refitted on the training split and scored on a held-out test split of other patients.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from dp_sklearn.datasets import load_cxr1k
from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier
from dp_sklearn.tuning import tune


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4, help="new trials to run in this call (default 4)")
    p.add_argument("--total-trials", type=int, default=None,
                   help="instead: run until the study holds this many finished trials (resume, many workers)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="max_epochs of each fit")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--n-images", type=int, default=300,
                   help="stratified subset of cxr1k to tune on (all masked images kept first); 0 = all 1124")
    p.add_argument("--backbone", default="resnet10_half")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL or SQLite file (default: ./dp_sklearn_studies.sqlite3)")
    p.add_argument("--study-name", default="cxr1k-mask-attention")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="folds/splits stay fixed; the sampler uses this seed")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def subset(data, n_images, seed=0):
    """Indices of a class-stratified subset that keeps the annotated images first."""
    n = len(data.target)
    if not n_images or n_images >= n:
        return np.arange(n)
    rng = np.random.RandomState(seed)
    idx = []
    for c in np.unique(data.target):
        members = np.flatnonzero(data.target == c)
        k = max(4, int(round(n_images * len(members) / n)))
        annotated = rng.permutation(members[data.mask_available[members]])
        plain = rng.permutation(members[~data.mask_available[members]])
        idx.extend(np.concatenate([annotated, plain])[:k])
    return np.sort(np.asarray(idx))


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    data = load_cxr1k(image_size=args.image_size)
    idx = subset(data, args.n_images)
    X, y, masks, groups = data.images[idx], data.target[idx], data.masks[idx], data.groups[idx]
    # Patient-disjoint test split, kept out of the study.
    train, test = next(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0).split(X, y, groups))
    print(f"cxr1k {args.image_size}px: {len(train)} training images ({int(masks[train].any(axis=(1, 2)).sum())} "
          f"with masks), {len(test)} test images; classes {data.target_names}")

    clf = MaskAttentionClassifier(
        backbone=args.backbone, image_size=args.image_size, max_epochs=args.epochs,
        batch_size=args.batch_size, device=args.device, random_state=0, verbose=0,
    )
    result = tune(
        clf, X[train], y[train], masks=masks[train], groups=groups[train],
        n_trials=args.trials, n_trials_total=args.total_trials, timeout=args.timeout,
        cv=args.folds, scoring="roc_auc_ovr", storage=args.storage, study_name=args.study_name,
        random_state=args.seed, verbose=1, refit=True,
    )
    states = {}
    for t in result.study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print(f"study {result.study_name!r}: {len(result.study.trials)} trials {states}")
    if "best_params_" not in result:
        print("no trial completed yet")
        return result
    print(f"best cross-validated ROC AUC (ovr): {result.best_score_:.4f}")
    print("best parameters:")
    for name, value in sorted(result.best_params_.items()):
        print(f"  {name} = {value}")
    proba = result.best_estimator_.predict_proba(X[test])
    if len(np.unique(y[test])) == proba.shape[1]:
        auc = roc_auc_score(y[test], proba, multi_class="ovr")
        print(f"held-out test ROC AUC (ovr) of the refitted best model: {auc:.4f}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return result


if __name__ == "__main__":
    main()
