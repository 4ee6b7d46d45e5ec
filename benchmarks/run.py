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

Run ``python benchmarks/run.py`` (quick profile, about 14 min on 2 CPU cores) or
``python benchmarks/run.py --profile full`` (paper-scale, for a GPU). Outputs go to
``--out`` (default ``benchmarks/results/``): results.json, results.md and PNG figures.
"""

from __future__ import annotations

import argparse
import datetime
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
from sklearn.metrics import confusion_matrix  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402

from _harness import log, patient_folds, quality_metrics, write_results  # noqa: E402

PROFILES = {
    # The default (``make run``): 2 CPU cores, at most 15 minutes. The CNN rows use
    # DeepPneumoniaClassifier's own defaults (64 px, vgg_compact, 8x8 attention grid). For time, rows 1,
    # 2 and 6 run on the first 3 of the 5 patient-grouped folds (a training fold is still 80 % of the
    # data), and the ablation rows 3-5 (3 more CNN fits per fold) need ``--ablation`` or ``--profile full``.
    "quick": dict(folds=5, eval_folds=3, logreg_size=24, speed_batches=8, related=False, ablation=False,
                  deep_pneumonia={}),
    # Paper-scale setting for a GPU.
    "full": dict(folds=5, logreg_size=32, speed_batches=30, ablation=True,
                 deep_pneumonia=dict(backbone="resnet18", image_size=224, batch_size=64, pretrainer__max_epochs=100,
                                     pretrainer__lr=1e-3, classifier__max_epochs=40, classifier__lr=1e-3)),
    # End-to-end smoke run of the harness (used by the test suite).
    "tiny": dict(folds=2, logreg_size=12, speed_batches=2, subsample=90, ablation=True,
                 deep_pneumonia=dict(backbone="resnet10_half", image_size=24, batch_size=16, pretrainer__max_epochs=1,
                                     classifier__max_epochs=1)),
}

#: The classifier settings every CNN row shares with DeepPneumoniaClassifier's classifier stage (row 6).
SHARED = ("max_epochs", "lr", "batch_size", "weight_decay", "lr_schedule", "warmup", "augment", "label_smoothing", "tta")

REFERENCE = {"model": "DarkCovidNet (Ozturk et al. 2020, published)", "accuracy": 0.8702,
             "note": "3-class, 5-fold CV, image-level split (not patient-grouped)"}


# ----------------------------------------------------------------------------- models
def _flatten_downsampled(size):
    def transform(X):
        from dp_sklearn.data.dataset import resize_images

        X = np.asarray(X, dtype=np.float32)
        return resize_images(X, (size, size)).reshape(len(X), -1)

    return FunctionTransformer(transform)


def product(p: dict, **kwargs):
    """Row 6: DeepPneumoniaClassifier with its defaults and the profile's settings."""
    from dp_sklearn import DeepPneumoniaClassifier

    return DeepPneumoniaClassifier(**kwargs).set_params(**p["deep_pneumonia"])


def shared_settings(p: dict) -> dict:
    """The settings of row 6's two stages, which every CNN row uses too (``pretrain_*``: its pre-trainer)."""
    from dp_sklearn.estimators.deep_pneumonia import default_classifier, default_pretrainer

    dp = product(p)
    clf = (dp.classifier or default_classifier()).get_params()
    pre = (dp.pretrainer or default_pretrainer()).get_params()
    shared = {k: clf[k] for k in SHARED}
    shared.update(backbone=dp.backbone, image_size=dp.image_size, pretrain_epochs=pre["max_epochs"],
                  pretrain_lr=pre["lr"], pretrain_batch_size=pre["batch_size"])
    if dp.batch_size is not None:
        shared.update(batch_size=dp.batch_size, pretrain_batch_size=dp.batch_size)
    return shared


