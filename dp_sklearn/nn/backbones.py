"""ResNet backbones written in the project (no torchvision), returning feature maps.

Every backbone here maps images ``(N, in_channels, H, W)`` to a feature map
``(N, out_channels, H / stride, W / stride)``: no global pooling and no fully connected
layer, because the mask-guided attention classifier pools the map itself. Each module
exposes two plain ``int`` attributes that the estimators read:

- ``out_channels``: channels of the returned feature map;
- ``stride``: total downsampling factor from the input to the map.

Named backbones (see :data:`BACKBONES` and :func:`build_backbone`):

================= ============== ======================== ========== ======== ============
name              block          layers                   widths     stem     stride
================= ============== ======================== ========== ======== ============
``resnet10_half`` BasicBlock     [1, 1, 1, 1]             32..256    small    16
``resnet10``      BasicBlock     [1, 1, 1, 1]             64..512    imagenet 32
``resnet18``      BasicBlock     [2, 2, 2, 2]             64..512    imagenet 32
``resnet34``      BasicBlock     [3, 4, 6, 3]             64..512    imagenet 32
``resnet50``      Bottleneck     [3, 4, 6, 3]             64..512 x4 imagenet 32
================= ============== ======================== ========== ======== ============

``resnet10_half`` is meant for quick runs on CPU with small images (64-128 px): ResNet-10 at
half the widths (1.2 M parameters) with a 3x3 stride-2 stem without max-pool, so a 64 px image
still gives a 4x4 map and a 128 px image an 8x8 map.

It was called ``resnet10t`` before; that name is still accepted (see
:data:`DEPRECATED_BACKBONES`) with a ``FutureWarning``, because timm's ``resnet10t`` is another
network (full widths, a three-convolution "tiered" stem, 4.9 M parameters).
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

__all__ = ["BACKBONES", "DEPRECATED_BACKBONES", "BasicBlock", "Bottleneck", "CompactVGG", "FeatureBackbone", "ResNet",
           "build_backbone"]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016, ResNet-18/34).

    Parameters
    ----------
    in_channels, width : int
        Input channels and output channels (``expansion = 1``).
    stride : int
        Stride of the first convolution; a 1x1 projection matches the shortcut when the
        shape changes.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, out)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out, stride), nn.BatchNorm2d(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck block (ResNet-50 and up), stride on the 3x3 ("v1.5").

    Parameters
    ----------
    in_channels, width : int
        Input channels and bottleneck width; the block outputs ``4 * width`` channels.
    stride : int
        Stride of the 3x3 convolution.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out, stride), nn.BatchNorm2d(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet trunk that returns its last feature map (no pooling, no classifier).

    Parameters
    ----------
    block : {BasicBlock, Bottleneck}
        Residual block class; it must define ``expansion`` and take
        ``(in_channels, width, stride)``.
    layers : sequence of 4 int
        Number of blocks in each of the four stages.
    in_channels : int, default=1
        Image channels (1 for radiographs).
    widths : sequence of 4 int, default=(64, 128, 256, 512)
        Block width of each stage; ``out_channels = widths[-1] * block.expansion``.
    stem : {"imagenet", "small"}, default="imagenet"
        ``"imagenet"``: 7x7 stride-2 convolution and 3x3 stride-2 max-pool (stride 4).
        ``"small"``: one 3x3 convolution with stride ``stem_stride`` and no max-pool, for
        small images where the ImageNet stem would throw away too much resolution.
    stem_stride : {1, 2}, default=2
        Stride of the ``"small"`` stem (ignored by ``"imagenet"``).

    Attributes
    ----------
    out_channels : int
        Channels of the returned feature map.
    stride : int
        Total downsampling: 32 with the ImageNet stem, ``8 * stem_stride`` (8 or 16) with
        the small stem. Inputs whose size is not a multiple of ``stride`` give a map of
        size ``ceil``-like rounding of ``H / stride`` (standard convolution arithmetic).

    Notes
    -----
    Weights use Kaiming-normal initialisation (fan-out, ReLU) and BatchNorm starts at
    ``gamma = 1, beta = 0``, except the last BatchNorm of every residual block, whose
    ``gamma`` starts at 0 (Goyal et al., 2017): each block then starts as the identity,
    which makes training of small-batch runs more stable. The module uses no dtype or
    memory-format assumptions, so it runs in ``channels_last`` and under autocast.

    Examples
    --------
    >>> import torch
    >>> net = ResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64), stem="small")
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 64, 4, 4])
    >>> net.out_channels, net.stride
    (64, 16)
    """

    def __init__(
        self,
        block,
        layers,
        in_channels: int = 1,
        widths=(64, 128, 256, 512),
        stem: str = "imagenet",
        stem_stride: int = 2,
    ):
        super().__init__()
        layers, widths = list(layers), list(widths)
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got {layers!r}.")
        if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive ints, got {widths!r}.")
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
            stem_total = 4
        elif stem == "small":
            if stem_stride not in (1, 2):
                raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}.")
            self.stem = nn.Sequential(
                _conv3x3(in_channels, widths[0], stride=stem_stride),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            )
            stem_total = stem_stride
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}.")

        stages, ch = [], widths[0]
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n_blocks):
                # Stages 2-4 halve the resolution in their first block.
                blocks.append(block(ch, width, stride=2 if (i > 0 and j == 0) else 1))
                ch = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.in_channels = in_channels
        self.out_channels = ch
        self.stride = stem_total * 8
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if hasattr(m, "last_bn"):
                nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def resnet10_half(in_channels: int = 1, **kwargs) -> ResNet:
    """Half-width ResNet-10 for CPU: BasicBlock [1,1,1,1], widths (32,64,128,256), small stem, stride 16."""
    kwargs = {"widths": (32, 64, 128, 256), "stem": "small", **kwargs}
    return ResNet(BasicBlock, [1, 1, 1, 1], in_channels=in_channels, **kwargs)


