"""Explanations: attention maps drawn over the radiographs, next to the radiologist's mask outline.

Uses matplotlib's non-interactive ``Agg`` backend when no backend has been chosen, so it works
on headless machines; the caller saves or shows the returned Figure.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_attention"]


def _pyplot():
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attention(images, attention, masks=None, *, n_cols=4, titles=None, alpha=0.45, cmap="jet", ax=None):
    """Draw each image with its attention map overlaid, and the lesion mask's outline if any.

    Parameters
    ----------
    images : array-like (n, H, W) or (n, 1, H, W)
        The radiographs (any range; each is shown with its own min-max scaling).
    attention : array-like (n, H, W)
        Attention maps in [0, 1] at the images' resolution (``clf.attention_maps(images)``).
    masks : array-like (n, H, W), list with ``None`` entries, or None
        Radiologist masks; an outline (white contour) is drawn where a mask is non-empty.
    n_cols : int, default=4
        Panels per row.
    titles : sequence of str, optional
        One title per image (e.g. true and predicted class).
    alpha : float, default=0.45
        Opacity of the attention overlay.
    cmap : str, default="jet"
        Colour map of the attention.
    ax : matplotlib Axes or array of Axes, optional
        Where to draw (at least ``n`` axes); a new Figure otherwise.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.RandomState(0).rand(2, 16, 16)
    >>> att = np.zeros((2, 16, 16)); att[:, 4:8, 4:8] = 1
    >>> mask = [att[0] > 0, None]
    >>> fig = plot_attention(img, att, mask, titles=["a", "b"])
    >>> len(fig.axes)
    2
    """
    plt = _pyplot()
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    att = np.asarray(attention, dtype=np.float32)
    if imgs.ndim != 3 or att.shape != imgs.shape:
        raise ValueError(f"images {imgs.shape} and attention {att.shape} must both be (n, H, W) of the same shape.")
    n = len(imgs)
    if masks is not None:
        if len(masks) != n:
            raise ValueError(f"masks has {len(masks)} entries but there are {n} images.")
        masks = [None if m is None else np.asarray(m) for m in masks]
        for m in masks:
            if m is not None and m.shape != imgs.shape[1:]:
                raise ValueError(f"a mask has shape {m.shape} but the images are {imgs.shape[1:]}.")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries but there are {n} images.")
    if ax is None:
        n_cols = max(1, min(int(n_cols), n))
        n_rows = int(np.ceil(n / n_cols))
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 3 * n_rows), squeeze=False)
        axes = axes.ravel()
        for extra in axes[n:]:
            extra.remove()
    else:
        axes = np.atleast_1d(ax).ravel()
        if len(axes) < n:
            raise ValueError(f"ax has {len(axes)} axes but there are {n} images.")
        fig = axes[0].figure
    for i in range(n):
        a = axes[i]
        img = imgs[i]
        lo, hi = float(img.min()), float(img.max())
        a.imshow((img - lo) / (hi - lo) if hi > lo else img * 0, cmap="gray", vmin=0, vmax=1)
        a.imshow(att[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        if masks is not None and masks[i] is not None and np.any(masks[i]):
            a.contour(masks[i] > 0, levels=[0.5], colors="white", linewidths=1.2)
        if titles is not None:
            a.set_title(str(titles[i]), fontsize=9)
        a.set_axis_off()
    return fig
