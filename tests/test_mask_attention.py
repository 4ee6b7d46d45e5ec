"""Plumbing of MaskAttentionClassifier on tiny arrays: shapes, params, routing, mask slicing,
the plain-CNN equivalence, bad input, persistence. Learning on real data is in
test_mask_attention_learning.py."""

import math
import os
import pickle
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import Pipeline

from dp_sklearn.data.dataset import XRayDataset
from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier
from dp_sklearn.losses.attention import AttentionBCELoss, AttentionDiceLoss, lesion_contrastive_pairs
from dp_sklearn.metrics import lesion_focus
from dp_sklearn.nn.attention import MaskAttentionNet
from dp_sklearn.nn.backbones import build_backbone
from dp_sklearn.utils.device import seed_everything

TINY = dict(backbone="resnet10_half", image_size=32, max_epochs=1, batch_size=4, verbose=0, random_state=0, device="cpu")


def make(**kw):
    return MaskAttentionClassifier(**{**TINY, **kw})


@pytest.fixture
def data(tiny_images):
    X, y, masks = tiny_images
    return X, np.array(["covid19", "normal", "pneumonia"])[y], masks


# ------------------------------------------------------------------ shapes and API
def test_fit_predict_shapes_and_labels(data):
    X, y, masks = data
    clf = make(max_epochs=2).fit(X, y, masks=masks)
    assert clf.fit(X, y, masks=masks) is clf
    assert list(clf.classes_) == ["covid19", "normal", "pneumonia"]
    proba = clf.predict_proba(X)
    assert proba.shape == (12, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(1)])
    assert clf.transform(X).shape == (12, 2 * clf.module_.out_channels)  # [avg_pool(F), pool(F * A)]
    assert clf.score(X, y) == np.mean(clf.predict(X) == y)
    assert clf.n_masks_ == 6
    for term in ("cls_loss", "align_loss", "contrast_loss"):  # the loss terms are visible per epoch
        assert np.isfinite(clf.history[-1, term])
    assert clf.history[-1, "align_loss"] > 0 and clf.history[-1, "contrast_loss"] > 0


@pytest.mark.parametrize("shape", [(12, 32, 32), (12, 1, 32, 32), (12, 32, 32, 1)])
def test_attention_maps_range_and_input_resolution(data, shape):
    X, y, masks = data
    clf = make(image_size=16).fit(X, y, masks=masks)
    att = clf.attention_maps(X.reshape(shape))  # no masks at prediction
    assert att.shape == (12, 32, 32) and att.dtype == np.float32  # the input's resolution, not image_size
    assert att.min() >= 0.0 and att.max() <= 1.0


@pytest.mark.parametrize("loss_type", ["sigmoid", "focal"])
def test_sigmoid_losses_give_normalised_probabilities(data, loss_type):
    X, y, masks = data
    clf = make(loss_type=loss_type).fit(X, y, masks=masks)
    np.testing.assert_allclose(clf.predict_proba(X).sum(1), 1, atol=1e-5)
    groups = clf.optimizer_.param_groups
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    decay = [p for g in groups if g["weight_decay"] > 0.0 for p in g["params"]]
    assert any(p is clf.module_.classifier.bias for p in no_decay)  # the prior-initialised bias keeps its prior
    assert all(p.ndim <= 1 for p in no_decay) and all(p.ndim > 1 for p in decay) and decay


@pytest.mark.parametrize("variant", [dict(hard_attention="replace"), dict(alignment_loss="bce"),
                                     dict(pooling="avg"), dict(mask_downsample="max"), dict(alignment_loss="bce+dice")])
def test_variants_fit(data, variant):
    X, y, masks = data
    assert make(**variant).fit(X, y, masks=masks).predict_proba(X).shape == (12, 3)


def test_get_set_params_clone(data):
    X, y, masks = data
    clf = make(attention_weight=0.5, backbone_kwargs={"stem_stride": 1})
    params = clf.get_params()
    assert params["attention_weight"] == 0.5 and params["backbone"] == "resnet10_half"
    clf.set_params(contrastive_weight=0.0, temperature=0.2)
    assert clf.contrastive_weight == 0.0 and clf.temperature == 0.2
    cloned = clone(clf)
    assert cloned.get_params()["temperature"] == 0.2
    assert not hasattr(cloned, "module_")
    # nn.Module parameters (backbone instance, encoder) are accepted by __init__, set_params and clone.
    module_params = make(backbone=build_backbone("resnet10_half"), encoder=build_backbone("resnet10_half"))
    clone(module_params).set_params(encoder=None)
    clf.fit(X, y, masks=masks)
    assert clone(clf).get_params()["contrastive_weight"] == 0.0