def resnet10t(in_channels: int = 1, **kwargs) -> ResNet:
    """Deprecated name of :func:`resnet10_half` (not timm's ``resnet10t``); warns ``FutureWarning``."""
    _warn_deprecated_name("resnet10t")
    return resnet10_half(in_channels=in_channels, **kwargs)


def resnet10(in_channels: int = 1, **kwargs) -> ResNet:
    """ResNet-10: BasicBlock [1,1,1,1], widths (64,...,512), ImageNet stem, stride 32."""
    return ResNet(BasicBlock, [1, 1, 1, 1], in_channels=in_channels, **kwargs)


def resnet18(in_channels: int = 1, **kwargs) -> ResNet:
    """ResNet-18: BasicBlock [2,2,2,2], 512 output channels, stride 32."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels=in_channels, **kwargs)


def resnet34(in_channels: int = 1, **kwargs) -> ResNet:
    """ResNet-34: BasicBlock [3,4,6,3], 512 output channels, stride 32."""
    return ResNet(BasicBlock, [3, 4, 6, 3], in_channels=in_channels, **kwargs)


def resnet50(in_channels: int = 1, **kwargs) -> ResNet:
    """ResNet-50: Bottleneck [3,4,6,3], 2048 output channels, stride 32."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels=in_channels, **kwargs)