def model_rows(p: dict, device: str, seed: int):
    """The benchmark's rows: (name, factory, kind, map).

    kind: 'sklearn', 'cnn', 'pretrained' (the fold's shared ContrastivePretrainer as encoder) or
    'product' (DeepPneumoniaClassifier, which pre-trains inside its own fit). map: where the row's
    localisation comes from — 'attention' (its trained attention branch), 'gradcam', or None.
    """
    from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    # p holds row 6's settings (main merges shared_settings into it)
    shared = {k: p[k] for k in SHARED + ("backbone", "image_size")}

    def logreg():
        return make_pipeline(_flatten_downsampled(p["logreg_size"]), StandardScaler(),
                             LogisticRegression(C=0.01, max_iter=2000))

    def cnn(**overrides):
        # Rows 2-4: a plain CNN head (global average pooling); row 5 switches on the attention
        # branch with the classifier's defaults. Everything else is row 6's recipe.
        params = dict(shared, device=device, random_state=seed, verbose=0, attention_weight=0.0,
                      contrastive_weight=0.0, class_balance_beta=0.0, pooling="avg")
        params.update(overrides)
        return lambda: MaskAttentionClassifier(**params)

    guided = {k: v for k, v in MaskAttentionClassifier().get_params().items()
              if k in ("attention_weight", "pooling")}
    rows = [
        ("1. LogisticRegression (pixels)", logreg, "sklearn", None),
        ("1b. LogisticRegression + class-balanced", lambda: ClassBalancedWeighting(logreg(), beta=0.999),
         "sklearn", None),
        ("2. CNN, cross-entropy", cnn(), "cnn", "gradcam"),
    ]
    if p.get("ablation", False):
        rows += [
            ("3. + class-balanced loss", cnn(class_balance_beta=0.999), "cnn", "gradcam"),
            ("4. + contrastive pre-training", cnn(class_balance_beta=0.999), "pretrained", "gradcam"),
            ("5. + mask-guided hard attention", cnn(**guided, class_balance_beta=0.999), "pretrained", "attention"),
        ]
    rows.append(("6. DeepPneumoniaClassifier (+ contrastive regulation)",
                 lambda: product(p, device=device, random_state=seed, verbose=0), "product", "attention"))
    if p.get("related", True):  # rows 7-8 cost several times a CNN row on CPU: full profile or --models 7 8
        from local_discrimination_eval import rows as ld_rows
        from radiomics_eval import rows as radiomics_rows

        cnn_p = dict(p, epochs=p["max_epochs"])
        rows += [("7." + name.split(".", 1)[1], f, k, "gradcam") for name, f, k in radiomics_rows(cnn_p, device, seed)]
        rows += [(f"8{letter}. {name}", f, k, None) for letter, (name, f, k) in zip("ab", ld_rows(cnn_p, device, seed))]
    return rows


def make_pretrainer(p: dict, device: str, seed: int):
    from dp_sklearn.estimators.pretrainer import ContrastivePretrainer

    return ContrastivePretrainer(backbone=p["backbone"], image_size=p["image_size"], max_epochs=p["pretrain_epochs"],
                                 lr=p["pretrain_lr"], batch_size=p["pretrain_batch_size"], device=device,
                                 random_state=seed, verbose=0)


# ----------------------------------------------------------------------------- metrics
def summarise(name, fold_metrics, localisation=None):
    keys = ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]
    row = {"model": name, "folds": len(fold_metrics)}
    row.update({k: float(np.mean([m[k] for m in fold_metrics])) for k in keys})
    row["std"] = {k: float(np.std([m[k] for m in fold_metrics])) for k in keys}
    names = fold_metrics[0]["per_class_recall"].keys()
    row["per_class_recall"] = {c: float(np.mean([m["per_class_recall"][c] for m in fold_metrics])) for c in names}
    row["localisation"] = localisation
    row["fit_seconds"] = float(np.sum([m["fit_seconds"] for m in fold_metrics]))
    return row


class Localisation:
    """Where maps put their mass on held-out images with a radiologist mask, pooled over folds.

    For each image: ``focus`` = share of the map's mass inside the mask, ``area`` = the mask's share
    of the image (what a uniform map puts inside), ``hit`` = whether the map's maximum lies inside
    the mask (the pointing game). ``lift`` = mean focus / mean area: 1 is chance.
    """

    def __init__(self, source: str):
        self.source, self.focus, self.area, self.hits = source, [], [], []

    def add(self, maps, masks):
        from dp_sklearn.explain import pointing_game
        from dp_sklearn.metrics import lesion_focus

        f, a = lesion_focus(maps, masks)
        self.focus.extend(f)
        self.area.extend(a)
        self.hits.extend(pointing_game(maps, masks))

    def summary(self):
        if not self.focus:
            return None
        focus, area = float(np.nanmean(self.focus)), float(np.mean(self.area))
        return {"source": self.source, "images": len(self.focus), "focus": focus, "area": area,
                "lift": focus / area, "pointing_game": float(np.nanmean(self.hits))}


