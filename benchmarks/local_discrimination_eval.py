"""Local discrimination (LD) pre-training vs SimCLR vs random initialisation on cxr1k.

Protocol
--------
* Data: cxr1k (1124 real radiographs, 3 classes, radiologist lesion masks on 198), resized to
  ``--image-size``; ``--subsample`` keeps a stratified random subset (all masked images kept).
* Split: patient-grouped ``StratifiedGroupKFold`` (shuffle, ``--seed``). Each pre-trainer is fitted
  once per fold on the training fold's images (no labels, no masks) and shared by its two rows.
* The same encoder architecture in every row (``--backbone``, default the reference ``vgg_ld``
  VGG encoder; SimCLR gets the same encoder class), the same budget: ``--pretrain-epochs`` for
  LD (of which ``--stage1-epochs`` stage 1) and for SimCLR, ``--epochs`` of fine-tuning.
* Rows: linear probe (StandardScaler + LogisticRegression on ``transform``) and fine-tuned
  ``MaskAttentionClassifier`` (class-balanced loss, mask-guided attention, contrastive
  regulation; training-fold masks) warm-started from LD / SimCLR / nothing (random init).
  Macro one-vs-rest ROC-AUC and balanced accuracy, mean ± std over folds.
* Local quality, no labels: on held-out images with a mask, Dice between the lesion mask and the
  best-matching region (one region index for all images; and each image's best region, an upper
  bound) of (a) the LD clustering branch of the trained network vs the same branch of a randomly
  initialised network, and (b) k-means with ``K`` clusters fitted on training-fold pixel
  embeddings of each network.

Run ``python benchmarks/local_discrimination_eval.py`` (quick CPU setting) or with
``--image-size 128 --pretrain-epochs 60 ...`` on a GPU. ``rows(profile, device, seed)`` gives
the main benchmark (``benchmarks/run.py``) LD rows in the shape of its ``model_rows``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from sklearn.base import BaseEstimator, ClassifierMixin, clone  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from _harness import check_fold_ids, fold_summary, log, patient_folds, quality_metrics, write_results  # noqa: E402


class PretrainThenFineTune(ClassifierMixin, BaseEstimator):
    """Fit ``pretrainer`` on X (no labels), then ``classifier`` warm-started from its ``encoder_``.

    A self-contained estimator so a row of ``benchmarks/run.py`` (kind ``"cnn"``: ``fit(X, y,
    masks=...)``) can use any pre-trainer; ``attention_maps`` is delegated for lesion focus.
    """

    def __init__(self, pretrainer=None, classifier=None):
        self.pretrainer = pretrainer
        self.classifier = classifier

    def fit(self, X, y, masks=None):
        self.pretrainer_ = clone(self.pretrainer).fit(X)
        self.classifier_ = clone(self.classifier).set_params(encoder=self.pretrainer_.encoder_)
        self.classifier_.fit(X, y, masks=masks)
        self.classes_ = self.classifier_.classes_
        return self

    def predict_proba(self, X):
        return self.classifier_.predict_proba(X)

    def predict(self, X):
        return self.classifier_.predict(X)

    def attention_maps(self, X):
        return self.classifier_.attention_maps(X)


def _ld(p: dict, device: str, seed: int, backbone=None, epochs=None):
    from dp_sklearn.estimators.local_discrimination import LocalDiscriminationPretrainer

    epochs = p["pretrain_epochs"] if epochs is None else epochs
    stage1 = p.get("stage1_epochs", max(1, epochs // 2))
    return LocalDiscriminationPretrainer(
        backbone=backbone or p["backbone"], image_size=p["image_size"], max_epochs=epochs,
        stage1_epochs=min(stage1, epochs), batch_size=p["batch_size"], lr=p.get("pretrain_lr", 1e-3),
        patch_grid=min(8, p["image_size"]), device=device, random_state=seed, verbose=0)


def _classifier(p: dict, device: str, seed: int, backbone=None, **overrides):
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    params = dict(backbone=backbone or p["backbone"], image_size=p["image_size"], max_epochs=p["epochs"],
                  batch_size=p["batch_size"], lr=p["lr"], device=device, random_state=seed, verbose=0,
                  class_balance_beta=0.999, attention_weight=1.0, contrastive_weight=0.1)
    params.update(overrides)
    return MaskAttentionClassifier(**params)


def rows(p: dict, device: str, seed: int):
    """LD rows for ``benchmarks/run.py``: ``(name, factory, kind)`` like its ``model_rows``.

    The LD encoder is ``p["backbone"]`` (the project ResNet of the profile, with a U-Net decoder
    over its stages), so these rows sit next to the SimCLR rows of the same backbone. The linear
    probe is a Pipeline (kind ``"sklearn"``); the fine-tuned row is a
    :class:`PretrainThenFineTune` (kind ``"cnn"``, it receives the training masks), which fits its
    own LD pre-training in every fold.
    """

    def probe():
        return make_pipeline(_ld(p, device, seed), StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))

    def fine_tune():
        return PretrainThenFineTune(_ld(p, device, seed), _classifier(p, device, seed))

    return [
        ("LD linear probe", probe, "sklearn"),
        ("LD pre-training + Deep Pneumonia fine-tuning", fine_tune, "cnn"),
    ]


# ----------------------------------------------------------------------------- evaluation
def _kmeans_segments(est, X_fit, X_eval, k, seed, pixels=20000):
    """k-means (K clusters) on pixel embeddings of ``X_fit`` (sampled pixels), labels for ``X_eval``."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.RandomState(seed)
    E, _ = est.transform_dense(X_fit)
    flat = E.transpose(0, 2, 3, 1).reshape(-1, E.shape[1])
    km = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
    km.fit(flat[rng.choice(len(flat), min(pixels, len(flat)), replace=False)])
    E, _ = est.transform_dense(X_eval)
    return km.predict(E.transpose(0, 2, 3, 1).reshape(-1, E.shape[1])).reshape(len(X_eval), *E.shape[-2:])


