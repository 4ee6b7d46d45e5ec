"""Command line: ``dp-sklearn fit | predict | tune`` over a folder or CSV of radiographs.

Input layouts (``--data``):

* a folder with one sub-folder per class: ``DATA/<label>/<image>.{dcm,png,jpg}``;
* a CSV file with the columns ``path`` and ``label`` (``label`` optional for ``predict``) and an
  optional ``mask`` column; relative paths are relative to the CSV file.

``--masks DIR`` adds masks for a folder layout: ``DIR/<label>/<image>.png`` where one exists.
Images stream from disk batch by batch, so a data set larger than memory works.

Examples::

    dp-sklearn fit --data cxr/ --masks masks/ --model model.joblib --image-size 224
    dp-sklearn predict --model model.joblib --data new_dicoms/ --out predictions.csv --attention-dir heat/
    dp-sklearn tune --data cxr.csv --trials 20 --storage sqlite:///study.sqlite3
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


def read_table(data: str, masks_dir: str | None = None, require_labels: bool = True):
    """Return ``(paths, labels or None, mask paths or None)`` from a class folder or a CSV file."""
    root = Path(data)
    if not root.exists():
        raise SystemExit(f"error: --data {data} does not exist")
    if root.is_file():
        with open(root, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise SystemExit(f"error: {data} must be a CSV with a 'path' column (and 'label', optional 'mask')")
        base = root.parent
        paths = [str(base / r["path"]) for r in rows]
        labels = [r["label"] for r in rows] if "label" in rows[0] else None
        masks = [str(base / r["mask"]) if r.get("mask") else None for r in rows] if "mask" in rows[0] else None
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"error: no DICOM/PNG/JPEG files under {data}")
        paths = [str(p) for p in files]
        nested = all(p.parent != root for p in files)
        labels = [p.parent.name for p in files] if nested else None
        masks = None
        if masks_dir:
            found = [Path(masks_dir) / p.relative_to(root).with_suffix(".png") for p in files]
            masks = [str(m) if m.exists() else None for m in found]
    if require_labels and labels is None:
        raise SystemExit("error: labels are needed: use class sub-folders or a CSV 'label' column")
    return paths, labels, masks


def save_overlays(paths, heat, out_dir, images=None) -> int:
    """Write one PNG per image: the radiograph with its attention map overlaid.

    ``images`` (already read, at the maps' size) avoids reading the files again.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.io import read_image
    from .plotting import plot_attention

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (path, h) in enumerate(zip(paths, heat)):
        image = read_image(path, image_size=h.shape) if images is None else images[i]
        fig = plot_attention(image[None], h[None], n_cols=1, titles=[Path(path).name])
        fig.savefig(out / (Path(path).stem + "_attention.png"), dpi=100)
        plt.close(fig)
    return len(paths)


def _estimator(args):
    from .estimators import ContrastivePretrainer, DeepPneumoniaClassifier, MaskAttentionClassifier

    common = dict(backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size,
                  device=args.device, random_state=args.seed, num_workers=args.workers, verbose=1)
    if args.estimator == "mask-attention":
        return MaskAttentionClassifier(max_epochs=args.epochs, **common)
    return DeepPneumoniaClassifier(pretrainer=ContrastivePretrainer(max_epochs=args.pretrain_epochs),
                                   classifier=MaskAttentionClassifier(max_epochs=args.epochs),
                                   checkpoint_dir=args.checkpoint_dir, **common)


def cmd_fit(args):
    import joblib

    paths, labels, masks = read_table(args.data, args.masks)
    print(f"fit: {len(paths)} images, {len(set(labels))} classes, "
          f"{0 if masks is None else sum(m is not None for m in masks)} masks")
    est = _estimator(args).fit(paths, np.asarray(labels), masks=masks)
    joblib.dump(est, args.model)
    print(f"saved {args.model}")


def cmd_predict(args):
    import joblib

    paths, labels, _ = read_table(args.data, require_labels=False)
    est = joblib.load(args.model)
    proba = est.predict_proba(paths)
    pred = est.classes_[np.argmax(proba, axis=1)]
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "prediction"] + [f"p_{c}" for c in est.classes_])
        for p, y, row in zip(paths, pred, proba):
            w.writerow([p, y] + [f"{v:.6f}" for v in row])
    print(f"wrote {len(paths)} predictions to {args.out}")
    if labels is not None:
        print(f"accuracy against the given labels: {np.mean(pred.astype(str) == np.asarray(labels)):.4f}")
    if args.attention_dir:
        heat = est.attention_maps(paths)
        written = save_overlays(paths, heat, args.attention_dir)
        print(f"wrote {written} attention overlays to {args.attention_dir}")


def cmd_tune(args):
    from .tuning import tune

    paths, labels, masks = read_table(args.data, args.masks)
    result = tune(_estimator(args), paths, np.asarray(labels), masks=masks, n_trials=args.trials, cv=args.folds,
                  storage=args.storage, study_name=args.study_name, random_state=args.seed, refit=False)
    print(f"best score {result.best_score_:.4f} with {result.best_params_}")


def build_parser():
    parser = argparse.ArgumentParser(prog="dp-sklearn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p, masks=True):
        p.add_argument("--data", required=True, help="class folder or CSV (path,label[,mask])")
        if masks:
            p.add_argument("--masks", help="folder of masks mirroring --data (PNG)")

    def model_args(p):
        p.add_argument("--estimator", choices=["deep-pneumonia", "mask-attention"], default="deep-pneumonia")
        p.add_argument("--backbone", default="resnet18")
        p.add_argument("--image-size", type=int, default=224)
        p.add_argument("--epochs", type=int, default=30)
        p.add_argument("--pretrain-epochs", type=int, default=50)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--device", default="auto")
        p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--checkpoint-dir", help="checkpoint every epoch here; rerun to resume")

    p = sub.add_parser("fit", help="train a model and save it with joblib")
    data_args(p)
    model_args(p)
    p.add_argument("--model", required=True, help="output .joblib file")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict with a saved model")
    data_args(p, masks=False)
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--attention-dir", help="write attention overlay PNGs here")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("tune", help="Optuna study of the hyper-parameters (resumable)")
    data_args(p)
    model_args(p)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: ./dp_sklearn_studies.sqlite3)")
    p.add_argument("--study-name", default=None)
    p.set_defaults(func=cmd_tune)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
