"""scikit-learn's estimator checks on the six torch estimators (ClassBalancedWeighting has its own,
all passing, in test_class_balanced.py).

The checks feed 2-D tabular arrays ``(n, d)``; the estimators take images ``(n, H, W)`` and their
tags say they reject 2-D input, so scikit-learn would skip every check without a word. To run the
checks for real, the test subclasses below read a 2-D array as ``n`` images of one row of ``d``
pixels and claim the ``two_d_array`` tag; nothing else changes. Targets are the estimators' own
business: their tags tell scikit-learn what to feed (MultiLabelMetricClassifier's say multi-label,
multi-output only, so it gets ``(n, 1)`` 0/1 indicator columns). Every check must pass except those
in ``EXPECTED_FAILURES``, scikit-learn's ``expected_failed_checks``, each listed with the reason it
cannot apply to image data or to a skorch net; a listed check that starts passing, or that
scikit-learn no longer runs, is reported too, so the list stays true.
"""

import warnings

import numpy as np
import pytest
from sklearn.utils.estimator_checks import check_estimator

from dp_sklearn.estimators import (
    ContrastivePretrainer,
    DeepPneumoniaClassifier,
    LocalDiscriminationPretrainer,
    MaskAttentionClassifier,
    MultiLabelMetricClassifier,
    RadiomicsContrastiveClassifier,
)


def _as_images(X):
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "biuf":
        return X[:, None, :]
    return X


