"""Losses as small ``nn.Module`` s, each documenting the paper, equation and shapes it follows."""

from .attention import AttentionBCELoss, AttentionDiceLoss, make_alignment_loss  # noqa: F401
from .class_balanced import ClassBalancedLoss, class_balanced_weights  # noqa: F401
from .contrastive import NTXentLoss, SupConLoss  # noqa: F401
