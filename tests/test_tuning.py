"""dp_sklearn.tuning: real Optuna studies on tiny settings.

Plumbing (search spaces, per-fold slicing of masks and groups, storage, resume, pruning) is
pinned on tiny arrays with fast estimators; one study runs MaskAttentionClassifier on cxr1k at
16x16 when that estimator is present.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
from _optional import import_or_skip
from dp_sklearn.tuning import (
    SEARCH_SPACES,
    OptunaSearchCV,
    default_search_space,
    make_storage,
    tune,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ask():
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()


def _states(study):
    return [t.state for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.fixture
def tabular():
    X, y = make_classification(n_samples=90, n_features=8, weights=[0.75], class_sep=1.5, random_state=0)
    return X, y


class RecordingClassifier(ClassifierMixin, BaseEstimator):
    """Records, per fit, the row ids it was given (X[:, 0]) and the mask ids (mask[0, 0],
    -1 for a None mask) so that tests can check rows and masks travelled together."""

    log = []

    def __init__(self, c=1.0):
        self.c = c

    def fit(self, X, y, masks=None):
        ids = [int(v) for v in np.asarray(X)[:, 0]]
        mask_ids = None if masks is None else [-1 if m is None else int(np.asarray(m)[0, 0]) for m in masks]
        RecordingClassifier.log.append((ids, mask_ids))
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        p = (np.asarray(X)[:, 1] > 0).astype(float)  # column 1 carries the label signal
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]


def _recording_data(n=24):
    """X[:, 0] = row id, X[:, 1] = +-1 label signal; masks: None every third row, else filled with the id."""
    y = np.array([0, 1] * (n // 2))
    X = np.column_stack([np.arange(n), 2.0 * y - 1]).astype(float)
    masks = [None if i % 3 == 0 else np.full((4, 4), i, dtype=np.int64) for i in range(n)]
    return X, y, masks


def _check_masks_followed_rows(log, n):
    assert log
    for ids, mask_ids in log:
        assert mask_ids == [-1 if i % 3 == 0 else i for i in ids]
    return [ids for ids, _ in log]


# ----------------------------------------------------------------------------- search spaces


def test_default_search_spaces_registered_for_each_estimator():
    for name in ("MaskAttentionClassifier", "DeepPneumoniaClassifier", "ContrastivePretrainer",
                 "ClassBalancedWeighting", "LogisticRegression"):
        assert name in SEARCH_SPACES
    params = SEARCH_SPACES["MaskAttentionClassifier"](_ask())
    assert {"lr", "weight_decay", "attention_weight", "contrastive_weight", "temperature",
            "class_balance_beta", "loss_type"} <= set(params)
    assert 1e-4 <= params["lr"] <= 3e-3
    assert params["class_balance_beta"] in (0.0, 0.9, 0.99, 0.999, 0.9999)
    assert set(SEARCH_SPACES["ContrastivePretrainer"](_ask())) == {"lr", "temperature", "projection_dim"}


def test_default_search_space_composes_through_class_balanced_weighting():
    space = default_search_space(ClassBalancedWeighting(LogisticRegression()))
    trial = _ask()
    params = space(trial)
    assert set(params) == {"beta", "estimator__C"}
    assert set(trial.params) == {"beta", "estimator__C"}  # Optuna sees the prefixed names
    assert params["beta"] in (0.9, 0.99, 0.999, 0.9999)


@pytest.mark.parametrize("module, cls", [
    ("dp_sklearn.estimators.mask_attention", "MaskAttentionClassifier"),
    ("dp_sklearn.estimators.deep_pneumonia", "DeepPneumoniaClassifier"),
    ("dp_sklearn.estimators.pretrainer", "ContrastivePretrainer"),
])
def test_default_spaces_name_real_parameters_of_the_torch_estimators(module, cls):
    mod = pytest.importorskip(module)
    est = getattr(mod, cls)()
    space = default_search_space(est)
    # Several draws, so that the conditional focal_gamma shows up too.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(8):
        params = space(study.ask())
        seen |= set(params)
        tuned = clone(est).set_params(**params)  # raises on a parameter name the estimator does not have
        assert set(params) <= set(tuned.get_params(deep=True)), sorted(set(params) - set(tuned.get_params()))
    assert seen


def test_unknown_estimator_asks_for_search_space():
    from sklearn.neighbors import KNeighborsClassifier

    with pytest.raises(ValueError, match="search_space="):
        default_search_space(KNeighborsClassifier())


def test_bad_parameter_names_fail_before_any_trial(tabular, tmp_path):
    X, y = tabular
    storage = tmp_path / "s.sqlite3"
    est = ClassBalancedWeighting(LogisticRegression())
    with pytest.raises(ValueError, match=r"Invalid parameter name\(s\) \['C'\].*Valid names:.*estimator__C"):
        tune(est, X, y, search_space={"C": FloatDistribution(0.1, 1.0)}, storage=storage, verbose=0)
    with pytest.raises(ValueError, match=r"\['learning_rate'\]"):
        tune(est, X, y, search_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", 0.1, 1)},
             storage=storage, verbose=0)
    with pytest.raises(TypeError, match="optuna.distributions"):
        tune(est, X, y, search_space={"beta": [0.9, 0.99]}, storage=storage, verbose=0)
    assert optuna.get_all_study_summaries(make_storage(storage)) == []  # nothing was written


# ----------------------------------------------------------------------------- real studies


def test_real_sqlite_study_with_class_balanced_weighting(tabular, tmp_path, capsys):
    X, y = tabular
    path = tmp_path / "studies" / "cb.sqlite3"
    res = tune(ClassBalancedWeighting(LogisticRegression()), X, y, n_trials=4, cv=3,
               storage=path, study_name="cb", pruner=optuna.pruners.NopPruner())
    assert path.exists()
    assert _states(res.study) == [TrialState.COMPLETE] * 4
    for t in res.study.trials:
        assert len(t.user_attrs["fold_scores"]) == 3
        assert t.value == pytest.approx(np.mean(t.user_attrs["fold_scores"]))
        assert sorted(t.intermediate_values) == [0, 1, 2]  # running mean reported after each fold
    assert set(res.best_params_) == {"beta", "estimator__C"}
    assert res.best_score_ == max(t.value for t in res.study.trials)
    assert res.best_estimator_.beta == res.best_params_["beta"]
    assert res.best_estimator_.predict(X[:3]).shape == (3,)
    out = capsys.readouterr().out
    assert out.count("[tune] trial") == 4 and "COMPLETE" in out and "best trial" in out
    # The same storage and name in a new process (here: a new storage object) sees the study.
    loaded = optuna.load_study(study_name="cb", storage=make_storage(path))
    assert len(loaded.trials) == 4


def test_default_storage_is_sqlite_file_in_working_directory(tabular, tmp_path, monkeypatch):
    X, y = tabular
    monkeypatch.chdir(tmp_path)
    est = ClassBalancedWeighting(LogisticRegression())
    first = tune(est, X, y, n_trials=1, cv=2, verbose=0, refit=False)
    assert (tmp_path / "dp_sklearn_studies.sqlite3").exists()
    assert first.study_name.startswith("ClassBalancedWeighting-")
    again = tune(est, X, y, n_trials=1, cv=2, verbose=0, refit=False)  # same call -> same study
    assert again.study_name == first.study_name and len(again.study.trials) == 2


def test_masks_and_groups_sliced_per_fold(tmp_path):
    X, y, masks = _recording_data(24)
    groups = np.repeat(np.arange(12), 2) % 6  # 6 "patients", 4 rows each
    RecordingClassifier.log = []
    res = tune(RecordingClassifier(), X, y, masks=masks, groups=groups, cv=3, n_trials=1,
               search_space={"c": FloatDistribution(0.5, 2.0)}, storage=tmp_path / "m.sqlite3",
               verbose=0, refit=True)
    fits = _check_masks_followed_rows(RecordingClassifier.log, 24)
    assert len(fits) == 4  # 3 folds + refit on everything
    assert fits[-1] == list(range(24))
    for train in fits[:3]:
        test = sorted(set(range(24)) - set(train))
        assert not set(groups[train]) & set(groups[test])  # no patient on both sides
    assert res.best_score_ == 1.0


def test_optuna_search_cv_slices_masks_per_fold():
    X, y, masks = _recording_data(24)
    RecordingClassifier.log = []
    search = OptunaSearchCV(RecordingClassifier(), {"c": FloatDistribution(0.5, 2.0)}, cv=3, n_trials=2)
    search.fit(X, y, masks=masks)
    fits = _check_masks_followed_rows(RecordingClassifier.log, 24)
    assert len(fits) == 2 * 3 + 1
    # Each trial's three training sets partition the data with its held-out folds.
    for trial_fits in (fits[0:3], fits[3:6]):
        held_out = [set(range(24)) - set(f) for f in trial_fits]
        assert sorted(i for h in held_out for i in h) == list(range(24))
    assert search.n_splits_ == 3 and search.best_score_ == 1.0
    assert search.predict(X[:4]).tolist() == y[:4].tolist()
    assert search.score(X, y) == 1.0
    # An array of masks works as well as a list with None entries.
    RecordingClassifier.log = []
    arr = np.stack([np.full((4, 4), i) for i in range(24)])
    OptunaSearchCV(RecordingClassifier(), {"c": FloatDistribution(0.5, 2.0)}, cv=2, n_trials=1).fit(X, y, masks=arr)
    for ids, mask_ids in RecordingClassifier.log:
        assert mask_ids == ids


def test_optuna_integration_search_cv_also_slices_masks():
    """Pins optuna_integration.OptunaSearchCV's behaviour where it can run (it needs pandas)."""
    import_or_skip("pandas", "optuna_integration.OptunaSearchCV needs pandas")
    IntegrationSearchCV = import_or_skip("optuna_integration", "optuna-integration").OptunaSearchCV

    X, y, masks = _recording_data(24)
    RecordingClassifier.log = []
    IntegrationSearchCV(RecordingClassifier(), {"c": FloatDistribution(0.5, 2.0)}, cv=3, n_trials=1,
                        scoring="roc_auc").fit(X, y, masks=masks)
    _check_masks_followed_rows(RecordingClassifier.log, 24)