def test_sample_weight_multiplies_classification_loss(data):
    X, y, masks = data
    ref = make(attention_weight=0, contrastive_weight=0, class_balance_beta=0).fit(X, y)
    ones = make(attention_weight=0, contrastive_weight=0, class_balance_beta=0).fit(X, y, sample_weight=np.ones(12))
    np.testing.assert_allclose(ones.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    zeros_half = np.r_[np.ones(6), np.zeros(6)]
    other = make(attention_weight=0, contrastive_weight=0, class_balance_beta=0).fit(X, y, sample_weight=zeros_half)
    assert not np.allclose(other.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    with pytest.raises(ValueError, match="sample_weight"):
        make().fit(X, y, sample_weight=-np.ones(12))


def test_warm_start_from_encoder(data):
    X, y, masks = data
    seed_everything(1)
    enc = build_backbone("resnet10_half")
    clf = make(encoder=enc, max_epochs=1, lr=0.0)  # lr 0: the weights stay the encoder's
    clf.fit(X, y)
    for (name, p), (_, q) in zip(enc.named_parameters(), clf.module_.backbone.named_parameters()):
        torch.testing.assert_close(p.detach(), q.detach().cpu(), msg=name)  # BN statistics do move
    assert clf.module_.backbone is not enc  # copied, the encoder is not trained in place

    class Fitted:  # duck-typed fitted ContrastivePretrainer
        encoder_ = enc

    make(encoder=Fitted()).fit(X, y)
    with pytest.raises(ValueError, match="do not fit the backbone"):
        make(encoder=build_backbone("resnet18")).fit(X, y)

    class Unfitted:
        def fit(self, X):
            return self

    with pytest.raises(ValueError, match="unfitted"):
        make(encoder=Unfitted()).fit(X, y)


# ------------------------------------------------------------------ metadata routing
def test_set_fit_request_and_cross_validate_routing(data):
    X, y, masks = data
    seen = []

    class Recording(MaskAttentionClassifier):
        def fit(self, X, y, masks=None, sample_weight=None):
            seen.append((len(X), None if masks is None else np.asarray(masks).copy(), X.copy()))
            return super().fit(X, y, masks=masks, sample_weight=sample_weight)

    groups = np.arange(12) // 4
    with sklearn.config_context(enable_metadata_routing=True):
        clf = Recording(**TINY).set_fit_request(masks=True)
        assert clf._get_metadata_request().fit.requests["masks"] is True
        res = cross_validate(Pipeline([("clf", clf)]), X, y, cv=GroupKFold(3),
                             params={"masks": masks, "groups": groups})
    assert np.all(np.isfinite(res["test_score"]))
    assert len(seen) == 3
    for n, fold_masks, fold_X in seen:
        assert n == 8 and fold_masks.shape == (8, 32, 32)
        rows = [int(np.flatnonzero((X == img).all(axis=(1, 2)))[0]) for img in fold_X]
        np.testing.assert_array_equal(fold_masks, masks[rows])  # each fold's masks are its images' masks


# ------------------------------------------------------------------ batches get their own masks
class _BatchRecorder(MaskAttentionClassifier):
    """Records, for every training batch, the dataset indices and the masks the module received."""

    def prepare_batch(self, batch, training):
        out = super().prepare_batch(batch, training)
        if training:
            self.__dict__.setdefault("record_", []).append(
                (batch["index"].cpu().numpy(), out["mask"].detach().cpu().numpy()[:, 0],
                 out["has_mask"].cpu().numpy(), out["x"].detach().cpu().numpy()[:, 0])
            )
        return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_batch_receives_its_own_masks(shuffle):
    rng = np.random.RandomState(3)
    n = 22
    X = rng.rand(n, 32, 32).astype(np.float32)
    y = np.arange(n) % 2
    masks = np.zeros((n, 32, 32), dtype=bool)
    for i in range(0, n, 3):  # every mask different: a box whose position encodes the index
        masks[i, i % 16:(i % 16) + 8, (2 * i) % 20:(2 * i) % 20 + 6] = True
    clf = _BatchRecorder(**{**TINY, "augment": False, "max_epochs": 3, "batch_size": 5,
                            "iterator_train__shuffle": shuffle})
    clf.fit(X, y, masks=masks)
    record = clf.record_
    seen = np.concatenate([idx for idx, *_ in record])
    assert len(record) == 3 * 5 and sorted(seen.tolist()) == sorted(list(range(n)) * 3)
    orders = [np.concatenate([r[0] for r in record[k * 5:(k + 1) * 5]]) for k in range(3)]
    if shuffle:
        assert not all(np.array_equal(o, np.arange(n)) for o in orders)  # the batches were shuffled
    else:
        assert all(np.array_equal(o, np.arange(n)) for o in orders)
    for idx, batch_masks, has, batch_x in record:
        np.testing.assert_array_equal(batch_x, X[idx])
        np.testing.assert_array_equal(batch_masks, masks[idx].astype(np.float32))
        np.testing.assert_array_equal(has, masks[idx].any(axis=(1, 2)))


def test_masks_move_with_images_under_augmentation():
    rng = np.random.RandomState(4)
    X = rng.rand(8, 32, 32).astype(np.float32) * 0.2
    masks = np.zeros((8, 32, 32), dtype=bool)
    masks[:, 10:22, 6:18] = True
    X[masks] = 1.0  # the lesion is the bright square: after any geometric op the mask must cover it
    clf = _BatchRecorder(**{**TINY, "augment": {"intensity": False}, "max_epochs": 2})
    clf.fit(X, np.arange(8) % 2, masks=masks)
    for _, batch_masks, has, batch_x in clf.record_:
        for m, x in zip(batch_masks, batch_x):
            if m.sum() > 4:
                assert x[m > 0.5].mean() > 0.8 and x[m < 0.5].mean() < 0.4


# ------------------------------------------------------------------ the plain-CNN equivalence
def _plain_loop(X, y, epochs, batch_size, lr, weight_decay, pooling):
    """A hand-written PyTorch training loop of the same network with cross-entropy."""
    seed_everything(0)
    net = MaskAttentionNet(build_backbone("resnet10_half", in_channels=1), n_classes=3, hard_attention="none",
                           pooling=pooling)
    matrices = [p for p in net.parameters() if p.ndim > 1]
    vectors = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": matrices}, {"params": vectors, "weight_decay": 0.0}],
                            lr=lr, weight_decay=weight_decay)
    ds = XRayDataset(X, y=y, image_size=(32, 32))
    total = epochs * -(-len(ds) // batch_size)
    warm = round(0.1 * total)
    # linear warm-up over 10% of the steps, then a half cosine to 0, set before each step
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (t + 1) / warm if t < warm else 0.5 * (1 + math.cos(math.pi * min(1, (t - warm) / (total - warm)))))
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        for inputs, target in torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True):
            opt.zero_grad()
            logits, _ = net(inputs["x"])
            loss_fn(logits, target).backward()
            opt.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        logits, _ = net(torch.from_numpy(X)[:, None])
    return torch.softmax(logits, 1).numpy()


