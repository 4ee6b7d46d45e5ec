"""The dp_sklearn benchmark on the bundled real data (cxr1k): ablation, lesion focus, speed, pictures.

Protocol
--------
* Data: cxr1k (1124 real radiographs: 500 normal, 500 pneumonia, 124 covid19; radiologist
  lesion masks on 198 images), resized to the profile's image size.
* Split: patient-grouped, stratified K-fold (``StratifiedGroupKFold``, shuffle, seed 0). Masks
  are used only from the training fold; held-out masks serve only to measure lesion focus.
* Rows (same backbone, same epochs, same folds): logistic regression on downsampled pixels
  (plain and class-balanced), then the CNN ablation ladder up to the full Deep Pneumonia model.
  Rows 4-6 share each fold's contrastive pre-training (fitted once per fold on the training
  fold's images, no labels), which is what refitting it three times with the same seed gives.
* Metrics: accuracy, balanced accuracy, macro-F1, macro one-vs-rest ROC-AUC, per-class recall,
  mean ± std over folds; lesion focus = share of attention mass inside the radiologist mask on
  held-out images with a mask, next to the mask's share of the image (the chance level).
* Speed: training / prediction images per second of each estimator next to a hand-written PyTorch
  loop of the same model, DICOM read speed next to plain pydicom, peak memory, the machine.

Run ``python benchmarks/run.py`` (quick profile, ~10 min on 2 CPU cores) or
``python benchmarks/run.py --profile full`` (paper-scale, for a GPU). Outputs go to
``--out`` (default ``benchmarks/results/``): results.json, results.md and PNG figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing
sys.path.insert(0, str(HERE))

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedGroupKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402

PROFILES = {
    # About 10 minutes on 2 CPU cores: small images, the tiny backbone, few epochs.
    "quick": dict(image_size=32, backbone="resnet10t", folds=5, epochs=8, pretrain_epochs=8,
                  batch_size=64, lr=2e-3, logreg_size=24, speed_batches=4, related=False),
    # Paper-scale setting for a GPU.
    "full": dict(image_size=224, backbone="resnet18", folds=5, epochs=40, pretrain_epochs=100,
                 batch_size=64, lr=1e-3, logreg_size=32, speed_batches=30),
    # End-to-end smoke run of the harness (used by the test suite).
    "tiny": dict(image_size=24, backbone="resnet10t", folds=2, epochs=1, pretrain_epochs=1,
                 batch_size=16, lr=2e-3, logreg_size=12, speed_batches=2, subsample=90),
}

REFERENCE = {"model": "DarkCovidNet (Ozturk et al. 2020, published)", "accuracy": 0.8702,
             "note": "3-class, 5-fold CV, image-level split (not patient-grouped)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- models
def _flatten_downsampled(size):
    def transform(X):
        from dp_sklearn.data.dataset import resize_images

        X = np.asarray(X, dtype=np.float32)
        return resize_images(X, (size, size)).reshape(len(X), -1)

    return FunctionTransformer(transform)


def model_rows(p: dict, device: str, seed: int):
    """The benchmark's rows: (name, factory, kind). kind is 'sklearn', 'cnn' or 'pretrained'."""
    from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    def logreg():
        return make_pipeline(_flatten_downsampled(p["logreg_size"]), StandardScaler(),
                             LogisticRegression(C=0.01, max_iter=2000))

    def cnn(**overrides):
        # Rows 2-4: a plain CNN head (global average pooling); rows 5-6 switch on the attention
        # branch with the classifier's defaults (alignment weight, pooling, contrastive weight).
        params = dict(backbone=p["backbone"], image_size=p["image_size"], max_epochs=p["epochs"],
                      batch_size=p["batch_size"], lr=p["lr"], device=device, random_state=seed, verbose=0,
                      attention_weight=0.0, contrastive_weight=0.0, class_balance_beta=0.0, pooling="avg")
        params.update(overrides)
        return lambda: MaskAttentionClassifier(**params)

    deep_pneumonia = {k: v for k, v in MaskAttentionClassifier().get_params().items()
                      if k in ("attention_weight", "contrastive_weight", "pooling")}

    from local_discrimination_eval import rows as ld_rows
    from radiomics_eval import rows as radiomics_rows

    related = [("7." + name.split(".", 1)[1], f, k) for name, f, k in radiomics_rows(p, device, seed)]
    related += [(f"8{letter}. {name}", f, k) for letter, (name, f, k) in zip("ab", ld_rows(p, device, seed))]
    if not p.get("related", True):
        related = []  # rows 7-8 cost several times a CNN row on CPU: full profile or --models 7 8
    return [
        ("1. LogisticRegression (pixels)", logreg, "sklearn"),
        ("1b. LogisticRegression + class-balanced", lambda: ClassBalancedWeighting(logreg(), beta=0.999), "sklearn"),
        ("2. CNN, cross-entropy", cnn(), "cnn"),
        ("3. + class-balanced loss", cnn(class_balance_beta=0.999), "cnn"),
        ("4. + contrastive pre-training", cnn(class_balance_beta=0.999), "pretrained"),
        ("5. + mask-guided hard attention", cnn(**{**deep_pneumonia, "class_balance_beta": 0.999,
                                                   "contrastive_weight": 0.0}), "pretrained"),
        ("6. + contrastive regulation (Deep Pneumonia)",
         cnn(**deep_pneumonia, class_balance_beta=0.999), "pretrained"),
    ] + related


