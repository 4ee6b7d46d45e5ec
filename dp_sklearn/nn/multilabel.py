"""The network of the multi-label metric classifier: backbone, pooling, metric (or linear) head.

Trained by :class:`~dp_sklearn.estimators.multilabel.MultiLabelMetricClassifier`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .heads import GlobalAvgPool
from .label_embeddings import MetricHead

__all__ = ["MultiLabelMetricNet"]


class MultiLabelMetricNet(nn.Module):
    """Backbone -> global average pooling -> metric head (or linear head).

    Parameters
    ----------
    backbone : nn.Module
        A feature backbone (``out_channels`` attribute), see :mod:`dp_sklearn.nn.backbones`.
    n_labels : int
    semantic : ndarray (n_labels, text_dim) or None
        Semantic vectors of the label names (``None``: learnable prototypes).
    head : {"metric", "linear"}, default="metric"
    hidden : tuple of int, default=(512, 256, 128)
    scale : float, default=10.0
    prior : ndarray (n_labels,) or None
        Label frequencies: the per-label bias starts at their log-odds (both heads).
    dropout : float, default=0.0
        Dropout on the pooled features.

    Notes
    -----
    ``forward(x)`` returns ``(logits, aux)``: logits ``(N, L)`` and ``aux`` with
    ``"similarity"`` (cosines ``(N, L)``; the logits again for the linear head),
    ``"embedding"`` (metric-space vectors, or the pooled features for the linear head).

    Examples
    --------
    >>> import torch
    >>> from dp_sklearn.nn.backbones import build_backbone
    >>> net = MultiLabelMetricNet(build_backbone("resnet10_half", in_channels=1), 3)
    >>> logits, aux = net(torch.rand(2, 1, 32, 32))
    >>> logits.shape, aux["embedding"].shape
    (torch.Size([2, 3]), torch.Size([2, 128]))
    """

    def __init__(self, backbone, n_labels, semantic=None, head="metric", hidden=(512, 256, 128), scale=10.0,
                 prior=None, dropout=0.0):
        super().__init__()
        self.backbone = backbone
        self.pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        in_dim = int(backbone.out_channels)
        self.head_type = head
        if head == "metric":
            self.head = MetricHead(in_dim, n_labels, semantic=semantic, hidden=hidden, scale=scale, prior=prior)
        elif head == "linear":
            self.head = nn.Linear(in_dim, n_labels)
            if prior is not None:
                p = torch.as_tensor(np.asarray(prior, dtype=np.float32)).clamp(1e-4, 1 - 1e-4)
                with torch.no_grad():
                    self.head.bias.copy_(torch.log(p / (1 - p)))
        else:
            raise ValueError(f"head must be 'metric' or 'linear', got {head!r}.")

    def forward(self, x, **kwargs):
        h = self.dropout(self.pool(self.backbone(x)))
        if self.head_type == "metric":
            logits, sim = self.head(h)
            return logits, {"similarity": sim, "embedding": self.head.embed(h.float())}
        logits = self.head(h)
        return logits, {"similarity": logits, "embedding": h}
