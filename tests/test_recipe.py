"""The training recipe: warm-up + cosine per step (exact on resume), label smoothing, test-time views."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skorch.callbacks import Callback

from dp_sklearn.data.augment import TTA_VIEWS, tta_view
from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier
from dp_sklearn.losses.class_balanced import ClassBalancedLoss

TINY = dict(backbone="resnet10_half", image_size=32, batch_size=4, verbose=0, random_state=0, device="cpu")


@pytest.fixture
def data(tiny_images):
    X, y, masks = tiny_images
    return X, y, masks


def _expected_lr(step, total, warmup_share, base):
    warm = round(warmup_share * total)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))


def test_warmup_cosine_follows_the_formula_per_step(data):
    X, y, masks = data
    clf = MaskAttentionClassifier(**TINY, max_epochs=5, lr=0.01, warmup=0.2).fit(X, y, masks=masks)
    total = 5 * 3  # 12 images, batch 4
    # history "lr" is the rate of each epoch's last step
    expected = [_expected_lr(3 * (e + 1) - 1, total, 0.2, 0.01) for e in range(5)]
    np.testing.assert_allclose(clf.history[:, "lr"], expected, rtol=1e-6)
    assert clf.history[0, "lr"] == pytest.approx(0.01)  # warm-up (3 steps) ends with the first epoch
    assert 0 < clf.history[-1, "lr"] < 0.02 * 0.01  # the last step runs at almost 0


def test_resumed_fit_sees_the_uninterrupted_learning_rates(data, tmp_path):
    X, y, masks = data
    full = MaskAttentionClassifier(**TINY, max_epochs=4, lr=0.01).fit(X, y, masks=masks)
    ckpt = str(tmp_path / "ckpt")
    MaskAttentionClassifier(**TINY, max_epochs=4, lr=0.01, checkpoint_dir=ckpt,
                            callbacks=[("stop", _StopAfter(2))]).fit(X, y, masks=masks)
    resumed = MaskAttentionClassifier(**TINY, max_epochs=4, lr=0.01, checkpoint_dir=ckpt).fit(X, y, masks=masks)
    assert len(resumed.history) == 4
    np.testing.assert_allclose(resumed.history[:, "lr"], full.history[:, "lr"], rtol=1e-12)
    # another budget changes every step's rate: the folder of the 4-epoch fit is refused
    with pytest.raises(ValueError, match="callbacks__lr_scheduler"):
        MaskAttentionClassifier(**TINY, max_epochs=6, lr=0.01, checkpoint_dir=ckpt).fit(X, y, masks=masks)


class _StopAfter(Callback):
    """Interrupt training (as Ctrl-C does) after ``n`` epochs; skorch ends the fit cleanly."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.n:
            raise KeyboardInterrupt


def test_label_smoothing_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    ours = ClassBalancedLoss(beta=0.0, label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, label_smoothing=0.1))
    # sigmoid: the one-hot target is smoothed the same way
    sig = ClassBalancedLoss("sigmoid", beta=0.0, label_smoothing=0.3)(logits, target)
    soft = F.one_hot(target, 3).float() * 0.7 + 0.1
    torch.testing.assert_close(sig, F.binary_cross_entropy_with_logits(logits, soft, reduction="sum") / 16)
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassBalancedLoss(label_smoothing=1.0)


def test_tta_views_are_fixed_shifts_independent_of_the_batch():
    x = torch.zeros(3, 1, 50, 50)
    x[:, :, 20:30, 20:30] = 1
    assert torch.equal(tta_view(x, 0), x)
    # view 1 shifts right by 4% of the width (2 px), view 2 left
    assert torch.allclose(tta_view(x, 1), torch.roll(x, 2, dims=-1), atol=1e-5)
    assert torch.allclose(tta_view(x, 2), torch.roll(x, -2, dims=-1), atol=1e-5)
    torch.testing.assert_close(tta_view(x[:1], 3), tta_view(x, 3)[:1])  # the same view in any batch
    with pytest.raises(ValueError, match="test-time view"):
        tta_view(x, len(TTA_VIEWS) + 1)


def test_predict_proba_averages_the_views(data):
    X, y, masks = data
    # float32: the views are re-computed by hand below and compared to 1e-5
    clf = MaskAttentionClassifier(**TINY, max_epochs=1, tta=3, precision="float32").fit(X, y, masks=masks)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    x = torch.from_numpy(X)[:, None]
    clf.module_.eval()
    with torch.no_grad():
        expected = np.mean([torch.softmax(clf.module_(x=tta_view(x, k))[0], 1).numpy() for k in range(4)], axis=0)
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    # the same images in other batch sizes give the same probabilities
    np.testing.assert_allclose(clf.set_params(batch_size=5).predict_proba(X), proba, atol=1e-5)
    plain = clf.set_params(tta=0).predict_proba(X)
    assert not np.allclose(plain, proba)
