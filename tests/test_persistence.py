"""Safe persistence (issue 17, "Untrusted files run code"): ``save_model``/``load_model`` round-trip
every torch estimator a user fits with identical outputs, and a model file cannot name code to run.
Tiny arrays, 16 px, one epoch: this is plumbing."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from dp_sklearn.estimators import ContrastivePretrainer, DeepPneumoniaClassifier, MaskAttentionClassifier
from dp_sklearn.persistence import FORMAT, is_model_file, load_model, save_model

COMMON = dict(backbone="resnet10_half", image_size=16, batch_size=4, verbose=0, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.rand(8, 16, 16).astype(np.float32)
    y = np.array(["normal", "pneumonia"] * 4)
    masks = np.zeros((8, 16, 16), dtype=bool)
    masks[::2, 4:10, 4:10] = True
    return X, y, masks


@pytest.fixture(scope="module")
def mask_attention(data):
    X, y, masks = data
    return MaskAttentionClassifier(max_epochs=1, **COMMON).fit(X, y, masks=masks)


def _round_trip(est, tmp_path, name="model.dps"):
    path = save_model(est, tmp_path / name)
    assert is_model_file(path)
    return load_model(path)


def test_mask_attention_round_trip_gives_identical_outputs(mask_attention, data, tmp_path):
    X, _, _ = data
    loaded = _round_trip(mask_attention, tmp_path)
    assert type(loaded) is MaskAttentionClassifier
    assert loaded.get_params()["backbone"] == "resnet10_half" and loaded.optimizer is torch.optim.AdamW
    np.testing.assert_array_equal(loaded.classes_, mask_attention.classes_)
    assert loaded.classes_.dtype == mask_attention.classes_.dtype
    np.testing.assert_array_equal(loaded.predict_proba(X), mask_attention.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), mask_attention.predict(X))
    np.testing.assert_array_equal(loaded.attention_maps(X), mask_attention.attention_maps(X))
    np.testing.assert_array_equal(loaded.transform(X), mask_attention.transform(X))
    assert loaded.history[:, "train_loss"] == mask_attention.history[:, "train_loss"]
    np.testing.assert_array_equal(loaded.class_counts_, mask_attention.class_counts_)


def test_pretrainer_round_trip_gives_identical_embeddings(data, tmp_path):
    X, _, _ = data
    ssl = ContrastivePretrainer(projection_dim=8, hidden_dim=16, max_epochs=1, **COMMON).fit(X)
    loaded = _round_trip(ssl, tmp_path)
    assert loaded.input_size_ == ssl.input_size_ == (16, 16)
    np.testing.assert_array_equal(loaded.transform(X), ssl.transform(X))


def test_deep_pneumonia_round_trip_stores_the_shared_encoder_once(data, tmp_path):
    X, y, masks = data
    est = DeepPneumoniaClassifier(pretrainer=ContrastivePretrainer(projection_dim=8, hidden_dim=16, max_epochs=1),
                                  classifier=MaskAttentionClassifier(max_epochs=1), **COMMON).fit(X, y, masks=masks)
    loaded = _round_trip(est, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(loaded.attention_maps(X), est.attention_maps(X))
    np.testing.assert_array_equal(loaded.transform(X), est.transform(X))
    # The classifier warm-started from the pre-trainer: one object, saved once, one object again.
    assert loaded.classifier_.encoder is loaded.pretrainer_
    assert isinstance(loaded.pretrainer, ContrastivePretrainer) and loaded.pretrainer.max_epochs == 1


def test_an_unfitted_estimator_round_trips_its_parameters(tmp_path):
    est = DeepPneumoniaClassifier(classifier=MaskAttentionClassifier(image_size=(24, 16), lr=1e-3))
    loaded = _round_trip(est, tmp_path)
    assert loaded.classifier.image_size == (24, 16) and loaded.classifier.lr == 1e-3
    assert repr(loaded) == repr(est)


def test_an_unzipped_folder_loads(mask_attention, data, tmp_path):
    X, _, _ = data
    path = save_model(mask_attention, tmp_path / "m.dps")
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "unzipped")
    loaded = load_model(tmp_path / "unzipped")
    np.testing.assert_array_equal(loaded.predict_proba(X), mask_attention.predict_proba(X))


def _tamper(path, edit):
    with zipfile.ZipFile(path) as z:
        doc, blob = json.loads(z.read("model.json")), z.read("tensors.safetensors")
    edit(doc)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.json", json.dumps(doc))
        z.writestr("tensors.safetensors", blob)


def test_a_tampered_file_naming_other_code_is_refused(mask_attention, tmp_path, monkeypatch):
    path = save_model(mask_attention, tmp_path / "m.dps")
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))

    def estimator_class(doc):
        doc["estimator"]["class"] = "os.system"

    _tamper(path, estimator_class)
    with pytest.raises(ValueError, match="'os.system', which is not a dp_sklearn estimator: refused"):
        load_model(path)

    for target in ("os.system", "builtins.eval", "torch.load", "dp_sklearn.persistence.load_model"):
        path = save_model(mask_attention, tmp_path / "m.dps")

        def parameter_class(doc, target=target):
            doc["estimator"]["params"]["criterion"] = {"type": "class", "path": target}

        _tamper(path, parameter_class)
        with pytest.raises((TypeError, ValueError), match=f"parameter 'criterion'.*{target}"):
            load_model(path)
    path = save_model(mask_attention, tmp_path / "m.dps")
    _tamper(path, lambda doc: doc["estimator"]["fitted"].update(__class__={"type": "class", "path": "torch.nn.Module"}))
    with pytest.raises(ValueError, match="'__class__' is not a fitted attribute name"):
        load_model(path)
    path = save_model(mask_attention, tmp_path / "m.dps")
    _tamper(path, lambda doc: doc["estimator"].pop("params"))
    with pytest.raises(ValueError, match="malformed dp_sklearn model file"):
        load_model(path)
    assert called == []


def test_a_pickle_is_not_a_model_file_and_is_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps(Evil()))
    assert not is_model_file(evil)
    with pytest.raises(ValueError, match="not a dp_sklearn model file"):
        load_model(evil)
    assert not marker.exists()


def test_parameters_the_format_cannot_store_are_refused_by_name(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from dp_sklearn.estimators import ClassBalancedWeighting

    with pytest.raises(TypeError, match=r"parameter 'backbone' of MaskAttentionClassifier holds a Linear instance"):
        save_model(MaskAttentionClassifier(backbone=torch.nn.Linear(2, 2)), tmp_path / "m.dps")
    with pytest.raises(TypeError, match=r"parameter 'estimator' of ClassBalancedWeighting is a "
                                        r"sklearn\..*LogisticRegression: the safe format stores only dp_sklearn"):
        save_model(ClassBalancedWeighting(LogisticRegression()), tmp_path / "m.dps")
    assert not (tmp_path / "m.dps").exists()  # nothing half-written


def test_the_document_says_what_it_is(mask_attention, tmp_path):
    from dp_sklearn import __version__

    path = save_model(mask_attention, tmp_path / "m.dps")
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["model.json", "tensors.safetensors"]
        doc = json.loads(z.read("model.json"))
    assert doc["format"] == FORMAT and doc["dp_sklearn_version"] == __version__
    assert doc["estimator"]["class"] == "dp_sklearn.estimators.mask_attention.MaskAttentionClassifier"
    assert doc["estimator"]["fitted"]["fitted_classes_"]["data"] == ["normal", "pneumonia"]


def test_the_other_torch_estimators_round_trip(tmp_path):
    from dp_sklearn.estimators import (ClassBalancedWeighting, LocalDiscriminationPretrainer,
                                       MultiLabelMetricClassifier, RadiomicsContrastiveClassifier)

    X = np.random.RandomState(0).rand(12, 32, 32).astype(np.float32)
    y = np.array(["normal", "pneumonia", "covid19"] * 4)
    Y = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]] * 3)
    kw = dict(image_size=32, max_epochs=1, augment=False, verbose=0, device="cpu", random_state=0)
    cases = [
        (MultiLabelMetricClassifier("resnet10_half", label_names=["Effusion", "Mass", "Edema"], batch_size=4, **kw)
         .fit(X, Y), lambda e: [e.predict_proba(X)]),
        (RadiomicsContrastiveClassifier("resnet10_half", batch_size=6, **kw).fit(X, y),
         lambda e: [e.predict_proba(X), *e.localize(X[:2])]),
        (LocalDiscriminationPretrainer(patch_grid=4, batch_size=4, stage1_epochs=0, **kw).fit(X),
         lambda e: [e.transform(X), *e.transform_dense(X[:2])]),
        (ClassBalancedWeighting(MaskAttentionClassifier(backbone="resnet10_half", batch_size=4, **kw)).fit(X, y),
         lambda e: [e.predict_proba(X)]),
    ]
    for i, (est, outputs) in enumerate(cases):
        loaded = _round_trip(est, tmp_path, f"{i}.dps")
        assert type(loaded) is type(est)
        for a, b in zip(outputs(loaded), outputs(est)):
            np.testing.assert_array_equal(a, b)