def location_prior(train_masks, size, grid=None):
    """The mean of the training fold's lesion masks, used as every held-out image's map (no model).

    With ``grid``, the prior is area-averaged onto the model's feature grid and upsampled
    bilinearly back, as the model's own attention maps are.
    """
    import torch
    import torch.nn.functional as F

    prior = torch.from_numpy(np.asarray(train_masks, dtype=np.float32).mean(0))[None, None]
    if grid is not None:
        prior = F.interpolate(F.adaptive_avg_pool2d(prior, grid), size=size, mode="bilinear", align_corners=False)
    return prior[0, 0].numpy()


def row_maps(est, map_kind, images):
    """The row's localisation maps of ``images``: its attention branch, or Grad-CAM of its prediction."""
    if map_kind == "attention":
        return est.attention_maps(images)
    from dp_sklearn.explain import estimator_gradcam

    net = getattr(est, "classifier_", est)  # DeepPneumoniaClassifier wraps the fitted classifier
    return estimator_gradcam(net, images)


# The RSNA challenge's radiologists read many of cxr1k's NIH images independently of the NIH labels.
READS = {"opacity": ("Lung Opacity",), "no opacity": ("No Lung Opacity / Not Normal", "Normal"),
         "not read": ("",)}


def pneumonia_by_read(oof, tested, y, rsna_class, target_names):
    """Pneumonia-vs-normal AUC of each row on the held-out images, with the pneumonia images split by
    the RSNA radiologists' read of them: a lung opacity (the lesion the masks outline), no opacity
    (RSNA "Normal" or "No Lung Opacity / Not Normal": the NIH label rests on something else), or not
    read. Every subset is ranked against all held-out normal images, by the row's pneumonia probability.
    """
    from sklearn.metrics import roc_auc_score

    if rsna_class is None or not {"pneumonia", "normal"} <= set(target_names):
        return []
    pneu, normal = list(target_names).index("pneumonia"), list(target_names).index("normal")
    negatives = tested[y[tested] == normal]
    subsets = {read: tested[(y[tested] == pneu) & np.isin(rsna_class[tested], values)] for read, values in READS.items()}
    subsets["all"] = tested[y[tested] == pneu]
    rows = []
    for name, proba in oof.items():
        row = {"model": name, "normals": len(negatives)}
        for read, positives in subsets.items():
            if len(positives) and len(negatives):
                truth = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
                auc = roc_auc_score(truth, proba[np.r_[positives, negatives], pneu])
                row[read] = {"images": len(positives), "auc": float(auc)}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- quality
def run_quality(data, p, device, seed, out: Path, only=None):
    X, y, groups = data.images, data.target, data.groups
    masks, available = data.masks, data.mask_available
    classes = np.arange(len(data.target_names))
    splits = patient_folds(X, y, groups, p["folds"], seed)[:p.get("eval_folds") or p["folds"]]
    rows = model_rows(p, device, seed)
    if only:
        rows = [r for r in model_rows(dict(p, related=True, ablation=True), device, seed)
                if any(r[0].startswith(o) for o in only)]
    grid = None
    pretrainers = {}
    results, oof, overlay, fit_speed = [], {}, None, []
    for name, factory, kind, map_kind in rows:
        log(f"model {name}")
        fold_metrics, where = [], Localisation(map_kind) if map_kind else None
        oof_proba = np.zeros((len(y), len(classes)))
        for k, (train, test) in enumerate(splits):
            est = factory()
            fit_kwargs = {}
            if kind != "sklearn":
                fit_kwargs["masks"] = np.where(available[train, None, None], masks[train], False)
            if kind == "pretrained":
                if k not in pretrainers:
                    log(f"  fold {k + 1}/{len(splits)}: contrastive pre-training on {len(train)} training images")
                    pretrainers[k] = make_pretrainer(p, device, seed).fit(X[train])
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
                fit_speed.append({"model": name, "fit_seconds": fit_s, "predict_images_per_s": len(test) / pred_s})
            if where is not None:
                # held-out images with a mask that survives the resize to the working resolution
                held = test[available[test] & masks[test].any(axis=(1, 2))]
                if len(held):
                    where.add(row_maps(est, map_kind, X[held]), masks[held])
                if kind == "product" and k == 0:
                    net = getattr(est, "classifier_", est)
                    grid = tuple(int(np.ceil(s / net.module_.backbone.stride)) for s in X.shape[1:])
                    overlay = overlay_examples(est, X, y, masks, available, test, data.target_names)
            log(f"  fold {k + 1}/{len(splits)}: macro-AUC {m['macro_auc']:.3f}  bal-acc {m['balanced_accuracy']:.3f}"
                f"  ({fit_s:.1f} s fit)")
        results.append(summarise(name, fold_metrics, where.summary() if where else None))
        oof[name] = oof_proba
    results += prior_rows(X, masks, available, splits, grid)
    tested = np.sort(np.concatenate([test for _, test in splits]))
    by_read = pneumonia_by_read(oof, tested, y, data.get("rsna_class"), data.target_names)
    return results, oof, overlay, fit_speed, splits, by_read


