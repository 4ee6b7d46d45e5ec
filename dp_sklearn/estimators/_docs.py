"""Shared parameter docstrings of the torch estimators (imbalanced-learn's ``Substitution`` pattern).

A parameter that every torch estimator has is documented once, here; an estimator's docstring
writes ``{name}`` on a line of its own in its Parameters section and the :func:`fill_doc` class
decorator puts the entry there, so the wording cannot drift between estimators.
"""

from __future__ import annotations

import re

__all__ = ["SHARED_PARAMETERS", "fill_doc"]

#: Docstring entries of the parameters shared by the torch estimators (imbalanced-learn's
#: ``Substitution`` pattern): an estimator docstring writes ``{name}`` on a line of its own in the
#: Parameters section and :func:`fill_doc` puts the entry there.
SHARED_PARAMETERS = {
    "backbone": """backbone : str, nn.Module subclass or instance
        Feature extractor, see :func:`dp_sklearn.nn.backbones.build_backbone` (``"resnet10_half"`` is
        the small CPU variant). An instance is deep-copied at ``fit``: the object you pass is
        never trained in place.""",
    "image_size": """image_size : int, (int, int) or None, default=224
        Size the images (and masks) are resized to; None keeps the input size (array input only).""",
    "backbone_kwargs": """backbone_kwargs : dict or None, default=None
        Extra constructor arguments of a named backbone, e.g. ``{"stem_stride": 1}``.""",
    "encoder": """encoder : fitted pre-trainer, nn.Module or None, default=None
        Warm start: the backbone starts from the pre-trainer's ``encoder_`` (or this module's)
        ``state_dict``; a structure that does not match the backbone raises ``ValueError``. The
        encoder itself is not modified. ``sklearn.base.clone`` un-fits an estimator parameter, so
        pass ``pretrainer.encoder_`` when the classifier will be cloned (e.g. in ``cross_validate``).""",
    "max_epochs": """max_epochs : int
        Training epochs in total (a resumed run trains only the missing ones).""",
    "lr": """lr : float >= 0, default=1e-3
        Learning rate of the optimizer (AdamW by default).""",
    "weight_decay": """weight_decay : float >= 0, default=1e-4
        Decoupled weight decay of the optimizer, when it takes one (``optimizer__weight_decay``
        overrides it), on kernels and weight matrices only: norm weights and biases get none.""",
    "batch_size": """batch_size : int
        Images per batch.""",
    "augment": """augment : bool, dict or nn.Module, default=True
        Training-time augmentation on the device: ``True`` ->
        :class:`dp_sklearn.data.augment.RadiographAugment` defaults at ``image_size``, a dict -> its
        keyword arguments, a module -> a deep copy of it; ``False`` -> none.""",
    "patience": """patience : int or None
        Stop when the training loss has not improved (relative threshold 1e-4) for this many
        epochs (skorch ``EarlyStopping``); None never stops early.""",
    "checkpoint_dir": """checkpoint_dir : str, os.PathLike or None, default=None
        Save module, optimizer, criterion and history there after every epoch; a later ``fit``
        with the same directory resumes and trains until the history holds ``max_epochs`` epochs
        (see :mod:`dp_sklearn.estimators.callbacks`). Remove the directory to start over.""",
    "device": """device : {"auto", "cpu", "cuda"} or "cuda:N", default="auto"
        ``"auto"`` uses CUDA when present. The model runs in ``channels_last`` under autocast
        (see ``precision``).""",
    "precision": """precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype; ``"auto"`` is bfloat16 where the device computes it natively (CUDA GPUs
        that support it, CPUs with AVX512-BF16 or AMX), else float32. Losses are computed in
        float32 either way. The resolved dtype is the fitted attribute ``amp_dtype_``.""",
    "num_workers": """num_workers : int, default=0
        DataLoader worker processes. With 0 and array input, batches are sliced straight from one
        tensor (no per-image collate); path input streams through a DataLoader.""",
    "random_state": """random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling, dropout and augmentation (repeatable on one device).""",
    "verbose": """verbose : int, default=1
        1 prints one line per epoch (losses, images/s, duration); 0 is silent.""",
}


def fill_doc(cls):
    """Class decorator: replace each ``{name}`` line of the docstring by its :data:`SHARED_PARAMETERS` entry."""

    def entry(match):
        indent = match.group(1)
        first, *rest = SHARED_PARAMETERS[match.group(2)].split("\n")
        return "\n".join([indent + first] + [indent + "    " + line.strip() for line in rest])

    if cls.__doc__:
        pattern = re.compile(r"^( *)\{(" + "|".join(SHARED_PARAMETERS) + r")\}$", re.MULTILINE)
        cls.__doc__ = pattern.sub(entry, cls.__doc__)
    return cls