class CompactVGG(nn.Module):
    """A small VGG-style trunk with output stride 8, fast on a CPU and with a fine feature grid.

    Four stages of 3x3 convolution + BatchNorm + ReLU, a 2x2 max-pool before stages 2-4; stage 1
    has one convolution, stages 2-4 have ``convs_per_stage`` each. A 64 px radiograph gives an 8x8
    feature map (the attention grid) for about 97 M multiply-adds with the default widths
    (43 M with widths 16-128, less than ``resnet10_half`` needs for a 4x4 grid, 62 M).

    Parameters
    ----------
    in_channels : int, default=1
    widths : sequence of 4 int, default=(24, 48, 96, 192)
        Channels of each stage; ``out_channels = widths[-1]``.
    convs_per_stage : int, default=2
        Convolutions in each of stages 2-4.

    Attributes
    ----------
    out_channels : int
    stride : int
        Always 8.

    Examples
    --------
    >>> import torch
    >>> net = CompactVGG(widths=(8, 16, 32, 64))  # out_channels 64
    >>> net(torch.zeros(2, 1, 64, 64)).shape, net.stride
    (torch.Size([2, 64, 8, 8]), 8)
    """

    def __init__(self, in_channels: int = 1, widths=(24, 48, 96, 192), convs_per_stage: int = 2):
        super().__init__()
        widths = list(widths)
        if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive ints, got {widths!r}.")
        if not isinstance(convs_per_stage, int) or convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be a positive int, got {convs_per_stage!r}.")
        layers, ch = [], in_channels
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage if i else 1):
                layers += [_conv3x3(ch, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                ch = width
        self.features = nn.Sequential(*layers)
        self.in_channels, self.out_channels, self.stride = in_channels, ch, 8
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def vgg_compact(in_channels: int = 1, **kwargs) -> CompactVGG:
    """:class:`CompactVGG`: 7 convolutions, widths (24, 48, 96, 192), stride 8 (the default backbone)."""
    return CompactVGG(in_channels=in_channels, **kwargs)


#: Names accepted by :func:`build_backbone`, mapped to their constructors.
def vgg_ld(in_channels: int = 1, **kwargs) -> nn.Module:
    """The small VGG-style encoder of local discrimination (Chen et al. 2022), stride 16."""
    from .local_discrimination import VGGLDEncoder  # that module builds on this one

    return VGGLDEncoder(in_channels=in_channels, **kwargs)


BACKBONES = {
    "resnet10_half": resnet10_half,
    "resnet10": resnet10,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vgg_ld": vgg_ld,
    "vgg_compact": vgg_compact,
}


#: Old backbone names still accepted, with a ``FutureWarning``: ``{old name: new name}``.
DEPRECATED_BACKBONES = {"resnet10t": "resnet10_half"}


def _warn_deprecated_name(name: str) -> None:
    warnings.warn(
        f"backbone {name!r} is deprecated and will be removed: use {DEPRECATED_BACKBONES[name]!r}, the same "
        f"network under a name that says what it is (timm's {name!r} is a different, larger network).",
        FutureWarning, stacklevel=3,
    )


def _accepts(cls, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _probe(module: nn.Module, in_channels: int) -> tuple[int, int]:
    """Dry-run ``module`` on a 64x64 zero image and return (channels, stride) of its output."""
    size = 64
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = module.training
    module.eval()  # eval: a dry run must not touch BatchNorm running statistics
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, in_channels, size, size, device=device, dtype=dtype))
    except Exception as exc:  # the user's module, any error: explain what we tried
        raise ValueError(
            f"could not run the backbone {type(module).__name__} on a zero image of shape "
            f"(1, {in_channels}, {size}, {size}) to infer its output channels ({type(exc).__name__}: {exc}). "
            "Check in_channels, or give the module `out_channels` and `stride` attributes."
        ) from exc
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the backbone {type(module).__name__} must return a feature map tensor (N, C, h, w), "
            f"got {type(out).__name__}."
        )
    if out.ndim != 4:
        raise ValueError(
            f"the backbone {type(module).__name__} must return a 4-D feature map (N, C, h, w), "
            f"got shape {tuple(out.shape)}; remove global pooling / flattening from it."
        )
    return int(out.shape[1]), max(1, round(size / out.shape[-1]))


