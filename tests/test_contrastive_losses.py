"""NT-Xent and SupCon: agreement with loop-based references, symmetry, masking, validation."""

import math

import pytest
import torch

from dp_sklearn.losses.contrastive import NTXentLoss, SupConLoss


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def ntxent_reference(z1, z2, t):
    """Chen et al. 2020 Eq. (1), one anchor at a time."""
    z = list(z1) + list(z2)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        denom = sum(math.exp(_cos(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(_cos(z[i], z[p]) / t) / denom)
    return total / (2 * n)


def supcon_reference(features, t, tb, positive, valid, anchors):
    """Khosla et al. 2020 L_out, loops over views; masks are sample-level (N, N) / (N,)."""
    n, v, _ = features.shape
    views = [(k, j) for j in range(v) for k in range(n)]  # (sample, view)
    losses = []
    for a, (i, vi) in enumerate(views):
        if not anchors[i]:
            continue
        contrast = [b for b, (k, vk) in enumerate(views) if b != a and valid[i][k]]
        pos = [b for b in contrast if positive[i][views[b][0]]]
        if not pos:
            continue
        zi = features[i, vi]
        denom = sum(math.exp(_cos(zi, features[views[b][0], views[b][1]]) / t) for b in contrast)
        terms = [math.log(math.exp(_cos(zi, features[views[b][0], views[b][1]]) / t) / denom) for b in pos]
        losses.append(-(t / tb) * sum(terms) / len(terms))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_matches_loop_reference(gen, t):
    z1 = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    z2 = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    got = NTXentLoss(temperature=t)(z1, z2)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ntxent_reference(z1, z2, t), abs=1e-6)


def test_ntxent_symmetric_in_views(gen):
    z1, z2 = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    loss = NTXentLoss(0.2)
    assert loss(z1, z2).item() == pytest.approx(loss(z2, z1).item(), abs=1e-10)


def test_ntxent_low_precision_input_computes_in_float32(gen):
    z1, z2 = torch.randn(2, 8, 16, generator=gen)
    out = NTXentLoss(0.1)(z1.bfloat16(), z2.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(NTXentLoss(0.1)(z1, z2).item(), rel=2e-2)


def test_ntxent_gradients_finite(gen):
    z1 = torch.randn(4, 3, generator=gen, requires_grad=True)
    z2 = torch.randn(4, 3, generator=gen, requires_grad=True)
    NTXentLoss(0.05)(z1, z2).backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


def test_ntxent_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        NTXentLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="shape"):
        NTXentLoss()(torch.randn(3, 4), torch.randn(3, 5))
    for bad in (0, -0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="temperature"):
            NTXentLoss(temperature=bad)


@pytest.mark.parametrize("v", [2, 3])
def test_supcon_labels_match_loop_reference(gen, v):
    feats = torch.randn(6, v, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])  # sample 5 alone in its class: only its other views
    got = SupConLoss(temperature=0.3, base_temperature=0.07)(feats, labels=labels)
    pos = (labels[:, None] == labels[None, :]).tolist()
    ref = supcon_reference(feats, 0.3, 0.07, pos, [[True] * 6] * 6, [True] * 6)
    assert got.item() == pytest.approx(ref, abs=1e-6)


def test_supcon_without_labels_equals_ntxent(gen):
    z1, z2 = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64)
    supcon = SupConLoss(temperature=0.2)(torch.stack([z1, z2], dim=1))
    assert supcon.item() == pytest.approx(NTXentLoss(temperature=0.2)(z1, z2).item(), abs=1e-10)


def test_supcon_masks_match_loop_reference(gen):
    # Regulation-like layout on 2-D features: rows 0-2 whole, 3-5 lesion, 6-8 background.
    feats = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    kind = torch.arange(3).repeat_interleave(3)
    image = torch.arange(3).repeat(3)
    fg = kind < 2
    positive = fg[:, None] & fg[None, :] & (image[:, None] == image[None, :])
    valid = torch.ones(9, 9, dtype=torch.bool)
    valid[0, 8] = valid[8, 0] = False  # one pair left out of the contrast set
    got = SupConLoss(0.5)(feats, positive_mask=positive, valid_mask=valid, anchor_mask=fg)
    ref = supcon_reference(feats[:, None], 0.5, 0.5, positive.tolist(), valid.tolist(), fg.tolist())
    assert got.item() == pytest.approx(ref, abs=1e-6)


def test_supcon_anchor_without_positive_is_excluded(gen):
    feats = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    loss = SupConLoss(0.1)
    # Sample 3 has a unique label: no positive, so it must not change the mean ...
    with_lonely = loss(feats, labels=torch.tensor([0, 0, 1, 2]))
    ref = supcon_reference(feats[:, None], 0.1, 0.1, (torch.tensor([0, 0, 1, 2])[:, None] == torch.tensor([0, 0, 1, 2])).tolist(),
                           [[True] * 4] * 4, [True] * 4)
    assert torch.isfinite(with_lonely) and with_lonely.item() == pytest.approx(ref, abs=1e-6)
    # ... and when nobody has a positive the loss is 0 and backward still works.
    x = feats.clone().requires_grad_()
    zero = loss(x, labels=torch.arange(4))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(x.grad).all()


def test_supcon_positive_outside_valid_is_dropped(gen):
    feats = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    valid = torch.ones(3, 3, dtype=torch.bool)
    valid[0, 1] = valid[1, 0] = False
    got = SupConLoss(0.2)(feats, labels=labels, valid_mask=valid)
    pos = (labels[:, None] == labels[None, :]).tolist()
    assert got.item() == pytest.approx(supcon_reference(feats, 0.2, 0.2, pos, valid.tolist(), [True] * 3), abs=1e-6)


def test_supcon_gradients_finite_with_masked_rows(gen):
    feats = torch.randn(5, 2, 3, generator=gen, requires_grad=True)
    valid = torch.zeros(5, 5, dtype=torch.bool)
    valid[:2, :2] = True  # samples 2-4 have an empty contrast set apart from their own views
    loss = SupConLoss(0.07)(feats, valid_mask=valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()


def test_supcon_rejects_bad_input():
    loss = SupConLoss()
    with pytest.raises(ValueError, match="labels or positive_mask"):
        loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match="not both"):
        loss(torch.randn(4, 3), labels=torch.zeros(4), positive_mask=torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(torch.randn(4, 2, 3), labels=torch.zeros(3))
    with pytest.raises(ValueError, match="valid_mask"):
        loss(torch.randn(4, 2, 3), valid_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="features must have shape"):
        loss(torch.randn(4))
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(0.1, base_temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(-1)