def prior_rows(X, masks, available, splits, grid):
    """Localisation of the location prior (no model), at full resolution and on the model's grid."""
    rows = []
    variants = [("full resolution", None)] + ([(f"{grid[0]}x{grid[1]} grid", grid)] if grid else [])
    for label, g in variants:
        where = Localisation("prior")
        for train, test in splits:
            held = test[available[test] & masks[test].any(axis=(1, 2))]
            if len(held):
                prior = location_prior(masks[train[available[train]]], X.shape[1:], g)
                where.add(np.repeat(prior[None], len(held), 0), masks[held])
        rows.append({"model": f"location prior, {label} (training masks' mean, no model)",
                     "localisation": where.summary()})
    return rows


def overlay_examples(est, X, y, masks, available, test, target_names, per_class=2):
    """Held-out images of each class (those with a mask first) with the model's attention and prediction."""
    picked = []
    for c in range(len(target_names)):
        idx = test[y[test] == c]
        idx = np.concatenate([idx[available[idx]], idx[~available[idx]]])[:per_class]
        picked.extend(idx.tolist())
    picked = np.array(picked)
    proba = est.predict_proba(X[picked])
    titles = [f"{target_names[y[i]]} -> {target_names[int(np.argmax(pr))]} {pr.max():.2f}"
              for i, pr in zip(picked, proba)]
    return X[picked], est.attention_maps(X[picked]), [masks[i] if available[i] else None for i in picked], titles


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
    from dp_sklearn.utils.device import resolve_precision

    amp = resolve_precision("auto", device)  # what precision="auto" (every row's default) trains in here
    info["precision"] = "float32" if amp is None else str(amp).replace("torch.", "")
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
    st = res["settings"]
    quality = [r for r in res["quality"] if "accuracy" in r]
    rows_note = "" if st.get("ablation") else " · rows 3-5 (ablation) skipped for time: `--ablation`"
    folds = (f"{st['folds']}-fold patient-grouped CV" if not st.get("eval_folds")
             else f"first {st['eval_folds']} folds of a {st['folds']}-fold patient-grouped split (time)")
    lines = [f"Profile `{res['profile']}` · {folds}{rows_note} · "
             f"{st['image_size']} px · backbone `{st['backbone']}` · {st['max_epochs']} epochs "
             f"(pre-training {st['pretrain_epochs']}) · {res['machine']['date']} · {res['machine']['cpu']}"
             + (f" · {res['machine']['gpu']}" if "gpu" in res["machine"] else f" ({res['machine']['cores']} cores)")
             + f" · {res['machine'].get('precision', 'float32')}"
             + f" · total run {res['seconds'] / 60:.1f} min",
             "",
             "| model | accuracy | balanced acc. | macro-F1 | macro AUC | recall covid19 / normal / pneumonia |",
             "|---|---|---|---|---|---|"]
    for r in quality:
        rec = " / ".join(f"{100 * v:.0f}" for v in r["per_class_recall"].values())
        lines.append(f"| {r['model']} | {fmt(r['accuracy'], r['std']['accuracy'])} | "
                     f"{fmt(r['balanced_accuracy'], r['std']['balanced_accuracy'])} | "
                     f"{fmt(r['macro_f1'], r['std']['macro_f1'])} | {fmt(r['macro_auc'], r['std']['macro_auc'])} | "
                     f"{rec} |")
    ref = res["reference"]
    lines.append(f"| *{ref['model']}* | *{100 * ref['accuracy']:.2f}* | | | | |")
    lines += ["", f"Reference: {ref['note']}.", "",
              "Localisation on held-out images with a radiologist mask (lift: share of the map's mass inside the "
              "mask over the mask's share of the image, 1 = chance; pointing game: the map's maximum inside the mask):",
              "", "| map | images | mass inside mask | mask area | lift | pointing game |", "|---|---|---|---|---|---|"]
    for r in res["quality"]:
        loc = r.get("localisation")
        if loc:
            lines.append(f"| {r['model']} — {loc['source']} | {loc['images']} | {100 * loc['focus']:.1f}% | "
                         f"{100 * loc['area']:.1f}% | {loc['lift']:.2f}× | {100 * loc['pointing_game']:.0f}% |")
    by_read = res.get("pneumonia_by_read") or []
    if by_read:
        n = {read: next((r[read]["images"] for r in by_read if read in r), 0) for read in (*READS, "all")}
        lines += ["", "Pneumonia vs normal by an independent radiologist read: macro-AUC above ranks the NIH labels, and "
                  "many NIH \"Pneumonia\" images show no lung opacity to the RSNA challenge's radiologists. "
                  f"AUC of the pneumonia probability, each group of held-out pneumonia images against all "
                  f"{by_read[0]['normals']} held-out normal ones:", "",
                  f"| model | RSNA: lung opacity ({n['opacity']}) | RSNA: no opacity ({n['no opacity']}) | "
                  f"not read by RSNA ({n['not read']}) | all pneumonia ({n['all']}) |", "|---|---|---|---|---|"]
        for r in by_read:
            cells = " | ".join(f"{100 * r[read]['auc']:.1f}" if read in r else "–" for read in (*READS, "all"))
            lines.append(f"| {r['model']} | {cells} |")
    lines += ["", "| speed | images/s | reference images/s | ratio |", "|---|---|---|---|"]
    for sp in res["speed"]:
        ref_v = "–" if sp.get("reference") is None else f"{sp['reference']:.1f}"
        ratio = "–" if sp.get("ratio") is None else f"{sp['ratio']:.2f}"
        lines.append(f"| {sp['name']} | {sp['images_per_s']:.1f} | {ref_v} | {ratio} |")
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

        images, att, masks, titles = attention_examples
        fig = plot_attention(images, att, masks=masks, titles=titles, n_cols=len(names) * 2)
        fig.suptitle("DeepPneumoniaClassifier attention, held-out fold 1 (white: radiologist contour; "
                     "title: true -> predicted, probability)", fontsize=9)
        fig.savefig(out / "attention_overlays.png", dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    q = [r for r in res["quality"] if "accuracy" in r]
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
    parser.add_argument("--ablation", action="store_true",
                        help="also run the ablation rows 3-5 (on by default in the full profile)")
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
    p.update(shared_settings(p))  # the CNN rows' settings are DeepPneumoniaClassifier's
    p["ablation"] = p.get("ablation", False) or args.ablation
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    log(f"profile {args.profile} on {device}: {p}")
    data = load_cxr1k(image_size=p["image_size"])
    if p.get("subsample"):
        rng = np.random.RandomState(args.seed)
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.target == c), p["subsample"] // 3, replace=False)
                                       for c in range(3)]))
        for key in ("images", "masks", "mask_available", "target", "groups", "rsna_class"):
            data[key] = data[key][keep]
    log(f"data: {len(data.target)} images, {int(data.mask_available.sum())} with masks")

    quality, oof, att_examples, fit_speed, _, by_read = run_quality(data, p, device, args.seed, out,
                                                                     only=args.models)
    speed = [] if args.skip_speed else run_speed(data, p, device, args.seed)
    res = {
        "machine": machine_info(device),
        "profile": args.profile,
        "settings": p,
        "quality": quality,
        "pneumonia_by_read": by_read,
        "reference": REFERENCE,
        "speed": speed,
        "fit_speed": fit_speed,
        "memory": peak_memory(device),
    }
    if args.multilabel or args.profile == "full":
        import multilabel_eval

        log("multi-label findings: dual-weighted metric loss vs BCE vs class-balanced sigmoid")
        ml_profile = {"quick": "cpu", "full": "full", "tiny": "cpu"}[args.profile]
        res["multilabel"] = multilabel_eval.run(ml_profile, device=device, seed=args.seed,
                                                only=["1", "2", "4", "5"], out=str(out / "multilabel"))
    res["seconds"] = time.perf_counter() - t_start
    md = markdown_report(res)
    if "multilabel" in res:
        import multilabel_eval

        md += "\n" + multilabel_eval.markdown(res["multilabel"])
    write_results(out / "results.json", res, md)
    figures(res, data, oof, att_examples, out)
    print(md)
    if args.update_readme:
        update_readme(md, HERE.parent / "README.md")
    log(f"wrote {out}/results.json, results.md and figures in {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    main()
