"""Metrics of where a model looks: attention mass inside the radiologist's mask, regions that match it."""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_dice", "lesion_focus"]


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


def cluster_dice(segmentation, masks):
    """How well the regions of a segmentation match lesion masks (Dice), without labels.

    For image ``i`` and region ``k``, ``dice[i, k] = 2 |S_ik & M_i| / (|S_ik| + |M_i|)`` with
    ``S_ik`` the pixels assigned to ``k``. Two summaries:

    - ``best_cluster_dice``: the single region ``k*`` with the highest mean Dice over the images,
      and that mean (one region must stand for "lesion" in every image);
    - ``per_image_best_dice``: the mean over images of each image's best region (an upper bound).

    Parameters
    ----------
    segmentation : array-like of int, shape (n, H, W)
        Region index per pixel (e.g. :meth:`~dp_sklearn.estimators.local_discrimination.LocalDiscriminationPretrainer.segment`).
    masks : array-like of shape (n, H, W)
        Lesion masks (bool or {0, 1}); images with an empty mask are left out.

    Returns
    -------
    dict
        ``best_cluster`` (int), ``best_cluster_dice`` (float), ``per_image_best_dice`` (float),
        ``dice`` (ndarray (n_used, n_regions)), ``n_images`` (int).

    Examples
    --------
    >>> import numpy as np
    >>> seg = np.zeros((2, 4, 4), int); seg[:, :2, :2] = 3
    >>> m = np.zeros((2, 4, 4), bool); m[:, :2, :2] = True
    >>> r = cluster_dice(seg, m); r["best_cluster"], r["best_cluster_dice"]
    (3, 1.0)
    """
    seg = np.asarray(segmentation)
    msk = np.asarray(masks).astype(bool)
    if seg.shape != msk.shape or seg.ndim != 3:
        raise ValueError(f"segmentation and masks must both have shape (n, H, W), got {seg.shape} and {msk.shape}.")
    keep = msk.reshape(len(msk), -1).any(1)
    seg, msk = seg[keep].astype(np.int64), msk[keep]
    if not len(seg):
        raise ValueError("no image has a non-empty mask.")
    k = int(seg.max()) + 1
    onehot = np.eye(k, dtype=bool)[seg.reshape(len(seg), -1)]  # (n, P, k)
    m = msk.reshape(len(msk), -1, 1)
    inter = (onehot & m).sum(1)
    dice = 2 * inter / (onehot.sum(1) + m.sum(1))
    best = int(np.argmax(dice.mean(0)))
    return {"best_cluster": best, "best_cluster_dice": float(dice[:, best].mean()),
            "per_image_best_dice": float(dice.max(1).mean()), "dice": dice, "n_images": int(len(seg))}
