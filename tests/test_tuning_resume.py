"""Studies that resume, share workers and checkpoint (issue 17), on real Optuna studies in real
SQLite files: no replayed parameters, per-worker trial counts, one checkpoint folder per trial and
fold."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from dp_sklearn.estimators.callbacks import CHECKPOINT_FILE
from dp_sklearn.tuning import TrialSeededTPESampler, make_storage, tune

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = {"C": FloatDistribution(1e-3, 1e2, log=True)}


@pytest.fixture
def tabular():
    return make_classification(n_samples=60, n_features=6, class_sep=1.5, random_state=0)


class FolderLogisticRegression(LogisticRegression):
    """A LogisticRegression with a ``checkpoint_dir``: each fit leaves a file in its folder."""

    def __init__(self, C=1.0, checkpoint_dir=None):
        super().__init__(C=C)
        self.checkpoint_dir = checkpoint_dir

    def fit(self, X, y):
        if self.checkpoint_dir is not None:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            open(os.path.join(self.checkpoint_dir, "fitted"), "a").close()
        return super().fit(X, y)


def _run(X, y, path, **kw):
    kw = {"search_space": SPACE, "cv": 2, "storage": path, "study_name": "s", "verbose": 0, "refit": False, **kw}
    return tune(LogisticRegression(), X, y, **kw)


def test_a_resumed_study_continues_the_search(tabular, tmp_path):
    # Issue 17: running the same seeded study twice repeated the first run's parameters exactly.
    X, y = tabular
    path = tmp_path / "s.sqlite3"
    first = _run(X, y, path, n_trials=3)
    second = _run(X, y, path, n_trials=3)
    assert first.n_trials_run == second.n_trials_run == 3
    values = [t.params["C"] for t in second.study.trials]
    assert len(values) == 6 and len(set(values)) == 6, values


def test_workers_with_the_same_seed_do_not_duplicate_and_count_their_own_trials(tabular, tmp_path):
    # Issue 17: two workers reported n_trials_run 7 and 6 for the 4 and 3 trials they ran.
    X, y = tabular
    path = tmp_path / "s.sqlite3"
    _run(X, y, path, n_trials=1)  # create the study first: the workers only load it
    results = {}

    def worker(name, n):
        results[name] = _run(X, y, make_storage(path), n_trials=n)

    threads = [threading.Thread(target=worker, args=("a", 4)), threading.Thread(target=worker, args=("b", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"].n_trials_run == 4 and results["b"].n_trials_run == 3
    study = optuna.load_study(study_name="s", storage=make_storage(path))
    values = [t.params["C"] for t in study.trials]
    assert len(values) == 8 and len(set(values)) == 8, values


def test_trial_seeded_sampler_is_repeatable_for_one_seed():
    def objective(trial):
        return trial.suggest_float("x", 0, 1)

    a = optuna.create_study(sampler=TrialSeededTPESampler(seed=3, n_startup_trials=2))
    b = optuna.create_study(sampler=TrialSeededTPESampler(seed=3, n_startup_trials=2))
    c = optuna.create_study(sampler=TrialSeededTPESampler(seed=4, n_startup_trials=2))
    for study in (a, b, c):
        study.optimize(objective, n_trials=4)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.params for t in a.trials] != [t.params for t in c.trials]


KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    from optuna.distributions import FloatDistribution
    from sklearn.datasets import make_classification
    sys.path.insert(0, sys.argv[3])
    from test_tuning_resume import FolderLogisticRegression
    from dp_sklearn.tuning import tune

    X, y = make_classification(n_samples=60, n_features=6, class_sep=1.5, random_state=0)

    def space(trial):
        params = {"C": trial.suggest_float("C", 1e-3, 1e2, log=True)}
        if trial.number == 2:        # the third trial: let its heartbeat be written, then die hard
            time.sleep(1.5)
            os.kill(os.getpid(), signal.SIGKILL)
        return params

    tune(FolderLogisticRegression(checkpoint_dir=sys.argv[2]), X, y, search_space=space, n_trials=5, cv=2,
         storage=sys.argv[1], study_name="s", heartbeat_interval=1, grace_period=1, verbose=0, refit=False)
""")


def test_after_a_killed_worker_is_requeued_no_trial_repeats_another(tabular, tmp_path):
    # Issue 17: after a killed worker's trial was re-queued, trials 2, 3 and 5 duplicated 0 and 1.
    X, y = tabular
    path = tmp_path / "s.sqlite3"
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(path), str(ckpt), os.path.join(REPO, "tests")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    time.sleep(2.5)  # let the dead trial's heartbeat age past grace_period
    res = tune(FolderLogisticRegression(checkpoint_dir=str(ckpt)), X, y, search_space=SPACE, cv=2, storage=path,
               study_name="s", verbose=0, refit=False, n_trials_total=5, heartbeat_interval=1, grace_period=1)
    trials = sorted(res.study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[3].system_attrs["failed_trial"] == 2 and trials[3].params == trials[2].params  # the retry
    others = [t.params["C"] for t in trials if t.number != 3]
    assert len(set(others)) == len(others) == 5, others
    assert res.n_trials_run == 3
    # The retry (trial 3) fits in the folders of the trial it retries; every trial has its own.
    assert sorted(p.name for p in (ckpt / "s").iterdir()) == ["trial-0", "trial-1", "trial-2", "trial-4", "trial-5"]
    assert all((ckpt / "s" / "trial-2" / f"fold-{k}" / "fitted").exists() for k in (0, 1))


# ----------------------------------------------------------------------------- checkpoints
def test_tune_gives_every_trial_and_fold_its_own_checkpoint(tmp_path):
    # Issue 17: `tune --checkpoint-dir D` shared one folder: fold 2 trained 0 epochs and reused fold 1's
    # model (a leak: fold 1's model had trained on fold 2's test images), then trial 1 crashed the study.
    from dp_sklearn.estimators import MaskAttentionClassifier

    rng = np.random.RandomState(0)
    X = rng.rand(16, 32, 32).astype(np.float32)
    y = np.array([0, 1] * 8)
    est = MaskAttentionClassifier("resnet10_half", image_size=32, max_epochs=2, batch_size=4, augment=False,
                                  verbose=0, device="cpu", random_state=0, checkpoint_dir=str(tmp_path / "ckpt"))
    res = tune(est, X, y, search_space={"lr": FloatDistribution(1e-4, 1e-2, log=True)}, n_trials=2, cv=2,
               scoring="accuracy", storage=tmp_path / "s.sqlite3", study_name="cxr/study 1",
               pruner=optuna.pruners.NopPruner(), verbose=0, refit=True)
    trials = res.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:  # every fold trained its own 2 epochs
        assert [len(scores) for scores in t.user_attrs["epoch_scores"]] == [2, 2]
        for fold in (0, 1):
            assert (tmp_path / "ckpt" / "cxr_study_1" / f"trial-{t.number}" / f"fold-{fold}" / CHECKPOINT_FILE).exists()
    assert (tmp_path / "ckpt" / "cxr_study_1" / "refit" / CHECKPOINT_FILE).exists()
    assert res.best_estimator_.checkpoint_dir == str(tmp_path / "ckpt" / "cxr_study_1" / "refit")
    assert est.checkpoint_dir == str(tmp_path / "ckpt")  # the given estimator is not modified
