"""Metrics of where a model looks: the share of attention mass inside the radiologist's mask."""

from __future__ import annotations

import numpy as np

__all__ = ["lesion_focus"]


def lesion_focus(attention, masks):
    """Per-image share of attention mass inside the lesion mask, and the mask's area share.

    ``focus[i] = sum(A_i * M_i) / sum(A_i)`` is the fraction of image ``i``'s attention mass that
    falls inside its mask; ``area[i] = mean(M_i)`` is the fraction a uniform map would put there
    (chance level). ``focus / area`` is then the lift over chance: 1 for a map that ignores the
    lesion, ``1 / area`` for a map entirely inside it.

    Parameters
    ----------
    attention : array-like of shape (n, H, W)
        Non-negative attention maps (e.g. ``MaskAttentionClassifier.attention_maps``).
    masks : array-like of shape (n, H, W)
        Lesion masks, bool or {0, 1} / {0, 255}, the maps' size.

    Returns
    -------
    focus : ndarray of shape (n,), float64
        NaN where the mask is empty or the map has no mass.
    area : ndarray of shape (n,), float64

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 4, 4), bool); m[0, :2, :2] = True
    >>> a = np.zeros((1, 4, 4)); a[0, :2, :] = 1.0
    >>> lesion_focus(a, m)
    (array([0.5]), array([0.25]))
    """
    att = np.asarray(attention, dtype=np.float64)
    msk = np.asarray(masks)
    if att.ndim != 3:
        raise ValueError(f"attention must have shape (n, H, W), got {att.shape}.")
    if msk.shape != att.shape:
        raise ValueError(f"masks have shape {msk.shape} but attention has {att.shape}; they must match.")
    if np.any(att < 0) or not np.all(np.isfinite(att)):
        raise ValueError("attention must be finite and non-negative.")
    msk = msk > 0
    mass = att.reshape(len(att), -1).sum(1)
    inside = (att * msk).reshape(len(att), -1).sum(1)
    area = msk.reshape(len(msk), -1).mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        focus = np.where((mass > 0) & (area > 0), inside / np.where(mass > 0, mass, 1.0), np.nan)
    return focus, area