def make_pretrainer(p: dict, device: str, seed: int):
    from dp_sklearn.estimators.pretrainer import ContrastivePretrainer

    return ContrastivePretrainer(backbone=p["backbone"], image_size=p["image_size"], max_epochs=p["pretrain_epochs"],
                                 batch_size=p["batch_size"], lr=p["lr"], device=device, random_state=seed, verbose=0)


# ----------------------------------------------------------------------------- metrics
def quality_metrics(y_true, proba, classes, target_names):
    pred = classes[np.argmax(proba, axis=1)]
    recall = recall_score(y_true, pred, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, pred),
        "macro_f1": f1_score(y_true, pred, average="macro", zero_division=0),
        "macro_auc": roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes),
        "per_class_recall": dict(zip(target_names, map(float, recall))),
    }


def summarise(name, fold_metrics, focus):
    keys = ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]
    row = {"model": name, "folds": len(fold_metrics)}
    row.update({k: float(np.mean([m[k] for m in fold_metrics])) for k in keys})
    row["std"] = {k: float(np.std([m[k] for m in fold_metrics])) for k in keys}
    names = fold_metrics[0]["per_class_recall"].keys()
    row["per_class_recall"] = {c: float(np.mean([m["per_class_recall"][c] for m in fold_metrics])) for c in names}
    row["lesion_focus"] = focus[0]
    row["lesion_area"] = focus[1]
    row["fit_seconds"] = float(np.sum([m["fit_seconds"] for m in fold_metrics]))
    return row


# ----------------------------------------------------------------------------- quality
def run_quality(data, p, device, seed, out: Path, only=None):
    from dp_sklearn.metrics import lesion_focus

    X, y, groups = data.images, data.target, data.groups
    masks, available = data.masks, data.mask_available
    classes = np.arange(len(data.target_names))
    cv = StratifiedGroupKFold(n_splits=p["folds"], shuffle=True, random_state=seed)
    splits = list(cv.split(X, y, groups))
    rows = model_rows(p, device, seed)
    if only:
        rows = [r for r in model_rows(dict(p, related=True), device, seed)
                if any(r[0].startswith(o) for o in only)]
    pretrainers = {}
    results, oof, attention_examples, fit_speed = [], {}, None, []
    for name, factory, kind in rows:
        log(f"model {name}")
        fold_metrics, focus_vals, area_vals = [], [], []
        oof_proba = np.zeros((len(y), len(classes)))
        for k, (train, test) in enumerate(splits):
            est = factory()
            fit_kwargs = {}
            if kind in ("cnn", "pretrained"):
                train_masks = np.where(available[train, None, None], masks[train], False)
                fit_kwargs["masks"] = train_masks
            if kind == "pretrained":
                if k not in pretrainers:
                    log(f"  fold {k + 1}/{len(splits)}: contrastive pre-training on {len(train)} training images")
                    t0 = time.perf_counter()
                    pretrainers[k] = make_pretrainer(p, device, seed).fit(X[train])
                    pretrainers[k].fit_seconds_ = time.perf_counter() - t0
                est.set_params(encoder=pretrainers[k])
            t0 = time.perf_counter()
            est.fit(X[train], y[train], **fit_kwargs)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            proba = est.predict_proba(X[test])
            pred_s = time.perf_counter() - t0
            oof_proba[test] = proba
            m = quality_metrics(y[test], proba, classes, data.target_names)
            m["fit_seconds"] = fit_s
            fold_metrics.append(m)
            if kind != "sklearn":
                fit_speed.append({"model": name, "train_images_per_s": len(train) * p["epochs"] / fit_s,
                                  "predict_images_per_s": len(test) / pred_s})
                # held-out images with a mask that survives the resize to the working resolution
                held = test[available[test] & masks[test].any(axis=(1, 2))]
                if len(held) and hasattr(est, "attention_maps"):
                    att = est.attention_maps(X[held])
                    f, a = lesion_focus(att, masks[held])
                    focus_vals.extend(f)
                    area_vals.extend(a)
                    if name.startswith("6") and attention_examples is None:
                        attention_examples = (X[held[:6]], att[:6], masks[held[:6]])
            log(f"  fold {k + 1}/{len(splits)}: macro-AUC {m['macro_auc']:.3f}  bal-acc {m['balanced_accuracy']:.3f}"
                f"  ({fit_s:.1f} s fit)")
        focus = (float(np.mean(focus_vals)), float(np.mean(area_vals))) if focus_vals else (None, None)
        results.append(summarise(name, fold_metrics, focus))
        oof[name] = oof_proba
    return results, oof, attention_examples, fit_speed, splits