@pytest.mark.parametrize("pooling", ["attention", "avg"])
def test_zero_weights_equal_plain_cnn_and_ignore_masks(data, pooling):
    X, y, masks = data
    kw = dict(attention_weight=0.0, contrastive_weight=0.0, class_balance_beta=0.0, augment=False,
              label_smoothing=0.0, tta=0, precision="float32",  # the reference loop runs in float32
              max_epochs=2, lr=1e-3, weight_decay=1e-4, pooling=pooling)
    with_masks = make(**kw).fit(X, y, masks=masks).predict_proba(X)
    without = make(**kw).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(with_masks, without)
    reference = _plain_loop(X, np.searchsorted(np.unique(y), y), 2, 4, 1e-3, 1e-4, pooling)
    np.testing.assert_allclose(with_masks, reference, rtol=0, atol=1e-6)


def test_same_seed_same_numbers(data):
    X, y, masks = data
    a = make(max_epochs=2).fit(X, y, masks=masks).predict_proba(X)
    b = make(max_epochs=2).fit(X, y, masks=masks).predict_proba(X)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ bad input
def test_bad_masks_raise_before_fitting(data):
    X, y, masks = data
    clf = make()
    with pytest.raises(ValueError, match="spatial shape"):
        clf.fit(X, y, masks=masks[:, :16, :16])
    with pytest.raises(ValueError, match="one to one"):
        clf.fit(X, y, masks=masks[:10])
    bad = masks.astype(np.uint8) * 3
    with pytest.raises(ValueError, match="only"):
        clf.fit(X, y, masks=bad)
    with pytest.raises(ValueError, match="single class"):
        clf.fit(X, np.zeros(12))
    with pytest.raises(ValueError, match="12 images but y has 11"):
        clf.fit(X, y[:11])
    with pytest.raises(ValueError, match="attention_weight"):
        make(attention_weight=-1).fit(X, y)
    with pytest.raises(ValueError, match="hard_attention"):
        make(hard_attention="soft").fit(X, y)
    assert not hasattr(clf, "module_") and not hasattr(clf, "classes_")  # nothing half-fitted


