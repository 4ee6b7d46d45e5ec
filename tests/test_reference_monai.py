"""Cross-checks against MONAI, an independent implementation of the same published methods.

On real cxr1k radiographs (48 px, 12 images, three classes) through a seeded ResNet-10 trunk of
the package:

- Grad-CAM (Selvaraju et al.): ``monai.visualize.GradCAM`` with identity post-processing gives
  the raw ReLU map upsampled bilinearly; min-max normalised per image it equals
  :class:`dp_sklearn.explain.GradCAM`, and MONAI's default normaliser (which maps
  (min, max) to (1, 0)) equals ``1 - ours``. (MONAI's ``class_idx`` is one class for the whole
  batch; per-image targets are compared one image at a time.)
- NT-Xent (SimCLR): ``monai.losses.ContrastiveLoss`` on two augmented views equals
  :class:`dp_sklearn.losses.contrastive.NTXentLoss`.
- Sigmoid focal loss (Lin et al.) and its class-balanced form (Cui et al.):
  ``monai.losses.FocalLoss`` elementwise equals ours with all class weights 1 (``beta=0``).
  MONAI's ``weight`` scales each class *channel*, while Cui et al. weight each *sample* by its
  ground-truth class, so the class-balanced form is checked as MONAI's unreduced focal terms
  times ``effective_number_weights`` of the sample's class.

All to 1e-6 (absolute, float32). The tests skip with the reason when MONAI cannot be imported.
"""

import numpy as np
import pytest
import torch
from torch import nn

from _optional import import_or_skip
from dp_sklearn.explain import GradCAM
from dp_sklearn.losses.class_balanced import ClassBalancedLoss, effective_number_weights
from dp_sklearn.losses.contrastive import NTXentLoss
from dp_sklearn.nn.backbones import resnet10_half

TOL = 1e-6


@pytest.fixture(scope="module")
def monai():
    return import_or_skip("monai", "MONAI (pip install monai; in the dev extra)")


@pytest.fixture(scope="module")
def real_batch():
    """The first 4 cxr1k images of each class at 48x48 in [0, 1], (12, 1, 48, 48), and labels."""
    from PIL import Image

    from dp_sklearn.datasets import load_cxr1k

    data = load_cxr1k(return_paths=True)
    y = np.asarray(data.target)
    idx = np.concatenate([np.flatnonzero(y == c)[:4] for c in np.unique(y)])
    imgs = [np.asarray(Image.open(data.images[i]).convert("L").resize((48, 48), Image.BILINEAR)) for i in idx]
    x = torch.as_tensor(np.stack(imgs), dtype=torch.float32) / 255.0
    return x[:, None], torch.as_tensor(y[idx], dtype=torch.long)


def _minmax(maps):
    """Independent per-map min-max to [0, 1] (a constant map -> zeros, the package's rule)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    varies = (hi > lo)[:, 0, 0]
    return torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(maps)), varies


class _Classifier(nn.Module):
    def __init__(self, n_classes=3):
        super().__init__()
        self.backbone = resnet10_half(in_channels=1, stem="small", widths=(8, 16, 32, 64))
        self.head = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.head(self.backbone(x).mean(dim=(2, 3)))


def _model(seed=0):
    torch.manual_seed(seed)
    net = _Classifier()
    # A few training-mode passes give BatchNorm non-trivial running statistics (eval mode
    # is what both Grad-CAMs use).
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(8, 1, 48, 48))
    return net.eval()


@pytest.mark.parametrize("layer", ["backbone.layer3", "backbone.layer4"])
def test_gradcam_equals_monai(monai, real_batch, layer):
    from monai.visualize import GradCAM as MonaiGradCAM

    x, _ = real_batch
    net = _model()
    ours_cam = GradCAM(net, target_layer=layer)
    raw_cam = MonaiGradCAM(net, target_layers=layer, postprocessing=lambda m: m)
    flip_cam = MonaiGradCAM(net, target_layers=layer)  # MONAI's default normaliser
    n_varying = 0
    # MONAI scores ``logits[:, class_idx].squeeze()``: an int class for the whole batch. (A
    # tensor of per-image classes, and its default argmax target on a batch, sum the logits of
    # every class named in the batch for each image, so per-image targets go one image at a time.)
    for c in range(3):
        ours = ours_cam(x, target=c)
        raw = raw_cam(x, class_idx=c)[:, 0].detach()
        assert raw.shape == ours.shape == (12, 48, 48)
        norm, varies = _minmax(raw)
        n_varying += int(varies.sum())
        assert float((norm - ours).abs().max()) <= TOL
        flipped = torch.as_tensor(flip_cam(x, class_idx=c)[:, 0])
        assert float((flipped[varies] - (1 - ours[varies])).abs().max()) <= TOL
    # A class with no positive evidence in an image gives an all-zero map (ReLU); most maps
    # must vary, or the comparison would be vacuous.
    assert n_varying >= 18
    # Default target: each image's predicted class.
    ours_pred = ours_cam(x)
    for i in range(len(x)):
        norm, _ = _minmax(raw_cam(x[i:i + 1])[:, 0].detach())
        assert float((norm[0] - ours_pred[i]).abs().max()) <= TOL


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_monai_contrastive_loss(monai, real_batch, temperature):
    from monai.losses import ContrastiveLoss

    from dp_sklearn.data.augment import RadiographAugment

    x, _ = real_batch
    torch.manual_seed(0)
    aug = RadiographAugment()
    net = _model()
    with torch.no_grad():
        z1 = net.backbone(aug(x)).mean(dim=(2, 3))
        z2 = net.backbone(aug(x)).mean(dim=(2, 3))
    assert not torch.allclose(z1, z2)  # two different views
    ours = NTXentLoss(temperature=temperature)(z1, z2)
    ref = ContrastiveLoss(temperature=temperature)(z1, z2)
    assert abs(float(ours) - float(ref)) <= TOL
    assert abs(float(NTXentLoss(temperature)(z2, z1)) - float(ContrastiveLoss(temperature)(z2, z1))) <= TOL


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_and_class_balanced_focal_equal_monai(monai, real_batch, gamma):
    from monai.losses import FocalLoss

    x, y = real_batch
    with torch.no_grad():
        logits = _model(seed=1)(x)
    onehot = nn.functional.one_hot(y, 3).float()
    terms = FocalLoss(gamma=gamma, reduction="none", use_softmax=False)(logits, onehot)
    assert terms.shape == (12, 3)
    n = len(y)
    plain = ClassBalancedLoss("focal", beta=0.0, gamma=gamma)(logits, y)
    assert abs(float(plain) - float(terms.sum() / n)) <= TOL
    # MONAI's "mean" averages over the N x C terms; ours sums the classes and averages samples.
    assert abs(float(plain) - 3 * float(FocalLoss(gamma=gamma, use_softmax=False)(logits, onehot))) <= TOL
    counts = [500, 500, 124]  # cxr1k's class sizes
    w = torch.as_tensor(effective_number_weights(counts, beta=0.999), dtype=torch.float32)
    cb = ClassBalancedLoss("focal", beta=0.999, gamma=gamma, samples_per_class=counts)(logits, y)
    assert abs(float(cb) - float((w[y][:, None] * terms).sum() / n)) <= TOL
