"""Loading a trained loss into one created without its data-dependent buffers.

A loss such as :class:`~dp_sklearn.losses.ClassBalancedLoss` registers its weight buffer as
``None`` until it sees counts; ``None`` buffers are not ``state_dict`` entries, so
``load_state_dict`` would reject the weights of a trained loss. :func:`accept_unset_buffers`
registers torch's public ``load_state_dict`` pre-hook that gives such a buffer a tensor of the
stored shape first.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def _fill_unset(module, state_dict, prefix, *args, names):
    for name in names:
        key = prefix + name
        if getattr(module, name) is None and key in state_dict:
            setattr(module, name, torch.empty_like(state_dict[key], dtype=torch.float32))


def accept_unset_buffers(module: nn.Module, *names: str) -> None:
    """Let ``module.load_state_dict`` fill the buffers ``names`` that are still ``None``."""
    module.register_load_state_dict_pre_hook(functools.partial(_fill_unset, names=names))
