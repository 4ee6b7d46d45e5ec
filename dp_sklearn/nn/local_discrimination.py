"""Encoder-decoder network of unsupervised local discrimination (Chen et al., 2022).

- :class:`VGGLDEncoder`: the small VGG-style encoder of the reference (BatchNorm, channels
  16-32-64-128-128, 1-channel input, stride 16). Like the project's backbones it returns its
  last feature map and has ``out_channels`` / ``stride``, so
  :class:`~dp_sklearn.estimators.mask_attention.MaskAttentionClassifier` takes the class or
  an instance as ``backbone=`` and a trained encoder's weights through ``encoder=``.
- :class:`UNetDecoder`: U-Net-style decoder from the encoder's multi-scale features back to
  the input resolution.
- :class:`LocalDiscriminationNet`: encoder + decoder + an embedding branch (L2-normalised
  ``D``-dimensional vector per pixel) + a clustering branch (``K`` sigmoid maps L1-normalised
  across ``K`` at each pixel: soft region assignments). Works with ``"vgg_ld"`` and with the
  project's ResNets (their stem and four stages serve as skip connections) or any feature-map
  module (then one upsampling decoder over its last map).
- :func:`dihedral` / :func:`undo_dihedral`: per-sample exact flip + rot90 of a batch and its
  inverse, used to align the second view's maps with the first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone

__all__ = ["LocalDiscriminationNet", "UNetDecoder", "VGGLDEncoder", "dihedral", "encoder_features", "undo_dihedral"]


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class VGGLDEncoder(nn.Module):
    """VGG-style encoder with BatchNorm: five stages of two 3x3 conv-BN-ReLU, max-pool between.

    The reference LD encoder (channels 16-32-64-128-128): stage 1 at full resolution, stages
    2-5 each after a 2x2 max-pool, so the last map has stride 16.

    Parameters
    ----------
    in_channels : int, default=1
    widths : sequence of int, default=(16, 32, 64, 128, 128)
        Channels of each stage (any length >= 1; stride ``2 ** (len - 1)``).

    Attributes
    ----------
    out_channels : int
        ``widths[-1]``.
    stride : int
        ``2 ** (len(widths) - 1)``.

    Notes
    -----
    ``forward(x)`` returns the last feature map ``(N, out_channels, H / stride, W / stride)``
    (what a classifier pools); ``forward_features(x)`` returns every stage's output, the
    skip connections of :class:`UNetDecoder`.

    Examples
    --------
    >>> import torch
    >>> enc = VGGLDEncoder()
    >>> enc(torch.zeros(2, 1, 64, 64)).shape, enc.out_channels, enc.stride
    (torch.Size([2, 128, 4, 4]), 128, 16)
    >>> [f.shape[-1] for f in enc.forward_features(torch.zeros(1, 1, 64, 64))]
    [64, 32, 16, 8, 4]
    """

    def __init__(self, in_channels: int = 1, widths=(16, 32, 64, 128, 128)):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive ints, got {widths!r}.")
        stages, ch = [], in_channels
        for i, w in enumerate(widths):
            layers = [nn.MaxPool2d(2)] if i > 0 else []
            layers += _conv_bn_relu(ch, w) + _conv_bn_relu(w, w)
            stages.append(nn.Sequential(*layers))
            ch = w
        self.stages = nn.ModuleList(stages)
        self.in_channels = int(in_channels)
        self.widths = tuple(widths)
        self.out_channels = widths[-1]
        self.stride = 2 ** (len(widths) - 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def encoder_features(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Multi-scale features of ``encoder`` for a U-Net decoder, shallow to deep.

    ``encoder.forward_features(x)`` when the module has it; the stem and the four stages of a
    project :class:`~dp_sklearn.nn.backbones.ResNet`; otherwise ``[encoder(x)]``.
    """
    if hasattr(encoder, "forward_features"):
        return list(encoder.forward_features(x))
    names = ("stem", "layer1", "layer2", "layer3", "layer4")
    if all(isinstance(getattr(encoder, n, None), nn.Module) for n in names):
        feats = []
        for n in names:
            x = getattr(encoder, n)(x)
            feats.append(x)
        return feats
    return [encoder(x)]


