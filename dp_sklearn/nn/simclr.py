"""SimCLR's network: encoder, global average pooling and projection head (Chen et al., ICML 2020).

The module trained by :class:`~dp_sklearn.estimators.pretrainer.ContrastivePretrainer`.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import build_backbone
from .heads import GlobalAvgPool, ProjectionHead

__all__ = ["SimCLRModule"]


class SimCLRModule(nn.Module):
    """Encoder, global average pooling and projection head of SimCLR.

    Parameters
    ----------
    backbone : str, nn.Module subclass or instance, default="resnet18"
        Passed to :func:`dp_sklearn.nn.backbones.build_backbone`; it must return a feature
        map ``(N, C, h, w)``.
    projection_dim : int, default=128
        Dimension of ``z``, the projection the NT-Xent loss sees.
    hidden_dim : int, default=512
        Hidden width of the :class:`~dp_sklearn.nn.heads.ProjectionHead`.
    in_channels : int, default=1
        Image channels.
    **backbone_kwargs
        Passed to ``build_backbone`` (names and classes only).

    Attributes
    ----------
    encoder : nn.Module
        The backbone (``out_channels``, ``stride`` attributes).
    pool : GlobalAvgPool
    head : ProjectionHead
    embedding_dim : int
        ``encoder.out_channels``: the size of the representation ``h``.

    Notes
    -----
    ``forward(x=...)`` returns the embedding ``h = pool(encoder(x))`` of shape
    ``(N, embedding_dim)``; ``forward(x1=..., x2=...)`` runs both views through the model
    as one batch of ``2N`` images (one pass, BatchNorm statistics over both views) and
    returns the projections ``(z1, z2)``, each ``(N, projection_dim)``.

    Examples
    --------
    >>> import torch
    >>> m = SimCLRModule("resnet10_half", projection_dim=16, hidden_dim=32)
    >>> z1, z2 = m(x1=torch.rand(4, 1, 32, 32), x2=torch.rand(4, 1, 32, 32))
    >>> z1.shape, m(x=torch.rand(4, 1, 32, 32)).shape
    (torch.Size([4, 16]), torch.Size([4, 256]))
    """

    def __init__(self, backbone="resnet18", projection_dim: int = 128, hidden_dim: int = 512, in_channels: int = 1,
                 **backbone_kwargs):
        super().__init__()
        self.encoder = build_backbone(backbone, in_channels=in_channels, **backbone_kwargs)
        self.embedding_dim = int(self.encoder.out_channels)
        self.pool = GlobalAvgPool()
        self.head = ProjectionHead(self.embedding_dim, hidden_dim, projection_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled representation ``h``: ``(N, C, H, W) -> (N, embedding_dim)``."""
        return self.pool(self.encoder(x))

    def forward(self, x=None, x1=None, x2=None, **kwargs):
        if x1 is not None or x2 is not None:
            if x1 is None or x2 is None or x1.shape != x2.shape:
                raise ValueError("SimCLRModule needs two views x1 and x2 of the same shape.")
            z = self.head(self.embed(torch.cat([x1, x2])))
            return z[: len(x1)], z[len(x1):]
        if x is None:
            raise ValueError("SimCLRModule.forward needs x (embedding) or x1 and x2 (projections).")
        return self.embed(x)