# ----------------------------------------------------------------------------- speed
def run_speed(data, p, device, seed):
    """Estimator vs hand-written loop throughput, and DICOM reading speed."""
    from speed import classifier_speed, dicom_speed, pretrainer_speed

    rows = []
    log("speed: mask-attention classifier vs hand-written PyTorch loop")
    rows += classifier_speed(data, p, device, seed)
    log("speed: contrastive pre-training vs hand-written PyTorch loop")
    rows += pretrainer_speed(data, p, device, seed)
    log("speed: DICOM reading vs plain pydicom")
    rows += dicom_speed()
    return rows


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device,
            "platform": platform.platform(), "date": datetime.date.today().isoformat()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_memory(device: str) -> dict:
    import torch

    mem = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        mem["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return mem


# ----------------------------------------------------------------------------- report
def fmt(v, std=None, pct=True):
    if v is None:
        return "–"
    s = f"{100 * v:.1f}" if pct else f"{v:.3f}"
    if std is not None:
        s += f" ± {100 * std:.1f}" if pct else f" ± {std:.3f}"
    return s


def markdown_report(res: dict) -> str:
    lines = [f"Profile `{res['profile']}` · {res['settings']['folds']}-fold patient-grouped CV · "
             f"{res['settings']['image_size']} px · backbone `{res['settings']['backbone']}` · "
             f"{res['settings']['epochs']} epochs · {res['machine']['date']} · {res['machine']['cpu']}"
             + (f" · {res['machine']['gpu']}" if "gpu" in res["machine"] else f" ({res['machine']['cores']} cores)"),
             "",
             "| model | accuracy | balanced acc. | macro-F1 | macro AUC | recall covid19 / normal / pneumonia "
             "| lesion focus (chance) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["quality"]:
        rec = " / ".join(f"{100 * v:.0f}" for v in r["per_class_recall"].values())
        focus = "–" if r["lesion_focus"] is None else f"{100 * r['lesion_focus']:.0f}% ({100 * r['lesion_area']:.0f}%)"
        lines.append(f"| {r['model']} | {fmt(r['accuracy'], r['std']['accuracy'])} | "
                     f"{fmt(r['balanced_accuracy'], r['std']['balanced_accuracy'])} | "
                     f"{fmt(r['macro_f1'], r['std']['macro_f1'])} | {fmt(r['macro_auc'], r['std']['macro_auc'])} | "
                     f"{rec} | {focus} |")
    ref = res["reference"]
    lines.append(f"| *{ref['model']}* | *{100 * ref['accuracy']:.2f}* | | | | | |")
    lines += ["", f"Reference: {ref['note']}.", "", "| speed | images/s | reference images/s | ratio |", "|---|---|---|---|"]
    for s in res["speed"]:
        ref_v = "–" if s.get("reference") is None else f"{s['reference']:.1f}"
        ratio = "–" if s.get("ratio") is None else f"{s['ratio']:.2f}"
        lines.append(f"| {s['name']} | {s['images_per_s']:.1f} | {ref_v} | {ratio} |")
    mem = res["memory"]
    lines += ["", "Peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items())
              + f" · total run {res['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def figures(res, data, oof, attention_examples, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    full = [r["model"] for r in res["quality"] if r["model"].startswith("6")]
    names = data.target_names
    if full:
        proba = oof[full[0]]
        pred = np.argmax(proba, axis=1)
        cm = confusion_matrix(data.target, pred, labels=range(len(names)))
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(cm, cmap="Blues")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, cm[i, j], ha="center", va="center", color="black")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("Deep Pneumonia, out-of-fold")
        fig.tight_layout()
        fig.savefig(out / "confusion_matrix.png", dpi=120)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5, 4.5))
        for c, cname in enumerate(names):
            RocCurveDisplay.from_predictions(data.target == c, proba[:, c], name=cname, ax=ax)
        ax.set_title("Deep Pneumonia ROC (one-vs-rest, out-of-fold)")
        fig.tight_layout()
        fig.savefig(out / "roc.png", dpi=120)
        plt.close(fig)

    if attention_examples is not None:
        from dp_sklearn.plotting import plot_attention

        images, att, masks = attention_examples
        fig = plot_attention(images, att, masks=masks)
        fig.savefig(out / "attention_overlays.png", dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    q = res["quality"]
    x = np.arange(len(q))
    for i, key in enumerate(["macro_auc", "balanced_accuracy"]):
        ax.bar(x + (i - 0.5) * 0.38, [r[key] for r in q], 0.38, yerr=[r["std"][key] for r in q], label=key)
    ax.set_xticks(x, [r["model"].split(" ", 1)[0] for r in q])
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("Ablation (mean ± std over folds)")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    plt.close(fig)


def update_readme(markdown: str, readme: Path) -> None:
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} section to update.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + "\n" + markdown + end + tail)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", help="only rows whose name starts with these prefixes, e.g. 1 2 6")
    parser.add_argument("--skip-speed", action="store_true", help="skip the speed section")
    parser.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--multilabel", action="store_true",
                        help="also run the multi-label findings table (dual-weighted metric loss vs BCE vs "
                             "class-balanced sigmoid; on by default in the full profile)")
    args = parser.parse_args(argv)

    import torch

    from dp_sklearn.datasets import load_cxr1k
    from dp_sklearn.utils import resolve_device

    t_start = time.perf_counter()
    device = resolve_device(args.device)
    p = dict(PROFILES[args.profile])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    log(f"profile {args.profile} on {device}: {p}")
    data = load_cxr1k(image_size=p["image_size"])
    if p.get("subsample"):
        rng = np.random.RandomState(args.seed)
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.target == c), p["subsample"] // 3, replace=False)
                                       for c in range(3)]))
        for key in ("images", "masks", "mask_available", "target", "groups"):
            data[key] = data[key][keep]
    log(f"data: {len(data.target)} images, {int(data.mask_available.sum())} with masks")

    quality, oof, att_examples, fit_speed, _ = run_quality(data, p, device, args.seed, out, only=args.models)
    speed = [] if args.skip_speed else run_speed(data, p, device, args.seed)
    res = {
        "machine": machine_info(device),
        "profile": args.profile,
        "settings": p,
        "quality": quality,
        "reference": REFERENCE,
        "speed": speed,
        "fit_speed": fit_speed,
        "memory": peak_memory(device),
        "seconds": time.perf_counter() - t_start,
    }
    if args.multilabel or args.profile == "full":
        import multilabel_eval

        log("multi-label findings: dual-weighted metric loss vs BCE vs class-balanced sigmoid")
        ml_profile = {"quick": "cpu", "full": "full", "tiny": "cpu"}[args.profile]
        res["multilabel"] = multilabel_eval.run(ml_profile, device=device, seed=args.seed,
                                                only=["1", "2", "4", "5"], out=str(out / "multilabel"))
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    md = markdown_report(res)
    if "multilabel" in res:
        import multilabel_eval

        md += "\n" + multilabel_eval.markdown(res["multilabel"])
    (out / "results.md").write_text(md)
    figures(res, data, oof, att_examples, out)
    print(md)
    if args.update_readme:
        update_readme(md, HERE.parent / "README.md")
    log(f"wrote {out}/results.json, results.md and figures in {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    main()