def evaluate(args):
    from dp_sklearn.datasets import load_cxr1k
    from dp_sklearn.estimators.local_discrimination import cluster_dice
    from dp_sklearn.estimators.pretrainer import ContrastivePretrainer
    from dp_sklearn.nn.local_discrimination import VGGLDEncoder
    from dp_sklearn.utils.device import resolve_device

    device = resolve_device(args.device)
    data = load_cxr1k(image_size=args.image_size)
    X, y, groups = np.asarray(data.images), np.asarray(data.target), np.asarray(data.groups)
    masks, has = np.asarray(data.masks), np.asarray(data.mask_available)
    if args.subsample:
        rng = np.random.RandomState(args.seed)
        rest = np.where(~has)[0]
        keep = np.sort(np.concatenate([np.where(has)[0], rng.choice(rest, max(0, args.subsample - has.sum()),
                                                                    replace=False)]))
        X, y, groups, masks, has = X[keep], y[keep], groups[keep], masks[keep], has[keep]
    classes = np.arange(len(data.target_names))
    p = dict(image_size=args.image_size, backbone=args.backbone, pretrain_epochs=args.pretrain_epochs,
             stage1_epochs=args.stage1_epochs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
             pretrain_lr=args.pretrain_lr)
    # The classifier and SimCLR need the encoder as a class when it is the LD VGG (no name in build_backbone).
    enc_arch = VGGLDEncoder if args.backbone == "vgg_ld" else args.backbone
    names = ["linear probe: LD", "linear probe: SimCLR", "linear probe: random init",
             "fine-tuned mask-attention: LD", "fine-tuned mask-attention: SimCLR",
             "fine-tuned mask-attention: random init"]
    per_fold = {n: [] for n in names}
    dice = {k: [] for k in ("ld_head", "random_head", "ld_kmeans", "random_kmeans")}
    dice_upper = {k: [] for k in dice}
    seconds = {"ld_pretrain": 0.0, "simclr_pretrain": 0.0}
    t_start = time.perf_counter()
    for fold, (train, test) in enumerate(patient_folds(X, y, groups, args.folds, args.seed)):
        if args.fold_ids is not None and fold not in args.fold_ids:
            continue
        log(f"fold {fold + 1}/{args.folds}: {len(train)} train / {len(test)} test images")
        t0 = time.perf_counter()
        ld = _ld(p, device, args.seed).fit(X[train])
        seconds["ld_pretrain"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        simclr = ContrastivePretrainer(backbone=enc_arch, image_size=args.image_size, max_epochs=args.pretrain_epochs,
                                       batch_size=args.batch_size, lr=args.pretrain_lr, projection_dim=64,
                                       hidden_dim=256, device=device, random_state=args.seed, verbose=0).fit(X[train])
        seconds["simclr_pretrain"] += time.perf_counter() - t0
        rand = _ld(p, device, args.seed, epochs=0).fit(X[train])  # same LD network, untrained
        log(f"  pre-training done ({seconds['ld_pretrain']:.0f} s LD, {seconds['simclr_pretrain']:.0f} s SimCLR so far)")

        for tag, est in (("LD", ld), ("SimCLR", simclr), ("random init", rand)):
            scaler = StandardScaler().fit(est.transform(X[train]))
            lr = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(est.transform(X[train])), y[train])
            proba = lr.predict_proba(scaler.transform(est.transform(X[test])))
            per_fold[f"linear probe: {tag}"].append(quality_metrics(y[test], proba, classes))
        for tag, enc in (("LD", ld.encoder_), ("SimCLR", simclr.encoder_), ("random init", None)):
            clf = _classifier(p, device, args.seed, backbone=enc_arch, encoder=enc)
            clf.fit(X[train], y[train], masks=np.where(has[train, None, None], masks[train], False))
            per_fold[f"fine-tuned mask-attention: {tag}"].append(
                quality_metrics(y[test], clf.predict_proba(X[test]), classes))

        held = test[has[test]]
        if len(held):
            for tag, est in (("ld", ld), ("random", rand)):
                r = cluster_dice(est.segment(X[held]), masks[held])
                dice[f"{tag}_head"].append(r["best_cluster_dice"])
                dice_upper[f"{tag}_head"].append(r["per_image_best_dice"])
                fit_imgs = X[train][:: max(1, len(train) // 200)]
                seg = _kmeans_segments(est, fit_imgs, X[held], ld.n_clusters, args.seed)
                r = cluster_dice(seg, masks[held])
                dice[f"{tag}_kmeans"].append(r["best_cluster_dice"])
                dice_upper[f"{tag}_kmeans"].append(r["per_image_best_dice"])
        for n in names:
            m = per_fold[n][-1]
            log(f"  {n}: macro-AUC {m['macro_auc']:.3f}  bal-acc {m['balanced_accuracy']:.3f}")
        log("  cluster Dice (one region for all images): " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in dice.items() if v))

        res = _summary(args, device, X, has, names, per_fold, dice, dice_upper, seconds, t_start)
        if args.out:  # after every fold, so a run cut short still leaves its folds
            write_results(Path(args.out) / "results.json", res, markdown(res))
    return res


def _summary(args, device, X, has, names, per_fold, dice, dice_upper, seconds, t_start):
    summary = []
    for n in names:
        row = {"model": n, "folds": len(per_fold[n])}
        for k in ("macro_auc", "balanced_accuracy"):
            row.update(fold_summary(per_fold[n], [k]))
            row[k + "_per_fold"] = [float(m[k]) for m in per_fold[n]]
        summary.append(row)
    return {"settings": {**vars(args), "device": device, "n_images": int(len(X)), "n_masked": int(has.sum())},
            "rows": summary,
            "cluster_dice": {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_fold": [float(x) for x in v],
                                 "per_image_best_mean": float(np.mean(dice_upper[k]))} for k, v in dice.items() if v},
            "seconds": {**seconds, "total": time.perf_counter() - t_start}}


