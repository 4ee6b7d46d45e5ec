"""The estimators: scikit-learn compatible, skorch-based where they train a network."""

import importlib

_PUBLIC = {
    "DeepPneumoniaClassifier": ".deep_pneumonia",
    "MaskAttentionClassifier": ".mask_attention",
    "ContrastivePretrainer": ".pretrainer",
    "ClassBalancedWeighting": ".class_balanced",
    "ClassBalancedSampler": ".class_balanced",
    "ClassBalancedBatchSampler": ".class_balanced",
    "ImageResampler": ".resampling",
    "LocalDiscriminationPretrainer": ".local_discrimination",
    "MultiLabelMetricClassifier": ".multilabel",
    "RadiomicsContrastiveClassifier": ".radiomics_contrastive",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