class _TabularAsImages:
    """Mixin: 2-D ``(n, d)`` input is read as ``n`` one-row images ``(1, d)``."""

    def fit(self, X, y=None, **kwargs):
        return super().fit(_as_images(X), y, **kwargs)

    def transform(self, X):
        return super().transform(_as_images(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags


class _ClassifierOnTabularAsImages(_TabularAsImages):
    """Mixin: the classifier methods read 2-D input as one-row images too."""

    def predict(self, X):
        return super().predict(_as_images(X))

    def predict_proba(self, X):
        return super().predict_proba(_as_images(X))

    def score(self, X, y, sample_weight=None):
        return super().score(_as_images(X), y, sample_weight=sample_weight)


class CheckedMaskAttention(_ClassifierOnTabularAsImages, MaskAttentionClassifier):
    pass


class CheckedPretrainer(_TabularAsImages, ContrastivePretrainer):
    pass


class CheckedDeepPneumonia(_ClassifierOnTabularAsImages, DeepPneumoniaClassifier):
    pass


class CheckedRadiomics(_ClassifierOnTabularAsImages, RadiomicsContrastiveClassifier):
    pass


class CheckedMultiLabel(_ClassifierOnTabularAsImages, MultiLabelMetricClassifier):
    def decision_function(self, X):
        return super().decision_function(_as_images(X))


def _as_square_images(X, side=16):
    """Local discrimination needs 16 pixels a side: a row of ``d`` values is tiled to ``side x side``."""
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "biuf":
        reps = -(-side // X.shape[1])
        return np.tile(X[:, None, :], (1, side, reps))[:, :, :side]
    return X


class CheckedLocalDiscrimination(LocalDiscriminationPretrainer):
    def fit(self, X, y=None, **kwargs):
        return super().fit(_as_square_images(X), y, **kwargs)

    def transform(self, X):
        return super().transform(_as_square_images(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags


TINY = dict(backbone="resnet10_half", image_size=None, max_epochs=1, batch_size=8, verbose=0, random_state=0)

IMAGE_ONLY = "image estimator: rejects this input with its own clear error, not the tabular wording the check expects"
SKORCH_INIT = "skorch's NeuralNet.__init__ sets history_, initialized_, virtual_params_ (skorch's design)"
SKORCH_PARAMS = "skorch validates and routes double-underscore parameters its own way in set_params"
NOT_TABULAR = "n_features_in_ has no meaning for images of any size; the estimators do not set it"
ANY_SIZE = "a CNN takes images of any size, so a different width at transform time is not an error"

EXPECTED_FAILURES = {
    "ContrastivePretrainer": {
        "check_no_attributes_set_in_init": SKORCH_INIT,
        "check_do_not_raise_errors_in_init_or_set_params": SKORCH_PARAMS,
        "check_set_params": SKORCH_PARAMS,
        "check_n_features_in_after_fitting": NOT_TABULAR,
        "check_n_features_in": NOT_TABULAR,
        "check_complex_data": IMAGE_ONLY,
        "check_dtype_object": IMAGE_ONLY,
        "check_estimators_empty_data_messages": IMAGE_ONLY,
        "check_fit2d_1sample": IMAGE_ONLY,
        "check_estimator_sparse_tag": IMAGE_ONLY,
        "check_estimator_sparse_array": IMAGE_ONLY,
        "check_estimator_sparse_matrix": IMAGE_ONLY,
        "check_transformer_data_not_an_array": IMAGE_ONLY,
        "check_fit_score_takes_y": IMAGE_ONLY,
        "check_fit2d_predict1d": IMAGE_ONLY,
        "check_transformer_preserve_dtypes": "embeddings are float32 whatever the pixel dtype (torch computes in float32)",
    },
}
EXPECTED_FAILURES["MaskAttentionClassifier"] = {
    **{k: v for k, v in EXPECTED_FAILURES["ContrastivePretrainer"].items()
       if k not in ("check_transformer_preserve_dtypes", "check_do_not_raise_errors_in_init_or_set_params")},
    "check_estimators_partial_fit_n_features": "partial_fit is skorch's internal warm-start step, fed by fit",
    "check_fit_score_takes_y": "partial_fit is skorch's internal warm-start step, fed by fit",
    "check_transformer_general": ANY_SIZE,
    "check_classifier_data_not_an_array": IMAGE_ONLY,
    "check_classifiers_train": IMAGE_ONLY,
    "check_supervised_y_2d": "y is label-encoded; a column vector is accepted without a DataConversionWarning",
    "check_transformer_data_not_an_array": IMAGE_ONLY,
    "check_fit2d_predict1d": IMAGE_ONLY,
}
EXPECTED_FAILURES["DeepPneumoniaClassifier"] = {
    **{k: v for k, v in EXPECTED_FAILURES["MaskAttentionClassifier"].items()
       if k not in ("check_no_attributes_set_in_init",
                    "check_set_params", "check_estimators_partial_fit_n_features",
                    "check_fit_score_takes_y")},
    "check_transformer_preserve_dtypes": "embeddings are float32 whatever the pixel dtype (torch computes in float32)",
}

EXPECTED_FAILURES["RadiomicsContrastiveClassifier"] = dict(EXPECTED_FAILURES["MaskAttentionClassifier"])
# The multi-label classifier's tags (multi_output, not single_output, multi_label, not multi_class) make
# scikit-learn give it (n, 1) indicator targets, one finding present or absent; these checks bypass that.
CLASS_LABELS = "the check fits 1-D class labels, not a target shaped by the tags; y is a 0/1 indicator matrix"
LABELS_1_2 = "the check's binary target is the labels {1, 2}; an indicator matrix holds 0/1 only"
EXPECTED_FAILURES["MultiLabelMetricClassifier"] = {
    **{k: EXPECTED_FAILURES["MaskAttentionClassifier"][k] for k in (
        "check_no_attributes_set_in_init", "check_set_params", "check_n_features_in_after_fitting",
        "check_n_features_in", "check_complex_data", "check_dtype_object", "check_estimators_empty_data_messages",
        "check_estimator_sparse_tag", "check_estimator_sparse_array", "check_estimator_sparse_matrix",
        "check_fit_score_takes_y", "check_estimators_partial_fit_n_features", "check_classifier_data_not_an_array",
        "check_classifiers_train", "check_transformer_data_not_an_array", "check_fit2d_predict1d")},
    "check_fit2d_1sample": "one image: torch's BatchNorm cannot train on a batch of one and says so in its own words",
    "check_estimators_dtypes": LABELS_1_2,
    "check_fit2d_1feature": LABELS_1_2,
    "check_classifiers_one_label_sample_weights": CLASS_LABELS,
    "check_classifiers_classes": CLASS_LABELS,
    "check_decision_proba_consistency": CLASS_LABELS,
    "check_transformer_general": CLASS_LABELS,
    "check_transformer_preserve_dtypes": CLASS_LABELS,
    "check_classifier_not_supporting_multiclass": "every 1-D target, binary or multi-class, gets one message pointing to "
                                                  "the indicator format, not the binary-only wording the check expects",
}
CHECKS_SET_N_CLUSTERS = "scikit-learn's checks set n_clusters=1; local discrimination needs at least 2 regions"
EXPECTED_FAILURES["LocalDiscriminationPretrainer"] = {
    **{k: v for k, v in EXPECTED_FAILURES["ContrastivePretrainer"].items() if k != "check_fit2d_predict1d"},
    "check_fit2d_predict1d": CHECKS_SET_N_CLUSTERS,
    "check_dont_overwrite_parameters": CHECKS_SET_N_CLUSTERS,
    "check_fit2d_1feature": CHECKS_SET_N_CLUSTERS,
    "check_estimators_empty_data_messages": "the test's tabular-to-image adapter cannot tile 0 features",
}

ESTIMATORS = [
    pytest.param(CheckedMaskAttention(**TINY), "MaskAttentionClassifier", id="MaskAttentionClassifier"),
    pytest.param(CheckedPretrainer(**TINY), "ContrastivePretrainer", id="ContrastivePretrainer"),
    pytest.param(CheckedDeepPneumonia(pretrainer=ContrastivePretrainer(max_epochs=1),
                                      classifier=MaskAttentionClassifier(max_epochs=1),
                                      **{k: v for k, v in TINY.items() if k != "max_epochs"}),
                 "DeepPneumoniaClassifier",
                 id="DeepPneumoniaClassifier"),
    pytest.param(CheckedRadiomics(**TINY), "RadiomicsContrastiveClassifier", id="RadiomicsContrastiveClassifier"),
    pytest.param(CheckedMultiLabel(**TINY, embed_dims=(16, 8)), "MultiLabelMetricClassifier",
                 id="MultiLabelMetricClassifier"),
    pytest.param(CheckedLocalDiscrimination(**{**TINY, "patch_grid": 4, "stage1_epochs": 0}),
                 "LocalDiscriminationPretrainer", id="LocalDiscriminationPretrainer"),
]


@pytest.mark.parametrize("estimator, name", ESTIMATORS)
def test_sklearn_estimator_checks(estimator, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, expected_failed_checks=EXPECTED_FAILURES[name], on_fail=None)
    failed = {r["check_name"]: f"{type(r['exception']).__name__}: {r['exception']}"[:300]
              for r in results if r["status"] == "failed"}
    assert not failed, f"checks failing without a listed reason: {failed}"
    # a check (or each of its variants) that passes although listed: the list must stay true
    status = {}
    for r in results:
        status.setdefault(r["check_name"], set()).add(r["status"])
    now_passing = sorted(k for k in EXPECTED_FAILURES[name] if status.get(k) == {"passed"})
    assert not now_passing, f"listed as expected failures but passing: {now_passing}"
    assert set(EXPECTED_FAILURES[name]) <= set(status), "listed checks that scikit-learn no longer runs"
    assert sum(r["status"] == "passed" for r in results) >= 15  # the core API checks really ran
