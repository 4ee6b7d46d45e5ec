"""Class balancing for any classifier: effective-number re-weighting and balanced sampling.

- :class:`ClassBalancedWeighting` fits any scikit-learn classifier with the
  class-balanced ``sample_weight`` of Cui et al., "Class-Balanced Loss Based on
  Effective Number of Samples", CVPR 2019 (weights from
  :mod:`dp_sklearn.losses.class_balanced`).
- :class:`~dp_sklearn.data.samplers.ClassBalancedSampler` /
  :class:`~dp_sklearn.data.samplers.ClassBalancedBatchSampler` (batching, so they live in
  :mod:`dp_sklearn.data.samplers`; re-exported here) are the alternative to re-weighting for
  the torch estimators.
"""

from __future__ import annotations

import inspect
from numbers import Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    _fit_context,
    clone,
)
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if

from .._compat import HasMethods, Interval
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    _routing_enabled,
    process_routing,
)
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)
from ..data.samplers import ClassBalancedBatchSampler, ClassBalancedSampler  # noqa: F401  (their old home)
from ..losses.class_balanced import class_balanced_weights

__all__ = ["ClassBalancedBatchSampler", "ClassBalancedSampler", "ClassBalancedWeighting"]


def _inner_has(attr):
    """``available_if`` check: the fitted (else the unfitted) inner estimator has ``attr``."""

    def check(self):
        inner = self.estimator_ if hasattr(self, "estimator_") else self.estimator
        getattr(inner, attr)
        return True

    return check


def _accepts_sample_weight(estimator):
    try:
        params = inspect.signature(estimator.fit).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return "sample_weight" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


