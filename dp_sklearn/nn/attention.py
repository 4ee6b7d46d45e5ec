"""The mask-guided attention network of Deep Pneumonia (reconstruction from the paper's abstract).

:class:`MaskAttentionNet` puts a spatial attention branch and an attention-pooling classifier on
a backbone's feature map, and, during training only, lets a radiologist's lesion mask act on the
attention ("hard attention") and exposes what the mask-alignment and contrastive-regulation
losses need. Its forward pass::

    F  = backbone(x)                              (N, C, h, w)
    a  = attention_branch(F)                      (N, 1, h, w)  attention logits
    A  = sigmoid(a)                               the learned attention map, in [0, 1]
    M  = downsample(mask, (h, w))                 (N, 1, h, w)  training only
    A' = A * M  ("multiply") or M ("replace")     on the samples that have a mask, else A
    f  = sum_hw(F * A') / (sum_hw(A') + eps)      attention-weighted pooling, (N, C)
    logits = linear(dropout(f))                   (N, n_classes)

Prediction (``mask=None``) uses the learned ``A`` alone: masks are never needed, nor read, at
test time. Wei, Bai, Zhang and Li, "Deep Pneumonia: Attention-Based Contrastive Learning for
Class-Imbalanced Pneumonia Lesion Recognition in Chest X-rays" (arXiv:2207.11393); the paper's
body (exact layers and loss forms) was not available, so every choice is a constructor argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ProjectionHead

__all__ = ["MaskAttentionNet", "downsample_mask", "weighted_pool"]

_HARD = ("multiply", "replace", "none")
_POOLING = ("attention", "avg", "attention+avg")
_DOWNSAMPLE = ("area", "max")


def downsample_mask(mask: torch.Tensor, size, mode: str = "area") -> torch.Tensor:
    """Bring a lesion mask ``(N, 1, H, W)`` to the feature grid ``size = (h, w)``.

    Parameters
    ----------
    mask : torch.Tensor of shape (N, 1, H, W)
        Values in [0, 1] (bool, 0/1 float).
    size : (int, int)
        The feature map's height and width.
    mode : {"area", "max"}, default="area"
        ``"area"``: each grid cell gets the *fraction* of its pixels inside the lesion (adaptive
        average pooling), a soft map in [0, 1] whose total mass equals the lesion's area share.
        ``"max"``: a cell is 1 as soon as one of its pixels is in the lesion (adaptive max
        pooling), a binary map that over-covers thin lesions.

    Returns
    -------
    torch.Tensor of shape (N, 1, h, w), float32

    Examples
    --------
    >>> m = torch.zeros(1, 1, 8, 8); m[..., :4, :2] = 1
    >>> downsample_mask(m, (2, 2))[0, 0]
    tensor([[0.5000, 0.0000],
            [0.0000, 0.0000]])
    >>> downsample_mask(m, (2, 2), "max")[0, 0]
    tensor([[1., 0.],
            [0., 0.]])
    """
    if mode not in _DOWNSAMPLE:
        raise ValueError(f"mask_downsample must be one of {_DOWNSAMPLE}, got {mode!r}.")
    mask = mask.float()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mode == "area":
        return F.adaptive_avg_pool2d(mask, size)
    return F.adaptive_max_pool2d(mask, size)


def weighted_pool(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weighted spatial average ``sum_hw(F * W) / (sum_hw(W) + eps)``.

    Parameters
    ----------
    features : torch.Tensor of shape (N, C, h, w)
    weights : torch.Tensor of shape (N, 1, h, w), non-negative

    Returns
    -------
    torch.Tensor of shape (N, C), float32 (computed in float32 under autocast too)

    Examples
    --------
    >>> f = torch.arange(4.).reshape(1, 1, 2, 2)
    >>> weighted_pool(f, torch.tensor([[[[1., 0.], [0., 1.]]]]), eps=0.0)
    tensor([[1.5000]])
    """
    features = features.float()
    weights = weights.float()
    num = (features * weights).sum(dim=(2, 3))
    den = weights.sum(dim=(2, 3))
    return num / (den + eps)


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``scale`` in the backward pass."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


