"""What the benchmark scripts share: a timestamped log, the patient-grouped folds, the quality
metrics, the mean ± std over folds, and the results files.

Each script keeps only what is its own (its rows, its protocol, its table); everything here has
one definition for all of them, so a change to the protocol (the folds, a metric) changes every
benchmark at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["check_fold_ids", "fold_summary", "log", "patient_folds", "quality_metrics", "write_results"]


def log(msg: str) -> None:
    """Print ``msg`` after the wall-clock time, flushed (benchmarks run for minutes to hours)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def patient_folds(X, y, groups, n_splits: int, seed: int = 0) -> list:
    """The ``(train, test)`` index pairs of ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)``.

    Stratified on ``y``, grouped by ``groups`` (patients): no patient is in a training and a test fold.
    """
    return list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(X, y, groups))


def check_fold_ids(parser, fold_ids, n_splits: int) -> None:
    """Stop with ``parser``'s usage error when ``--fold-ids`` names a fold outside ``0 .. n_splits - 1``.

    Call it before the data loads: a run that selects no fold would train nothing and then fail.
    """
    outside = sorted(set(fold_ids or ()) - set(range(n_splits)))
    if outside:
        parser.error(f"--fold-ids {' '.join(map(str, outside))}: folds are numbered 0 to {n_splits - 1}.")


def quality_metrics(y_true, proba, classes, target_names=None) -> dict:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest ROC-AUC and per-class recall.

    The prediction is ``classes[argmax(proba)]``; ``per_class_recall`` is keyed by ``target_names``
    (default: the classes).
    """
    classes = np.asarray(classes)
    pred = classes[np.argmax(proba, axis=1)]
    recall = recall_score(y_true, pred, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, pred),
        "macro_f1": f1_score(y_true, pred, average="macro", zero_division=0),
        "macro_auc": roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes),
        "per_class_recall": dict(zip(classes.tolist() if target_names is None else target_names, map(float, recall))),
    }


def fold_summary(per_fold, keys) -> dict:
    """``{key: mean, key + "_std": std}`` over the folds' metric dicts (population std).

    A fold whose value is None is left out; a key that is None in every fold gives None.
    """
    row = {}
    for key in keys:
        vals = [m[key] for m in per_fold if m[key] is not None]
        row[key] = float(np.mean(vals)) if vals else None
        row[key + "_std"] = float(np.std(vals)) if vals else None
    return row


def write_results(path, result, markdown: str | None = None, indent: int = 2) -> None:
    """Write ``result`` as JSON to ``path`` (values JSON cannot hold as ``str``) and, if given,
    ``markdown`` next to it with the suffix ``.md``; the folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=str))
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown)
