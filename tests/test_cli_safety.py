"""Issue 17, "The CLI loses work" and "Untrusted files run code": each test reproduces one failure
of the command line before that issue and pins the fix. One tiny model (resnet10_half, 16 px, one
epoch on 8 real images) is fitted once per module through the CLI itself."""

import csv
import os
import pickle
import shutil

import pytest
from PIL import Image

from dp_sklearn.cli import Progress, csv_cell, main, overlay_name
from dp_sklearn.datasets import CXR1K_DIR

IMAGES = CXR1K_DIR / "images"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a CSV of 8 real images (copied in, relative paths) and a fitted model."""
    d = tmp_path_factory.mktemp("cli")
    rows = []
    for label in ("normal", "pneumonia"):
        (d / label).mkdir()
        for src in sorted((IMAGES / label).glob("*.png"))[:4]:
            shutil.copy(src, d / label / src.name)
            rows.append((f"{label}/{src.name}", label))
    with open(d / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    main(["fit", "--data", str(d / "train.csv"), "--model", str(d / "model.dps"), "--estimator",
          "mask-attention", "--backbone", "resnet10_half", "--image-size", "16", "--epochs", "1", "--batch-size", "4"])
    return d


def _write_csv(path, rows, header=("path", "label")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_unwritable_outputs_and_bad_options_fail_before_any_work(workdir, capsys):
    # Before: training ran for its whole length, then joblib.dump failed on the missing folder.
    with pytest.raises(SystemExit, match="--model .*does not exist"):
        main(["fit", "--data", str(workdir / "train.csv"), "--model", str(workdir / "no" / "m.joblib")])
    with pytest.raises(SystemExit, match="--out .* is a folder"):
        main(["predict", "--data", str(workdir / "train.csv"), "--model", str(workdir / "model.dps"),
              "--out", str(workdir)])
    with pytest.raises(SystemExit, match="--batch-size must be at least 1, got 0"):
        main(["fit", "--data", str(workdir / "train.csv"), "--model", str(workdir / "m.joblib"), "--batch-size", "0"])
    assert "fit:" not in capsys.readouterr().out  # nothing started


def test_empty_labels_are_rejected(workdir):
    # Before: an empty label became a class ''.
    table = _write_csv(workdir / "empty.csv", [("normal/" + os.listdir(workdir / "normal")[0], ""),
                                               ("pneumonia/" + os.listdir(workdir / "pneumonia")[0], "pneumonia")])
    with pytest.raises(SystemExit, match=r"1 empty label.*CSV lines 2"):
        main(["fit", "--data", str(table), "--model", str(workdir / "m2.joblib")])


def test_csv_paths_are_confined_to_the_csv_folder(workdir, tmp_path):
    # Before: ../ and absolute paths were read from anywhere.
    sub = workdir / "sub"
    sub.mkdir(exist_ok=True)
    table = _write_csv(sub / "escape.csv", [("../normal/" + os.listdir(workdir / "normal")[0], "normal")])
    with pytest.raises(SystemExit, match="outside the CSV's folder.*--allow-outside-paths"):
        main(["predict", "--data", str(table), "--model", str(workdir / "model.dps"),
              "--out", str(tmp_path / "p.csv")])
    main(["predict", "--data", str(table), "--model", str(workdir / "model.dps"),
          "--out", str(tmp_path / "p.csv"), "--allow-outside-paths"])
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 1


class _Evil:
    def __reduce__(self):
        return (open, (os.environ["DP_EVIL_MARKER"], "w"))


def test_a_pickle_model_is_not_loaded_without_trust(workdir, tmp_path, monkeypatch):
    # Before: `predict --model evil.joblib` ran the pickle's payload.
    marker = tmp_path / "pwned"
    monkeypatch.setenv("DP_EVIL_MARKER", str(marker))
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(SystemExit, match="runs any code it contains.*--trust"):
        main(["predict", "--data", str(workdir / "train.csv"), "--model", str(evil), "--out", str(tmp_path / "p.csv")])
    assert not marker.exists()


def test_formula_cells_are_escaped(workdir, tmp_path):
    # Before: a file named =SUM(1+1).png put a formula in the output CSV.
    d = tmp_path / "data"
    d.mkdir()
    src = next((workdir / "normal").glob("*.png"))
    for name in ("=SUM(1+1).png", "+x.png", "-y.png", "@z.png", "plain.png"):
        shutil.copy(src, d / name)
    out = tmp_path / "p.csv"
    main(["predict", "--data", str(d), "--model", str(workdir / "model.dps"), "--out", str(out)])
    cells = [r["path"] for r in csv.DictReader(open(out))]
    names = [os.path.basename(c) for c in cells]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)
    assert csv_cell("=SUM(1+1)") == "'=SUM(1+1)" and csv_cell("plain") == "plain"
    assert len(names) == 5


def test_unreadable_files_are_skipped_and_listed(workdir, tmp_path, capsys):
    # Before: one unreadable file aborted fit/predict with a traceback and no way to skip it.
    (workdir / "normal" / "broken.png").write_text("not an image")
    rows = [(f"{lab}/{n}", lab) for lab in ("normal", "pneumonia") for n in sorted(os.listdir(workdir / lab))]
    table = _write_csv(workdir / "with_broken.csv", rows)
    with pytest.raises(SystemExit, match="(?s)broken.png.*--on-error skip"):
        main(["predict", "--data", str(table), "--model", str(workdir / "model.dps"),
              "--out", str(tmp_path / "p.csv")])
    main(["predict", "--data", str(table), "--model", str(workdir / "model.dps"),
          "--out", str(tmp_path / "p.csv"), "--on-error", "skip"])
    rows_out = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows_out) == 9
    broken = [r for r in rows_out if r["path"].endswith("broken.png")]
    assert broken and broken[0]["prediction"] == "" and "Could not decode" in broken[0]["error"]
    assert "skipped 1 unreadable file" in capsys.readouterr().err
    main(["fit", "--data", str(table), "--model", str(tmp_path / "m.joblib"), "--estimator", "mask-attention",
          "--backbone", "resnet10_half", "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--on-error", "skip"])
    assert (tmp_path / "m.joblib").exists()
    (workdir / "normal" / "broken.png").unlink()


def test_overlays_are_unique_full_resolution_and_labelled(workdir, tmp_path):
    # Before: a/x.png and b/x.png wrote the same overlay file; overlays were at the model's 16 px.
    d = tmp_path / "data"
    src = next((workdir / "normal").glob("*.png"))
    for sub in ("a", "b"):
        (d / sub).mkdir(parents=True)
        shutil.copy(src, d / sub / "x.png")
    heat = tmp_path / "heat"
    main(["predict", "--data", str(d), "--model", str(workdir / "model.dps"),
          "--out", str(tmp_path / "p.csv"), "--attention-dir", str(heat)])
    files = sorted(p.name for p in heat.glob("*.png"))
    assert files == ["a__x_attention.png", "b__x_attention.png"]
    overlay = Image.open(heat / files[0])
    assert overlay.height > 256 and overlay.width > 256  # the 256x256 input plus title band and colour bar
    assert overlay_name(d / "a" / "x.png", d) != overlay_name(d / "b" / "x.png", d)


def test_progress_reports_rate_and_eta_as_plain_lines_off_a_tty():
    import io

    stream = io.StringIO()
    p = Progress(10, "predict", stream=stream, every_s=0.0)
    for _ in range(5):
        p.update(2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in stream.getvalue()
    assert "10/10 images" in lines[-1] and "images/s" in lines[-1] and "ETA" in lines[-1]


def test_the_default_model_format_loads_without_trust_and_a_pickle_needs_it(workdir, tmp_path, capsys):
    # Issue 17: models were joblib pickles, which run code when loaded. fit now writes the safe format.
    from dp_sklearn.persistence import is_model_file

    assert is_model_file(workdir / "model.dps")
    main(["predict", "--data", str(workdir / "train.csv"), "--model", str(workdir / "model.dps"),
          "--out", str(tmp_path / "p.csv")])
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 8
    pickled = tmp_path / "m.joblib"
    main(["fit", "--data", str(workdir / "train.csv"), "--model", str(pickled), "--format", "joblib", "--estimator",
          "mask-attention", "--backbone", "resnet10_half", "--image-size", "16", "--epochs", "1", "--batch-size", "4"])
    assert not is_model_file(pickled)
    with pytest.raises(SystemExit, match="pickle.*runs any code it contains.*--trust"):
        main(["predict", "--data", str(workdir / "train.csv"), "--model", str(pickled),
              "--out", str(tmp_path / "q.csv")])
    main(["predict", "--data", str(workdir / "train.csv"), "--model", str(pickled), "--trust",
          "--out", str(tmp_path / "q.csv")])
    assert len(list(csv.DictReader(open(tmp_path / "q.csv")))) == 8


def test_fit_on_error_skip_screens_masks_too(workdir, tmp_path, capsys):
    # Issue 17: --on-error skip screened image files only; an unreadable mask aborted the fit and a mask of
    # another size than its image was silently resized onto it.
    import numpy as np

    rows = [(f"{lab}/{n}", lab) for lab in ("normal", "pneumonia") for n in sorted(os.listdir(workdir / lab))
            if n.endswith(".png")]
    good = np.zeros((256, 256), np.uint8)
    good[64:128, 64:128] = 255
    Image.fromarray(good).save(workdir / "good_mask.png")
    Image.fromarray(good[:128, :128]).save(workdir / "small_mask.png")
    (workdir / "broken_mask.png").write_text("not an image")
    masks = ["good_mask.png", "broken_mask.png", "small_mask.png"] + [""] * (len(rows) - 3)
    table = _write_csv(workdir / "with_masks.csv", [(*r, m) for r, m in zip(rows, masks)],
                       header=("path", "label", "mask"))
    argv = ["fit", "--data", str(table), "--model", str(tmp_path / "m.dps"), "--estimator", "mask-attention",
            "--backbone", "resnet10_half", "--image-size", "16", "--epochs", "1", "--batch-size", "4"]
    with pytest.raises(SystemExit, match="(?s)broken_mask.png.*--on-error skip"):
        main(argv)
    capsys.readouterr()
    main(argv + ["--on-error", "skip"])
    out = capsys.readouterr()
    assert "fit: 6 images, 2 classes, 1 masks" in out.out
    assert "skipped 2 unreadable file(s)" in out.err
    assert "its mask" in out.err and "broken_mask.png is unreadable" in out.err
    assert "small_mask.png is 128x128 pixels, the image 256x256" in out.err
    assert (tmp_path / "m.dps").exists()
