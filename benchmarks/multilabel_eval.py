"""Multi-label benchmark: cxr1k's 14 NIH findings, dual-weighted metric loss vs BCE vs class-balanced.

Protocol
--------
* Data: cxr1k (1124 real radiographs) with ``load_cxr1k().multilabel``, the 14 NIH ChestX-ray14
  findings of each image (only the 500 NIH "Pneumonia" images carry findings; the 500 "No
  Finding" and 124 covid19 images have none — covid19 images are *not* labelled with NIH findings,
  so they count as negatives for every finding).
* Split: patient-grouped, stratified on the 3-class target (``StratifiedGroupKFold``, shuffle,
  seed), the folds of ``benchmarks/run.py``.
* Findings scored: those with at least ``min_pos`` (default 5) positives in *every* test fold
  (decided from the splits before any model is fitted); the others cannot give a stable AUC.
* Metrics (mean ± std over folds): mean per-finding ROC-AUC over all test images (the paper's
  metric); mean ROC-AUC of the co-findings (all but "Pneumonia") *within the pneumonia test
  images* only, where telling pneumonia from normal does not help (findings with >= ``min_pos``
  positives and negatives there in every fold); mean average precision; and, as a wider view,
  the mean ROC-AUC of the pooled out-of-fold predictions over every finding with at least
  ``min_pos_pooled`` (default 10) positives in all of cxr1k (12 of the 14 findings).
* Rows: same backbone, image size, epochs, batch size and learning rate for all; they differ only
  in head (linear vs semantic-prototype metric head) and loss (BCE, class-balanced sigmoid of Cui
  et al., dual-weighted metric loss and its ablations). With ``pretrain_epochs > 0`` a row warm
  starts the dual-weighted model from each fold's contrastive pre-training.

Run ``python benchmarks/multilabel_eval.py --profile quick`` (64 px, resnet10_half); ``run(profile, ...)``
and ``rows(profile, device, seed)`` are what ``benchmarks/run.py`` can call to add a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing
sys.path.insert(0, str(HERE))

from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

from _harness import fold_summary, log, patient_folds, write_results  # noqa: E402

PROFILES = {
    # CPU-affordable: the main benchmark's quick setting.
    "quick": dict(image_size=64, backbone="resnet10_half", folds=5, epochs=8, batch_size=64, lr=2e-3, pretrain_epochs=0),
    # The classifiers' training recipe as it stood when docs/method.md's multi-label table was measured
    # (vgg_compact, 20 epochs of batch 32, lr 3e-3, warm-up + cosine), on a 3-fold split for CPU time.
    "recipe": dict(image_size=64, backbone="vgg_compact", folds=3, epochs=20, batch_size=32, lr=3e-3, pretrain_epochs=0),
    # What 2 shared CPU cores afford in about half an hour for 4 rows.
    "cpu": dict(image_size=32, backbone="resnet10_half", folds=3, epochs=6, batch_size=64, lr=2e-3, pretrain_epochs=0),
    # Same, plus the pretrained row (for a GPU, or patience).
    "quick_pretrain": dict(image_size=64, backbone="resnet10_half", folds=5, epochs=8, batch_size=64, lr=2e-3,
                           pretrain_epochs=8),
    # Larger images and backbone (GPU).
    "medium": dict(image_size=128, backbone="resnet18", folds=5, epochs=15, batch_size=64, lr=1e-3, pretrain_epochs=0),
    "full": dict(image_size=224, backbone="resnet18", folds=5, epochs=40, batch_size=64, lr=1e-3, pretrain_epochs=100),
    # Smoke run of the harness.
    "tiny": dict(image_size=32, backbone="resnet10_half", folds=2, epochs=1, batch_size=32, lr=2e-3, pretrain_epochs=1,
                 subsample=300),
}

REFERENCE = {"model": "Jin et al. 2023 (dual-weighted metric loss), published",
             "mean_auc": 0.826, "note": "ChestX-ray14, 14 findings, official split, 224 px; not comparable to cxr1k"}


def rows(profile="quick", device="auto", seed=0, label_names=None):
    """The benchmark's rows: list of ``(name, factory, kind)``; kind is ``"cnn"`` or ``"pretrained"``.

    Every factory returns an unfitted :class:`MultiLabelMetricClassifier` with the profile's
    backbone, image size, epochs, batch size and learning rate.
    """
    from dp_sklearn.estimators.multilabel import MultiLabelMetricClassifier

    p = PROFILES[profile] if isinstance(profile, str) else profile

    def make(**overrides):
        params = dict(backbone=p["backbone"], image_size=p["image_size"], max_epochs=p["epochs"],
                      batch_size=p["batch_size"], lr=p["lr"], device=device, random_state=seed, verbose=0,
                      label_names=label_names)
        params.update(overrides)
        return lambda: MultiLabelMetricClassifier(**params)

    out = [
        ("1. BCE, linear head", make(head="linear", loss="bce"), "cnn"),
        ("2. class-balanced sigmoid, linear head", make(head="linear", loss="class_balanced"), "cnn"),
        ("3. BCE, metric head (label-name prototypes)", make(loss="bce"), "cnn"),
        ("4. class-balanced sigmoid, metric head", make(loss="class_balanced"), "cnn"),
        ("5. dual-weighted metric loss", make(), "cnn"),
        ("5a. dual-weighted, no image weight", make(image_weight=False), "cnn"),
        ("5b. dual-weighted, no category weight", make(category_weight=False), "cnn"),
        ("5c. dual-weighted, learnable prototypes", make(semantic_vectors=None), "cnn"),
    ]
    if p.get("pretrain_epochs", 0) > 0:
        out.append(("6. dual-weighted + contrastive pre-training", make(), "pretrained"))
    return out


def _pretrainer(p, device, seed):
    from dp_sklearn.estimators.pretrainer import ContrastivePretrainer

    return ContrastivePretrainer(backbone=p["backbone"], image_size=p["image_size"], max_epochs=p["pretrain_epochs"],
                                 batch_size=p["batch_size"], lr=p["lr"], device=device, random_state=seed, verbose=0)


def eligible_findings(Y, splits, min_pos=5, within=None):
    """Columns with >= ``min_pos`` positives (and negatives) in every test fold (optionally within a subset)."""
    keep = []
    for c in range(Y.shape[1]):
        ok = True
        for _, test in splits:
            t = test if within is None else test[within[test]]
            pos = int(Y[t, c].sum())
            ok &= pos >= min_pos and len(t) - pos >= min_pos
        if ok:
            keep.append(c)
    return keep


def fold_metrics(Y, proba, test, cols, cols_within, within):
    aucs = {c: roc_auc_score(Y[test, c], proba[:, c]) for c in cols}
    sub = within[test]
    within_aucs = {c: roc_auc_score(Y[test][sub, c], proba[sub, c]) for c in cols_within}
    return {
        "mean_auc": float(np.mean(list(aucs.values()))),
        "mean_auc_within_pneumonia": float(np.mean(list(within_aucs.values()))) if within_aucs else None,
        "mean_ap": float(np.mean([average_precision_score(Y[test, c], proba[:, c]) for c in cols])),
        "auc": {int(c): float(v) for c, v in aucs.items()},
    }


def run(profile="quick", device="auto", seed=0, only=None, min_pos=5, out=None, data=None, min_pos_pooled=10):
    """Run the benchmark; returns a dict (settings, findings scored, one result row per model).

    ``only``: row numbers to run (e.g. ``["1", "5", "5a"]``). ``out``: a folder where the results
    are written (JSON, markdown) after every row, so a cut-off run keeps what it finished.
    """
    from dp_sklearn.datasets import load_cxr1k

    p = dict(PROFILES[profile]) if isinstance(profile, str) else dict(profile)
    if data is None:
        data = load_cxr1k(image_size=p["image_size"])
    X, Y, target, groups = data.images, data.multilabel, data.target, data.groups
    names = list(data.multilabel_names)
    if p.get("subsample"):
        idx = np.random.RandomState(seed).permutation(len(X))[: p["subsample"]]
        X, Y, target, groups = X[idx], Y[idx], target[idx], groups[idx]
    pneumonia = target == list(data.target_names).index("pneumonia")
    splits = patient_folds(X, target, groups, p["folds"], seed)
    cols = eligible_findings(Y, splits, min_pos)
    cols_within = [c for c in eligible_findings(Y, splits, min_pos, within=pneumonia) if names[c] != "Pneumonia"]
    cols_pooled = [c for c in range(Y.shape[1]) if Y[:, c].sum() >= min_pos_pooled]
    result = {
        "profile": profile if isinstance(profile, str) else "custom", "settings": p, "device": device, "seed": seed,
        "min_pos": min_pos, "findings": [names[c] for c in cols], "findings_within_pneumonia": [names[c] for c in cols_within],
        "min_pos_pooled": min_pos_pooled, "findings_pooled": [names[c] for c in cols_pooled],
        "n_images": int(len(X)), "reference": REFERENCE, "rows": [],
    }
    log(f"{len(X)} images, {p['folds']} folds; findings scored: {result['findings']}; "
        f"within pneumonia: {result['findings_within_pneumonia']}")
    table = rows(p, device, seed, label_names=names)
    if only:  # row numbers, e.g. ["1", "5", "5a"]
        table = [r for r in table if r[0].split(".")[0] in {str(o) for o in only}]
    pretrained = {}
    for name, factory, kind in table:
        log(f"model {name}")
        per_fold, fit_s = [], 0.0
        oof = np.zeros(Y.shape, dtype=np.float64)
        for k, (train, test) in enumerate(splits):
            est = factory()
            if kind == "pretrained":
                if k not in pretrained:
                    pretrained[k] = _pretrainer(p, device, seed).fit(X[train])
                est.set_params(encoder=pretrained[k].encoder_)
            t0 = time.perf_counter()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # e.g. Hernia without positives in a fold
                est.fit(X[train], Y[train])
            fit_s += time.perf_counter() - t0
            proba = est.predict_proba(X[test])
            oof[test] = proba
            m = fold_metrics(Y, proba, test, cols, cols_within, pneumonia)
            per_fold.append(m)
            log(f"  fold {k + 1}/{len(splits)}: mean AUC {m['mean_auc']:.3f}  within-pneumonia "
                f"{m['mean_auc_within_pneumonia'] if m['mean_auc_within_pneumonia'] is None else round(m['mean_auc_within_pneumonia'], 3)}"
                f"  mAP {m['mean_ap']:.3f}  ({time.perf_counter() - t0:.1f} s)")
        row = {"model": name, "folds": len(per_fold), "fit_seconds": fit_s,
               **fold_summary(per_fold, ("mean_auc", "mean_auc_within_pneumonia", "mean_ap"))}
        row["auc_per_finding"] = {names[c]: float(np.mean([m["auc"][c] for m in per_fold])) for c in cols}
        pooled = {names[c]: float(roc_auc_score(Y[:, c], oof[:, c])) for c in cols_pooled}
        row["pooled_auc"] = float(np.mean(list(pooled.values())))
        row["pooled_auc_per_finding"] = pooled
        log(f"  mean AUC {row['mean_auc']:.3f}, pooled out-of-fold mean AUC over {len(pooled)} findings "
            f"{row['pooled_auc']:.3f}")
        result["rows"].append(row)
        if out is not None:
            save(result, Path(out))
    return result


def markdown(result) -> str:
    """The results as a markdown table (one row per model)."""
    s = result["settings"]
    lines = [
        f"Multi-label NIH findings on cxr1k ({result['n_images']} images, {s['folds']}-fold patient-grouped CV, "
        f"{s['image_size']} px, {s['backbone']}, {s['epochs']} epochs, device {result['device']}). "
        f"Mean ROC-AUC over findings with >= {result['min_pos']} positives in every test fold: "
        f"{', '.join(result['findings'])}; within-pneumonia AUC over {', '.join(result['findings_within_pneumonia'])}.",
        "",
        "| model | mean AUC | mean AUC within pneumonia images | mAP | pooled OOF mean AUC (findings >= "
        f"{result['min_pos_pooled']} positives: {len(result['findings_pooled'])}) | fit s |",
        "|---|---|---|---|---|---|",
    ]

    def f(v, sd):
        return "–" if v is None else f"{v:.3f} ± {sd:.3f}"

    for r in result["rows"]:
        lines.append(f"| {r['model']} | {f(r['mean_auc'], r['mean_auc_std'])} | "
                     f"{f(r['mean_auc_within_pneumonia'], r['mean_auc_within_pneumonia_std'])} | "
                     f"{f(r['mean_ap'], r['mean_ap_std'])} | {r['pooled_auc']:.3f} | {r['fit_seconds']:.0f} |")
    if result["rows"]:
        pooled = result["findings_pooled"]
        lines += ["", "Per-finding pooled out-of-fold AUC:", "",
                  "| model | " + " | ".join(pooled) + " |",
                  "|---|" + "---|" * len(pooled)]
        for r in result["rows"]:
            lines.append(f"| {r['model']} | " + " | ".join(f"{r['pooled_auc_per_finding'][n]:.3f}" for n in pooled) + " |")
    ref = result["reference"]
    lines += ["", f"Published reference: {ref['model']}: mean AUC {ref['mean_auc']} ({ref['note']})."]
    return "\n".join(lines) + "\n"


def save(result, out: Path) -> None:
    """Write ``multilabel_<profile>.json`` and ``.md`` into the folder ``out``."""
    write_results(Path(out) / f"multilabel_{result['profile']}.json", result, markdown(result), indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="row numbers, e.g. 1 5 5a")
    ap.add_argument("--min-pos", type=int, default=5)
    ap.add_argument("--min-pos-pooled", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    result = run(args.profile, args.device, args.seed, args.only, args.min_pos, args.out,
                 min_pos_pooled=args.min_pos_pooled)
    print(markdown(result))


if __name__ == "__main__":
    main()
