"""Grad-CAM (known answers, hooks, modes), the region/box rule and the localization metrics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dp_sklearn.explain import (
    GradCAM,
    box_iou,
    boxes_to_masks,
    cam_to_box,
    cam_to_region,
    estimator_gradcam,
    masks_to_boxes,
    pointing_game,
)


class LesionDetector(nn.Module):
    """Hand-set network: the feature map is ``relu(x - 0.5)`` (only bright pixels fire), optionally
    average-pooled by ``stride``; logits = ``[-mean(F), +mean(F)]`` (class 1 = "lesion present")."""

    def __init__(self, stride=1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AvgPool2d(stride) if stride > 1 else nn.Identity())
        with torch.no_grad():
            self.features[0].weight.fill_(1.0)
            self.features[0].bias.fill_(-0.5)
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _lesion_images(n=3, size=32):
    x = torch.full((n, 1, size, size), 0.2)
    boxes = []
    for i in range(n):
        y0, x0 = 4 + 6 * i, 20 - 5 * i
        x[i, 0, y0:y0 + 8, x0:x0 + 6] = 1.0
        boxes.append([x0, y0, x0 + 6, y0 + 8])
    return x, np.array(boxes)


def test_gradcam_known_answer_highlights_exactly_the_lesion():
    x, boxes = _lesion_images()
    cam = GradCAM(LesionDetector(), target_layer="features")(x, target=1)
    lesion = torch.from_numpy(boxes_to_masks(boxes, (32, 32)))
    assert torch.equal(cam > 0.5, lesion)  # 1 on the lesion, 0 elsewhere
    assert torch.allclose(cam[lesion], torch.ones(())) and torch.allclose(cam[~lesion], torch.zeros(()))
    np.testing.assert_array_equal(cam_to_box(cam, blur_sigma=0), boxes)


def test_gradcam_negative_evidence_gives_empty_map_and_default_target_is_prediction():
    x, _ = _lesion_images()
    net = LesionDetector()
    assert torch.count_nonzero(GradCAM(net, "features")(x, target=0)) == 0  # alpha < 0: ReLU removes all
    torch.testing.assert_close(GradCAM(net, "features")(x), GradCAM(net, "features")(x, target=1))


def test_gradcam_coarse_map_upsampled_peaks_inside_the_lesion():
    x, boxes = _lesion_images()
    cam = GradCAM(LesionDetector(stride=4), "features")(x.numpy(), target=[1, 1, 1])
    assert isinstance(cam, np.ndarray) and cam.shape == (3, 32, 32)
    hits = pointing_game(cam, boxes_to_masks(boxes, (32, 32)))
    assert hits.tolist() == [1.0, 1.0, 1.0]


def test_gradcam_matches_the_formula_on_a_random_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(5, 1, 16, 16)
    target = torch.tensor([0, 1, 2, 1, 0])
    cam = GradCAM(net, net[3])(x, target=target)
    act = net[:4](x).detach().requires_grad_(True)
    score = net[4:](act).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, act)
    ref = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    ref = F.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False)[:, 0].detach()
    lo, hi = ref.flatten(1).min(1).values[:, None, None], ref.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(cam, (ref - lo) / (hi - lo))


def test_gradcam_leaves_no_hooks_no_grads_and_restores_training_mode():
    from dp_sklearn.estimators.radiomics_contrastive import RadiomicsContrastiveNet
    from dp_sklearn.nn.backbones import build_backbone

    torch.manual_seed(0)
    net = RadiomicsContrastiveNet(build_backbone("resnet10_half"), n_classes=3, n_radiomics=54).train()
    bn = net.backbone.stem[1]
    stats = bn.running_mean.clone()
    cam = GradCAM(net)  # default target layer: the backbone
    out = cam(torch.rand(4, 1, 32, 32))
    assert out.shape == (4, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert net.training and not net.backbone._forward_hooks
    assert all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(bn.running_mean, stats)  # eval mode during the call
    for p in net.parameters():  # frozen models work: the input carries the gradient
        p.requires_grad_(False)
    assert GradCAM(net, "backbone.layer3")(torch.rand(2, 1, 32, 32)).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="target"):
        cam(torch.rand(2, 1, 32, 32), target=[0, 1, 2])
    assert not net.backbone._forward_hooks  # removed after an error too


def test_gradcam_under_autocast_and_in_chunks():
    x, boxes = _lesion_images()
    net = LesionDetector()
    full = GradCAM(net, "features")(x, target=1)
    chunked = GradCAM(net, "features", batch_size=2)(x, target=torch.tensor([1, 1, 1]))
    torch.testing.assert_close(full, chunked)
    bf16 = GradCAM(net, "features", autocast_dtype=torch.bfloat16)(x, target=1)
    assert bf16.dtype == torch.float32
    np.testing.assert_array_equal(cam_to_box(bf16, blur_sigma=0), boxes)


def test_cam_to_region_picks_the_strongest_component():
    cam = np.zeros((2, 32, 32))
    cam[0, 2:6, 2:6] = 1.0            # small, strong
    cam[0, 18:30, 10:24] = 0.9        # large, a little weaker: more heat mass -> chosen
    cam[1, 20:24, 4:8] = 1.0
    regions, boxes = cam_to_region(cam, threshold=0.5, blur_sigma=0)
    assert boxes.tolist() == [[10, 18, 24, 30], [4, 20, 8, 24]]
    assert regions[0].sum() == 12 * 14 and not regions[0, 2:6, 2:6].any()
    # A blur keeps the box around the blob (slightly grown or shrunk, never moved).
    blurred = cam_to_box(cam[1], threshold=0.5, blur_sigma=1.0)
    assert abs(blurred[0] - 4) <= 1 and abs(blurred[2] - 8) <= 1 and abs(blurred[1] - 20) <= 1


def test_cam_to_region_whole_image_or_flat_map_gives_the_central_box():
    flat = np.ones((32, 32))
    assert cam_to_box(flat).tolist() == [8, 8, 24, 24]
    ramp = np.tile(np.linspace(0.6, 1.0, 32), (32, 1))  # everything above threshold
    region, box = cam_to_region(ramp, threshold=0.0001, blur_sigma=0)
    assert box.tolist() == [8, 8, 24, 24] and region.sum() == 256
    assert cam_to_box(ramp, center_fraction=0.75, threshold=0.0001, blur_sigma=0).tolist() == [4, 4, 28, 28]


def test_cam_to_region_validates():
    with pytest.raises(ValueError, match="threshold"):
        cam_to_region(np.zeros((4, 4)), threshold=0)
    with pytest.raises(ValueError, match="shape"):
        cam_to_region(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        cam_to_region(np.full((4, 4), np.nan))


def test_boxes_masks_iou_and_pointing_game():
    m = np.zeros((3, 10, 10), bool)
    m[0, 2:5, 3:9] = True
    m[1, 0, 0] = True
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[3, 2, 9, 5], [0, 0, 1, 1], [-1, -1, -1, -1]]
    np.testing.assert_array_equal(boxes_to_masks(boxes[:2], (10, 10)), m[:2])
    iou = box_iou(boxes, [[3, 2, 9, 5], [0, 0, 2, 2], [0, 0, 5, 5]])
    assert iou[0] == 1.0 and iou[1] == pytest.approx(0.25) and np.isnan(iou[2])
    assert box_iou([[0, 0, 2, 2]], [[5, 5, 7, 7]]).tolist() == [0.0]
    cam = np.zeros((3, 10, 10))
    cam[0, 3, 8] = 1
    cam[1, 5, 5] = 1
    hits = pointing_game(cam, m)
    assert hits[0] == 1.0 and hits[1] == 0.0 and np.isnan(hits[2])
    assert pointing_game(cam[1:2], m[1:2], tolerance=8).tolist() == [1.0]
    plateau = np.zeros((1, 10, 10))
    plateau[0, :4, :4] = 1.0  # flat maximum: the point is its centre, not the corner pixel
    centre = np.zeros((1, 10, 10), bool)
    centre[0, 1:3, 1:3] = True
    assert pointing_game(plateau, centre).tolist() == [1.0]


def test_estimator_gradcam_on_the_plain_cnn(tiny_images):
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    X, y, _ = tiny_images
    clf = MaskAttentionClassifier("resnet10_half", image_size=32, max_epochs=1, batch_size=6, augment=False, verbose=0,
                                  attention_weight=0, contrastive_weight=0, class_balance_beta=0, random_state=0,
                                  device="cpu").fit(X, y)
    heat = estimator_gradcam(clf, X[:3], target=[0, 1, 2])
    assert heat.shape == (3, 32, 32) and heat.dtype == np.float32 and heat.min() >= 0 and heat.max() <= 1
    big = estimator_gradcam(clf, np.repeat(np.repeat(X[:2], 2, 1), 2, 2))  # other input size: maps at that size
    assert big.shape == (2, 64, 64)
