"""The examples, the command line and the benchmark harness run end to end at a tiny size."""

import csv
import json

import numpy as np
import pytest
import sklearn
from _scripts import ROOT, load_script


@pytest.mark.parametrize(
    "script, argv",
    [
        ("quickstart.py", ["--image-size", "16", "--epochs", "1", "--pretrain-epochs", "1", "--subsample", "80"]),
        ("grid_search_with_masks.py", ["--image-size", "16", "--epochs", "1", "--subsample", "60"]),
        ("optuna_study.py", ["--trials", "1", "--image-size", "16", "--epochs", "1", "--folds", "2", "--n-images", "60"]),
        ("dicom_folder_predict.py", ["--image-size", "16", "--epochs", "1", "--subsample", "70"]),
    ],
)
def test_example_runs(script, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    if script == "optuna_study.py":
        argv = argv + ["--storage", f"sqlite:///{tmp_path / 'study.sqlite3'}"]
    if script == "dicom_folder_predict.py":
        argv = argv + ["--out", str(tmp_path / "out")]
    with sklearn.config_context():  # an example may switch metadata routing on globally; keep it to this test
        load_script(ROOT / "examples" / script).main(argv)
    out = capsys.readouterr().out
    assert out.strip()
    if script == "dicom_folder_predict.py":
        rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
        assert len(rows) == 5  # the CT slice is skipped as a non-radiograph
        assert len(list((tmp_path / "out").glob("*_attention.png"))) == 5


def test_cli_fit_predict_round_trip(tmp_path):
    from dp_sklearn.cli import main
    from dp_sklearn.datasets import CXR1K_DIR

    rows = list(csv.DictReader(open(CXR1K_DIR / "labels.csv")))
    picked = [r for r in rows if r["label"] == "normal"][:6] + [r for r in rows if r["mask"]][:6]
    table = tmp_path / "train.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "mask"])
        for r in picked:
            w.writerow([CXR1K_DIR / r["image"], r["label"], CXR1K_DIR / r["mask"] if r["mask"] else ""])
    model = tmp_path / "model.joblib"
    main(["fit", "--data", str(table), "--model", str(model), "--backbone", "resnet10_half", "--image-size", "16",
          "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "6", "--allow-outside-paths"])
    assert model.exists()
    out = tmp_path / "pred.csv"
    main(["predict", "--data", str(table), "--model", str(model), "--out", str(out), "--trust",
          "--attention-dir", str(tmp_path / "heat"), "--allow-outside-paths"])
    pred = list(csv.DictReader(open(out)))
    assert len(pred) == 12 and {"path", "prediction", "p_normal", "p_pneumonia"} <= set(pred[0])
    probs = np.array([[float(r["p_normal"]), float(r["p_pneumonia"])] for r in pred])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert len(list((tmp_path / "heat").glob("*.png"))) == 12


def test_cli_errors_are_clear(tmp_path):
    from dp_sklearn.cli import main

    with pytest.raises(SystemExit, match="does not exist"):
        main(["fit", "--data", str(tmp_path / "missing"), "--model", "m.joblib"])


def test_benchmark_harness_end_to_end(tmp_path):
    run = load_script(ROOT / "benchmarks" / "run.py")
    res = run.main(["--profile", "tiny", "--out", str(tmp_path), "--models", "1.", "2.", "6."])
    saved = json.loads((tmp_path / "results.json").read_text())
    models = [r for r in saved["quality"] if "macro_auc" in r]
    assert [r["model"][:2] for r in models] == ["1.", "2.", "6."]
    for r in models:
        assert 0 <= r["macro_auc"] <= 1 and set(r["std"]) >= {"accuracy", "macro_auc"}
    # localisation: Grad-CAM for the plain CNN, the attention branch for row 6, and the two location priors
    where = {r["model"][:2]: r["localisation"] for r in saved["quality"] if r.get("localisation")}
    assert where["2."]["source"] == "gradcam" and where["6."]["source"] == "attention"
    priors = [r["localisation"] for r in saved["quality"] if r["model"].startswith("location prior")]
    assert len(priors) == 2 and all(p["source"] == "prior" for p in priors)
    for loc in list(where.values()) + priors:
        assert loc["images"] > 0 and 0 <= loc["pointing_game"] <= 1
        assert loc["lift"] == pytest.approx(loc["focus"] / loc["area"])
    by_read = {r["model"][:2]: r for r in saved["pneumonia_by_read"]}
    assert list(by_read) == ["1.", "2.", "6."] and all(0 <= r["all"]["auc"] <= 1 for r in by_read.values())
    assert "independent radiologist read" in (tmp_path / "results.md").read_text()
    assert {s["name"].split(" ")[0] for s in saved["speed"]} >= {"train", "predict", "DICOM"}
    assert all(s["images_per_s"] > 0 for s in saved["speed"])
    for name in ("results.md", "confusion_matrix.png", "roc.png", "attention_overlays.png", "ablation.png"):
        assert (tmp_path / name).exists(), name
    assert res["machine"]["cores"] >= 1


def test_benchmark_pneumonia_by_radiologist_read():
    """The by-read table ranks each RSNA group of pneumonia images against all held-out normals."""
    run = load_script(ROOT / "benchmarks" / "run.py")
    names = ["covid19", "normal", "pneumonia"]
    y = np.array([1, 1, 1, 2, 2, 2, 2, 0])
    read = np.array(["", "Normal", "", "Lung Opacity", "Lung Opacity", "Normal", "", ""], dtype=object)
    # pneumonia probabilities: the opacity images above every normal, the RSNA-"Normal" one below them all
    p_pneu = np.array([0.2, 0.3, 0.4, 0.9, 0.8, 0.1, 0.35, 0.0])
    proba = np.stack([np.zeros(8), 1 - p_pneu, p_pneu], axis=1)
    tested = np.arange(8)
    (row,) = run.pneumonia_by_read({"m": proba}, tested, y, read, names)
    assert row["normals"] == 3
    assert row["opacity"] == {"images": 2, "auc": 1.0}
    assert row["no opacity"] == {"images": 1, "auc": 0.0}
    assert row["not read"] == {"images": 1, "auc": pytest.approx(2 / 3)}  # 0.35 beats the normals at 0.2 and 0.3
    assert row["all"]["images"] == 4 and row["all"]["auc"] == pytest.approx((3 + 3 + 0 + 2) / 12)
    # only the held-out images count; without RSNA reads (another data set) there is no table
    (part,) = run.pneumonia_by_read({"m": proba}, np.array([0, 1, 3]), y, read, names)
    assert part["normals"] == 2 and set(part) == {"model", "normals", "opacity", "all"}
    assert run.pneumonia_by_read({"m": proba}, tested, y, None, names) == []


@pytest.mark.parametrize("script, argv, message", [
    ("local_discrimination_eval.py", ["--folds", "3", "--fold-ids", "1", "3", "4", "--out", ""],
     "--fold-ids 3 4: folds are numbered 0 to 2."),
    ("mask_attention_eval.py", ["--n-splits", "5", "--fold-ids", "0", "7", "5"],
     "--fold-ids 5 7: folds are numbered 0 to 4."),
])
def test_benchmark_fold_ids_outside_the_split_are_refused(script, argv, message, capsys):
    """--fold-ids names folds 0..n-1 (0-based, one spelling for the benchmark scripts); a fold outside them
    stops the script with a usage error before any data loads (it used to run nothing and then fail)."""
    with pytest.raises(SystemExit) as err:
        load_script(ROOT / "benchmarks" / script).main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err

def test_benchmark_harness_shared_pieces(tmp_path):
    """benchmarks/_harness.py: patient-grouped folds, the quality metrics, mean ± std, the result files."""
    harness = load_script(ROOT / "benchmarks" / "_harness.py")
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    groups = np.arange(60) // 2  # two images per patient
    folds = harness.patient_folds(np.zeros((60, 1)), y, groups, 4, seed=0)
    assert len(folds) == 4 and sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(60))
    assert all(not set(groups[train]) & set(groups[test]) for train, test in folds)

    proba = rng.dirichlet(np.ones(3), size=60)
    proba[np.arange(60), y] += 1  # every argmax right
    m = harness.quality_metrics(y, proba / proba.sum(1, keepdims=True), np.arange(3), ["a", "b", "c"])
    assert m["accuracy"] == m["balanced_accuracy"] == m["macro_f1"] == m["macro_auc"] == 1.0
    assert m["per_class_recall"] == {"a": 1.0, "b": 1.0, "c": 1.0}

    row = harness.fold_summary([{"auc": 0.5, "ap": None}, {"auc": 0.7, "ap": None}], ["auc", "ap"])
    assert row == {"auc": pytest.approx(0.6), "auc_std": pytest.approx(0.1), "ap": None, "ap_std": None}

    harness.write_results(tmp_path / "sub" / "results.json", {"a": 1, "path": tmp_path}, "| table |\n")
    assert json.loads((tmp_path / "sub" / "results.json").read_text()) == {"a": 1, "path": str(tmp_path)}
    assert (tmp_path / "sub" / "results.md").read_text() == "| table |\n"
