"""DeepPneumoniaClassifier in the ecosystem: params, prefit pretrainer, routing of masks per fold,
imbalanced-learn pipelines, persistence and bad input (plumbing on tiny arrays)."""

import pickle

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate

from dp_sklearn import DeepPneumoniaClassifier
from dp_sklearn.estimators import ContrastivePretrainer, ImageResampler, MaskAttentionClassifier

TINY = dict(backbone="resnet10_half", image_size=16, pretrainer=ContrastivePretrainer(max_epochs=1),
            classifier=MaskAttentionClassifier(max_epochs=1), batch_size=8, verbose=0, random_state=0)


@pytest.fixture
def data():
    rng = np.random.RandomState(0)
    X = rng.rand(24, 16, 16).astype(np.float32)
    y = np.array([0, 1, 2] * 8)
    masks = np.zeros((24, 16, 16), dtype=bool)
    for i in range(0, 24, 2):  # each mask is distinct, so a misrouted mask is detectable
        masks[i, i % 12: i % 12 + 4, 2:8] = True
    return X, y, masks


class RecordingDP(DeepPneumoniaClassifier):
    """Records the masks each fit receives (to check per-fold slicing), then fits for real."""

    received = []

    def fit(self, X, y, masks=None, sample_weight=None):
        RecordingDP.received.append((np.asarray(X).copy(), None if masks is None else np.asarray(masks).copy()))
        return super().fit(X, y, masks=masks, sample_weight=sample_weight)


def test_fit_predict_and_outputs(data):
    X, y, masks = data
    clf = DeepPneumoniaClassifier(**TINY).fit(X, y, masks=masks)
    proba = clf.predict_proba(X)
    assert proba.shape == (24, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(1)])
    assert clf.attention_maps(X).shape == (24, 16, 16)
    # the features the head sees: [avg_pool(F), pool(F * A)] for the default pooling
    assert clf.transform(X).shape == (24, clf.classifier_.module_.classifier.in_features)
    assert clf.score(X, y) == accuracy_score(y, clf.predict(X))
    assert isinstance(clf.pretrainer_, ContrastivePretrainer) and len(clf.pretrainer_.history) == 1
    # the stages got the shared parameters, and the classifier warm-started from the fitted pre-trainer
    assert clf.pretrainer_.backbone == clf.classifier_.backbone == "resnet10_half"
    assert clf.classifier_.encoder is clf.pretrainer_ and clf.classifier_.batch_size == 8


def test_string_labels_round_trip(data):
    X, y, masks = data
    labels = np.array(["covid19", "normal", "pneumonia"])[y]
    clf = DeepPneumoniaClassifier(**TINY, pretrain=False).fit(X, labels, masks=masks)
    assert list(clf.classes_) == ["covid19", "normal", "pneumonia"]
    assert set(clf.predict(X)) <= set(labels)


def test_params_flat_and_nested():
    clf = DeepPneumoniaClassifier(pretrainer=ContrastivePretrainer(max_epochs=3), classifier=MaskAttentionClassifier())
    params = clf.get_params(deep=True)
    assert params["pretrainer__max_epochs"] == 3 and params["classifier__attention_weight"] == 5.0
    clf.set_params(pretrainer__max_epochs=5, classifier__attention_weight=0.0)
    assert clf.pretrainer.max_epochs == 5 and clf.classifier.attention_weight == 0.0
    c2 = clone(clf)
    assert c2.get_params()["pretrainer__max_epochs"] == 5 and c2.get_params()["classifier__attention_weight"] == 0.0


def test_nested_params_on_default_stages():
    # with the stages left at None, a nested parameter first puts the default stage there
    clf = DeepPneumoniaClassifier().set_params(classifier__backbone_kwargs={"stem_stride": 1},
                                               pretrainer__max_epochs=2)
    assert isinstance(clf.classifier, MaskAttentionClassifier) and clf.classifier.backbone_kwargs == {"stem_stride": 1}
    assert isinstance(clf.pretrainer, ContrastivePretrainer) and clf.pretrainer.max_epochs == 2
    assert clf.pretrainer.batch_size == 64  # the default pre-trainer of DeepPneumoniaClassifier()


