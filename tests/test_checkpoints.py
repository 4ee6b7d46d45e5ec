"""Checkpoints (issue 17): one atomic file per fit, a fingerprint that refuses another fit's
folder, ``weights_only=True`` loading, and a resumed fit that trains exactly like the
uninterrupted one. Tiny arrays and 2-4 epochs: this is plumbing.

The kill-point test runs a real fit in a subprocess and SIGKILLs it while a checkpoint is
being written (at several instants of the write), then resumes it here.
"""

import csv
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from dp_sklearn.estimators import MaskAttentionClassifier
from dp_sklearn.estimators.callbacks import CHECKPOINT_FILE, AtomicCheckpoint, atomic_torch_save
from dp_sklearn.estimators.pretrainer import ContrastivePretrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StopAfter(Callback):
    """Interrupt training (as Ctrl-C does) after ``n`` epochs; skorch ends the fit cleanly."""

    def __init__(self, n=2):
        self.n = n

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.n:
            raise KeyboardInterrupt


def data(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.rand(12, 32, 32).astype(np.float32)
    y = np.array([0, 1, 2] * 4)
    masks = np.zeros((12, 32, 32), dtype=bool)
    masks[::2, 8:20, 8:20] = True
    return X, y, masks


def classifier(**kw):
    # float32: the killed fit runs on one thread, the uninterrupted one on all; oneDNN's bfloat16
    # kernels (precision="auto" on AVX512-BF16 CPUs) round differently per thread count, float32
    # agrees to 1e-5, which is what lets the resumed model be compared with the uninterrupted one.
    return MaskAttentionClassifier(**{**dict(backbone="resnet10_half", image_size=32, max_epochs=4, batch_size=4,
                                             augment=True, verbose=0, device="cpu", random_state=0,
                                             precision="float32"), **kw})


def checkpoint_of(est):
    return next(cb for _, cb in est.callbacks_ if isinstance(cb, AtomicCheckpoint))


@pytest.fixture(scope="module")
def straight():
    """The uninterrupted 4-epoch fit every resumed fit must reproduce."""
    X, y, masks = data()
    return classifier().fit(X, y, masks=masks)


# ----------------------------------------------------------------------------- lr schedule
def test_resumed_fit_runs_every_epoch_at_the_uninterrupted_lr_and_gives_the_same_model(straight, tmp_path):
    # Issue 17: after a resume, epochs 3-4 ran at 0.00085 / 0.0003 instead of 0.0005 / 0.00015 and
    # predictions differed by up to 0.136.
    X, y, masks = data()
    classifier(checkpoint_dir=tmp_path, callbacks=[("stop", StopAfter(2))]).fit(X, y, masks=masks)
    resumed = classifier(checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    assert checkpoint_of(resumed).loaded_epochs_ == 2
    assert resumed.history[:, "epoch"] == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history[:, "lr"], straight.history[:, "lr"], rtol=1e-12)
    # warm-up + cosine per step: 12 steps (3 a epoch), 1 of warm-up; "lr" is each epoch's last step
    last_steps = np.array([2, 5, 8, 11])
    np.testing.assert_allclose(resumed.history[:, "lr"], resumed.lr * (1 + np.cos(np.pi * (last_steps - 1) / 11)) / 2,
                               rtol=1e-9)
    # Same batches and augmentations too (the RNG state is part of the checkpoint): same model.
    np.testing.assert_allclose(resumed.history[:, "train_loss"], straight.history[:, "train_loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.predict_proba(X), straight.predict_proba(X), atol=1e-5)


# ----------------------------------------------------------------------------- early stopping
def test_a_resumed_fit_keeps_counting_towards_early_stopping(tmp_path):
    # Issue 17: a resumed fit restarted early stopping's count (best score, epochs without
    # improvement), so it ran up to `patience` epochs more than the uninterrupted fit.
    X, y, masks = data()
    kw = dict(lr=0.0, patience=2, max_epochs=12)  # lr=0: a flat, noisy loss, so early stopping ends the fit
    straight = classifier(**kw).fit(X, y, masks=masks)
    stop = len(straight.history)
    assert 3 <= stop < 12
    # Interrupted one epoch before the stop, when one more miss ends the fit.
    classifier(**kw, checkpoint_dir=tmp_path, callbacks=[("stop", StopAfter(stop - 1))]).fit(X, y, masks=masks)
    resumed = classifier(**kw, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    assert checkpoint_of(resumed).loaded_epochs_ == stop - 1
    assert resumed.history[:, "epoch"] == straight.history[:, "epoch"]
    np.testing.assert_allclose(resumed.history[:, "train_loss"], straight.history[:, "train_loss"], rtol=1e-6)
    # The finished fit again: early stopping had ended it, so no epoch is added.
    again = classifier(**kw, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    assert again.history[:, "epoch"] == straight.history[:, "epoch"]


# ----------------------------------------------------------------------------- fingerprint
def test_a_finished_folder_is_refused_for_other_data_or_parameters(tmp_path):
    # Issue 17: a finished folder reused with other data returned the old model in 2 s, silently.
    X, y, masks = data()
    first = classifier(max_epochs=2, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    X2, _, _ = data(seed=1)
    with pytest.raises(ValueError, match="another fit .*the training data differ"):
        classifier(max_epochs=2, checkpoint_dir=tmp_path).fit(X2, y, masks=masks)
    with pytest.raises(ValueError, match="the training data differ"):
        classifier(max_epochs=2, checkpoint_dir=tmp_path).fit(X, y[::-1].copy(), masks=masks)
    with pytest.raises(ValueError, match="parameters differ: lr$|parameters differ: lr[^_]"):
        classifier(max_epochs=2, lr=1e-2, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    # With the warm-up + cosine schedule, max_epochs shapes every step's lr: another budget is another fit.
    with pytest.raises(ValueError, match="callbacks__lr_scheduler"):
        classifier(max_epochs=3, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    # The same fit again is the saved model, at once.
    again = classifier(max_epochs=2, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    assert checkpoint_of(again).loaded_epochs_ == 2
    np.testing.assert_allclose(again.predict_proba(X), first.predict_proba(X), atol=1e-6)


def test_path_lists_are_fingerprinted_by_name_size_and_mtime(tmp_path):
    from PIL import Image

    X, y, _ = data()
    paths = []
    for i, img in enumerate(X):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((img * 255).astype(np.uint8)).save(paths[-1])
    ckpt = tmp_path / "ckpt"
    classifier(max_epochs=1, checkpoint_dir=ckpt).fit(paths, y)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(paths[0])  # the same name, other pixels
    os.utime(paths[0], ns=(1, 1))
    with pytest.raises(ValueError, match="the training data differ"):
        classifier(max_epochs=1, checkpoint_dir=ckpt).fit(paths, y)


# ----------------------------------------------------------------------------- safe loading
PAYLOAD = textwrap.dedent("""
    import os, pickle, sys

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (sys.argv[2],))

    for name in sys.argv[3:]:
        with open(os.path.join(sys.argv[1], name), "wb") as f:
            pickle.dump({"state": Evil()}, f)
""")


def test_a_planted_checkpoint_cannot_run_code(tmp_path):
    # Issue 17: the pre-trainer resumed its checkpoint with weights_only=False, so a planted file ran code.
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    ckpt.mkdir()
    # Plant the payload under the old file names and the new one.
    subprocess.run([sys.executable, "-c", PAYLOAD, str(ckpt), str(marker), "params.pt", "optimizer.pt",
                    "criterion.pt", CHECKPOINT_FILE], check=True)
    # (a history that says a checkpoint was taken, so that skorch's LoadInitState would load it)
    (ckpt / "history.json").write_text('[{"epoch": 1, "batches": [{"train_loss": 1.0, "train_batch_size": 8}], "train_loss": 1.0, "event_cp": true}]')
    X = np.random.RandomState(0).rand(8, 32, 32).astype(np.float32)
    est = ContrastivePretrainer(backbone="resnet10_half", image_size=32, projection_dim=8, hidden_dim=16, batch_size=4,
                                max_epochs=1, verbose=0, device="cpu", random_state=0, checkpoint_dir=str(ckpt))
    with pytest.raises(ValueError, match="could not read the checkpoint"):
        est.fit(X)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["ContrastivePretrainer", "LocalDiscriminationPretrainer"])
def test_skorch_load_params_of_the_pretrainers_refuses_a_planted_file(tmp_path, name):
    # Issue 17: both pre-trainers defaulted to torch_load_kwargs={"weights_only": False}, so skorch's
    # load_params (its own checkpoint/resume route) ran a planted file's payload.
    import pickle

    import dp_sklearn.estimators as E

    marker = tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", PAYLOAD, str(tmp_path), str(marker), "params.pt"], check=True)
    est = getattr(E, name)(backbone="resnet10_half", image_size=32, batch_size=4, max_epochs=1, verbose=0, device="cpu")
    assert est.torch_load_kwargs is None  # skorch's default: weights_only=True
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        est.initialize().load_params(f_params=str(tmp_path / "params.pt"))
    assert not marker.exists()


def test_checkpoint_file_is_loadable_with_weights_only(tmp_path):
    X, y, masks = data()
    classifier(max_epochs=1, checkpoint_dir=tmp_path).fit(X, y, masks=masks)
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_FILE]
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["epochs"] == 1 and {"module", "optimizer", "criterion", "history", "rng"} <= set(state)


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "f.pt"
    atomic_torch_save({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"epoch": 2, "x": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["f.pt"]


# ----------------------------------------------------------------------------- kill points
KILLED_FIT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[4])
    import test_checkpoints as T
    import dp_sklearn.estimators.callbacks as C

    ckpt, epoch, stage = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    state = {"writes": 0, "armed": False}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_save, real_fsync, real_replace, real_atomic = torch.save, os.fsync, os.replace, C.atomic_torch_save

    def atomic(obj, path):
        state["writes"] += 1
        state["armed"] = state["writes"] == epoch    # the write of this epoch's checkpoint
        real_atomic(obj, path)
        if state["armed"] and stage == "after-replace":
            die()

    def save(obj, f, *a, **k):
        if state["armed"] and stage.startswith("write-"):
            import io
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            f.write(data[: int(len(data) * int(stage[6:]) / 100)])  # a truncated temp file
            f.flush()
            die()
        return real_save(obj, f, *a, **k)

    def fsync(fd):
        if state["armed"] and stage == "before-fsync":
            die()
        return real_fsync(fd)

    def replace(src, dst):
        if state["armed"] and stage == "before-replace":
            die()
        return real_replace(src, dst)

    C.atomic_torch_save, torch.save, os.fsync, os.replace = atomic, save, fsync, replace
    X, y, masks = T.data()
    T.classifier(checkpoint_dir=ckpt).fit(X, y, masks=masks)
    print("not killed")
""")

STAGES = ["write-0", "write-50", "write-99", "before-fsync", "before-replace", "after-replace"]
FAST = [(2, "write-50"), (3, "before-replace")]
ALL = [(e, s) for e in (1, 2, 3, 4) for s in STAGES]


def _kill_and_resume(straight, tmp_path, epoch, stage):
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", KILLED_FIT, str(ckpt), str(epoch), stage,
                           os.path.join(REPO, "tests")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    X, y, masks = data()
    resumed = classifier(checkpoint_dir=ckpt).fit(X, y, masks=masks)
    loaded = checkpoint_of(resumed).loaded_epochs_
    lost = epoch - loaded
    assert 0 <= lost <= 1, (epoch, stage, loaded)
    assert lost == (0 if stage == "after-replace" else 1)
    assert [p.name for p in ckpt.iterdir()] == [CHECKPOINT_FILE]  # the killed write's temp file is gone
    np.testing.assert_allclose(resumed.predict_proba(X), straight.predict_proba(X), atol=1e-5)
    return lost


@pytest.mark.parametrize("epoch, stage", FAST)
def test_sigkill_during_a_checkpoint_write_loses_at_most_one_epoch(straight, tmp_path, epoch, stage):
    # Issue 17: a SIGKILL while params.pt was written left a truncated file and an unrecoverable folder.
    _kill_and_resume(straight, tmp_path, epoch, stage)


@pytest.mark.slow
@pytest.mark.parametrize("epoch, stage", [p for p in ALL if p not in FAST])
def test_sigkill_at_every_instant_of_every_write(straight, tmp_path, epoch, stage):
    _kill_and_resume(straight, tmp_path, epoch, stage)


# ----------------------------------------------------------------------------- CLI
def test_cli_checkpoint_dir_works_with_mask_attention(tmp_path):
    # Issue 17: the CLI ignored --checkpoint-dir with --estimator mask-attention.
    from PIL import Image

    from dp_sklearn.cli import main

    X, y, _ = data()
    table = tmp_path / "train.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, (img, label) in enumerate(zip(X, y)):
            Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
            w.writerow([f"{i}.png", label])
    ckpt = tmp_path / "ckpt"
    argv = ["fit", "--data", str(table), "--model", str(tmp_path / "m.joblib"), "--estimator", "mask-attention",
            "--backbone", "resnet10_half", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
            "--checkpoint-dir", str(ckpt), "--device", "cpu"]
    main(argv)
    state = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)
    assert state["epochs"] == 1