def markdown(res) -> str:
    s = res["settings"]
    done = res["rows"][0]["folds"]
    lines = [f"{s['folds']}-fold patient-grouped CV ({done} done) · {s['n_images']} images · {s['image_size']} px · encoder "
             f"`{s['backbone']}` · pre-training {s['pretrain_epochs']} epochs (LD stage 1: {s['stage1_epochs']}) · "
             f"fine-tuning {s['epochs']} epochs · {s['device']}", "",
             "| row | macro ROC-AUC | balanced accuracy |", "|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['macro_auc']:.3f} ± {r['macro_auc_std']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} ± {r['balanced_accuracy_std']:.3f} |")
    lines += ["", "Lesion overlap of unsupervised regions (held-out images with masks; Dice of the best single "
              "region / mean of each image's best region):", "", "| features | clustering | Dice (one region) | "
              "Dice (best per image) |", "|---|---|---|---|"]
    for k, v in res["cluster_dice"].items():
        net, how = k.split("_")
        lines.append(f"| {'LD-trained' if net == 'ld' else 'random init'} | "
                     f"{'LD clustering branch' if how == 'head' else 'k-means on pixel embeddings'} | "
                     f"{v['mean']:.3f} ± {v['std']:.3f} | {v['per_image_best_mean']:.3f} |")
    lines.append("")
    lines.append(f"Time: LD pre-training {res['seconds']['ld_pretrain']:.0f} s, SimCLR "
                 f"{res['seconds']['simclr_pretrain']:.0f} s, total {res['seconds']['total']:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--backbone", default="vgg_ld")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--stage1-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--subsample", type=int, default=0, help="keep this many images (all masked ones kept); 0: all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold-ids", type=int, nargs="+", default=None,
                    help="run only these folds (0-based; the log counts from 1), e.g. in parallel processes")
    ap.add_argument("--out", default=str(HERE / "results" / "local_discrimination"),
                    help="folder for results.json / results.md (rewritten after every fold); '' writes nothing")
    args = ap.parse_args(argv)
    check_fold_ids(ap, args.fold_ids, args.folds)
    import torch

    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(2)  # an explicit OMP_NUM_THREADS wins (one thread per parallel fold)
    res = evaluate(args)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
