"""Command line: ``dp-sklearn fit | predict | tune`` over a folder or CSV of radiographs.

Input layouts (``--data``):

* a folder with one sub-folder per class: ``DATA/<label>/<image>.{dcm,png,jpg}``;
* a CSV file with the columns ``path`` and ``label`` (``label`` optional for ``predict``) and an
  optional ``mask`` column; relative paths are relative to the CSV file.

``--masks DIR`` adds masks for a folder layout: ``DIR/<label>/<image>.png`` where one exists.
Images stream from disk batch by batch, so a data set larger than memory works.

Safety: every option and output path is checked before any work starts. CSV paths must stay in the
CSV's folder unless ``--allow-outside-paths``. ``fit`` saves the model in dp_sklearn's safe format
(:mod:`dp_sklearn.persistence`: JSON and safetensors in one zip file, nothing in it is run when
loaded), which ``predict`` loads by default; ``fit --format joblib`` writes a pickle instead, and
loading a pickle runs the code it contains, so ``predict`` loads one only with ``--trust``.
``--on-error skip`` leaves unreadable images, and unreadable or wrong-sized masks, out (listed on
stderr, and in the predictions CSV with their error). Output CSV
cells starting with ``=``, ``+``, ``-`` or ``@`` are escaped against spreadsheet formula injection.
``predict --attention-dir`` writes overlays chunk by chunk (``--chunk-size``), so memory stays flat.

Examples::

    dp-sklearn fit --data cxr/ --masks masks/ --model model.dps --image-size 224
    dp-sklearn predict --model model.dps --data new_dicoms/ --out predictions.csv --attention-dir heat/
    dp-sklearn tune --data cxr.csv --trials 20 --storage sqlite:///study.sqlite3
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


def read_table(data: str, masks_dir: str | None = None, require_labels: bool = True, allow_outside: bool = False):
    """Return ``(paths, labels or None, mask paths or None)`` from a class folder or a CSV file.

    CSV paths are resolved relative to the CSV's folder and must stay inside it (no ``../``, no
    absolute paths elsewhere) unless ``allow_outside``; an empty label is an error.
    """
    root = Path(data)
    if not root.exists():
        raise SystemExit(f"error: --data {data} does not exist")
    if root.is_file():
        with open(root, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise SystemExit(f"error: {data} must be a CSV with a 'path' column (and 'label', optional 'mask')")
        base = root.parent
        paths = [_confined(base, r["path"], data, i, "path", allow_outside) for i, r in enumerate(rows, start=2)]
        labels = [r["label"] for r in rows] if "label" in rows[0] else None
        if labels is not None:
            empty = [i for i, lab in enumerate(labels, start=2) if lab is None or not lab.strip()]
            if empty and require_labels:
                raise SystemExit(
                    f"error: {data} has {len(empty)} empty label(s) (CSV lines {', '.join(map(str, empty[:5]))}"
                    f"{', ...' if len(empty) > 5 else ''}); give every row a class, or drop those rows"
                )
            if empty:  # predict: labels only score the predictions; without all of them, none
                labels = None
        masks = ([_confined(base, r["mask"], data, i, "mask", allow_outside) if r.get("mask") else None
                  for i, r in enumerate(rows, start=2)] if "mask" in rows[0] else None)
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


def _confined(base: Path, value: str, table: str, line: int, column: str, allow_outside: bool) -> str:
    """``base / value``, refused when it leaves ``base`` (``../``, absolute paths) unless allowed."""
    path = base / value
    if not allow_outside:
        try:
            path.resolve().relative_to(base.resolve())
        except ValueError:
            raise SystemExit(
                f"error: {table} line {line}: {column} {value!r} points outside the CSV's folder {base}; "
                "pass --allow-outside-paths if you trust this CSV"
            ) from None
    return str(path)


_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet will not run as a formula: ``=``, ``+``, ``-``, ``@`` are escaped
    with a leading apostrophe (OWASP's advice for CSV injection)."""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


# ----------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------


