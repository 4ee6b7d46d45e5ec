"""Class-balanced re-weighting on real chest X-rays at an imbalance factor of 10.

Experiment of issue 3 (Cui et al., CVPR 2019, "Class-Balanced Loss Based on Effective
Number of Samples"): does fitting a linear classifier with class-balanced sample
weights (:class:`dp_sklearn.estimators.class_balanced.ClassBalancedWeighting`) raise
balanced accuracy and minority-class recall when the minority class is rare?

Protocol
--------
- Data: the bundled cxr1k set (``dp_sklearn/datasets/data/cxr1k``), read directly from
  ``labels.csv`` and the PNGs with PIL (independent of the dataset loader), each image
  downsampled to ``size x size`` by area averaging (PIL ``BOX``), pixels in [0, 1].
- Task ``binary``: normal vs covid19; task ``3class``: normal, pneumonia, covid19.
- Splits: ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=0)`` grouped by
  ``patient_id`` (several NIH images share a patient).
- Imbalance: in each *training* fold the minority class (covid19) is subsampled to
  ``round(n_majority / imbalance)`` images, where ``n_majority`` is the largest class
  count of that training fold. Subsampling is by patient group (whole patients are
  kept or dropped, seeded per fold; in cxr1k every covid19 patient has one image, so it
  is also an image-level subsample). The test fold is left untouched (all its
  covid19 images), so the test class ratio is the natural one.
- Models: ``make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=...))``,
  plain, and wrapped as ``ClassBalancedWeighting(pipeline, beta)`` for each beta
  (the class-balanced weight goes to the logistic regression step).
- Metrics on each test fold: balanced accuracy and covid19 recall; mean +- std over
  folds.

Run (from the repository root)::

    .venv/bin/python benchmarks/class_balanced_imbalance.py
    .venv/bin/python benchmarks/class_balanced_imbalance.py --task 3class --size 32 --folds 5
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import patient_folds, write_results  # noqa: E402

from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting  # noqa: E402

CXR1K = ROOT / "dp_sklearn" / "datasets" / "data" / "cxr1k"
MINORITY = "covid19"
TASKS = {"binary": ("normal", "covid19"), "3class": ("normal", "pneumonia", "covid19")}


def load_pixels(size=32, labels=TASKS["binary"], root=CXR1K):
    """Read cxr1k images of the given labels as flattened ``size x size`` pixels.

    Returns
    -------
    X : ndarray of shape (n, size * size), float32 in [0, 1]
    y : ndarray of shape (n,), str labels
    groups : ndarray of shape (n,), patient ids
    """
    root = Path(root)
    with open(root / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] in labels]
    X = np.empty((len(rows), size * size), dtype=np.float32)
    for i, r in enumerate(rows):
        with Image.open(root / r["image"]) as im:
            im = im.convert("L").resize((size, size), Image.Resampling.BOX)
            X[i] = np.asarray(im, dtype=np.float32).ravel() / 255.0
    y = np.array([r["label"] for r in rows])
    groups = np.array([r["patient_id"] for r in rows])
    return X, y, groups


def subsample_minority(train_idx, y, groups, imbalance=10, minority=MINORITY, seed=0):
    """Drop minority-class patients from a training fold until majority/minority = imbalance.

    Returns the kept training indices (majority classes untouched).
    """
    y_tr = y[train_idx]
    _, counts = np.unique(y_tr, return_counts=True)
    n_keep = max(1, int(round(counts.max() / imbalance)))
    minority_idx = train_idx[y_tr == minority]
    if minority_idx.shape[0] <= n_keep:
        return train_idx
    rng = np.random.default_rng(seed)
    patients = rng.permutation(np.unique(groups[minority_idx]))
    kept, n = [], 0
    for p in patients:
        members = minority_idx[groups[minority_idx] == p]
        if n + members.shape[0] > n_keep and n > 0:
            continue
        kept.append(members)
        n += members.shape[0]
        if n >= n_keep:
            break
    kept = np.concatenate(kept)
    return np.sort(np.concatenate([train_idx[y_tr != minority], kept]))


def make_models(betas=(0.999, 0.9999), C=1.0, max_iter=2000):
    """The plain pipeline and its class-balanced versions, keyed by name."""
    base = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    models = {"plain": base}
    for beta in betas:
        models[f"cb beta={beta}"] = ClassBalancedWeighting(clone(base), beta=beta)
    return models


def run_experiment(X, y, groups, *, n_splits=5, imbalance=10, betas=(0.999, 0.9999),
                   C=1.0, max_iter=2000, random_state=0, minority=MINORITY):
    """Grouped CV with the minority class subsampled in the training folds only.

    Returns
    -------
    results : dict
        ``{model: {"balanced_accuracy": [per fold], "minority_recall": [per fold]}}``
        plus ``"_folds"``: per-fold training class counts after subsampling.
    """
    models = make_models(betas, C=C, max_iter=max_iter)
    results = {name: {"balanced_accuracy": [], "minority_recall": []} for name in models}
    results["_folds"] = []
    for fold, (tr, te) in enumerate(patient_folds(X, y, groups, n_splits, random_state)):
        tr = subsample_minority(tr, y, groups, imbalance, minority, seed=random_state + fold)
        labels, counts = np.unique(y[tr], return_counts=True)
        results["_folds"].append({str(k): int(v) for k, v in zip(labels, counts)})
        for name, model in models.items():
            pred = clone(model).fit(X[tr], y[tr]).predict(X[te])
            results[name]["balanced_accuracy"].append(balanced_accuracy_score(y[te], pred))
            results[name]["minority_recall"].append(
                recall_score(y[te], pred, labels=[minority], average="macro")
            )
    return results


def summarise(results):
    """Mean and std over folds of each metric, as printable lines."""
    lines = []
    plain = np.asarray(results["plain"]["balanced_accuracy"])
    for name, res in results.items():
        if name.startswith("_"):
            continue
        ba, rec = np.asarray(res["balanced_accuracy"]), np.asarray(res["minority_recall"])
        line = (
            f"{name:<18} balanced acc {ba.mean():.3f} +- {ba.std():.3f}   "
            f"{MINORITY} recall {rec.mean():.3f} +- {rec.std():.3f}"
        )
        if name != "plain":
            line += f"   (balanced acc above plain on {int((ba > plain).sum())}/{len(ba)} folds)"
        lines.append(line)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*TASKS, "both"], default="both")
    parser.add_argument("--size", type=int, default=32, help="image side after downsampling")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--imbalance", type=float, default=10.0)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.999, 0.9999])
    parser.add_argument("--C", type=float, default=1.0, help="LogisticRegression C")
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    tasks = list(TASKS) if args.task == "both" else [args.task]
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for task in tasks:
        t0 = time.perf_counter()
        X, y, groups = load_pixels(args.size, TASKS[task])
        res = run_experiment(X, y, groups, n_splits=args.folds, imbalance=args.imbalance,
                             betas=tuple(args.betas), C=args.C, max_iter=args.max_iter)
        print(f"== task {task}: {len(y)} images, {args.size}x{args.size} pixels, "
              f"{args.folds}-fold patient-grouped CV, imbalance {args.imbalance:g} "
              f"in training folds, LogisticRegression(C={args.C})")
        print("   training-fold counts:", res["_folds"])
        for line in summarise(res):
            print("  ", line)
        print(f"   ({time.perf_counter() - t0:.1f} s)")
        report[task] = res
    if args.out is not None:
        write_results(args.out, report)
    return report


if __name__ == "__main__":
    main()
