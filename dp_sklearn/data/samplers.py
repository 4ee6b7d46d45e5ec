"""Class-balanced index samplers for the torch estimators' data loaders.

:class:`ClassBalancedSampler` / :class:`ClassBalancedBatchSampler` are the alternative to
re-weighting the loss: an imbalanced-learn sampler picks *indices* each epoch (over- or
under-sampling), and the ``DataLoader`` reads only those images; nothing is copied (the
imbalanced-learn idiom of samplers that return indices). They lived in
:mod:`dp_sklearn.estimators.class_balanced`, which re-exports them.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import clone
from torch.utils.data import BatchSampler, Sampler

__all__ = ["ClassBalancedBatchSampler", "ClassBalancedSampler"]


_SAMPLERS = {"over": RandomOverSampler, "under": RandomUnderSampler}


class ClassBalancedSampler(Sampler):
    """Per-epoch class-balanced index sampler built on an imbalanced-learn sampler.

    Each epoch (each ``iter()``) an imbalanced-learn sampler is fitted on an index
    column ``arange(n)[:, None]`` and the labels; its ``sample_indices_`` (the rows it
    keeps or repeats) are shuffled and yielded. Only labels and integer indices are
    touched: the images stay where the dataset keeps them (memory or disk) and the
    ``DataLoader`` reads the selected ones. Over-sampling repeats minority images (use
    augmentation), under-sampling drops majority images for that epoch (a different
    subset every epoch). This is the alternative to re-weighting the loss.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of the training dataset, in the dataset's order.
    sampler : {"over", "under"} or imbalanced-learn sampler, default="over"
        ``"over"``: ``RandomOverSampler`` (every class up to the majority count);
        ``"under"``: ``RandomUnderSampler`` (every class down to the minority count);
        or a sampler instance (cloned each epoch, ``random_state`` set when it has
        one) that selects existing samples at random and exposes
        ``sample_indices_``, e.g. ``RandomOverSampler(sampling_strategy=0.5)``.
        Samplers that look at the features (``NearMiss``, ``TomekLinks``) would see
        only the index column, and SMOTE-like samplers that synthesise samples are
        refused.
    random_state : int or None, default=None
        Seed: epoch ``e`` draws with ``SeedSequence([random_state, e])``, so runs
        repeat and each epoch differs. ``None``: fresh randomness.

    Attributes
    ----------
    epoch : int
        Epoch number of the next ``iter()``; incremented by each iteration, settable
        with :meth:`set_epoch`.

    Examples
    --------
    In a plain ``DataLoader`` (the sampler replaces ``shuffle=True``):

    >>> import numpy as np, torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from dp_sklearn.data.samplers import ClassBalancedSampler
    >>> y = np.array([0] * 90 + [1] * 10)
    >>> ds = TensorDataset(torch.randn(100, 1, 8, 8), torch.as_tensor(y))
    >>> sampler = ClassBalancedSampler(y, "over", random_state=0)
    >>> len(sampler)
    180
    >>> seen = torch.cat([yb for _, yb in DataLoader(ds, batch_size=32, sampler=sampler)])
    >>> torch.bincount(seen).tolist()
    [90, 90]

    With a skorch estimator, pass it as ``iterator_train__sampler`` and switch the
    built-in shuffling off; with ``train_split=None`` the training dataset is exactly
    ``(X, y)`` so the indices line up (with an internal validation split, build the
    sampler from the training part's labels):

    >>> from skorch import NeuralNetClassifier
    >>> net = NeuralNetClassifier(
    ...     torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)),
    ...     criterion=torch.nn.CrossEntropyLoss, max_epochs=2, train_split=None,
    ...     iterator_train__sampler=ClassBalancedSampler(y, "under", random_state=0),
    ...     iterator_train__shuffle=False, verbose=0)
    >>> net = net.fit(ds.tensors[0].numpy(), y)
    """

    def __init__(self, y, sampler="over", random_state=None):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim != 1 or y.shape[0] == 0:
            raise ValueError(
                f"y must be a non-empty 1-D array of class labels, got shape {y.shape}."
            )
        n_classes = np.unique(y).shape[0]
        if n_classes < 2:
            raise ValueError(
                f"y has a single class ({y[0]!r}); class-balanced sampling needs at "
                "least two classes."
            )
        if isinstance(sampler, str):
            if sampler not in _SAMPLERS:
                raise ValueError(
                    f"sampler must be 'over', 'under' or an imbalanced-learn sampler, "
                    f"got {sampler!r}."
                )
        elif not hasattr(sampler, "fit_resample"):
            raise TypeError(
                "sampler must be 'over', 'under' or an imbalanced-learn sampler with "
                f"fit_resample, got {type(sampler).__name__}."
            )
        if random_state is not None and (
            not isinstance(random_state, Integral) or isinstance(random_state, bool)
            or random_state < 0
        ):
            raise ValueError(
                f"random_state must be a non-negative int or None, got {random_state!r}."
            )
        self.y = y
        self.sampler = sampler
        self.random_state = random_state
        self.epoch = 0
        self._len = None

    def set_epoch(self, epoch):
        """Set the epoch of the next iteration (as ``DistributedSampler.set_epoch``).

        Parameters
        ----------
        epoch : int
        """
        self.epoch = int(epoch)

    def _seed(self, epoch):
        if self.random_state is None:
            return int(np.random.SeedSequence().generate_state(1)[0])
        return int(np.random.SeedSequence([self.random_state, epoch]).generate_state(1)[0])

    def _draw(self, seed):
        if isinstance(self.sampler, str):
            imb = _SAMPLERS[self.sampler](random_state=seed)
        else:
            imb = clone(self.sampler)
            if "random_state" in imb.get_params():
                imb.set_params(random_state=seed)
        index_column = np.arange(self.y.shape[0]).reshape(-1, 1)
        imb.fit_resample(index_column, self.y)
        indices = getattr(imb, "sample_indices_", None)
        if indices is None:
            raise ValueError(
                f"{type(imb).__name__} does not expose sample_indices_: it synthesises "
                "samples instead of selecting them, which an index sampler cannot do. "
                "Use RandomOverSampler or RandomUnderSampler."
            )
        rng = np.random.default_rng(seed)
        return rng.permutation(np.asarray(indices, dtype=np.int64))

    def indices(self, epoch=None):
        """The shuffled indices of an epoch, without advancing :attr:`epoch`.

        Parameters
        ----------
        epoch : int, default=None
            Defaults to the current :attr:`epoch`.

        Returns
        -------
        indices : ndarray of int64
        """
        return self._draw(self._seed(self.epoch if epoch is None else epoch))

    def __iter__(self):
        indices = self.indices()
        self.epoch += 1
        self._len = indices.shape[0]
        return iter(indices.tolist())

    def __len__(self):
        if self._len is None:
            self._len = int(self.indices(0).shape[0])
        return self._len


class ClassBalancedBatchSampler(BatchSampler):
    """Batches of indices from a :class:`ClassBalancedSampler`.

    For ``DataLoader(dataset, batch_sampler=...)`` in a hand-written loop. (skorch
    always passes ``batch_size`` to its ``DataLoader``, which ``batch_sampler`` does
    not allow: there use ``iterator_train__sampler=ClassBalancedSampler(...)``.)

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of the dataset.
    batch_size : int
        Indices per batch.
    drop_last : bool, default=False
        Drop the last incomplete batch.
    sampler : {"over", "under"} or imbalanced-learn sampler, default="over"
        See :class:`ClassBalancedSampler`.
    random_state : int or None, default=None
        See :class:`ClassBalancedSampler`.

    Examples
    --------
    >>> import numpy as np
    >>> from dp_sklearn.data.samplers import ClassBalancedBatchSampler
    >>> bs = ClassBalancedBatchSampler([0] * 30 + [1] * 6, batch_size=4,
    ...                                sampler="under", random_state=0)
    >>> [len(b) for b in bs]
    [4, 4, 4]
    """

    def __init__(self, y, batch_size, drop_last=False, sampler="over", random_state=None):
        super().__init__(
            ClassBalancedSampler(y, sampler=sampler, random_state=random_state),
            batch_size,
            drop_last,
        )

    def set_epoch(self, epoch):
        """Set the epoch of the next iteration of the underlying sampler."""
        self.sampler.set_epoch(epoch)