class UNetDecoder(nn.Module):
    """U-Net-style decoder: upsample, concatenate the skip, two conv-BN-ReLU; repeat; to full size.

    Parameters
    ----------
    skip_channels : sequence of int
        Channels of the encoder features, shallow to deep (the last is the bottleneck).
    out_channels : int or None, default=None
        Width of the output map; ``skip_channels[0]`` when None.

    Notes
    -----
    ``forward(feats, size)`` maps the features (shallow to deep) to ``(N, out_channels, *size)``.
    At each level the deeper map is bilinearly upsampled to the skip's size. When the
    shallowest skip is coarser than ``size`` (ResNet stems, a single feature map), the result
    is upsampled to ``size`` and refined by one more conv-BN-ReLU at full resolution.
    """

    def __init__(self, skip_channels, out_channels: int | None = None):
        super().__init__()
        skip_channels = [int(c) for c in skip_channels]
        self.blocks = nn.ModuleList()
        ch = skip_channels[-1]
        for skip in reversed(skip_channels[:-1]):
            self.blocks.append(nn.Sequential(*_conv_bn_relu(ch + skip, skip), *_conv_bn_relu(skip, skip)))
            ch = skip
        self.out_channels = int(out_channels or skip_channels[0])
        self.full = nn.Sequential(*_conv_bn_relu(ch, self.out_channels))
        self.proj = nn.Identity() if ch == self.out_channels else nn.Conv2d(ch, self.out_channels, 1)

    def forward(self, feats: list[torch.Tensor], size) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            return self.full(x)
        return self.proj(x)


def _branch(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(in_ch, in_ch), nn.Conv2d(in_ch, out_ch, 1))


