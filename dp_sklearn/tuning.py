"""Optuna studies for dp_sklearn's estimators: default search spaces, :func:`tune`, masks in
:class:`OptunaSearchCV`.

* :func:`default_search_space` gives a search space for each estimator (a registry keyed by the
  estimator's class name, :data:`SEARCH_SPACES`), composed through meta-estimators
  (``ClassBalancedWeighting(estimator)`` → ``estimator__<name>``) and pipelines
  (``<step>__<name>``).
* :func:`tune` runs a study: cross-validation fold by fold with ``masks`` and ``groups``
  sliced per fold, pruning of bad trials (skorch epoch scores on the held-out fold reported to
  Optuna), and a persistent, resumable storage: an embedded SQLite file by default, or any
  Optuna RDB URL (``postgresql://...``) shared by workers on many machines.
* :class:`OptunaSearchCV`: the search as a scikit-learn estimator, with ``fit(X, y,
  groups=None, masks=...)`` slicing ``masks`` per fold. ``optuna_integration.OptunaSearchCV``
  slices per-sample ``fit`` parameters too (its ``cross_validate(params=...)`` path; a test
  pins it where pandas is installed), but in optuna-integration 5 it cannot even be
  constructed without pandas, which dp_sklearn does not depend on; this one needs neither.

Storage, resume and many workers
--------------------------------
``storage=None`` stores the study in the SQLite file :data:`DEFAULT_STORAGE_PATH`
(``./dp_sklearn_studies.sqlite3``, relative to the working directory). A string containing
``"://"`` is an SQLAlchemy URL (``sqlite:///path.sqlite3``, ``postgresql://user:pw@host/db``,
``mysql+pymysql://...``), any other string or :class:`os.PathLike` is a path to an SQLite file,
and an :class:`optuna.storages.BaseStorage` instance is used as it is.

Calling :func:`tune` again with the same storage and ``study_name`` *resumes* the study
(``load_if_exists=True``): finished trials are kept and inform the sampler. ``n_trials`` is the
number of **new** trials of this call (as in :meth:`optuna.study.Study.optimize`);
``n_trials_total`` instead runs until the study holds that many finished (COMPLETE or PRUNED)
trials, which is what a resumed or multi-worker run usually wants. Without a ``study_name`` the
name is derived from the estimator, the data's shape and labels, the scoring and the search
space, so the same call resumes the same study.

A worker killed mid-trial (``SIGKILL``, a lost machine) leaves its trial RUNNING. The RDB
storage records a heartbeat every ``heartbeat_interval`` seconds; when a later worker starts a
trial, a RUNNING trial whose heartbeat is older than ``grace_period`` is set to FAIL and
re-queued once with the same parameters (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
A ``KeyboardInterrupt`` fails the current trial at once and stops :func:`tune`.

To run one study on many machines, start a PostgreSQL database that every machine reaches and
run the same command on each machine, with the same URL and study name (the default sampler,
:class:`TrialSeededTPESampler`, seeds each trial from the seed and the trial's number, so workers
with the same seed, and a restarted study, never replay each other's parameters)::

    # on each machine (or several times on one machine):
    python examples/optuna_study.py --storage postgresql://user:pw@db-host/optuna \\
        --study-name cxr-mask-attention --total-trials 100

SQLite is fine for several processes on *one* machine (the engine waits up to 60 s for the
database lock); do not share an SQLite file over a network file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.metrics import check_scoring
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, check_cv
from sklearn.pipeline import Pipeline
from sklearn.utils import Bunch
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.callbacks import Callback

from ._compat import num_samples as _num_samples, safe_indexing as _safe_indexing, study_storage

__all__ = [
    "DEFAULT_STORAGE_PATH",
    "SEARCH_SPACES",
    "OptunaSearchCV",
    "SkorchHeldOutPruning",
    "TrialSeededTPESampler",
    "default_search_space",
    "make_storage",
    "register_search_space",
    "tune",
]

DEFAULT_STORAGE_PATH = "dp_sklearn_studies.sqlite3"

# ----------------------------------------------------------------------------- search spaces

SEARCH_SPACES: dict[str, Callable] = {}
"""Registry: estimator class name -> ``(trial) -> dict`` of parameter values."""


def register_search_space(name):
    """Decorator registering ``func(trial) -> dict`` as the default search space of ``name``.

    Parameters
    ----------
    name : str
        Class name of the estimator (``type(estimator).__name__``).

    Returns
    -------
    decorator : callable

    Examples
    --------
    >>> from dp_sklearn.tuning import register_search_space, default_search_space
    >>> @register_search_space("KNeighborsClassifier")
    ... def _knn_space(trial):
    ...     return {"n_neighbors": trial.suggest_int("n_neighbors", 1, 15)}
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> callable(default_search_space(KNeighborsClassifier()))
    True
    >>> from dp_sklearn.tuning import SEARCH_SPACES
    >>> del SEARCH_SPACES["KNeighborsClassifier"]
    """

    def decorator(func):
        SEARCH_SPACES[name] = func
        return func

    return decorator


# The class-balanced paper's beta grid (Cui et al., CVPR 2019), plus 0.0 = re-weighting off.
CB_BETAS = (0.0, 0.9, 0.99, 0.999, 0.9999)


def _mask_attention_space(trial):
    params = {
        "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "attention_weight": trial.suggest_float("attention_weight", 0.0, 10.0),
        "contrastive_weight": trial.suggest_float("contrastive_weight", 0.0, 0.5),
        "temperature": trial.suggest_float("temperature", 0.05, 0.5, log=True),
        "class_balance_beta": trial.suggest_categorical("class_balance_beta", CB_BETAS),
        "loss_type": trial.suggest_categorical("loss_type", ("softmax", "focal")),
    }
    if params["loss_type"] == "focal":  # conditional: gamma only matters for the focal loss
        params["focal_gamma"] = trial.suggest_categorical("focal_gamma", (0.5, 1.0, 2.0))
    return params


register_search_space("MaskAttentionClassifier")(_mask_attention_space)


@register_search_space("DeepPneumoniaClassifier")
def _deep_pneumonia_space(trial):
    # The classifier stage's space, as its nested parameters (classifier__attention_weight...).
    prefix = "classifier__"
    return {prefix + k: v for k, v in _mask_attention_space(_PrefixedTrial(trial, prefix)).items()}


@register_search_space("ContrastivePretrainer")
def _pretrainer_space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        "temperature": trial.suggest_float("temperature", 0.05, 0.5, log=True),
        "projection_dim": trial.suggest_categorical("projection_dim", (64, 128)),
    }


@register_search_space("ClassBalancedWeighting")
def _class_balanced_space(trial):
    return {"beta": trial.suggest_categorical("beta", CB_BETAS[1:])}


@register_search_space("LogisticRegression")
def _logistic_space(trial):
    return {"C": trial.suggest_float("C", 1e-3, 1e2, log=True)}


class _PrefixedTrial:
    """A trial whose ``suggest_*`` names get a ``<prefix>`` (for nested estimators)."""

    def __init__(self, trial, prefix):
        self._trial = trial
        self._prefix = prefix

    def suggest_float(self, name, *args, **kwargs):
        return self._trial.suggest_float(self._prefix + name, *args, **kwargs)

    def suggest_int(self, name, *args, **kwargs):
        return self._trial.suggest_int(self._prefix + name, *args, **kwargs)

    def suggest_categorical(self, name, *args, **kwargs):
        return self._trial.suggest_categorical(self._prefix + name, *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._trial, attr)


def _space_parts(estimator, prefix=""):
    parts = []
    name = type(estimator).__name__
    if name in SEARCH_SPACES:
        parts.append((prefix, SEARCH_SPACES[name]))
    if isinstance(estimator, Pipeline):
        for step_name, step in estimator.steps:
            if step is not None and step != "passthrough":
                parts.extend(_space_parts(step, f"{prefix}{step_name}__"))
    elif hasattr(estimator, "get_params"):
        inner = estimator.get_params(deep=False).get("estimator")
        if inner is not None and hasattr(inner, "get_params"):
            parts.extend(_space_parts(inner, f"{prefix}estimator__"))
    return parts


def default_search_space(estimator):
    """The default search space of ``estimator``, as a callable ``(trial) -> params``.

    Looked up by class name in :data:`SEARCH_SPACES`, and composed through meta-estimators
    (the space of ``ClassBalancedWeighting(LogisticRegression())`` is ``beta`` and
    ``estimator__C``) and pipeline steps (``<step>__<param>``).

    ===========================  ===========================================================
    estimator                    parameters (distribution)
    ===========================  ===========================================================
    MaskAttentionClassifier      ``lr`` log [1e-4, 3e-3], ``weight_decay`` log [1e-6, 1e-3],
                                 ``attention_weight`` [0, 10], ``contrastive_weight`` [0, 0.5],
                                 ``temperature`` log [0.05, 0.5], ``class_balance_beta`` in
                                 {0, 0.9, 0.99, 0.999, 0.9999}, ``loss_type`` in {softmax,
                                 focal}, ``focal_gamma`` in {0.5, 1, 2} (focal only)
    DeepPneumoniaClassifier      the same, as ``classifier__<name>``
    ContrastivePretrainer        ``lr`` log [1e-4, 3e-3], ``temperature`` log [0.05, 0.5],
                                 ``projection_dim`` in {64, 128}
    ClassBalancedWeighting       ``beta`` in {0.9, 0.99, 0.999, 0.9999} + the inner
                                 estimator's space as ``estimator__<name>``
    LogisticRegression           ``C`` log [1e-3, 1e2]
    ===========================  ===========================================================

    Parameters
    ----------
    estimator : estimator instance

    Returns
    -------
    space : callable
        ``space(trial)`` suggests the values and returns ``{param_name: value}``.

    Raises
    ------
    ValueError
        If no space is registered for the estimator or any part of it.

    Examples
    --------
    >>> import optuna
    >>> from sklearn.linear_model import LogisticRegression
    >>> from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    >>> from dp_sklearn.tuning import default_search_space
    >>> space = default_search_space(ClassBalancedWeighting(LogisticRegression()))
    >>> trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    >>> sorted(space(trial))
    ['beta', 'estimator__C']
    """
    parts = _space_parts(estimator)
    if not parts:
        raise ValueError(
            f"There is no default search space for {type(estimator).__name__}; pass "
            "search_space= as a callable (trial) -> dict of parameters or as a dict of "
            f"optuna.distributions. Default spaces exist for: {sorted(SEARCH_SPACES)}."
        )

    def space(trial):
        params = {}
        for prefix, func in parts:
            sub = func(_PrefixedTrial(trial, prefix) if prefix else trial)
            params.update({prefix + k: v for k, v in sub.items()})
        return params

    space.__name__ = f"default_search_space_{type(estimator).__name__}"
    return space


def _suggest(trial, name, dist):
    """``trial.suggest_*`` for an Optuna distribution object (the public twin of ``Trial._suggest``)."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"search_space[{name!r}]: unsupported distribution {dist!r} (use FloatDistribution, "
                    "IntDistribution or CategoricalDistribution).")


