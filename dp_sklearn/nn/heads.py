"""Small heads that sit on a backbone's feature map: pooling and projection.

- :class:`GlobalAvgPool` turns a feature map ``(N, C, h, w)`` into a vector ``(N, C)``.
- :class:`ProjectionHead` is SimCLR's non-linear projection ``g(h)`` (Chen et al., ICML
  2020): the contrastive loss is computed on ``z = g(h)``, while the representation kept
  for downstream tasks is ``h``, taken before the head.

The modules assume nothing about dtype or memory format, so they run under autocast and
on ``channels_last`` feature maps.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GlobalAvgPool", "ProjectionHead"]


class GlobalAvgPool(nn.Module):
    """Mean over the spatial positions: ``(N, C, h, w) -> (N, C)``.

    Examples
    --------
    >>> import torch
    >>> GlobalAvgPool()(torch.ones(2, 3, 4, 4)).shape
    torch.Size([2, 3])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool expects a feature map (N, C, h, w), got shape {tuple(x.shape)}.")
        return x.mean(dim=(2, 3))


class ProjectionHead(nn.Module):
    """SimCLR projection head: ``Linear -> BatchNorm -> ReLU -> ... -> Linear``.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020, Sec. 2.1: :math:`z = g(h) = W_2\\,\\sigma(W_1 h)`.
    BatchNorm after the hidden layers follows SimCLR v2 and lightly's
    ``SimCLRProjectionHead``; the output layer has no activation.

    Parameters
    ----------
    in_dim : int
        Dimension of the representation ``h`` (the backbone's ``out_channels``).
    hidden_dim : int
        Width of the hidden layer(s).
    out_dim : int
        Dimension of the projection ``z`` the contrastive loss sees.
    num_layers : int, default=2
        Number of linear layers (>= 1; 1 gives a linear projection).
    batch_norm : bool, default=True
        BatchNorm1d after each hidden linear layer.

    Notes
    -----
    Shapes: ``(N, in_dim) -> (N, out_dim)``.

    Examples
    --------
    >>> import torch
    >>> head = ProjectionHead(256, 128, 64)
    >>> head(torch.randn(4, 256)).shape
    torch.Size([4, 64])
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
