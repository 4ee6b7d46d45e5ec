"""The one adapter between dp_sklearn and private APIs of its dependencies.

dp_sklearn otherwise uses only the public, documented APIs of scikit-learn, skorch and torch.
Where there is no public way, the private name is imported or used *here only*, so that an
upgrade that removes or changes it breaks one module, and ``tests/test_compat.py`` says so
loudly (it checks every name below and its behaviour against the tested versions).

What is borrowed and why:

- scikit-learn's parameter-constraint objects (``Interval``, ``StrOptions``, ``HasMethods``, ``Hidden``,
  ``validate_parameter_constraints``, ``validate_params``) from ``sklearn.utils._param_validation``:
  the DESIGN asks for scikit-learn's ``_parameter_constraints`` style of validation, and
  scikit-learn exposes these objects only from a private module (every scikit-learn-contrib
  project imports them from there).
- ``num_samples`` and ``safe_indexing`` (``sklearn.utils.validation._num_samples``,
  ``sklearn.utils._safe_indexing``): the number of samples and row selection of any
  array-like, list of paths or dataframe, exactly as scikit-learn's own ``cross_validate``
  counts and slices them (used by :mod:`dp_sklearn.tuning` to slice ``masks`` per fold).
- :class:`FastTrainingSwitchMixin`: skorch calls ``NeuralNet._set_training`` before every batch, and
  ``Module.train()`` walks the whole module tree each time; the pre-trainers replace it by a
  switch that only touches components whose mode differs (see ``benchmarks/speed.py``). There
  is no public hook for this; it reads skorch's registries of modules and criteria through
  :func:`skorch_components`. :func:`set_training` calls that switch from the data-parallel
  ``train_step_single`` (:mod:`dp_sklearn.estimators._torch`), as skorch's own step does.
- :func:`cpu_has_native_bfloat16`: whether this CPU computes bfloat16 natively (AVX512-BF16 or
  AMX), which decides ``precision="auto"`` on CPU. torch exposes the check only as the private
  ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``.
- :func:`dataloader_order`: the in-memory batch iterators (:mod:`dp_sklearn.data.batches`) give
  the same batch order, and leave torch's global generator in the same state, as the
  ``DataLoader`` they replace, so that a fit with a given ``random_state`` is the same whichever
  path its batches take. Only public calls are made, but the sequence imitates what torch's
  ``DataLoader`` iterator and ``RandomSampler`` draw internally (one ``int64`` for the workers'
  base seed, then one ``int64`` that seeds the sampler's permutation), which torch does not
  document; ``tests/test_compat.py`` compares it with a real ``DataLoader``.
- :func:`study_storage`: the storage of an ``optuna.Study`` (``Study._storage``); Optuna has no
  public accessor, and :class:`~dp_sklearn.tuning.OptunaSearchCV` must continue a study the
  user passes in the same storage.

Relied on, without a private name (also pinned in ``tests/test_compat.py``): skorch's
``NeuralNet`` reads its ``device`` attribute whenever it moves modules or tensors, and its pickled
state carries that attribute as ``state["device"]`` from which ``__setstate__`` maps tensors;
:class:`~dp_sklearn.estimators._torch.TorchEstimatorMixin` relies on both for ``device="auto"``.
"""

from __future__ import annotations

from sklearn.utils import _safe_indexing as safe_indexing
from sklearn.utils._param_validation import (  # noqa: F401  (re-exported)
    HasMethods,
    Hidden,
    Interval,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)
from sklearn.utils.validation import _num_samples as num_samples
import torch
from torch import nn

__all__ = [
    "FastTrainingSwitchMixin",
    "cpu_has_native_bfloat16",
    "HasMethods",
    "Hidden",
    "Interval",
    "StrOptions",
    "dataloader_order",
    "num_samples",
    "safe_indexing",
    "set_training",
    "skorch_components",
    "study_storage",
    "validate_parameter_constraints",
    "validate_params",
]


def cpu_has_native_bfloat16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX tiles).

    Only there does bfloat16 autocast speed up training; elsewhere oneDNN emulates it slowly.
    """
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def skorch_components(net):
    """Names of the fitted torch components of a skorch net (``module_``, ``criterion_``, ...).

    skorch keeps them in the private lists ``_modules`` and ``_criteria``; this is the only read.
    """
    return [name + "_" for name in list(net._modules) + list(net._criteria)]


def set_training(net, training=True):
    """Put a skorch net's components in train or eval mode, as its own ``train_step_single`` does
    before every batch (skorch's private ``_set_training``)."""
    net._set_training(training)


class FastTrainingSwitchMixin:
    """Mix in front of a skorch ``NeuralNet``: switch train/eval mode only where it differs.

    Overrides skorch's private ``_set_training`` (called before every batch). A switch always
    sets a whole tree, so a component's top-level flag tells its tree's mode.
    """

    def _set_training(self, training=True):
        for name in skorch_components(self):
            module = getattr(self, name)
            if isinstance(module, nn.Module) and module.training != training:
                module.train(training)


def dataloader_order(n, shuffle):
    """The sample order of one pass of ``DataLoader(dataset_of_n, shuffle=shuffle)``, as a tensor.

    Draws from torch's global generator exactly what a single-process ``DataLoader`` iterator
    draws (its workers' base seed, then, when shuffling, the seed of ``RandomSampler``'s own
    generator), so that the global generator ends in the same state and the order is the same.
    """
    torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator()
    generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
    return torch.randperm(n, generator=generator)


def study_storage(study):
    """The storage an ``optuna.Study`` lives in (Optuna keeps it in the private ``_storage``)."""
    return study._storage