def _as_space(search_space, estimator):
    if search_space is None:
        return default_search_space(estimator)
    if isinstance(search_space, Mapping):
        for name, dist in search_space.items():
            if not isinstance(dist, BaseDistribution):
                raise TypeError(
                    f"search_space[{name!r}] must be an optuna.distributions distribution "
                    f"(e.g. FloatDistribution(1e-4, 1e-2, log=True)), got {dist!r}."
                )
        distributions = dict(search_space)

        def space(trial):
            return {name: _suggest(trial, name, dist) for name, dist in distributions.items()}

        return space
    if callable(search_space):
        return search_space
    raise TypeError(
        "search_space must be None (default space), a callable (trial) -> dict of parameters "
        f"or a dict of optuna.distributions, got {type(search_space).__name__}."
    )


def _check_param_names(names, estimator):
    valid = estimator.get_params(deep=True)
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(
            f"Invalid parameter name(s) {unknown} for {type(estimator).__name__} in the search "
            f"space. Valid names: {sorted(valid)}."
        )


def _dry_run(space, estimator):
    """Call ``space`` once on a throw-away in-memory trial and check the names it returns."""
    old_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        params = space(study.ask())
    finally:
        optuna.logging.set_verbosity(old_verbosity)
    if not isinstance(params, Mapping):
        raise TypeError(f"search_space(trial) must return a dict of parameters, got {type(params).__name__}.")
    _check_param_names(params, estimator)
    return params