def build_backbone(backbone="resnet18", in_channels: int = 1, **kwargs) -> nn.Module:
    """Return a feature-map backbone with ``out_channels`` and ``stride`` attributes.

    Parameters
    ----------
    backbone : str, nn.Module subclass or nn.Module instance, default="resnet18"
        - a name in :data:`BACKBONES` (``"resnet10_half"``, ``"resnet10"``, ``"resnet18"``,
          ``"resnet34"``, ``"resnet50"``, ``"vgg_compact"``, ``"vgg_ld"``; the old names in
          :data:`DEPRECATED_BACKBONES` with a ``FutureWarning``), built with ``in_channels`` and ``kwargs``
          (e.g. ``widths=``, ``stem=``, ``stem_stride=``; see :class:`ResNet`);
        - an ``nn.Module`` subclass, instantiated as ``cls(in_channels=in_channels, **kwargs)``
          when its signature takes ``in_channels`` (or ``**kwargs``), else ``cls(**kwargs)``;
        - an ``nn.Module`` instance, used as is: not copied, so its weights are shared
          with the caller and trained in place (wrapped when it lacks the attributes,
          see Returns).

        A user module must return a 4-D feature map ``(N, C, h, w)``.
    in_channels : int, default=1
        Image channels.
    **kwargs
        Passed to the constructor (names and classes only).

    Returns
    -------
    nn.Module
        The built module. A user module that already has integer ``out_channels`` and
        ``stride`` attributes is returned itself; otherwise the missing values are inferred
        by one forward pass on a ``(1, in_channels, 64, 64)`` zero image (in eval mode, so
        BatchNorm statistics are untouched) and the module is returned wrapped in a
        :class:`FeatureBackbone` (its parameters shared, not copied).

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones), kwargs given with an instance,
        or a module whose output is not 4-D or that fails on the probe image.
    TypeError
        Anything that is not a name or an ``nn.Module`` class/instance, or a module
        returning something other than a tensor.

    Examples
    --------
    >>> import torch
    >>> net = build_backbone("resnet10_half")
    >>> net(torch.zeros(2, 1, 64, 64)).shape, net.out_channels, net.stride
    (torch.Size([2, 256, 4, 4]), 256, 16)
    >>> user = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    >>> net = build_backbone(user)
    >>> net.out_channels, net.stride, net.module is user
    (8, 2, True)
    """
    if isinstance(backbone, str):
        if backbone in DEPRECATED_BACKBONES:
            _warn_deprecated_name(backbone)
            backbone = DEPRECATED_BACKBONES[backbone]
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; valid names are {sorted(BACKBONES)}.")
        return BACKBONES[backbone](in_channels=in_channels, **kwargs)

    if isinstance(backbone, type) and issubclass(backbone, nn.Module):
        if _accepts(backbone, "in_channels"):
            module = backbone(in_channels=in_channels, **kwargs)
        else:
            module = backbone(**kwargs)
    elif isinstance(backbone, nn.Module):
        if kwargs:
            raise ValueError(
                f"keyword arguments {sorted(kwargs)} cannot be applied to an already built module; "
                "pass the class or a name instead."
            )
        module = backbone
    else:
        raise TypeError(
            "backbone must be a name in "
            f"{sorted(BACKBONES)}, an nn.Module subclass or an nn.Module instance, got {type(backbone).__name__}."
        )

    channels, stride = getattr(module, "out_channels", None), getattr(module, "stride", None)
    if _is_int(channels) and _is_int(stride):
        return module
    # Wrap rather than set attributes: a user module may use these names itself
    # (nn.Conv2d.stride is a tuple that its forward reads).
    probed_channels, probed_stride = _probe(module, in_channels)
    return FeatureBackbone(
        module,
        out_channels=channels if _is_int(channels) else probed_channels,
        stride=stride if _is_int(stride) else probed_stride,
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FeatureBackbone(nn.Module):
    """Thin wrapper giving a user's feature extractor ``out_channels`` and ``stride``.

    The wrapped module is stored as ``self.module`` (not copied) and called unchanged.

    Parameters
    ----------
    module : nn.Module
        Maps ``(N, C_in, H, W)`` to a feature map ``(N, out_channels, h, w)``.
    out_channels, stride : int
        Channels and total downsampling of the feature map.

    Examples
    --------
    >>> import torch
    >>> net = FeatureBackbone(torch.nn.Conv2d(1, 4, 3, padding=1), out_channels=4, stride=1)
    >>> net(torch.zeros(1, 1, 8, 8)).shape
    torch.Size([1, 4, 8, 8])
    """

    def __init__(self, module: nn.Module, out_channels: int, stride: int):
        super().__init__()
        self.module = module
        self.out_channels = int(out_channels)
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
