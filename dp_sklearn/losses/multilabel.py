"""The objective of the multi-label metric classifier: a main multi-label loss plus prototype consistency.

Used by :class:`~dp_sklearn.estimators.multilabel.MultiLabelMetricClassifier`; the terms are
:class:`~dp_sklearn.losses.metric.DualWeightedMetricLoss` (Jin et al., Comput Biol Med 2023),
binary cross-entropy or :class:`~dp_sklearn.losses.class_balanced.ClassBalancedLoss` (sigmoid),
and :class:`~dp_sklearn.losses.metric.PrototypeConsistencyLoss`. Per-sample weights enter every
main loss as a tensor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .class_balanced import ClassBalancedLoss
from .metric import DualWeightedMetricLoss, PrototypeConsistencyLoss

__all__ = ["MultiLabelLoss"]


class MultiLabelLoss(nn.Module):
    """Main multi-label loss plus the prototype-consistency term; per-sample weights supported.

    Parameters
    ----------
    main : {"dual_weighted", "bce", "class_balanced"}
    dual_weighted : DualWeightedMetricLoss or None
        The loss used for ``main="dual_weighted"``.
    class_balance_beta : float, default=0.999
        ``beta`` of the class-balanced sigmoid baseline (Cui et al.: each image's summed BCE is
        weighted by the mean class-balanced weight of its positive labels, weight 1 without
        positives; exactly :class:`~dp_sklearn.losses.class_balanced.ClassBalancedLoss`).
    consistency_weight : float, default=0.1
        Weight of :class:`~dp_sklearn.losses.metric.PrototypeConsistencyLoss` (used only when
        the head has semantic vectors).
    positives_per_label : array-like (L,), optional
        Training positives per label (category weights of both weighted losses).

    Notes
    -----
    ``forward(logits, similarity, target, bias=None, prototypes=None, semantic=None,
    sample_weight=None)`` returns ``(total, terms)``.
    """

    def __init__(self, main="dual_weighted", dual_weighted=None, class_balance_beta=0.999, consistency_weight=0.1,
                 positives_per_label=None):
        super().__init__()
        if main not in ("dual_weighted", "bce", "class_balanced"):
            raise ValueError(f"main must be 'dual_weighted', 'bce' or 'class_balanced', got {main!r}.")
        self.main = main
        self.dual_weighted = dual_weighted if dual_weighted is not None else DualWeightedMetricLoss()
        self.class_balanced = ClassBalancedLoss("sigmoid", beta=class_balance_beta)
        self.consistency = PrototypeConsistencyLoss()
        self.consistency_weight = float(consistency_weight)
        if positives_per_label is not None:
            self.set_label_counts(positives_per_label)

    def set_label_counts(self, positives_per_label):
        counts = np.maximum(np.asarray(positives_per_label, dtype=np.float64), 1.0)
        self.dual_weighted.set_label_counts(counts)
        if counts.shape[0] > 1:  # class-balanced weights rank labels against each other: none for one label
            self.class_balanced.set_samples_per_class(counts)
        return self

    def forward(self, logits, similarity, target, bias=None, prototypes=None, semantic=None, sample_weight=None):
        y = target.float()
        logits = logits.float()
        terms = {}
        if self.main == "dual_weighted":
            if sample_weight is None:
                main = self.dual_weighted(similarity, y, bias)
            else:
                main = self.dual_weighted(similarity, y, bias, sample_weight=sample_weight)
        else:
            if self.main == "bce":
                per = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=1)  # (N,)
                main = per.mean() if sample_weight is None else (sample_weight.float() * per).mean()
            else:  # ClassBalancedLoss (sigmoid, multi-label): mean of s_i * alpha_i * sum_c bce_ic
                main = self.class_balanced(logits, y, sample_weight=sample_weight)
        terms["main_loss"] = main.detach()
        total = main
        if prototypes is not None and semantic is not None and self.consistency_weight > 0:
            cons = self.consistency(prototypes, semantic)
            terms["consistency_loss"] = cons.detach()
            total = total + self.consistency_weight * cons
        else:
            terms["consistency_loss"] = torch.zeros((), device=logits.device)
        return total, terms