def _group_apply(x: torch.Tensor, k: torch.Tensor, flip: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn(sub_batch, k, flip)`` to each group of rows sharing (k, flip): at most 8 calls."""
    k = k.to(x.device).long() % 4
    flip = flip.to(x.device).bool()
    out = torch.empty_like(x)
    code = k * 2 + flip.long()
    for c in torch.unique(code).tolist():
        rows = (code == c).nonzero(as_tuple=True)[0]
        out[rows] = fn(x[rows], c // 2, bool(c % 2))
    return out


def dihedral(x: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Per sample: horizontal flip (where ``flip``), then ``rot90`` by ``k`` quarter turns.

    Exact (a permutation of pixels). ``x`` (N, C, H, W); ``k`` (N,) ints; ``flip`` (N,) bools.
    Odd ``k`` needs square maps.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(8.).view(2, 1, 2, 2)
    >>> k, f = torch.tensor([1, 3]), torch.tensor([True, False])
    >>> torch.equal(undo_dihedral(dihedral(x, k, f), k, f), x)
    True
    """
    def fn(t, kk, ff):
        if ff:
            t = t.flip(-1)
        return torch.rot90(t, kk, dims=(-2, -1)) if kk else t

    return _group_apply(x, k, flip, fn)


def undo_dihedral(x: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dihedral`: ``rot90`` by ``-k``, then the flip."""
    def fn(t, kk, ff):
        t = torch.rot90(t, -kk, dims=(-2, -1)) if kk else t
        return t.flip(-1) if ff else t

    return _group_apply(x, k, flip, fn)


class LocalDiscriminationNet(nn.Module):
    """Encoder-decoder with an embedding branch and a clustering branch (LD, Chen et al. 2022).

    Parameters
    ----------
    backbone : str, nn.Module subclass or instance, default="vgg_ld"
        ``"vgg_ld"`` (:class:`VGGLDEncoder`), a name of
        :func:`~dp_sklearn.nn.backbones.build_backbone` (``"resnet10_half"``, ``"resnet18"``...), or
        a module (used as is) / class returning a feature map.
    embedding_dim : int, default=32
        ``D``, size of the per-pixel embedding.
    n_clusters : int, default=16
        ``K``, number of soft regions.
    in_channels : int, default=1
    decoder_channels : int or None, default=None
        Width of the decoder output (the branches' input); the shallowest skip's width when None.
    **backbone_kwargs
        Passed to the backbone constructor (names and classes only).

    Attributes
    ----------
    encoder : nn.Module
        The backbone (``out_channels``, ``stride``); what warm-starts a classifier.
    decoder : UNetDecoder
    embed_head, cluster_head : nn.Sequential
        conv3x3-BN-ReLU then 1x1 convolution to ``D`` / ``K`` channels.

    Notes
    -----
    ``forward`` has three modes:

    - ``forward(x=..., output="encoder")`` -> ``(N, encoder.out_channels)``: the encoder's map,
      globally average-pooled (the decoder is not run);
    - ``forward(x=..., output="embedding")`` -> ``(N, D)``: the mean pixel embedding, normalised;
    - ``forward(x=..., output="dense")`` -> ``(e, a)``: pixel embeddings ``(N, D, H, W)``, unit
      norm along D, and soft assignments ``(N, K, H, W)``, summing to 1 over K;
    - training, ``forward(x1=, x2=, x_mix=None, rot_k=None, flip=None, mix_index=None,
      mix_weight=None)``: all images in one pass (BatchNorm statistics over the batch); the
      second view's maps are brought back to the first view's frame with
      :func:`undo_dihedral` (``rot_k``, ``flip``: how ``x2`` was turned). Returns a dict with
      ``e1, e2, a1, a2`` (aligned), and ``e_mix, mix_index, mix_weight`` when ``x_mix`` is given.

    Examples
    --------
    >>> import torch
    >>> net = LocalDiscriminationNet("vgg_ld", embedding_dim=8, n_clusters=4)
    >>> e, a = net(x=torch.rand(2, 1, 32, 32), output="dense")
    >>> e.shape, a.shape, net(x=torch.rand(2, 1, 32, 32)).shape
    (torch.Size([2, 8, 32, 32]), torch.Size([2, 4, 32, 32]), torch.Size([2, 128]))
    """

    def __init__(self, backbone="vgg_ld", embedding_dim: int = 32, n_clusters: int = 16, in_channels: int = 1,
                 decoder_channels: int | None = None, **backbone_kwargs):
        super().__init__()
        self.encoder = build_backbone(backbone, in_channels=in_channels, **backbone_kwargs)
        skip_channels = self._probe(in_channels)
        self.decoder = UNetDecoder(skip_channels, decoder_channels)
        width = self.decoder.out_channels
        self.embed_head = _branch(width, int(embedding_dim))
        self.cluster_head = _branch(width, int(n_clusters))
        self.embedding_dim = int(embedding_dim)
        self.n_clusters = int(n_clusters)
        self.encoder_dim = int(self.encoder.out_channels)

    def _probe(self, in_channels: int) -> list[int]:
        param = next(self.encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                feats = encoder_features(self.encoder, torch.zeros(1, in_channels, 64, 64, device=device))
        finally:
            self.encoder.train(was_training)
        return [int(f.shape[1]) for f in feats]

    def dense(self, x: torch.Tensor):
        """Pixel embeddings (N, D, H, W) and soft assignments (N, K, H, W) of images x."""
        h = self.decoder(encoder_features(self.encoder, x), x.shape[-2:])
        e = F.normalize(self.embed_head(h).float(), dim=1)
        s = torch.sigmoid(self.cluster_head(h).float())
        a = s / s.sum(dim=1, keepdim=True).clamp_min(1e-8)
        return e, a

    def forward(self, x=None, x1=None, x2=None, x_mix=None, rot_k=None, flip=None, mix_index=None,
                mix_weight=None, output="encoder"):
        if x1 is None and x2 is None:
            if x is None:
                raise ValueError("LocalDiscriminationNet.forward needs x (inference) or x1 and x2 (training).")
            if output == "encoder":
                return self.encoder(x).float().mean(dim=(2, 3))
            e, a = self.dense(x)
            if output == "embedding":
                return F.normalize(e.mean(dim=(2, 3)), dim=1)
            if output == "dense":
                return e, a
            raise ValueError(f"output must be 'encoder', 'embedding' or 'dense', got {output!r}.")
        if x1 is None or x2 is None or x1.shape != x2.shape:
            raise ValueError("LocalDiscriminationNet needs two views x1 and x2 of the same shape.")
        n = len(x1)
        parts = [x1, x2] + ([x_mix] if x_mix is not None else [])
        e, a = self.dense(torch.cat(parts))
        e1, e2, a1, a2 = e[:n], e[n:2 * n], a[:n], a[n:2 * n]
        if rot_k is not None or flip is not None:
            k = rot_k if rot_k is not None else torch.zeros(n, dtype=torch.long)
            f = flip if flip is not None else torch.zeros(n, dtype=torch.bool)
            e2, a2 = undo_dihedral(e2, k, f), undo_dihedral(a2, k, f)
        out = {"e1": e1, "e2": e2, "a1": a1, "a2": a2}
        if x_mix is not None:
            out.update(e_mix=e[2 * n:], mix_index=mix_index, mix_weight=mix_weight)
        return out