# ----------------------------------------------------------------------------- resume


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    from dp_sklearn.tuning import default_search_space, tune

    X, y = make_classification(n_samples=90, n_features=8, weights=[0.75], class_sep=1.5, random_state=0)
    est = ClassBalancedWeighting(LogisticRegression())
    space = default_search_space(est)

    def killing_space(trial):
        params = space(trial)
        if trial.number == 2:        # the third trial: let its heartbeat be written, then die hard
            time.sleep(1.5)
            os.kill(os.getpid(), signal.SIGKILL)
        return params

    tune(est, X, y, search_space=killing_space, n_trials=5, cv=2, storage=sys.argv[1],
         study_name="resume", heartbeat_interval=1, grace_period=1, verbose=1)
""")


def test_resume_after_sigkill_fails_the_running_trial_and_reaches_the_total(tabular, tmp_path):
    X, y = tabular
    path = tmp_path / "resume.sqlite3"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = optuna.load_study(study_name="resume", storage=make_storage(path))
    assert _states(killed) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    running_params = killed.trials[2].params
    assert set(running_params) == {"beta", "estimator__C"}

    time.sleep(2.5)  # let the dead trial's last heartbeat age past grace_period
    res = tune(ClassBalancedWeighting(LogisticRegression()), X, y, n_trials_total=4, cv=2,
               storage=path, study_name="resume", heartbeat_interval=1, grace_period=1,
               verbose=0, refit=False)
    trials = sorted(res.study.trials, key=lambda t: t.number)
    # Completed trials are kept, the killed one is failed by the heartbeat check and re-queued
    # with its parameters (trial 3), and the study runs until it holds 4 finished trials.
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                                        TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.value for t in trials[:2]] == [t.value for t in killed.trials[:2]]
    assert trials[3].params == running_params
    assert trials[3].system_attrs["failed_trial"] == 2
    assert res.n_trials_run == 2
    # Asking again for the same total runs nothing.
    again = tune(ClassBalancedWeighting(LogisticRegression()), X, y, n_trials_total=4, cv=2,
                 storage=path, study_name="resume", verbose=0, refit=False)
    assert again.n_trials_run == 0 and len(again.study.trials) == 5


# ----------------------------------------------------------------------------- pruning


def test_fold_level_pruning_in_a_real_study(tabular, tmp_path):
    X, y = tabular
    # LogisticRegression reaches AUC ~0.95 here; with a threshold above 1 every trial is
    # pruned at its first report, after fold 0: the wiring, deterministically.
    with pytest.warns(UserWarning, match="no COMPLETE trial"):
        res = tune(LogisticRegression(), X, y, cv=3, n_trials=2, storage=tmp_path / "p.sqlite3",
                   pruner=optuna.pruners.ThresholdPruner(lower=1.01), verbose=0)
    assert _states(res.study) == [TrialState.PRUNED] * 2
    for t in res.study.trials:
        assert list(t.intermediate_values) == [0]
        assert len(t.user_attrs["fold_scores"]) == 1
    assert "best_params_" not in res


def _skorch_data():
    X, y = make_classification(n_samples=80, n_features=6, n_informative=4, class_sep=2.0, random_state=0)
    return X.astype(np.float32), y.astype(np.int64)


def _zero_init_net(**kw):
    import torch
    from skorch import NeuralNetClassifier

    class ZeroLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 2)
            torch.nn.init.zeros_(self.lin.weight)
            torch.nn.init.zeros_(self.lin.bias)

        def forward(self, X, **fit_params):  # ClassBalancedWeighting passes sample_weight
            return self.lin(X)

    return NeuralNetClassifier(ZeroLinear, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
                               batch_size=16, train_split=None, verbose=0, **kw)


def test_skorch_epoch_scores_on_held_out_fold_prune_a_bad_learning_rate(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    X, y = _skorch_data()
    # lr=0 keeps the zero-initialised model constant: held-out AUC exactly 0.5 at every epoch,
    # below the threshold -> pruned at epoch 1 (after warm-up). lr=0.1 learns: held-out AUC
    # 0.79-0.96 at every epoch of both folds, above the threshold.
    res = tune(_zero_init_net(), X, y, cv=2, n_trials=2, storage=tmp_path / "sk.sqlite3",
               search_space={"lr": CategoricalDistribution([0.0, 0.1])},
               sampler=optuna.samplers.GridSampler({"lr": [0.0, 0.1]}, seed=0),
               pruner=optuna.pruners.ThresholdPruner(lower=0.7, n_warmup_steps=1), verbose=0)
    by_lr = {t.params["lr"]: t for t in res.study.trials}
    bad, good = by_lr[0.0], by_lr[0.1]
    assert bad.state == TrialState.PRUNED
    assert bad.intermediate_values == {0: 0.5, 1: 0.5}  # reported per epoch, pruned at step 1
    assert bad.user_attrs["epoch_scores"] == [[0.5, 0.5]]
    assert good.state == TrialState.COMPLETE
    # Global steps fold * max_epochs + epoch: 3 epochs x 2 folds.
    assert sorted(good.intermediate_values) == [0, 1, 2, 3, 4, 5]
    assert [len(s) for s in good.user_attrs["epoch_scores"]] == [3, 3]
    # The epoch score of the last epoch of each fold is the fold's held-out score.
    assert [s[-1] for s in good.user_attrs["epoch_scores"]] == pytest.approx(good.user_attrs["fold_scores"])
    assert res.best_params_ == {"lr": 0.1}
    assert len(res.best_estimator_.history) == 3
    assert "optuna_pruning" not in dict(res.best_estimator_.callbacks_)  # refit has no pruning hook


def test_skorch_net_inside_class_balanced_weighting_gets_epoch_pruning(tmp_path):
    pytest.importorskip("torch")
    X, y = _skorch_data()
    res = tune(ClassBalancedWeighting(_zero_init_net(lr=0.1)), X, y, cv=2, n_trials=1,
               storage=tmp_path / "cbsk.sqlite3", search_space={"beta": CategoricalDistribution([0.9])},
               pruner=optuna.pruners.NopPruner(), verbose=0, refit=False)
    (t,) = res.study.trials
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [0, 1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- the real estimator


def test_mask_attention_study_on_cxr1k_16px(tmp_path):
    mod = pytest.importorskip("dp_sklearn.estimators.mask_attention")
    from dp_sklearn.datasets import load_cxr1k

    data = load_cxr1k(image_size=16)
    rng = np.random.RandomState(0)
    # 36 images, 12 per class, half of them annotated where the class has masks.
    idx = []
    for c in range(3):
        annotated = np.flatnonzero((data.target == c) & data.mask_available)
        plain = np.flatnonzero((data.target == c) & ~data.mask_available)
        k = min(6, len(annotated))
        idx += list(rng.choice(annotated, k, replace=False)) + list(rng.choice(plain, 12 - k, replace=False))
    idx = np.sort(idx)
    X, y, masks, groups = data.images[idx], data.target[idx], data.masks[idx], data.groups[idx]
    assert masks.any(axis=(1, 2)).sum() >= 6
    est = mod.MaskAttentionClassifier(backbone="resnet10_half", image_size=16, max_epochs=2, batch_size=32,
                                      augment=False, device="cpu", random_state=0, verbose=0)
    res = tune(est, X, y, masks=masks, groups=groups, cv=2, n_trials=2, storage=tmp_path / "ma.sqlite3",
               study_name="ma", verbose=0, refit=False)
    assert len(res.study.trials) == 2
    for t in res.study.trials:
        assert t.state == TrialState.COMPLETE  # 2 trials < MedianPruner's 5 start-up trials
        # Epoch-level reports on the held-out fold: 2 folds x 2 epochs, the last epoch of a
        # fold equal to the fold's score.
        assert sorted(t.intermediate_values) == [0, 1, 2, 3]
        assert [s[-1] for s in t.user_attrs["epoch_scores"]] == pytest.approx(t.user_attrs["fold_scores"])
        assert 0.0 <= t.value <= 1.0
    assert res.best_score_ == res.study.best_value


# ----------------------------------------------------------------------------- PostgreSQL


def _find_pg_tool(name):
    """``name`` on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (newest version)."""
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: [int(v) if v.isdigit() else v for v in p.split("/")[4].split(".")])
    return candidates[-1] if candidates else None


def _free_loopback_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (a fresh data directory, trust auth).

    The server refuses to run as root (CI runs as root): then initdb/pg_ctl run as the
    ``postgres`` user (created by Debian's postgresql package), else as ``nobody``, with the
    temporary directory owned by that user. Skips, with the reason, when psycopg2 or the
    server binaries are missing; ``.ci/run`` installs both.
    """
    import pwd
    import shutil
    import tempfile

    import_or_skip("psycopg2", "the PostgreSQL driver (pip install dp-sklearn[distributed])")
    initdb, pg_ctl = _find_pg_tool("initdb"), _find_pg_tool("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not on PATH nor in /usr/lib/postgresql/*/bin")
    root = tempfile.mkdtemp(prefix="dp_sklearn_pg_")
    as_user = {}
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        else:
            pytest.skip("running as root and there is neither a 'postgres' nor a 'nobody' user to run the server")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    data, port = os.path.join(root, "data"), _free_loopback_port()
    env = dict(os.environ, LC_ALL="C", LANG="C")
    run = dict(check=True, capture_output=True, text=True, timeout=120, cwd=root, env=env, **as_user)
    try:
        subprocess.run([initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"], **run)
        subprocess.run([pg_ctl, "-D", data, "-w", "-t", "60", "-l", os.path.join(root, "log"),
                        "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}",
                        "start"], **run)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log = ""
        if os.path.exists(os.path.join(root, "log")):
            log = open(os.path.join(root, "log")).read()[-2000:]
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start a PostgreSQL server: {e}\n{getattr(e, 'stderr', '')}\n{log}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60,
                       cwd=root, env=env, **as_user)
        shutil.rmtree(root, ignore_errors=True)


WORKER = textwrap.dedent("""
    import sys
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    from dp_sklearn.tuning import tune

    import pathlib, time

    # Start together: a trial takes milliseconds, so a worker that imports faster could otherwise
    # finish the whole study before the other one connects (seen on a loaded machine).
    barrier = pathlib.Path(sys.argv[3])
    (barrier / sys.argv[2]).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    class SlowLogisticRegression(LogisticRegression):
        # 0.2 s per fit, so a trial outlasts the other worker's connection and study lookup
        def fit(self, X, y, sample_weight=None):
            time.sleep(0.2)
            return super().fit(X, y, sample_weight=sample_weight)

    X, y = make_classification(n_samples=90, n_features=8, weights=[0.75], class_sep=1.5, random_state=0)
    tune(ClassBalancedWeighting(SlowLogisticRegression()), X, y, n_trials_total=8, cv=2, storage=sys.argv[1],
         study_name="shared", random_state=int(sys.argv[2]), verbose=1, refit=False)
""")


def test_two_workers_share_one_postgresql_study(postgres_url, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, str(seed), str(tmp_path)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=make_storage(postgres_url))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # Both workers stop once the shared study holds 8 finished trials (a trial running in the
    # other worker at that moment still finishes).
    assert 8 <= len(finished) <= 9
    assert all(out.count("[tune] trial") >= 1 for out, _ in outputs)


# A grid over the class-balanced space, split between workers by Optuna's GridSampler. Every
# worker of the study must give the sampler the same seed: the seed shuffles the grid, and the
# grid ids stored in the study are positions in that shuffled list (workers with seeds 1 and 2
# evaluate one point twice and miss another). The folds are fixed (random_state=0), so a grid
# point scores the same in any worker and any storage. Worker "kill" dies (SIGKILL) 0.6 s into
# its first trial, after its first heartbeat, and leaves that trial RUNNING.
GRID = {"beta": [0.9, 0.99, 0.999, 0.9999], "estimator__C": [0.05, 1.0]}
GRID_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    import optuna
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    from dp_sklearn.tuning import tune

    storage, role, grid = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    X, y = make_classification(n_samples=90, n_features=8, weights=[0.75], class_sep=1.5, random_state=0)

    calls = []

    def space(trial):
        params = {k: trial.suggest_categorical(k, v) for k, v in grid.items()}
        calls.append(trial.number)
        if role == "kill" and len(calls) == 2:  # call 1 is tune's dry run of the space
            time.sleep(0.6)
            os.kill(os.getpid(), signal.SIGKILL)
        return params

    tune(ClassBalancedWeighting(LogisticRegression()), X, y, search_space=space, n_trials_total=8, cv=2,
         storage=storage, study_name="grid", random_state=0, sampler=optuna.samplers.GridSampler(grid, seed=0),
         pruner=optuna.pruners.NopPruner(), heartbeat_interval=1, grace_period=1, verbose=1, refit=False)
""")


def test_postgresql_worker_killed_mid_trial_is_retried_and_best_equals_sqlite(postgres_url, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    start = [sys.executable, "-c", GRID_WORKER, postgres_url]
    # The first worker dies in its first trial; then a second worker (the restarted one, or
    # another machine's) joins the study: it finds the trial RUNNING without a heartbeat for
    # longer than grace_period, fails it and runs it again (same grid point), then the rest.
    killed = subprocess.run([*start, "kill", repr(GRID)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = optuna.load_study(study_name="grid", storage=make_storage(postgres_url))
    assert [t.state for t in before.trials] == [TrialState.RUNNING]
    time.sleep(1.5)  # heartbeat older than grace_period, whatever the second worker's start-up time
    survivor = subprocess.run([*start, "work", repr(GRID)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert survivor.returncode == 0, survivor.stderr
    pg = optuna.load_study(study_name="grid", storage=make_storage(postgres_url))
    trials = sorted(pg.trials, key=lambda t: t.number)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # The killed worker's trial went stale, was set to FAIL by the survivor and re-queued with
    # its parameters; the survivor ran the copy.
    assert len(failed) == 1, [(t.number, t.state) for t in trials]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == failed[0].params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    pg_values = {tuple(sorted(t.params.items())): t.value for t in complete}
    assert len(pg_values) == 8  # every grid point once

    # The same grid, seed and budget in one process on SQLite.
    space = lambda trial: {k: trial.suggest_categorical(k, v) for k, v in GRID.items()}  # noqa: E731
    X, y = make_classification(n_samples=90, n_features=8, weights=[0.75], class_sep=1.5, random_state=0)
    ref = tune(ClassBalancedWeighting(LogisticRegression()), X, y, search_space=space, n_trials_total=8, cv=2,
               storage=tmp_path / "grid.sqlite3", study_name="grid", random_state=0,
               sampler=optuna.samplers.GridSampler(GRID, seed=0), pruner=optuna.pruners.NopPruner(),
               verbose=0, refit=False)
    sqlite_values = {tuple(sorted(t.params.items())): t.value for t in ref.study.trials}
    assert pg_values == sqlite_values
    assert pg.best_value == ref.study.best_value
    # (Two grid points tie at the best value here; which one is "best" follows trial order.)
    assert sqlite_values[tuple(sorted(pg.best_params.items()))] == ref.study.best_value