class Progress:
    """Images done, images/s and ETA on stderr: one updating line on a TTY, plain lines otherwise."""

    def __init__(self, total: int, what: str, stream=None, every_s: float = 10.0):
        self.total, self.what, self.done = total, what, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last = time.monotonic()
        self.every_s = 0.2 if self.tty else every_s

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self._write(now)

    def _write(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (f"{self.what}: {self.done}/{self.total} images, {rate:.1f} images/s, "
                f"ETA {_duration(eta)}, elapsed {_duration(elapsed)}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------


def overlay_name(path, root=None) -> str:
    """A unique file name for a path's overlay: its path relative to ``root`` with separators as ``__``."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(Path(root).resolve()) if root is not None else p
    except ValueError:
        rel = p
    parts = [q for q in rel.with_suffix("").parts if q not in ("/", "\\", "..", ".")]
    name = "__".join(parts).replace(":", "_") or "image"
    return name + "_attention.png"


def render_overlay(image, heat, label: str | None = None, *, alpha: float = 0.45, cmap: str = "jet"):
    """Return a PIL image: ``image`` (H, W) at its own resolution with ``heat`` resized onto it,
    a colour bar (0 to 1) on the right and ``label`` (e.g. predicted class and probability) on top."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    colours = colormaps[cmap]
    lo, hi = float(image.min()), float(image.max())
    gray = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    rgb = (1 - alpha) * gray[..., None] + alpha * colours(np.clip(heat, 0, 1))[..., :3]
    band = max(12, h // 16)  # title band
    bar_w = max(8, w // 24)
    canvas = Image.new("RGB", (w + 3 * bar_w + 4 * bar_w // 2, h + band), "white")
    canvas.paste(Image.fromarray((rgb * 255).astype(np.uint8)), (0, band))
    ramp = colours(np.linspace(1, 0, h))[:, None, :3].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray((ramp * 255).astype(np.uint8)), (w + bar_w // 2, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + bar_w + bar_w // 2 + 2, band), "1", fill="black")
    draw.text((w + bar_w + bar_w // 2 + 2, band + h - 12), "0", fill="black")
    if label:
        draw.text((2, 0), label, fill="black")
    return canvas


def save_overlays(paths, heat, out_dir, images=None, *, labels=None, root=None) -> int:
    """Write one PNG per image: the radiograph at its own resolution with its attention map overlaid,
    a colour bar, and ``labels[i]`` (e.g. ``"pneumonia 0.93"``) as its title.

    File names are the paths relative to ``root`` (``a/x.png`` -> ``a__x_attention.png``), so two
    files with the same name in different folders do not overwrite each other. ``images`` (already
    read) avoids reading the files again.
    """
    from .data.io import read_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (path, h) in enumerate(zip(paths, heat)):
        image = read_image(path, on_non_radiograph="ignore") if images is None else images[i]
        title = labels[i] if labels is not None else Path(path).name
        render_overlay(image, h, title).save(out / overlay_name(path, root), compress_level=1)
    return len(paths)


def _estimator(args):
    from .estimators import ContrastivePretrainer, DeepPneumoniaClassifier, MaskAttentionClassifier

    common = dict(backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size,
                  device=args.device, random_state=args.seed, num_workers=args.workers, verbose=1)
    if args.estimator == "mask-attention":
        return MaskAttentionClassifier(max_epochs=args.epochs, checkpoint_dir=args.checkpoint_dir, **common)
    return DeepPneumoniaClassifier(pretrainer=ContrastivePretrainer(max_epochs=args.pretrain_epochs),
                                   classifier=MaskAttentionClassifier(max_epochs=args.epochs),
                                   checkpoint_dir=args.checkpoint_dir, **common)


# ----------------------------------------------------------------------------
# Checks before any work
# ----------------------------------------------------------------------------


def _check_output_file(option: str, value) -> None:
    """An output file must be creatable: its folder exists and is writable, and it is not a folder."""
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        raise SystemExit(f"error: {option} {value} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SystemExit(f"error: {option} {value}: its folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SystemExit(f"error: {option} {value} is not writable")


def _check_output_dir(option: str, value) -> None:
    if value is None:
        return
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: {option} {value} exists and is not a folder")
    existing = next((q for q in [path, *path.parents] if q.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise SystemExit(f"error: {option} {value} is not writable ({existing})")


def _check_positive(args, *names, minimum=1) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least {minimum}, got {value}")


def _check_args(args) -> None:
    _check_positive(args, "image_size", "epochs", "batch_size", "trials", "chunk_size")
    _check_positive(args, "pretrain_epochs", "workers", minimum=0)
    _check_positive(args, "folds", minimum=2)
    if args.command == "fit":
        _check_output_file("--model", args.model)
    if args.command == "predict":
        if not Path(args.model).is_file():
            raise SystemExit(f"error: --model {args.model} does not exist")
        _check_output_file("--out", args.out)
        _check_output_dir("--attention-dir", args.attention_dir)


_PICKLE_WARNING = (
    "it is not a dp_sklearn model file (dp-sklearn fit's default format) but a pickle (joblib) file, or "
    "no model at all, and loading a pickle runs any code it contains: a model file from someone else can "
    "take over this machine. Pass --trust only for a pickle you made or whose source you trust"
)


def load_model(path, trust: bool = False, device=None):
    """Load a model saved by ``dp-sklearn fit``: the safe format (:func:`dp_sklearn.persistence.load_model`)
    always, a pickle (joblib) only with ``trust=True`` (``--trust``)."""
    from .persistence import is_model_file
    from .persistence import load_model as load_safe

    if is_model_file(path):
        try:
            return load_safe(path, device=device)
        except ValueError as exc:
            raise SystemExit(f"error: --model {path}: {exc}") from exc
    if not trust:
        raise SystemExit(f"error: refusing to load --model {path}: {_PICKLE_WARNING}.")
    import joblib

    return joblib.load(path)


def save_model(est, path, fmt: str = "safe") -> None:
    """Save ``est`` for ``dp-sklearn predict``: the safe format, or a joblib pickle (``fmt="joblib"``)."""
    if fmt == "joblib":
        import joblib

        joblib.dump(est, path)
        return
    from .persistence import save_model as save_safe

    save_safe(est, path)


# ----------------------------------------------------------------------------
# Unreadable files
# ----------------------------------------------------------------------------


def _readable_errors():
    from .data.io import MissingDecoderError

    return (OSError, ValueError, MissingDecoderError)


def screen_files(paths, masks=None, on_non_radiograph="ignore"):
    """Try to read every file; return ``(readable indices, [(index, path, error message)])``.

    With ``masks`` (a list of mask paths or None), an image whose mask cannot be read, or whose
    mask is not the image's size, is unreadable too: the message names the mask.
    """
    from .data.io import read_image, read_mask

    ok, bad = [], []
    for i, p in enumerate(paths):
        mask = masks[i] if masks is not None else None
        try:
            shape = read_image(p, on_non_radiograph=on_non_radiograph).shape
            if mask is not None:
                try:
                    mask_shape = read_mask(mask).shape
                except _readable_errors() as exc:
                    raise ValueError(f"its mask {mask} is unreadable ({type(exc).__name__}: {exc})") from exc
                if mask_shape != shape:
                    raise ValueError(f"its mask {mask} is {mask_shape[0]}x{mask_shape[1]} pixels, the image "
                                     f"{shape[0]}x{shape[1]}")
        except _readable_errors() as exc:
            bad.append((i, p, f"{type(exc).__name__}: {exc}"))
        else:
            ok.append(i)
    return ok, bad


def _report_skipped(bad, stream=None) -> None:
    stream = stream or sys.stderr
    if not bad:
        return
    stream.write(f"skipped {len(bad)} unreadable file(s):\n")
    for _, p, msg in bad:
        stream.write(f"  {p}: {msg}\n")


# ----------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------


def cmd_fit(args):
    paths, labels, masks = read_table(args.data, args.masks, allow_outside=args.allow_outside_paths)
    if args.on_error == "skip":
        ok, bad = screen_files(paths, masks)
        _report_skipped(bad)
        if bad:
            paths = [paths[i] for i in ok]
            labels = [labels[i] for i in ok]
            masks = None if masks is None else [masks[i] for i in ok]
    print(f"fit: {len(paths)} images, {len(set(labels))} classes, "
          f"{0 if masks is None else sum(m is not None for m in masks)} masks")
    try:
        est = _estimator(args).fit(paths, np.asarray(labels), masks=masks)
    except _readable_errors() as exc:
        raise SystemExit(f"error: {exc}\n(pass --on-error skip to leave unreadable files out)") from exc
    save_model(est, args.model, args.format)
    print(f"saved {args.model}" + (" (a pickle: load it with --trust)" if args.format == "joblib" else ""))


def cmd_predict(args):
    paths, labels, _ = read_table(args.data, require_labels=False, allow_outside=args.allow_outside_paths)
    est = load_model(args.model, trust=args.trust)
    root = Path(args.data) if Path(args.data).is_dir() else Path(args.data).parent
    classes = list(est.classes_)
    progress = Progress(len(paths), "predict" + (" + overlays" if args.attention_dir else ""))
    preds, skipped, n_overlays = {}, [], 0
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "prediction"] + [f"p_{csv_cell(c)}" for c in classes] + ["error"])
        for start in range(0, len(paths), args.chunk_size):
            block = list(range(start, min(start + args.chunk_size, len(paths))))
            ok, proba = _predict_block(est, paths, block, args.on_error, skipped)
            pred = [classes[k] for k in np.argmax(proba, axis=1)] if len(ok) else []
            for i, y, row in zip(ok, pred, proba):
                preds[i] = y
                w.writerow([csv_cell(paths[i]), csv_cell(y)] + [f"{v:.6f}" for v in row] + [""])
            if args.attention_dir and ok:
                # One chunk of maps at a time: memory does not grow with the number of images.
                heat = est.attention_maps([paths[i] for i in ok])
                titles = [f"{y} {row.max():.2f}" for y, row in zip(pred, proba)]
                n_overlays += save_overlays([paths[i] for i in ok], heat, args.attention_dir, labels=titles, root=root)
                del heat
            progress.update(len(block))
        for i, p, msg in skipped:
            w.writerow([csv_cell(p), ""] + [""] * len(classes) + [csv_cell(msg)])
    print(f"wrote {len(preds)} predictions to {args.out}" + (f" ({len(skipped)} unreadable file(s) listed "
          "there with their error)" if skipped else ""))
    _report_skipped(skipped)
    if labels is not None and preds:
        idx = sorted(preds)
        acc = np.mean([str(preds[i]) == labels[i] for i in idx])
        print(f"accuracy against the given labels: {acc:.4f}")
    if args.attention_dir:
        print(f"wrote {n_overlays} attention overlays to {args.attention_dir}")


def _predict_block(est, paths, block, on_error, skipped):
    """Probabilities of one chunk; with ``on_error="skip"`` unreadable files go to ``skipped``."""
    try:
        return block, est.predict_proba([paths[i] for i in block])
    except _readable_errors() as exc:
        if on_error == "raise":
            raise SystemExit(f"error: {exc}\n(pass --on-error skip to leave unreadable files out)") from exc
    ok_local, bad = screen_files([paths[i] for i in block])
    skipped.extend((block[j], p, msg) for j, p, msg in bad)
    ok = [block[j] for j in ok_local]
    if not ok:
        return [], np.zeros((0, len(est.classes_)))
    return ok, est.predict_proba([paths[i] for i in ok])


def cmd_tune(args):
    from .tuning import tune

    paths, labels, masks = read_table(args.data, args.masks, allow_outside=args.allow_outside_paths)
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
        p.add_argument("--allow-outside-paths", action="store_true",
                       help="let CSV paths point outside the CSV's folder (../, absolute paths)")
        p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                       help="unreadable image files (and, for fit, unreadable or wrong-sized masks): stop (raise) "
                            "or leave them out and list them (skip)")

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

    p = sub.add_parser("fit", help="train a model and save it")
    data_args(p)
    model_args(p)
    p.add_argument("--model", required=True, help="output model file (e.g. model.dps)")
    p.add_argument("--format", choices=["safe", "joblib"], default="safe",
                   help="safe: JSON + safetensors, loading runs no code (default); joblib: a pickle, which "
                        "runs code when loaded (predict then needs --trust)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict with a saved model")
    data_args(p, masks=False)
    p.add_argument("--model", required=True)
    p.add_argument("--trust", action="store_true",
                   help="allow loading a pickle/joblib model: a pickle executes the code it contains, so "
                        "only for files you made or trust (not needed for the default safe format)")
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--attention-dir", help="write attention overlay PNGs here, streamed chunk by chunk")
    p.add_argument("--chunk-size", type=int, default=512, help="images predicted (and overlays drawn) per chunk")
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
    _check_args(args)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