def test_every_classifier_option_reaches_the_fitted_classifier(data):
    X, y, masks = data
    clf = DeepPneumoniaClassifier(**{**TINY, "pretrain": False}).set_params(
        classifier__mask_downsample="max", classifier__dropout=0.25, classifier__projection_dim=8)
    clf.fit(X, y, masks=masks)
    fitted = clf.classifier_
    assert (fitted.mask_downsample, fitted.dropout, fitted.projection_dim) == ("max", 0.25, 8)
    linears = [m for m in fitted.module_.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[-1].out_features == 8 and fitted.module_.dropout.p == 0.25


def test_classifier_params_validated_before_pretraining(data, monkeypatch):
    X, y, masks = data
    started = []
    monkeypatch.setattr(ContrastivePretrainer, "fit", lambda self, *a, **k: started.append(1) or self)
    clf = DeepPneumoniaClassifier(**{**TINY, "classifier": MaskAttentionClassifier(attention_weight=-1.0)})
    with pytest.raises(ValueError, match="attention_weight"):
        clf.fit(X, y, masks=masks)
    assert not started and not hasattr(clf, "pretrainer_")


def test_prefit_pretrainer_is_used_as_is(data):
    X, y, masks = data
    pre = ContrastivePretrainer(backbone="resnet10_half", image_size=16, max_epochs=1, batch_size=8, verbose=0,
                                random_state=0).fit(X)
    n_epochs = len(pre.history)
    clf = DeepPneumoniaClassifier(**{**TINY, "pretrainer": pre}).fit(X, y, masks=masks)
    assert clf.pretrainer_ is pre and len(pre.history) == n_epochs  # not refitted


def test_cross_validate_routes_each_folds_masks(data):
    X, y, masks = data
    groups = np.arange(24) // 2
    RecordingDP.received = []
    with sklearn.config_context(enable_metadata_routing=True):
        est = RecordingDP(**TINY, pretrain=False).set_fit_request(masks=True)
        cross_validate(est, X, y, cv=GroupKFold(3), params={"masks": masks, "groups": groups})
    assert len(RecordingDP.received) == 3
    for X_fold, m_fold in RecordingDP.received:
        rows = [int(np.flatnonzero((X == x).all(axis=(1, 2)))[0]) for x in X_fold]
        np.testing.assert_array_equal(m_fold, masks[rows])  # exactly this fold's rows' masks


def test_grid_search_routes_masks(data):
    X, y, masks = data
    RecordingDP.received = []
    with sklearn.config_context(enable_metadata_routing=True):
        est = RecordingDP(**TINY, pretrain=False).set_fit_request(masks=True)
        gs = GridSearchCV(est, {"classifier__attention_weight": [0.0, 1.0]}, cv=2, scoring="accuracy")
        gs.fit(X, y, masks=masks)
    assert list(gs.cv_results_["param_classifier__attention_weight"]) == [0.0, 1.0]
    best = gs.best_params_["classifier__attention_weight"]
    assert gs.best_estimator_.classifier_.attention_weight == best  # the nested value reached the fitted stage
    assert len(RecordingDP.received) == 2 * 2 + 1  # 2 candidates x 2 folds + refit
    for X_fold, m_fold in RecordingDP.received:
        rows = [int(np.flatnonzero((X == x).all(axis=(1, 2)))[0]) for x in X_fold]
        np.testing.assert_array_equal(m_fold, masks[rows])


def test_imblearn_pipeline_with_image_resampler(data):
    from imblearn.pipeline import make_pipeline
    from imblearn.under_sampling import RandomUnderSampler

    X, y, _ = data
    X, y = X[:20], np.r_[np.zeros(14, int), np.ones(6, int)]
    pipe = make_pipeline(ImageResampler(RandomUnderSampler(random_state=0)), DeepPneumoniaClassifier(**TINY))
    pipe.fit(X, y)
    assert pipe[-1].classifier_.class_counts_.tolist() == [6, 6]  # balanced before the classifier saw it
    assert pipe.predict(X).shape == (20,)  # sampling happens during fit only


def test_persistence_round_trip(data, tmp_path):
    X, y, masks = data
    clf = DeepPneumoniaClassifier(**TINY).fit(X, y, masks=masks)
    expected = clf.predict_proba(X)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(clf)).predict_proba(X), expected, atol=1e-6)
    joblib.dump(clf, tmp_path / "model.joblib")
    np.testing.assert_allclose(joblib.load(tmp_path / "model.joblib").predict_proba(X), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(y=np.zeros(24)), ValueError, "single class"),
        (dict(y=np.array([0, 1] * 5)), ValueError, "labels"),
        (dict(masks=np.zeros((24, 8, 8), bool)), ValueError, "spatial shape"),
        (dict(masks=np.full((24, 16, 16), 3)), ValueError, "values"),
        (dict(X=np.full((24, 16, 16), np.nan)), ValueError, "NaN"),
        (dict(X=np.zeros((0, 16, 16))), ValueError, "at least 1"),
    ],
)
def test_bad_input_never_half_fits(data, kwargs, error, match):
    X, y, masks = data
    args = dict(X=X, y=y, masks=masks)
    args.update(kwargs)
    clf = DeepPneumoniaClassifier(**TINY)
    with pytest.raises(error, match=match):
        clf.fit(args["X"], args["y"], masks=args["masks"])
    assert not hasattr(clf, "classifier_") and not hasattr(clf, "classes_")


def test_partial_masks_list_with_none(data):
    X, y, masks = data
    mask_list = [m if i % 3 == 0 else None for i, m in enumerate(masks)]
    clf = DeepPneumoniaClassifier(**TINY, pretrain=False).fit(X, y, masks=mask_list)
    assert clf.classifier_.n_masks_ == sum(1 for i in range(24) if i % 3 == 0 and masks[i].any())


def test_score_rejects_unseen_labels(data):
    X, y, masks = data
    clf = DeepPneumoniaClassifier(**TINY, pretrain=False).fit(X, y)
    with pytest.raises(ValueError, match="not seen"):
        clf.score(X, np.full(24, 7))


def test_unfitted_errors():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        DeepPneumoniaClassifier().predict(np.zeros((2, 16, 16)))