# ----------------------------------------------------------------------------- storage


def make_storage(storage=None, *, heartbeat_interval=60, grace_period=None, max_retry=1):
    """Build the RDB storage used by :func:`tune`.

    Parameters
    ----------
    storage : None, str, path-like or optuna.storages.BaseStorage, default=None
        ``None``: the SQLite file :data:`DEFAULT_STORAGE_PATH` in the working directory. A
        string with ``"://"``: an SQLAlchemy URL (``sqlite:///f.sqlite3``,
        ``postgresql://user:pw@host/db``; ``sqlite:///:memory:`` gives an
        ``InMemoryStorage``, nothing persists). Another string or a path: an SQLite file (parent
        directories are created). A storage instance is returned unchanged.
    heartbeat_interval : int or None, default=60
        Seconds between heartbeats of a running trial; ``None`` switches heartbeats off (a
        killed worker's trial then stays RUNNING forever).
    grace_period : int or None, default=None
        A RUNNING trial without a heartbeat for this many seconds is stale: the next trial
        started on the study sets it to FAIL. ``None`` is ``2 * heartbeat_interval``.
    max_retry : int or None, default=1
        How often a stale trial is re-queued (WAITING, same parameters); ``None`` = always.

    Returns
    -------
    storage : optuna.storages.BaseStorage

    Examples
    --------
    >>> from dp_sklearn.tuning import make_storage
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "study.sqlite3")
    >>> make_storage(path).url == "sqlite:///" + os.path.realpath(path)
    True
    >>> type(make_storage("sqlite:///:memory:")).__name__  # heartbeats need a shared database
    'InMemoryStorage'
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if storage is None:
        storage = DEFAULT_STORAGE_PATH
    if isinstance(storage, os.PathLike) or (isinstance(storage, str) and "://" not in storage):
        path = Path(storage).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    elif isinstance(storage, str):
        url = storage
        if url in ("sqlite://", "sqlite:///:memory:"):
            # Every SQLAlchemy connection would see its own empty in-memory database (the
            # heartbeat thread's too), so use Optuna's in-memory storage instead.
            return optuna.storages.InMemoryStorage()
    else:
        raise TypeError(f"storage must be None, a URL, a path or an optuna storage, got {storage!r}.")
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Wait for the file lock instead of failing with "database is locked" when several
        # workers (or the heartbeat thread) write at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True  # survive dropped connections in long studies
    kwargs = {}
    if heartbeat_interval is not None:
        kwargs = dict(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=None if grace_period is None else int(grace_period),
            heartbeat_stale_trial_callback=_retry_callback(max_retry),
        )
    # Workers started together on a fresh database race to create Optuna's tables (PostgreSQL:
    # "duplicate key value violates unique constraint ... studydirection"); the loser retries
    # and then finds the tables made.
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                sqlalchemy.exc.OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


def _retry_callback(max_retry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


# ----------------------------------------------------------------------------- pruning


def _skorch_net_path(estimator):
    """Parameter prefix of the skorch net inside ``estimator`` (``""`` for the estimator
    itself, ``"estimator__"`` through ``ClassBalancedWeighting``-like wrappers), or None.

    Only wrappers that hand ``X`` to the net unchanged are followed (not pipelines), so that
    the net can score the held-out fold itself.
    """
    prefix = ""
    while estimator is not None:
        if isinstance(estimator, NeuralNet):
            return prefix
        if isinstance(estimator, Pipeline) or not hasattr(estimator, "get_params"):
            return None
        estimator = estimator.get_params(deep=False).get("estimator")
        prefix += "estimator__"
    return None


class SkorchHeldOutPruning(Callback):
    """skorch callback: score the held-out fold after each epoch, report it to Optuna, prune.

    Unlike ``optuna_integration.SkorchPruningCallback`` (which reads a value from
    ``net.history``, i.e. the net's *internal* validation split), this callback scores the
    cross-validation fold that :func:`tune` holds out, with the study's scorer, so that what
    is pruned on is what the study optimises. The value is reported at step
    ``step_offset + epoch`` (:func:`tune` uses ``fold * max_epochs + epoch``, so trials are
    compared on the same fold and epoch), and ``optuna.TrialPruned`` is raised from inside
    ``fit`` when the pruner says so (skorch lets it propagate; it only catches
    ``KeyboardInterrupt``).

    Parameters
    ----------
    trial : optuna.trial.Trial
    X_val, y_val : held-out inputs and labels
    scorer : callable ``scorer(net, X, y)``
    step_offset : int, default=0
    record : list or None
        Epoch scores are appended here (for ``trial.user_attrs``).
    classes : array-like or None
        The training fold's classes (``np.unique(y_train)``), for nets that only know
        ``classes_`` once ``fit`` returns.

    Examples
    --------
    >>> import numpy as np, optuna, torch
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.metrics import get_scorer
    >>> from skorch import NeuralNetClassifier
    >>> from dp_sklearn.tuning import SkorchHeldOutPruning
    >>> X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    >>> X, y = X.astype(np.float32), y.astype(np.int64)
    >>> trial = optuna.create_study(direction="maximize").ask()
    >>> cb = SkorchHeldOutPruning(trial, X[40:], y[40:], get_scorer("roc_auc"))
    >>> net = NeuralNetClassifier(torch.nn.Linear, module__in_features=4, module__out_features=2,
    ...                           criterion=torch.nn.CrossEntropyLoss, max_epochs=3, lr=0.1,
    ...                           train_split=None, verbose=0, callbacks=[("prune", cb)])
    >>> _ = net.fit(X[:40], y[:40])
    >>> sorted(trial.study.trials[-1].intermediate_values)  # one report per epoch
    [0, 1, 2]
    """

    def __init__(self, trial, X_val, y_val, scorer, step_offset=0, record=None, classes=None):
        self.trial = trial
        self.X_val = X_val
        self.y_val = y_val
        self.scorer = scorer
        self.step_offset = step_offset
        self.record = record
        self.classes = classes

    @contextlib.contextmanager
    def _predictable(self, net):
        """Let ``net`` predict mid-``fit``.

        dp_sklearn's MaskAttentionClassifier sets ``fitted_classes_`` (behind ``classes_``
        and its ``predict_proba`` check) only when ``fit`` returns; while the epochs run, the
        training fold's classes are put there for the time of the scoring and removed again.
        """
        added = False
        if (self.classes is not None and not hasattr(net, "fitted_classes_")
                and isinstance(getattr(type(net), "classes_", None), property)):
            net.fitted_classes_ = np.asarray(self.classes)
            added = True
        try:
            yield
        finally:
            if added:
                vars(net).pop("fitted_classes_", None)  # unfitted again, as the estimator's fit leaves it

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history) - 1
        with self._predictable(net):
            score = float(self.scorer(net, self.X_val, self.y_val))
        net.history.record("tune_score", score)
        if self.record is not None:
            self.record.append(score)
        if not math.isfinite(score):
            return
        step = self.step_offset + epoch
        self.trial.report(score, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (epoch {epoch}), held-out score {score:.4f}")


# ----------------------------------------------------------------------------- sampler


class TrialSeededTPESampler(optuna.samplers.BaseSampler):
    """Optuna's ``TPESampler`` whose random stream is a function of ``(seed, trial number)``.

    A ``TPESampler(seed=s)`` draws from one random stream that starts again at ``s`` in every
    process: a restarted study (or a second worker with the same seed) suggests the first
    run's parameters again, trial for trial. Here each trial is sampled by a fresh
    ``TPESampler`` seeded from ``seed`` and the trial's number, which is unique in a study;
    so a resumed study, extra workers and re-queued trials all continue the search with new
    parameters, and a study is still repeatable for a given seed and order of trials. The
    TPE model itself is rebuilt from the study's trials for each trial, as ``TPESampler``
    always does.

    Parameters
    ----------
    seed : int or None, default=None
        ``None``: unseeded (every trial draws fresh entropy).
    **tpe_kwargs
        Passed to ``optuna.samplers.TPESampler`` (e.g. ``n_startup_trials``, ``multivariate``).

    Examples
    --------
    >>> import optuna
    >>> def f(trial):
    ...     return trial.suggest_float("x", 0, 1)
    >>> a = optuna.create_study(sampler=TrialSeededTPESampler(seed=0))
    >>> a.optimize(f, n_trials=2)
    >>> b = optuna.create_study(sampler=TrialSeededTPESampler(seed=0))  # same seed, same numbers:
    >>> b.optimize(f, n_trials=2)                                        # the same suggestions
    >>> [t.params for t in a.trials] == [t.params for t in b.trials]
    True
    >>> a.sampler = TrialSeededTPESampler(seed=0)  # restarted: trials 2 and 3 are new points
    >>> a.optimize(f, n_trials=2)
    >>> len({t.params["x"] for t in a.trials})
    4
    """

    def __init__(self, seed=None, **tpe_kwargs):
        self.seed = seed
        self.tpe_kwargs = tpe_kwargs
        self._samplers = {}
        self._lock = threading.Lock()

    def _trial_seed(self, number):
        if self.seed is None:
            return None
        digest = hashlib.sha256(f"{int(self.seed)}:{int(number)}".encode()).hexdigest()
        return int(digest[:8], 16)

    def _for(self, trial):
        with self._lock:
            sampler = self._samplers.get(trial.number)
            if sampler is None:
                sampler = optuna.samplers.TPESampler(seed=self._trial_seed(trial.number), **self.tpe_kwargs)
                self._samplers[trial.number] = sampler
            return sampler

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        with self._lock:
            self._samplers.pop(trial.number, None)

    def reseed_rng(self):
        # Parallel threads (n_jobs > 1) share this object; trial numbers already differ.
        pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_samplers"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_params(estimator):
    """``{name: folder}`` of the (nested) ``checkpoint_dir`` parameters that are set."""
    if not hasattr(estimator, "get_params"):
        return {}
    return {
        k: v for k, v in estimator.get_params(deep=True).items()
        if (k == "checkpoint_dir" or k.endswith("__checkpoint_dir")) and v is not None
    }


def _slug(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "study"


def _checkpoint_trial_number(trial):
    """The trial whose folders a trial uses: the original one when Optuna re-queued a killed trial."""
    for frozen in trial.study.get_trials(deepcopy=False):
        if frozen.number == trial.number:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                original = optuna.storages.RetryFailedTrialCallback.retried_trial_number(frozen)
            return trial.number if original is None else int(original)
    return trial.number


def _with_checkpoint_subdir(estimator, ckpt_params, *parts):
    """Point every ``checkpoint_dir`` of ``estimator`` at ``<its folder>/<parts...>`` (one per fit)."""
    if ckpt_params:
        estimator.set_params(**{k: os.path.join(os.fspath(v), *parts) for k, v in ckpt_params.items()})
    return estimator


# ----------------------------------------------------------------------------- tune


def _make_cv(cv, y, groups, random_state):
    if isinstance(cv, numbers.Integral):
        if groups is not None:
            return StratifiedGroupKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
        return StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    return check_cv(cv, y, classifier=True)


def _jsonable(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _default_study_name(estimator, X, y, scoring, space_names, cv):
    h = hashlib.sha1()
    h.update(repr(estimator).encode())
    h.update(repr((_num_samples(X), getattr(X, "shape", None), scoring, sorted(space_names), repr(cv))).encode())
    h.update(np.asarray(y).tobytes())
    return f"{type(estimator).__name__}-{h.hexdigest()[:10]}"


def _n_finished(study):
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _format_trial(trial):
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    folds = trial.user_attrs.get("fold_scores")
    folds = "" if not folds else " folds=[" + ", ".join(f"{s:.3f}" for s in folds) + "]"
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    return f"[tune] trial {trial.number:3d} {trial.state.name:8s} score={value}{folds} {{{params}}}"


def tune(
    estimator,
    X,
    y,
    *,
    masks=None,
    groups=None,
    fit_params=None,
    search_space=None,
    n_trials=20,
    n_trials_total=None,
    timeout=None,
    cv=5,
    scoring="roc_auc_ovr",
    storage=None,
    study_name=None,
    direction="maximize",
    pruner=None,
    sampler=None,
    random_state=0,
    n_jobs=1,
    catch=(),
    heartbeat_interval=60,
    grace_period=None,
    verbose=1,
    refit=True,
):
    """Tune an estimator's hyper-parameters with a persistent, resumable, prunable Optuna study.

    Each trial samples parameters from ``search_space``, sets them on a clone of
    ``estimator`` and cross-validates it fold by fold (the same folds for every trial);
    ``masks``, ``groups`` and ``fit_params`` are sliced per fold with ``X`` and ``y``. The
    trial's value is the mean held-out score; per-fold scores are in
    ``trial.user_attrs["fold_scores"]``.

    Pruning: when the estimator is a skorch ``NeuralNet`` (also inside a
    ``ClassBalancedWeighting``-like wrapper), :class:`SkorchHeldOutPruning` scores the held-out
    fold after every epoch and reports it at step ``fold * max_epochs + epoch``; otherwise the
    running mean over the folds done so far is reported at step ``fold``. A pruned trial stops
    at once (state PRUNED). Do not tune ``max_epochs`` together with epoch-level pruning: the
    steps of trials with different ``max_epochs`` would not line up.

    Parameters
    ----------
    estimator : classifier
        Cloned for each fold of each trial.
    X : array-like or sequence of paths, length n_samples
    y : array-like of shape (n_samples,)
    masks : array-like or list (entries may be None), default=None
        Passed to ``fit(..., masks=...)``, sliced per fold.
    groups : array-like of shape (n_samples,), default=None
        Group labels (patients); with an int ``cv`` a ``StratifiedGroupKFold`` is used.
    fit_params : dict, default=None
        More ``fit`` keyword arguments; entries of length n_samples are sliced per fold.
    search_space : None, callable or dict of optuna distributions, default=None
        ``None``: :func:`default_search_space`. A callable ``(trial) -> dict`` of parameter
        values (called once on a throw-away trial to check the names), or a dict
        ``{name: optuna.distributions.*Distribution}`` like ``OptunaSearchCV``'s
        ``param_distributions``. Names must be in ``estimator.get_params()``.
    n_trials : int or None, default=20
        Number of **new** trials to run in this call (``None``: until ``timeout``).
    n_trials_total : int, default=None
        If given, run until the study holds this many finished (COMPLETE + PRUNED) trials,
        counting trials of earlier calls and of other workers; overrides ``n_trials``.
    timeout : float, default=None
        Stop starting new trials after this many seconds.
    cv : int, cross-validation splitter or iterable, default=5
        An int gives ``StratifiedKFold`` (``StratifiedGroupKFold`` with ``groups``), shuffled
        with ``random_state``.
    scoring : str or callable, default="roc_auc_ovr"
        A scikit-learn scorer name or ``scorer(estimator, X, y)``.
    storage : None, str, path or optuna storage, default=None
        See :func:`make_storage`: ``None`` is the SQLite file ``./dp_sklearn_studies.sqlite3``;
        ``"postgresql://..."`` for workers on many machines.
    study_name : str, default=None
        Same storage + same name resumes the study. ``None`` derives a name from the
        estimator, data shape, labels, scoring, cv and search-space names.
    direction : {"maximize", "minimize"}, default="maximize"
    pruner : optuna.pruners.BasePruner, default=None
        ``None``: ``MedianPruner(n_startup_trials=5, n_warmup_steps=w)`` with ``w`` half the
        epochs of a skorch net (epoch-level pruning) or 1 (fold-level pruning).
        ``optuna.pruners.NopPruner()`` switches pruning off.
    sampler : optuna.samplers.BaseSampler, default=None
        ``None``: :class:`TrialSeededTPESampler` ``(seed=random_state)``, a TPE sampler seeded
        per trial number, so that resuming the study or adding workers with the same seed
        continues the search instead of replaying the first run's parameters. (A sampler
        given here with a fixed seed replays its stream in every new process.)
    random_state : int, default=0
        Seeds the folds and the default sampler.
    n_jobs : int, default=1
        Parallel trials (threads) in this process.
    catch : tuple of exception types, default=()
        Exceptions that fail a trial without stopping the study.
    heartbeat_interval, grace_period : int, default=60, None
        Heartbeat of running trials, see :func:`make_storage` (ignored for a storage
        instance).
    verbose : int, default=1
        ``>= 1``: one line per finished trial; ``>= 2``: Optuna's own log too.
    refit : bool, default=True
        Fit ``best_estimator_`` on all data with the best parameters.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``study``, ``study_name``, ``best_params_``, ``best_score_``, ``best_trial_``,
        ``n_trials_run`` (COMPLETE or PRUNED trials run by this call, not counting other
        workers') and ``best_estimator_`` (when ``refit``).

    Notes
    -----
    Checkpoints: when the estimator (or a nested one) has ``checkpoint_dir=D``, every fit
    gets its own folder, ``D/<study name>/trial-<n>/fold-<k>`` and ``D/<study name>/refit``,
    so no fold or trial ever loads another's model; a trial that Optuna re-queues after its
    worker was killed resumes the folders of the trial it retries.

    Examples
    --------
    >>> import tempfile, os
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    >>> from dp_sklearn.tuning import tune
    >>> X, y = make_classification(n_samples=80, weights=[0.8], random_state=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "study.sqlite3")
    >>> res = tune(ClassBalancedWeighting(LogisticRegression()), X, y, n_trials=3, cv=2,
    ...            storage=path, study_name="demo", verbose=0)
    >>> len(res.study.trials), sorted(res.best_params_)
    (3, ['beta', 'estimator__C'])
    >>> res = tune(ClassBalancedWeighting(LogisticRegression()), X, y, n_trials_total=5,
    ...            cv=2, storage=path, study_name="demo", verbose=0, refit=False)
    >>> len(res.study.trials), res.n_trials_run
    (5, 2)
    """
    storage_obj = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    run = _run_study(
        estimator, X, y, masks=masks, groups=groups, fit_params=fit_params,
        search_space=search_space, n_trials=n_trials, n_trials_total=n_trials_total,
        timeout=timeout, cv=cv, scoring=scoring, storage=storage_obj, study_name=study_name,
        direction=direction, pruner=pruner, sampler=sampler, random_state=random_state,
        n_jobs=n_jobs, catch=catch, verbose=verbose,
    )
    result = Bunch(study=run.study, study_name=run.study.study_name, n_trials_run=run.n_trials_run)
    if run.best_trial is None:
        warnings.warn(f"Study {run.study.study_name!r} has no COMPLETE trial yet; no best parameters.")
        return result
    result.best_trial_ = run.best_trial
    result.best_params_ = run.best_params
    result.best_score_ = run.best_trial.value
    if refit:
        best = _with_checkpoint_subdir(clone(estimator).set_params(**run.best_params), run.checkpoint_params,
                                       _slug(run.study.study_name), "refit")
        result.best_estimator_ = best.fit(X, run.y, **run.fit_params)
    return result


def _run_study(
    estimator, X, y, *, masks, groups, fit_params, search_space, n_trials, n_trials_total,
    timeout, cv, scoring, storage, study_name, direction, pruner, sampler, random_state, n_jobs,
    catch, verbose,
):
    """Validate, build the objective, create or load the study and optimise it."""
    n = _num_samples(X)
    y_arr = np.asarray(y)
    if y_arr.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {y_arr.shape[0]}.")
    fit_params = dict(fit_params or {})
    if masks is not None:
        if "masks" in fit_params:
            raise ValueError("Give masks either as masks= or in fit_params, not both.")
        if _num_samples(masks) != n:
            raise ValueError(f"masks has {_num_samples(masks)} entries but X has {n} samples.")
        fit_params["masks"] = masks
    if groups is not None and _num_samples(groups) != n:
        raise ValueError(f"groups has {_num_samples(groups)} entries but X has {n} samples.")
    if n_trials_total is None and n_trials is None and timeout is None:
        raise ValueError("Give n_trials, n_trials_total or timeout; the study would never end.")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}.")

    space = _as_space(search_space, estimator)
    probe = _dry_run(space, estimator)
    scorer = check_scoring(estimator, scoring=scoring)
    cv_obj = _make_cv(cv, y_arr, groups, random_state)
    splits = list(cv_obj.split(np.zeros(n), y_arr, groups))
    sliced = {
        k for k, v in fit_params.items()
        if v is not None and not isinstance(v, str) and hasattr(v, "__len__") and _num_samples(v) == n
    }

    net_path = _skorch_net_path(estimator)
    if net_path is not None and estimator.get_params()[net_path + "callbacks"] == "disable":
        warnings.warn("callbacks='disable' on the skorch net: pruning falls back to per-fold reports.")
        net_path = None
    if pruner is None:
        if net_path is not None:
            epochs = int(estimator.get_params()[net_path + "max_epochs"])
            pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 2))
        else:
            pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if sampler is None:
        sampler = TrialSeededTPESampler(seed=random_state)
    if study_name is None and not isinstance(storage, optuna.storages.InMemoryStorage):
        study_name = _default_study_name(estimator, X, y_arr, scoring, probe, cv)
    ckpt_params = _checkpoint_params(estimator)

    def objective(trial):
        params = space(trial)
        if _jsonable(params):
            trial.set_user_attr("estimator_params", params)
        base = clone(estimator).set_params(**params)
        ckpt_trial = _checkpoint_trial_number(trial) if ckpt_params else None
        fold_scores, epoch_scores = [], []
        for fold, (train, test) in enumerate(splits):
            # One checkpoint folder per fit: <checkpoint_dir>/<study>/trial-<n>/fold-<k> (a
            # re-queued trial reuses the folders of the trial it retries, and resumes them).
            est = _with_checkpoint_subdir(clone(base), ckpt_params, _slug(trial.study.study_name),
                                          f"trial-{ckpt_trial}", f"fold-{fold}")
            X_tr, X_te = _safe_indexing(X, train), _safe_indexing(X, test)
            y_tr, y_te = y_arr[train], y_arr[test]
            kw = {k: (_safe_indexing(v, train) if k in sliced else v) for k, v in fit_params.items()}
            if net_path is not None:
                p = est.get_params()
                record = []
                offset = fold * int(p[net_path + "max_epochs"])
                cb = SkorchHeldOutPruning(trial, X_te, y_te, scorer, offset, record, np.unique(y_tr))
                existing = list(p[net_path + "callbacks"] or [])
                est.set_params(**{net_path + "callbacks": [*existing, ("optuna_pruning", cb)]})
                epoch_scores.append(record)
            try:
                est.fit(X_tr, y_tr, **kw)
            finally:
                if epoch_scores:
                    trial.set_user_attr("epoch_scores", epoch_scores)
            fold_scores.append(float(scorer(est, X_te, y_te)))
            trial.set_user_attr("fold_scores", fold_scores)
            if net_path is None:
                running = float(np.mean(fold_scores))
                trial.report(running, fold)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after fold {fold}: mean score {running:.4f}")
        return float(np.mean(fold_scores))

    old_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose >= 2 else optuna.logging.WARNING)
    start = time.perf_counter()
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction=direction, sampler=sampler,
            pruner=pruner, load_if_exists=True,
        )
        finished_before = _n_finished(study)
        own = []  # trials finished by this call (not by other workers of the study)
        callbacks = [lambda st, tr: own.append(tr.number) if tr.state in (TrialState.COMPLETE, TrialState.PRUNED)
                     else None]
        if verbose >= 1:
            where = getattr(storage, "url", type(storage).__name__)
            print(f"[tune] study {study.study_name!r}: {finished_before} finished trial(s) in {where}", flush=True)
            callbacks.append(lambda st, tr: print(_format_trial(tr), flush=True))
        if n_trials_total is not None:
            n_trials = max(0, int(n_trials_total) - finished_before)
            callbacks.append(optuna.study.MaxTrialsCallback(
                int(n_trials_total), states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if n_trials is None or n_trials > 0:
            study.optimize(objective, n_trials=n_trials, timeout=timeout, n_jobs=n_jobs,
                           catch=catch, callbacks=callbacks, gc_after_trial=net_path is not None)
    finally:
        optuna.logging.set_verbosity(old_verbosity)

    best = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
    best_params = None if best is None else dict(best.user_attrs.get("estimator_params", best.params))
    if verbose >= 1 and best is not None:
        print(f"[tune] best trial {best.number}: score={best.value:.4f} params={best_params} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return Bunch(study=study, n_trials_run=len(own), best_trial=best,
                 best_params=best_params, y=y_arr, fit_params=fit_params, scorer=scorer,
                 checkpoint_params=ckpt_params)


# ----------------------------------------------------------------------------- OptunaSearchCV


class OptunaSearchCV(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Hyper-parameter search with Optuna as a scikit-learn estimator; slices ``masks`` per fold.

    A pandas-free counterpart of ``optuna_integration.OptunaSearchCV`` (which, in version 5,
    cannot be constructed without pandas installed) with the same core parameters, run by the
    machinery of :func:`tune`: per-fold slicing of every ``fit`` parameter of length
    n_samples (``masks``, ``sample_weight``), ``groups``, pruning (epoch level for skorch
    nets), a default search space per estimator. Unlike :func:`tune` the study lives **in
    memory** unless ``storage`` or ``study`` is given, so that an estimator inside
    ``cross_validate`` writes no files.

    Parameters
    ----------
    estimator : classifier
    param_distributions : dict of optuna distributions, callable or None, default=None
        As ``search_space`` of :func:`tune` (``None``: :func:`default_search_space`).
    cv : int, splitter or iterable, default=5
    scoring : str or callable, default="roc_auc_ovr"
    n_trials : int, default=10
    timeout : float, default=None
    study : optuna.study.Study, default=None
        Run the trials in this study (its storage, sampler and pruner are used).
    storage : None, str, path or optuna storage, default=None
        ``None``: in memory. Otherwise as in :func:`make_storage`.
    study_name : str, default=None
    pruner, sampler : default=None
        As in :func:`tune`.
    random_state : int, default=0
    n_jobs : int, default=1
    refit : bool, default=True
    verbose : int, default=0

    Attributes
    ----------
    study_ : optuna.study.Study
    best_params_ : dict
    best_score_ : float
    best_trial_ : optuna.trial.FrozenTrial
    best_estimator_ : estimator (when ``refit``)
    classes_ : ndarray (when ``refit``)
    n_splits_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from optuna.distributions import FloatDistribution
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from dp_sklearn.tuning import OptunaSearchCV
    >>> X, y = make_classification(n_samples=60, random_state=0)
    >>> search = OptunaSearchCV(LogisticRegression(),
    ...                         {"C": FloatDistribution(1e-2, 1e2, log=True)},
    ...                         cv=3, n_trials=3).fit(X, y)
    >>> sorted(search.best_params_), len(search.study_.trials), search.predict(X[:2]).shape
    (['C'], 3, (2,))
    """

    def __init__(
        self,
        estimator,
        param_distributions=None,
        *,
        cv=5,
        scoring="roc_auc_ovr",
        n_trials=10,
        timeout=None,
        study=None,
        storage=None,
        study_name=None,
        pruner=None,
        sampler=None,
        random_state=0,
        n_jobs=1,
        refit=True,
        verbose=0,
    ):
        self.estimator = estimator
        self.param_distributions = param_distributions
        self.cv = cv
        self.scoring = scoring
        self.n_trials = n_trials
        self.timeout = timeout
        self.study = study
        self.storage = storage
        self.study_name = study_name
        self.pruner = pruner
        self.sampler = sampler
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.refit = refit
        self.verbose = verbose

    def fit(self, X, y, groups=None, **fit_params):
        """Run the study, then refit the best parameters on all of ``X``.

        Parameters
        ----------
        X : array-like or sequence of paths
        y : array-like of shape (n_samples,)
        groups : array-like of shape (n_samples,), default=None
        **fit_params : dict
            Passed to the estimator's ``fit``; entries of length n_samples (``masks``,
            ``sample_weight``) are sliced to each fold's training rows.

        Returns
        -------
        self : OptunaSearchCV
        """
        if self.study is not None:
            storage, study_name = study_storage(self.study), self.study.study_name
            direction = self.study.direction.name.lower()
            sampler, pruner = self.study.sampler, self.study.pruner
        else:
            storage = (optuna.storages.InMemoryStorage() if self.storage is None
                       else make_storage(self.storage))
            study_name, direction = self.study_name, "maximize"
            sampler, pruner = self.sampler, self.pruner
        run = _run_study(
            self.estimator, X, y, masks=None, groups=groups, fit_params=fit_params,
            search_space=self.param_distributions, n_trials=self.n_trials, n_trials_total=None,
            timeout=self.timeout, cv=self.cv, scoring=self.scoring, storage=storage,
            study_name=study_name, direction=direction, pruner=pruner, sampler=sampler,
            random_state=self.random_state, n_jobs=self.n_jobs, catch=(), verbose=self.verbose,
        )
        self.study_ = run.study
        self.scorer_ = run.scorer
        self.n_splits_ = len(list(_make_cv(self.cv, run.y, groups, self.random_state).split(
            np.zeros(run.y.shape[0]), run.y, groups)))
        if run.best_trial is None:
            raise ValueError("No trial of the study completed; no best parameters to report.")
        self.best_trial_ = run.best_trial
        self.best_params_ = run.best_params
        self.best_score_ = run.best_trial.value
        if self.refit:
            self.best_estimator_ = _with_checkpoint_subdir(
                clone(self.estimator).set_params(**self.best_params_), run.checkpoint_params,
                _slug(run.study.study_name), "refit")
            self.best_estimator_.fit(X, run.y, **run.fit_params)
            if hasattr(self.best_estimator_, "classes_"):
                self.classes_ = self.best_estimator_.classes_
        return self

    def _check_refit(self):
        check_is_fitted(self, "study_")
        if not self.refit:
            raise AttributeError("refit=False: there is no best_estimator_ to predict with.")
        return self.best_estimator_

    @available_if(lambda self: hasattr(self.estimator, "predict"))
    def predict(self, X):
        """Predict with ``best_estimator_``."""
        return self._check_refit().predict(X)

    @available_if(lambda self: hasattr(self.estimator, "predict_proba"))
    def predict_proba(self, X):
        """Class probabilities from ``best_estimator_``."""
        return self._check_refit().predict_proba(X)

    @available_if(lambda self: hasattr(self.estimator, "decision_function"))
    def decision_function(self, X):
        """Decision function of ``best_estimator_``."""
        return self._check_refit().decision_function(X)

    def score(self, X, y):
        """The study's scorer on ``(X, y)`` with ``best_estimator_``."""
        return self.scorer_(self._check_refit(), X, y)

    @property
    def trials_(self):
        """All trials of the study (``FrozenTrial`` list)."""
        check_is_fitted(self, "study_")
        return self.study_.trials