class ClassBalancedWeighting(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Fit any classifier with class-balanced sample weights (Cui et al., CVPR 2019).

    Each training sample gets the weight of its class,
    :math:`w_c = (1-\\beta)/(1-\\beta^{n_c})` normalised to :math:`\\sum_c w_c = C`,
    multiplied by the ``sample_weight`` given to :meth:`fit` if any. The class counts
    :math:`n_c` are the sums of the given sample weights per class (the plain counts
    without ``sample_weight``), so an integer weight ``k`` is the same as repeating a
    sample ``k`` times. The weights are passed as ``sample_weight`` to a clone of
    ``estimator``; prediction methods are the inner estimator's.

    Parameters
    ----------
    estimator : classifier
        Any classifier whose ``fit`` accepts ``sample_weight`` (or a ``Pipeline``
        whose last step does). Cloned at fit time.
    beta : float in [0, 1), default=0.999
        Effective-number hyper-parameter: ``0`` = no re-weighting, ``-> 1`` =
        inverse-frequency weighting. The paper searches ``{0.9, 0.99, 0.999,
        0.9999}``.

    Attributes
    ----------
    estimator_ : classifier
        The fitted clone of ``estimator``.
    classes_ : ndarray of shape (n_classes,)
        Class labels (the inner estimator's ``classes_``).
    class_weight_ : ndarray of shape (n_classes,)
        Class-balanced weight of each class of ``classes_``; sums to ``n_classes``.
    class_counts_ : ndarray of shape (n_classes,)
        (Weighted) number of training samples of each class.
    n_features_in_ : int
        From the inner estimator, where it has one.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        From the inner estimator, where it has one.

    Notes
    -----
    Extra ``fit`` keyword arguments (e.g. ``masks=`` for the mask-guided estimators)
    go to the inner estimator's ``fit``: as they are without metadata routing, and
    through :func:`~sklearn.utils.metadata_routing.process_routing` when
    ``sklearn.set_config(enable_metadata_routing=True)`` (then the inner estimator
    must request them, e.g. ``set_fit_request(masks=True)``). The class-balanced
    ``sample_weight`` is always passed to the inner estimator directly; for an inner
    ``Pipeline`` it goes to the last step (``<last>__sample_weight``) without
    routing, and with routing enabled the pipeline's last step must request
    ``sample_weight``. To receive a user ``sample_weight`` from a routing
    ``cross_validate``/``GridSearchCV``, call ``set_fit_request(sample_weight=True)``
    on this wrapper.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.metrics import balanced_accuracy_score
    >>> from dp_sklearn.estimators.class_balanced import ClassBalancedWeighting
    >>> X, y = make_classification(n_samples=600, weights=[0.9], random_state=0)
    >>> clf = ClassBalancedWeighting(LogisticRegression(), beta=0.999).fit(X, y)
    >>> clf.classes_, clf.class_counts_
    (array([0, 1]), array([539.,  61.]))
    >>> clf.class_weight_.round(3)
    array([0.249, 1.751])
    >>> plain = LogisticRegression().fit(X, y)
    >>> round(balanced_accuracy_score(y, plain.predict(X)), 3)
    0.933
    >>> round(balanced_accuracy_score(y, clf.predict(X)), 3)
    0.972
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"])],
        "beta": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(self, estimator, beta=0.999):
        self.estimator = estimator
        self.beta = beta

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags.sparse = inner.input_tags.sparse
        tags.input_tags.allow_nan = inner.input_tags.allow_nan
        tags.input_tags.pairwise = inner.input_tags.pairwise
        tags.input_tags.string = inner.input_tags.string
        tags.input_tags.categorical = inner.input_tags.categorical
        tags.non_deterministic = inner.non_deterministic
        return tags

    def get_metadata_routing(self):
        """Metadata routing: ``sample_weight`` is consumed here, other ``fit`` metadata
        goes to the inner estimator's ``fit``.

        Returns
        -------
        routing : MetadataRouter
        """
        return (
            MetadataRouter(owner=self)
            .add_self_request(self)
            .add(
                estimator=self.estimator,
                method_mapping=MethodMapping().add(caller="fit", callee="fit"),
            )
        )

    def _fit_inner(self, estimator, X, y, sample_weight, params):
        if isinstance(estimator, Pipeline) and not _routing_enabled():
            name, last = estimator.steps[-1]
            if last == "passthrough" or not _accepts_sample_weight(last):
                raise TypeError(
                    f"The last step {name!r} of the pipeline does not accept "
                    "sample_weight in fit; ClassBalancedWeighting needs it. Use "
                    "ClassBalancedSampler or an imbalanced-learn resampler instead."
                )
            return estimator.fit(X, y, **{f"{name}__sample_weight": sample_weight}, **params)
        if not isinstance(estimator, Pipeline) and not _accepts_sample_weight(estimator):
            raise TypeError(
                f"{type(estimator).__name__}.fit does not accept sample_weight; "
                "ClassBalancedWeighting needs it. Use ClassBalancedSampler or an "
                "imbalanced-learn resampler instead."
            )
        return estimator.fit(X, y, sample_weight=sample_weight, **params)

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None, **fit_params):
        """Fit a clone of ``estimator`` with class-balanced sample weights.

        Parameters
        ----------
        X : array-like, sparse matrix or sequence of shape (n_samples, ...)
            Training inputs, validated by the inner estimator.
        y : array-like of shape (n_samples,)
            Class labels, at least two classes.
        sample_weight : array-like of shape (n_samples,), default=None
            Multiplied with the class-balanced weights; also weights the class
            counts.
        **fit_params : dict
            Passed to the inner estimator's ``fit`` (routed when metadata routing is
            enabled).

        Returns
        -------
        self : ClassBalancedWeighting
        """
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        if y.shape[0] == 0:
            raise ValueError(
                "Found array with 0 sample(s) (shape=(0,)) while a minimum of 1 is "
                "required by ClassBalancedWeighting."
            )
        check_classification_targets(y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, y, dtype=np.float64, ensure_non_negative=True
            )
        classes = np.unique(y)
        if classes.shape[0] < 2:
            raise ValueError(
                f"y has only one class ({classes[0]}); ClassBalancedWeighting needs "
                "samples of at least two classes."
            )
        # Raises a ValueError naming the class when a class has zero (weighted) samples.
        class_weight = class_balanced_weights(
            y, self.beta, classes=classes, sample_weight=sample_weight
        )
        idx = np.searchsorted(classes, y)
        cb_weight = class_weight[idx]
        if sample_weight is not None:
            counts = np.bincount(idx, weights=sample_weight, minlength=classes.shape[0])
            cb_weight = cb_weight * sample_weight
        else:
            counts = np.bincount(idx, minlength=classes.shape[0]).astype(np.float64)

        if _routing_enabled():
            params = process_routing(self, "fit", **fit_params)["estimator"]["fit"]
        else:
            params = fit_params

        estimator = clone(self.estimator)
        self._fit_inner(estimator, X, y, cb_weight, params)
        self.estimator_ = estimator
        self.classes_ = getattr(estimator, "classes_", classes)
        self.class_counts_ = counts
        self.class_weight_ = class_weight
        return self

    @property
    def n_features_in_(self):
        """Number of features seen by the inner estimator during fit."""
        try:
            return self.estimator_.n_features_in_
        except AttributeError as exc:
            raise AttributeError(
                f"{type(self).__name__} has no attribute 'n_features_in_' (not fitted, "
                "or the inner estimator does not define it)."
            ) from exc

    @property
    def feature_names_in_(self):
        """Feature names seen by the inner estimator during fit."""
        try:
            return self.estimator_.feature_names_in_
        except AttributeError as exc:
            raise AttributeError(
                f"{type(self).__name__} has no attribute 'feature_names_in_'."
            ) from exc

    @available_if(_inner_has("predict"))
    def predict(self, X):
        """Predict class labels with the inner estimator.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.estimator_.predict(X)

    @available_if(_inner_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities from the inner estimator, columns in ``classes_`` order.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    @available_if(_inner_has("predict_log_proba"))
    def predict_log_proba(self, X):
        """Log class probabilities from the inner estimator.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        return self.estimator_.predict_log_proba(X)

    @available_if(_inner_has("decision_function"))
    def decision_function(self, X):
        """Decision function of the inner estimator.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        check_is_fitted(self)
        return self.estimator_.decision_function(X)