class MaskAttentionNet(nn.Module):
    """Backbone -> spatial attention -> attention pooling -> linear classifier.

    Parameters
    ----------
    backbone : nn.Module
        Maps ``(N, in_channels, H, W)`` to a feature map ``(N, C, h, w)`` and has an integer
        ``out_channels`` attribute (see :func:`dp_sklearn.nn.backbones.build_backbone`).
    n_classes : int
        Number of outputs of the classifier.
    attention_hidden : int or None, default=None
        Width of the attention branch ``1x1 conv C->hidden -> ReLU -> 1x1 conv hidden->1``;
        ``max(C // 4, 1)`` when None. The last convolution starts at zero weight and bias, so
        the initial map is uniform (``A = 0.5``) and attention pooling starts as average pooling.
    hard_attention : {"multiply", "replace", "none"}, default="multiply"
        How a training mask acts on the pooling map of the samples that have one:
        ``"multiply"``: ``A * M`` (evidence outside the lesion is cut off, ``A`` still gets the
        classification gradient inside it); ``"replace"``: ``M`` (pool exactly over the lesion;
        ``A`` learns from the alignment loss only); ``"none"``: masks do not touch pooling.
    pooling : {"attention", "avg", "attention+avg"}, default="attention"
        ``"attention"``: pool with the learned map ``A``. ``"avg"``: uniform pooling (a plain CNN
        classifier; the attention branch then only learns from the alignment loss, and hard
        attention pools over the mask, ``1 * M``). ``"attention+avg"``: the classifier sees both,
        ``[avg_pool(F), pool(F * A)]`` (``2C`` features): a global branch for evidence that is
        not in a lesion (a normal or diffusely abnormal lung) next to the lesion-attended branch;
        hard attention and the contrastive terms act on the attended half.
    mask_downsample : {"area", "max"}, default="area"
        How masks reach the feature grid, see :func:`downsample_mask`.
    dropout : float, default=0.0
        Dropout on the pooled features before the classifier.
    projection_dim : int or None, default=None
        When given, a :class:`~dp_sklearn.nn.heads.ProjectionHead` ``C -> projection_hidden ->
        projection_dim`` (no BatchNorm, so that batches with a single annotated image work) gives
        the L2-normalised projections used by the contrastive regulation. None: no head, no
        projections (contrastive regulation off).
    projection_hidden : int or None, default=None
        Hidden width of the projection head; ``C`` when None.
    attention_grad_scale : float in [0, 1], default=1.0
        Factor on the gradient that flows from the attention branch back into the backbone (the
        forward pass is unchanged). Below 1, a strong alignment loss trains the attention branch
        fully but reshapes the backbone's features less; 0 stops it entirely.

    Attributes
    ----------
    out_channels : int
        ``C``, the backbone's feature channels.
    feature_dim : int
        Size of the classifier's input (``aux["features"]``): ``2C`` for
        ``pooling="attention+avg"``, else ``C``.
    stride : int or None
        The backbone's stride, when it has one.

    Notes
    -----
    ``forward(x, mask=None, has_mask=None)`` returns ``(logits, aux)``:

    - ``logits``: ``(N, n_classes)``;
    - ``aux["attention_logits"]``: ``(N, 1, h, w)``, pre-sigmoid attention ``a``;
    - ``aux["features"]``: ``(N, feature_dim)`` float32, the test-time pooled features ``pool(F * A)``
      (with ``avg_pool(F)`` in front for ``pooling="attention+avg"``; uniform pooling when
      ``pooling="avg"``).

    When ``mask`` (``(N, 1, H, W)``) and ``has_mask`` (``(N,)`` bool) are given (training), also:

    - ``aux["mask_grid"]``: ``(N, 1, h, w)`` float32, ``M`` on the feature grid;
    - ``aux["has_mask"]``: ``(N,)`` bool, ``has_mask`` and a non-empty ``M`` (a lesion cropped
      away by augmentation switches the mask terms off for that sample);
    - with a projection head, ``aux["z"]`` ``(N, D)`` (projections of ``pool(F * A)``),
      ``aux["z_lesion"]`` and ``aux["z_background"]`` ``(K, D)`` for the ``K`` samples with a
      mask (``pool(F * M)`` and ``pool(F * (1 - M))``), and ``aux["background_valid"]`` ``(K,)``
      (False when the mask covers the whole grid, so there is no background).

    Examples
    --------
    >>> import torch
    >>> from dp_sklearn.nn.backbones import build_backbone
    >>> net = MaskAttentionNet(build_backbone("resnet10_half"), n_classes=3, projection_dim=16)
    >>> logits, aux = net(torch.zeros(2, 1, 64, 64))
    >>> logits.shape, aux["attention_logits"].shape
    (torch.Size([2, 3]), torch.Size([2, 1, 4, 4]))
    >>> mask = torch.zeros(2, 1, 64, 64); mask[0, :, 8:40, 8:40] = 1
    >>> _, aux = net.train()(torch.zeros(2, 1, 64, 64), mask=mask, has_mask=torch.tensor([True, False]))
    >>> aux["has_mask"].tolist(), aux["z_lesion"].shape
    ([True, False], torch.Size([1, 16]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        attention_hidden=None,
        hard_attention: str = "multiply",
        pooling: str = "attention",
        mask_downsample: str = "area",
        dropout: float = 0.0,
        projection_dim=None,
        projection_hidden=None,
        attention_grad_scale=1.0,
    ):
        super().__init__()
        if not 0.0 <= float(attention_grad_scale) <= 1.0:
            raise ValueError(f"attention_grad_scale must be in [0, 1], got {attention_grad_scale!r}.")
        if hard_attention not in _HARD:
            raise ValueError(f"hard_attention must be one of {_HARD}, got {hard_attention!r}.")
        if pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {_POOLING}, got {pooling!r}.")
        if mask_downsample not in _DOWNSAMPLE:
            raise ValueError(f"mask_downsample must be one of {_DOWNSAMPLE}, got {mask_downsample!r}.")
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(
                "backbone must have an integer `out_channels` attribute (build it with "
                "dp_sklearn.nn.backbones.build_backbone)."
            )
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive int, got {n_classes!r}.")
        hidden = max(channels // 4, 1) if attention_hidden is None else int(attention_hidden)
        self.backbone = backbone
        self.attention = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )
        nn.init.zeros_(self.attention[2].weight)
        nn.init.zeros_(self.attention[2].bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(2 * channels if pooling == "attention+avg" else channels, n_classes)
        self.projector = None
        if projection_dim is not None:
            self.projector = ProjectionHead(
                channels, channels if projection_hidden is None else int(projection_hidden), int(projection_dim),
                batch_norm=False,
            )
        self.hard_attention = hard_attention
        self.attention_grad_scale = float(attention_grad_scale)
        self.pooling = pooling
        self.mask_downsample = mask_downsample
        self.n_classes = n_classes
        self.out_channels = channels
        self.feature_dim = self.classifier.in_features
        self.stride = getattr(backbone, "stride", None)

    def _pool_map(self, attention: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(attention) if self.pooling == "avg" else attention

    def _head_input(self, feats: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: the attended features, with the global average in front for
        ``pooling="attention+avg"``."""
        if self.pooling != "attention+avg":
            return attended
        return torch.cat([feats.float().mean(dim=(2, 3)), attended], dim=1)

    def forward(self, x: torch.Tensor, mask=None, has_mask=None):
        feats = self.backbone(x)
        att_logits = self.attention(_scale_grad(feats, self.attention_grad_scale)).float()
        att = torch.sigmoid(att_logits)
        plain_map = self._pool_map(att)
        aux = {"attention_logits": att_logits}

        if mask is None:
            # Prediction path: the learned attention only, masks are never used.
            pooled = self._head_input(feats, weighted_pool(feats, plain_map))
            aux["features"] = pooled
            return self.classifier(self.dropout(pooled)), aux

        if has_mask is None:
            raise ValueError("has_mask (N,) must be given together with mask.")
        grid = downsample_mask(mask, feats.shape[-2:], self.mask_downsample)
        has = has_mask.to(device=grid.device, dtype=torch.bool).reshape(-1) & (grid.flatten(1).sum(1) > 0)
        pool_map = plain_map
        if self.hard_attention != "none":
            hard = plain_map * grid if self.hard_attention == "multiply" else grid
            pool_map = torch.where(has[:, None, None, None], hard, plain_map)
        pooled = weighted_pool(feats, pool_map)
        logits = self.classifier(self.dropout(self._head_input(feats, pooled)))
        aux.update(mask_grid=grid, has_mask=has)
        # The test-time features (what prediction would pool with the learned A alone).
        attended = weighted_pool(feats, plain_map) if self.hard_attention != "none" else pooled
        aux["features"] = self._head_input(feats, attended)

        if self.projector is not None:
            lesion_feats, lesion_grid = feats[has], grid[has]
            f_lesion = weighted_pool(lesion_feats, lesion_grid)
            f_background = weighted_pool(lesion_feats, 1.0 - lesion_grid)
            z = self.projector(torch.cat([attended, f_lesion, f_background]))
            z = F.normalize(z.float(), dim=1)
            n, k = len(pooled), int(has.sum())
            aux["z"], aux["z_lesion"], aux["z_background"] = z[:n], z[n:n + k], z[n + k:]
            aux["background_valid"] = (1.0 - lesion_grid).flatten(1).sum(1) > 0
        return logits, aux

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """The learned attention ``A`` in [0, 1], ``(N, h, w)``, or upsampled bilinearly to ``size``.

        Uses no mask. ``size=None`` keeps the feature grid.
        """
        att = torch.sigmoid(self.attention(self.backbone(x)).float())
        if size is not None:
            att = F.interpolate(att, size=tuple(size), mode="bilinear", align_corners=False)
        return att[:, 0].clamp_(0.0, 1.0)