def test_masks_with_255_bool_and_none_entries(data):
    X, y, masks = data
    make().fit(X, y, masks=masks.astype(np.uint8) * 255)
    listed = [m if i % 2 == 0 else None for i, m in enumerate(masks)]
    clf = make().fit(X, y, masks=listed)
    assert clf.n_masks_ == 6


def test_all_empty_masks_warn(data):
    X, y, _ = data
    with pytest.warns(UserWarning, match="mask terms .* inactive"):
        clf = make().fit(X, y, masks=np.zeros((12, 32, 32), dtype=bool))
    assert clf.n_masks_ == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(attention_weight=0, contrastive_weight=0).fit(X, y, masks=np.zeros((12, 32, 32), dtype=bool))
        make().fit(X, y)  # no masks at all is normal use, not a warning


def test_unseen_labels_and_unfitted(data):
    X, y, masks = data
    with pytest.raises(Exception, match="not fitted|NotFitted|initialized"):
        make().predict(X)
    clf = make().fit(X, y)
    with pytest.raises(ValueError, match="not seen during fit"):
        clf.score(X, np.array(["other"] * 12))


# ------------------------------------------------------------------ persistence
def test_pickle_and_joblib_round_trip(data, tmp_path):
    X, y, masks = data
    clf = make().fit(X, y, masks=masks)
    expected = clf.predict_proba(X)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), expected)
    np.testing.assert_array_equal(again.attention_maps(X), clf.attention_maps(X))
    joblib.dump(clf, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.get_params()["device"] == "cpu"


@pytest.mark.cuda
def test_fit_on_cuda_with_amp_loads_on_cpu(data, tmp_path):
    X, y, masks = data
    clf = make(device="auto", max_epochs=2).fit(X, y, masks=masks)
    assert clf.device_.startswith("cuda") and clf.amp_dtype_ is not None
    expected = clf.predict_proba(X)
    path = tmp_path / "clf.pkl"
    with open(path, "wb") as f:
        pickle.dump(clf, f)
    np.save(tmp_path / "X.npy", X)
    code = (
        "import pickle, numpy as np, torch; assert not torch.cuda.is_available();"
        f"clf = pickle.load(open({str(path)!r}, 'rb')); X = np.load({str(tmp_path / 'X.npy')!r});"
        f"np.save({str(tmp_path / 'p.npy')!r}, clf.predict_proba(X)); print(clf.device_)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"
    # bf16 autocast on CUDA vs float32 on CPU: equal up to bfloat16 rounding.
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=3e-2)
    assert (np.load(tmp_path / "p.npy").argmax(1) == expected.argmax(1)).mean() >= 0.9


# ------------------------------------------------------------------ loss modules and metric
def test_alignment_losses_prefer_the_mask():
    m = torch.zeros(3, 1, 4, 4)
    m[:, :, 1:3, 1:3] = 1
    good, bad = 8 * (2 * m - 1), -8 * (2 * m - 1)
    for loss in (AttentionBCELoss(), AttentionBCELoss(pos_weight="balanced"), AttentionDiceLoss()):
        assert float(loss(good, m)) < float(loss(torch.zeros_like(m), m)) < float(loss(bad, m))
        valid = torch.tensor([True, False, False])
        logits = bad.clone().requires_grad_(True)
        loss(logits, m, valid).backward()
        assert logits.grad[1:].abs().sum() == 0  # unannotated samples get no gradient
    with pytest.raises(ValueError, match="feature grid"):
        AttentionDiceLoss()(good, m[:, :, :2])


def test_contrastive_pairs():
    pos, valid = lesion_contrastive_pairs(torch.tensor([0, 1, 0]), torch.tensor([True, True, False]))
    # rows: f0 f1 f2 fL0 fL1 fB0 fB1
    assert pos[0, 3] and pos[2, 3] and pos[1, 4] and not pos[0, 4] and not pos[0, 2]
    assert not pos[5].any() and not pos[:, 5].any()  # background: never positive
    assert valid[0, 5] and valid[3, 6] and not valid[0, 2]  # f0/f2 same class: ignored


def test_lesion_focus():
    m = np.zeros((2, 8, 8), dtype=bool)
    m[:, :4, :4] = True
    att = np.ones((2, 8, 8))
    att[1] = m[1]
    focus, area = lesion_focus(att, m)
    np.testing.assert_allclose(focus, [0.25, 1.0])
    np.testing.assert_allclose(area, [0.25, 0.25])
    with pytest.raises(ValueError, match="must match"):
        lesion_focus(att, m[:, :4])


def test_plot_attention(data):
    import matplotlib

    from dp_sklearn.plotting import plot_attention

    X, y, masks = data
    clf = make().fit(X, y, masks=masks)
    fig = plot_attention(X[:3], clf.attention_maps(X[:3]), [masks[0], None, masks[2]], titles=list(y[:3]), n_cols=2)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    with pytest.raises(ValueError, match="same shape"):
        plot_attention(X[:3], clf.attention_maps(X[:2]))


# ------------------------------------------------------------------ attention gradient scale
@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_attention_grad_scale_scales_only_the_backbone_gradient_of_the_attention_branch(scale):
    def grads(s):
        torch.manual_seed(0)
        net = MaskAttentionNet(build_backbone("resnet10_half", in_channels=1), n_classes=3, attention_grad_scale=s)
        torch.nn.init.normal_(net.attention[2].weight)  # a non-uniform map, so the loss has a gradient
        logits, aux = net(torch.rand(2, 1, 32, 32))
        aux["attention_logits"].square().sum().backward()  # a loss on the attention branch only
        backbone = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()  # None: cut off
                              for p in net.backbone.parameters()])
        return logits, backbone, net.attention[2].weight.grad.clone()

    logits_1, backbone_1, branch_1 = grads(1.0)
    logits_s, backbone_s, branch_s = grads(scale)
    torch.testing.assert_close(logits_s, logits_1)  # the forward pass is unchanged
    torch.testing.assert_close(branch_s, branch_1)  # the branch itself learns at full strength
    torch.testing.assert_close(backbone_s, scale * backbone_1, rtol=1e-4, atol=1e-7)
    assert backbone_1.abs().sum() > 0


def test_attention_grad_scale_auto_is_zero_from_a_pretrained_encoder_and_0_2_from_scratch(tiny_images):
    X, y, masks = tiny_images
    kw = dict(backbone="resnet10_half", image_size=32, max_epochs=1, batch_size=6, verbose=0, device="cpu",
              random_state=0)
    scratch = MaskAttentionClassifier(**kw).fit(X, y, masks=masks)
    assert scratch.get_params()["attention_grad_scale"] == "auto"
    assert scratch.module_.attention_grad_scale == 0.2
    warm = MaskAttentionClassifier(**kw, encoder=scratch.module_.backbone).fit(X, y, masks=masks)
    assert warm.module_.attention_grad_scale == 0.0
    assert MaskAttentionClassifier(**kw, attention_grad_scale=0.5).fit(X, y, masks=masks).module_.attention_grad_scale == 0.5
    unguided = MaskAttentionClassifier(**kw, attention_weight=0.0).fit(X, y, masks=masks)
    assert unguided.module_.attention_grad_scale == 1.0  # no alignment: nothing to scale
