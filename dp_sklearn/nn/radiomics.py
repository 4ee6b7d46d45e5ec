"""The two-branch network of the radiomics-contrastive classifier (Han et al., WACV 2022).

Trained by :class:`~dp_sklearn.estimators.radiomics_contrastive.RadiomicsContrastiveClassifier`.
"""

from __future__ import annotations

from torch import nn

from .heads import ProjectionHead

__all__ = ["RadiomicsContrastiveNet"]


class RadiomicsContrastiveNet(nn.Module):
    """Image branch (backbone -> average pool -> classifier, and a projection) and radiomics branch.

    - image: ``F = backbone(x)`` ``(N, C, h, w)``; ``h = mean_hw(F)`` ``(N, C)``; logits
      ``= Linear(h)``; ``z_image = ProjectionHead(C, C, D)(h)``;
    - radiomics: ``r`` ``(N, R)`` (scaled radiomic features) -> MLP ``R -> 64 -> 128`` (ReLU
      between, the authors' CNN version) -> ``z_radiomics = ProjectionHead(128, 128, D)``.

    ``forward(x, radiomics=None)`` returns ``(logits, aux)`` with ``aux["features"]`` (``h``,
    float32) and, when ``radiomics`` is given, ``aux["z_image"]`` and ``aux["z_radiomics"]``
    ``(N, D)``. Grad-CAM looks at ``self.backbone`` (its output feature map).

    Examples
    --------
    >>> import torch
    >>> from dp_sklearn.nn.backbones import build_backbone
    >>> net = RadiomicsContrastiveNet(build_backbone("resnet10_half"), n_classes=3, n_radiomics=54)
    >>> logits, aux = net(torch.rand(4, 1, 32, 32), radiomics=torch.rand(4, 54))
    >>> logits.shape, aux["z_image"].shape, aux["z_radiomics"].shape
    (torch.Size([4, 3]), torch.Size([4, 128]), torch.Size([4, 128]))
    """

    def __init__(self, backbone, n_classes, n_radiomics, radiomics_hidden=(64, 128), projection_dim=128,
                 dropout=0.0):
        super().__init__()
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError("backbone must have an integer `out_channels` (build it with build_backbone).")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, n_classes)
        self.image_projector = ProjectionHead(channels, channels, int(projection_dim), batch_norm=False)
        layers, dim = [], int(n_radiomics)
        hidden = tuple(int(h) for h in radiomics_hidden)
        for k, width in enumerate(hidden):
            layers.append(nn.Linear(dim, width))
            if k < len(hidden) - 1:
                layers.append(nn.ReLU(inplace=True))
            dim = width
        self.radiomics_encoder = nn.Sequential(*layers) if layers else nn.Identity()
        self.radiomics_projector = ProjectionHead(dim, dim, int(projection_dim), batch_norm=False)
        self.out_channels = channels
        self.n_classes = n_classes

    def forward(self, x, radiomics=None):
        feats = self.backbone(x)
        h = feats.float().mean(dim=(2, 3))
        logits = self.classifier(self.dropout(h))
        aux = {"features": h}
        if radiomics is not None:
            aux["z_image"] = self.image_projector(h)
            aux["z_radiomics"] = self.radiomics_projector(self.radiomics_encoder(radiomics.to(h.dtype)))
        return logits, aux
