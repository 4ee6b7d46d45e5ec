"""The objective of the radiomics-contrastive classifier (Han et al., WACV 2022).

Used by :class:`~dp_sklearn.estimators.radiomics_contrastive.RadiomicsContrastiveClassifier`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RadiomicsContrastiveLoss"]


class RadiomicsContrastiveLoss(nn.Module):
    """``classification(logits, y) + contrastive_weight * NT-Xent(z_image, z_radiomics)``.

    ``forward(logits, aux, y, sample_weight=None)`` returns ``(total, terms)``; ``sample_weight``
    ``(N,)`` goes to the classification loss. The NT-Xent term is 0 when the batch has no radiomics or fewer
    than 2 samples (no negatives).
    """

    def __init__(self, classification, contrastive, contrastive_weight=1.0):
        super().__init__()
        self.classification = classification
        self.contrastive = contrastive
        self.contrastive_weight = float(contrastive_weight)

    def forward(self, logits, aux, y, sample_weight=None):
        if sample_weight is None:
            cls = self.classification(logits, y)
        else:  # per-sample weights as a tensor (a ClassBalancedLoss takes them)
            cls = self.classification(logits, y, sample_weight=sample_weight.to(logits.device))
        terms = {"cls_loss": cls.detach()}
        total = cls
        zi, zr = aux.get("z_image"), aux.get("z_radiomics")
        if self.contrastive_weight > 0 and zi is not None and zr is not None and len(zi) >= 2:
            con = self.contrastive(zi, zr)
            total = total + self.contrastive_weight * con
            terms["contrast_loss"] = con.detach()
        else:
            terms["contrast_loss"] = torch.zeros((), device=logits.device)
        return total, terms
