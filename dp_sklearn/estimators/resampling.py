"""Resampling image arrays inside imbalanced-learn pipelines."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone


class ImageResampler(BaseEstimator):
    """Apply an imbalanced-learn under/over-sampler to image rows, by index.

    imbalanced-learn's samplers validate ``X`` as a 2-D table; images are ``(n, H, W)`` arrays or
    lists of paths. This wrapper runs the sampler on a column of row indices and then takes the
    chosen rows of ``X`` (no image is synthesised or copied pixel by pixel), so it can be the
    sampling step of an :class:`imblearn.pipeline.Pipeline` before any dp_sklearn classifier.
    Resampling happens during ``fit`` only, as imbalanced-learn pipelines do.

    imbalanced-learn resamples ``X`` and ``y`` only, not other fit arguments such as ``masks``;
    to re-balance while training with masks, pass a class-balanced index sampler to the estimator
    instead (:class:`dp_sklearn.estimators.ClassBalancedSampler`) or use the class-balanced loss.

    Parameters
    ----------
    sampler : imblearn sampler or None, default=None
        A sampler that selects existing rows and exposes ``sample_indices_`` (``RandomOverSampler``,
        ``RandomUnderSampler``, ``NearMiss``, ...). ``None`` means ``RandomOverSampler``.
        Samplers that synthesise new samples (SMOTE, ADASYN) cannot apply to images.
    random_state : int or None, default=None
        Seed for the default sampler.

    Attributes
    ----------
    sampler_ : the fitted sampler
    sample_indices_ : ndarray of the rows taken in the last ``fit_resample``

    Examples
    --------
    >>> import numpy as np
    >>> from imblearn.under_sampling import RandomUnderSampler
    >>> X = np.zeros((6, 8, 8), dtype="float32"); y = np.array([0, 0, 0, 0, 1, 1])
    >>> X_res, y_res = ImageResampler(RandomUnderSampler(random_state=0)).fit_resample(X, y)
    >>> X_res.shape, np.bincount(y_res).tolist()
    ((4, 8, 8), [2, 2])
    """

    def __init__(self, sampler=None, random_state=None):
        self.sampler = sampler
        self.random_state = random_state

    def fit_resample(self, X, y):
        """Return the resampled ``(X, y)``; ``X`` keeps its type (array or list of paths)."""
        from imblearn.over_sampling import RandomOverSampler

        y = np.asarray(y)
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels.")
        sampler = RandomOverSampler(random_state=self.random_state) if self.sampler is None else clone(self.sampler)
        sampler.fit_resample(np.arange(len(y)).reshape(-1, 1), y)
        if not hasattr(sampler, "sample_indices_"):
            raise TypeError(
                f"{type(sampler).__name__} synthesises new samples (no sample_indices_); only samplers that "
                "select existing rows (e.g. RandomOverSampler, RandomUnderSampler) can resample images."
            )
        idx = np.asarray(sampler.sample_indices_)
        self.sampler_ = sampler
        self.sample_indices_ = idx
        X_res = [X[i] for i in idx] if isinstance(X, list) else np.asarray(X)[idx]
        return X_res, y[idx]
