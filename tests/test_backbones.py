"""Backbones: feature-map shapes and strides, user modules, errors, memory formats, sizes."""

import pytest
import torch
from torch import nn

from dp_sklearn.nn.backbones import BACKBONES, BasicBlock, FeatureBackbone, ResNet, build_backbone

EXPECTED = {  # name: (out_channels, stride)
    "resnet10_half": (256, 16),
    "resnet10": (512, 32),
    "resnet18": (512, 32),
    "resnet34": (512, 32),
    "resnet50": (2048, 32),
    "vgg_ld": (128, 16),  # local discrimination's VGG-style encoder
    "vgg_compact": (192, 8),  # the CPU default: 8x8 attention grid at 64 px
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_named_backbone_shapes_and_strides(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    channels, stride = EXPECTED[name]
    assert (net.out_channels, net.stride) == (channels, stride)
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, channels, 64 // stride, 64 // stride)


def test_resnet10t_is_a_deprecated_alias_of_resnet10_half():
    # the old name builds the same network (same parameter count, same weights from one seed) and says the new one
    from dp_sklearn.nn.backbones import DEPRECATED_BACKBONES, resnet10t

    assert DEPRECATED_BACKBONES == {"resnet10t": "resnet10_half"} and "resnet10t" not in BACKBONES
    torch.manual_seed(0)
    new = build_backbone("resnet10_half")
    for old_way in (lambda: build_backbone("resnet10t"), lambda: resnet10t()):
        torch.manual_seed(0)
        with pytest.warns(FutureWarning, match="'resnet10_half'"):
            old = old_way()
        assert type(old) is type(new)
        for (k, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    assert sum(p.numel() for p in new.parameters()) == 1_225_824  # not timm's resnet10t (4.9 M)


@pytest.mark.parametrize("name", ["ContrastivePretrainer", "MaskAttentionClassifier"])
def test_estimators_accept_the_deprecated_backbone_name(name):
    import numpy as np

    from dp_sklearn import estimators

    X = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    est = getattr(estimators, name)(backbone="resnet10t", image_size=16, max_epochs=1, batch_size=2, verbose=0)
    with pytest.warns(FutureWarning, match="resnet10_half"):
        est.fit(X, *(() if name == "ContrastivePretrainer" else ([0, 1, 0, 1],)))
    assert est.backbone == "resnet10t"  # the parameter keeps the user's value (clone, get_params)


def test_small_stem_stride_one_and_in_channels():
    net = build_backbone("resnet10_half", in_channels=3, stem_stride=1)
    assert net.stride == 8
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 256, 4, 4)


def _param_count(net):
    return sum(p.numel() for p in net.parameters())


def test_resnet18_parameter_count_matches_torchvision_minus_rgb_stem():
    # torchvision resnet18: 11,689,512 parameters, of which fc has 512*1000 + 1000.
    # Without fc: 11,176,512; a 1-channel 7x7 stem has 2*64*7*7 = 6,272 fewer weights.
    assert _param_count(build_backbone("resnet18")) == 11_689_512 - 513_000 - 6_272 == 11_170_240
    # Same reasoning for resnet50 (25,557,032 in torchvision, fc 2048*1000 + 1000).
    assert _param_count(build_backbone("resnet50")) == 25_557_032 - 2_049_000 - 6_272


def test_last_bn_of_each_block_starts_at_zero():
    net = build_backbone("resnet18")
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert all(bool((b.bn2.weight == 0).all()) for b in blocks)
    assert all(bool((b.bn1.weight == 1).all()) for b in blocks)


def test_channels_last_gives_same_result():
    torch.manual_seed(0)
    net = build_backbone("resnet10_half").eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_runs_under_cpu_bfloat16_autocast():
    net = build_backbone("resnet10_half").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 256, 2, 2) and torch.isfinite(out.float()).all()


class _WithInChannels(nn.Module):
    def __init__(self, in_channels=1, width=6):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=4, padding=1)

    def forward(self, x):
        return self.conv(x)


class _NoArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.BatchNorm2d(5), nn.MaxPool2d(2))

    def forward(self, x):
        return self.body(x)


def test_user_class_accepted_with_in_channels_and_kwargs():
    net = build_backbone(_WithInChannels, in_channels=2, width=7)
    assert isinstance(net, FeatureBackbone)
    assert (net.out_channels, net.stride) == (7, 4)
    assert net(torch.rand(1, 2, 32, 32)).shape == (1, 7, 8, 8)


def test_user_class_without_in_channels_and_probe_keeps_bn_state():
    net = build_backbone(_NoArgs)
    assert (net.out_channels, net.stride) == (5, 2)
    bn = net.module.body[1]
    assert int(bn.num_batches_tracked) == 0 and net.training  # dry run in eval, mode restored


def test_user_instance_used_as_is():
    user = _NoArgs()
    net = build_backbone(user)
    assert net.module is user  # wrapped, not copied: same parameters
    ready = ResNet(BasicBlock, [1, 1, 1, 1], widths=(4, 8, 8, 8), stem="small")
    assert build_backbone(ready) is ready  # already has out_channels and stride


def test_user_attributes_win_over_probe():
    user = _WithInChannels()
    user.out_channels = 6  # stride missing: probed
    net = build_backbone(user)
    assert (net.out_channels, net.stride) == (6, 4)


class _Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class _Tuple(_Pooled):
    def forward(self, x):
        return (self.conv(x),)


def test_bad_backbones_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="resnet18"):  # lists valid names
        build_backbone("resnet1000")
    with pytest.raises(TypeError, match="backbone must be"):
        build_backbone(42)
    with pytest.raises(TypeError, match="backbone must be"):
        build_backbone(int)
    with pytest.raises(ValueError, match="4-D feature map"):
        build_backbone(_Pooled)
    with pytest.raises(TypeError, match="feature map tensor"):
        build_backbone(_Tuple)
    with pytest.raises(ValueError, match="in_channels"):  # probe fails: 1-channel conv, 3-channel input
        build_backbone(_NoArgs(), in_channels=3)
    with pytest.raises(ValueError, match="already built"):
        build_backbone(_NoArgs(), width=3)
    with pytest.raises(ValueError, match="stem"):
        build_backbone("resnet18", stem="cifar")
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("resnet18", in_channels=0)
