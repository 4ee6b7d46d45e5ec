r"""Dual-weighted metric loss and prototype-consistency loss for multi-label classification.

Jin, Lu, Zhu, Huo, "Deep learning based classification of multi-label chest X-ray images via
dual-weighted metric loss", Comput Biol Med 157:106683, 2023. The paper's body is not available
here; what follows is a reconstruction from its abstract and from its predecessor's public code
(visual and label MLPs into one metric space, cosine scores, a ranking loss between positive and
negative labels, a consistency loss on the label prototypes). Every choice is a parameter, and
each weighting can be switched off, so a benchmark can ablate them.

Notation (one batch)
--------------------
:math:`s_{ic} \in [-1, 1]`: cosine similarity of image :math:`i` to the prototype of label
:math:`c` (:math:`N` images, :math:`L` labels); :math:`y_{ic} \in \{0, 1\}`; :math:`b_c` the
label's learnable threshold (bias); :math:`\kappa` the scale; :math:`m` the margin (cosine units);
:math:`z_{ic} = \kappa s_{ic} + b_c` the logit, :math:`\sigma(z_{ic})` the probability;
:math:`\phi(x) = \log(1 + e^x)` (softplus, a smooth hinge).

The metric loss: calibrated label ranking
-----------------------------------------
A ranking loss "every positive label scores above every negative one by a margin" says nothing
about an image with no positive label (more than half of ChestX-ray14 is "No Finding") and gives
no threshold for ``predict``. So the label set of every image is extended by a per-label
*threshold anchor* (calibrated label ranking, Fürnkranz et al., Mach Learn 2008):

* anchor terms — each positive above its threshold by :math:`m`, each negative below it by :math:`m`:

  .. math::
      \ell_{ic} = y_{ic}\,\phi(\kappa m - z_{ic}) + (1 - y_{ic})\,\phi(z_{ic} + \kappa m)

  (with :math:`m = 0` this is exactly the binary cross-entropy on the logits);
* ranking terms — within an image, each positive above each negative by :math:`2m`:

  .. math::
      r_i = \frac{1}{|P_i||N_i|} \sum_{p \in P_i} \sum_{n \in N_i}
            a_p\,\phi\big(\kappa(2m - s_{ip} + s_{in})\big)

  (:math:`r_i = 0` when the image has no positive or no negative label).

Dual weighting
--------------
* **category level** (label frequency): :math:`a_c` are the class-balanced weights of Cui et al.
  (CVPR 2019) on the training positives :math:`n_c`, :math:`a_c \propto (1-\beta)/(1-\beta^{n_c})`,
  normalised to mean 1 over the labels; they weight the *positive* terms of label :math:`c`
  (anchor and ranking), negatives keep weight 1. Rare findings thus count more without
  touching the abundant negatives. Switched off: :math:`a_c = 1`.
* **image level** (hardness, focal-like on the distance): the image's mean anchor loss
  :math:`D_i = \frac1L \sum_c \ell_{ic}` is its distance to the right side of all its
  thresholds, :math:`q_i = e^{-D_i}` the (geometric-mean) probability of being right, and

  .. math::
      w_i = \frac{(1 - q_i)^{\gamma}}{\frac1N \sum_j (1 - q_j)^{\gamma}}

  computed without gradient (a weight, not a loss term) and normalised to mean 1 over the
  batch, so hard images (far from their labels' prototypes, or close to a wrong one) count
  more and easy ones less, while the loss scale — hence the effective learning rate — stays that
  of the unweighted loss. An image with many positive labels has more terms that can be wrong,
  so "how many positives" enters :math:`D_i` too. Switched off: :math:`w_i = 1`.

The total, with :math:`\lambda` the ranking weight:

.. math::
    \mathcal L_{DW} = \frac1N \sum_i w_i \Big[\frac1L \sum_c a_c^{y_{ic}}\,\ell_{ic} + \lambda\, r_i\Big],
    \qquad a_c^{1} = a_c,\; a_c^{0} = 1 .

Why this form: the anchor terms make the scores comparable *across images* for each label, which
is what per-label ROC-AUC (the paper's metric) measures and what a threshold needs; the ranking
terms are the paper's metric loss on the label set; both weights are multiplicative and
switchable, and with both off, :math:`m = 0` and :math:`\lambda = 0` the loss is plain BCE.

Consistency
-----------
:class:`PrototypeConsistencyLoss` keeps the label-to-label cosine similarities of the mapped
prototypes :math:`p_c` close to those of the raw semantic vectors :math:`t_c`:

.. math::
    \mathcal L_{cons} = \frac{1}{L^2} \sum_{c, c'} \big(\cos(p_c, p_{c'}) - \cos(t_c, t_{c'})\big)^2 .
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._buffers import accept_unset_buffers
from .class_balanced import effective_number_weights

__all__ = ["DualWeightedMetricLoss", "PrototypeConsistencyLoss", "label_frequency_weights"]


def label_frequency_weights(positives_per_label, beta=0.999):
    """Category weights :math:`a_c` from positive counts: class-balanced, mean 1 over labels.

    Parameters
    ----------
    positives_per_label : array-like of shape (L,)
        Training positives of each label. A label with no positive is weighted as if it had
        one (its weight is otherwise undefined); it then only has negative terms anyway.
    beta : float in [0, 1), default=0.999
        Effective-number ``beta`` (``0``: equal weights, ``-> 1``: inverse frequency).

    Returns
    -------
    weights : float64 ndarray of shape (L,), mean 1

    Examples
    --------
    >>> label_frequency_weights([100, 10], beta=0.99).round(3)
    array([0.262, 1.738])
    """
    counts = np.maximum(np.asarray(positives_per_label, dtype=np.float64), 1.0)
    if counts.ndim != 1 or counts.shape[0] < 1:
        raise ValueError(f"positives_per_label must be a non-empty 1-D array, got shape {counts.shape}.")
    if counts.shape[0] == 1:
        return np.ones(1)
    return effective_number_weights(counts, beta)  # sums to L, i.e. mean 1


class DualWeightedMetricLoss(nn.Module):
    r"""Calibrated-ranking metric loss with image-level and category-level weights.

    See the module docstring for the equations. Shapes: ``similarity`` and ``target`` are
    ``(N, L)``, ``bias`` is ``(L,)``; the result is a scalar.

    Parameters
    ----------
    scale : float, default=10.0
        :math:`\kappa`, must match the head that produced the similarities.
    margin : float >= 0, default=0.1
        :math:`m` in cosine units (anchor terms use :math:`m`, ranking pairs :math:`2m`).
    rank_weight : float >= 0, default=1.0
        :math:`\lambda`; ``0`` drops the ranking terms.
    image_weight : bool, default=True
        Focal-like per-image weights :math:`w_i`.
    image_gamma : float >= 0, default=1.0
        :math:`\gamma` of the image weights.
    category_weight : bool, default=True
        Class-balanced per-label weights :math:`a_c` on the positive terms.
    beta : float in [0, 1), default=0.999
        Effective-number ``beta`` of the category weights.
    positives_per_label : array-like of shape (L,), optional
        Training positives per label (or call :meth:`set_label_counts`); needed when
        ``category_weight=True``.

    Attributes
    ----------
    last_terms : dict
        Mean anchor term, ranking term and image weight range of the last call (floats), for logs.

    Examples
    --------
    >>> import torch
    >>> loss = DualWeightedMetricLoss(positives_per_label=[30, 5, 10])
    >>> s = torch.tanh(torch.randn(4, 3, requires_grad=True))
    >>> y = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]])
    >>> value = loss(s, y, torch.zeros(3))
    >>> value.backward(); value.ndim
    0
    """

    def __init__(self, scale=10.0, margin=0.1, rank_weight=1.0, image_weight=True, image_gamma=1.0,
                 category_weight=True, beta=0.999, positives_per_label=None):
        super().__init__()
        for name, value in (("scale", scale), ("margin", margin), ("rank_weight", rank_weight),
                            ("image_gamma", image_gamma)):
            if not np.isfinite(value) or value < 0 or (name == "scale" and value == 0):
                raise ValueError(f"{name} must be a finite number >= 0 (> 0 for scale), got {value!r}.")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}.")
        self.scale = float(scale)
        self.margin = float(margin)
        self.rank_weight = float(rank_weight)
        self.image_weight = bool(image_weight)
        self.image_gamma = float(image_gamma)
        self.category_weight = bool(category_weight)
        self.beta = float(beta)
        self.register_buffer("label_weight", None)
        accept_unset_buffers(self, "label_weight")
        self.last_terms = {}
        if positives_per_label is not None:
            self.set_label_counts(positives_per_label)

    def set_label_counts(self, positives_per_label):
        """Set the category weights :math:`a_c` from training positives per label; returns self."""
        w = label_frequency_weights(positives_per_label, self.beta)
        self.label_weight = torch.as_tensor(w, dtype=torch.float32)
        return self

    def extra_repr(self):
        return (f"scale={self.scale}, margin={self.margin}, rank_weight={self.rank_weight}, "
                f"image_weight={self.image_weight}, image_gamma={self.image_gamma}, "
                f"category_weight={self.category_weight}, beta={self.beta}")

    def category_weights(self, n_labels, device):
        """The :math:`a_c` in use, ``(L,)`` (ones when ``category_weight=False``)."""
        if not self.category_weight:
            return torch.ones(n_labels, device=device)
        if self.label_weight is None:
            raise RuntimeError("category_weight=True needs the label counts: pass positives_per_label=... "
                               "or call set_label_counts(Y.sum(axis=0)).")
        if self.label_weight.shape[0] != n_labels:
            raise ValueError(f"the loss was set up for {self.label_weight.shape[0]} labels, got {n_labels}.")
        return self.label_weight.to(device)

    def forward(self, similarity, target, bias=None, sample_weight=None):
        """Loss of a batch: ``similarity`` (N, L) cosines, ``target`` (N, L) in {0, 1}, ``bias`` (L,)
        thresholds (zeros if None), optional ``sample_weight`` (N,) multiplying each image's term."""
        if similarity.ndim != 2:
            raise ValueError(f"similarity must be (N, L), got shape {tuple(similarity.shape)}.")
        s = similarity.float()
        n, n_labels = s.shape
        y = torch.as_tensor(target, device=s.device).float()
        if tuple(y.shape) != (n, n_labels):
            raise ValueError(f"target must have the similarities' shape {(n, n_labels)}, got {tuple(y.shape)}.")
        if n == 0:
            return s.sum() * 0.0
        b = torch.zeros(n_labels, device=s.device) if bias is None else bias.float().to(s.device)
        k, m = self.scale, self.margin
        a = self.category_weights(n_labels, s.device)
        z = k * s + b
        anchor = y * F.softplus(k * m - z) + (1 - y) * F.softplus(z + k * m)       # (N, L)
        weighted_anchor = (torch.where(y > 0, a, torch.ones_like(a)) * anchor).mean(dim=1)  # (N,)

        rank = torch.zeros(n, device=s.device)
        if self.rank_weight > 0:
            # (N, L_pos, L_neg) pairwise terms, masked to positive-negative pairs of each image.
            diff = s[:, :, None] - s[:, None, :]
            pair = (y[:, :, None] * (1 - y[:, None, :]))
            terms = a[None, :, None] * F.softplus(k * (2 * m - diff)) * pair
            n_pairs = pair.sum(dim=(1, 2))
            rank = terms.sum(dim=(1, 2)) / n_pairs.clamp_min(1.0)
        per_image = weighted_anchor + self.rank_weight * rank

        if self.image_weight:
            with torch.no_grad():
                hard = (1 - torch.exp(-anchor.mean(dim=1))).clamp_min(0) ** self.image_gamma
                mean = hard.mean()
                w = hard / mean if mean > 0 else torch.ones_like(hard)
        else:
            w = torch.ones(n, device=s.device)
        if sample_weight is not None:
            w = w * torch.as_tensor(sample_weight, device=s.device).float()
        loss = (w * per_image).mean()
        self.last_terms = {"anchor_loss": float(weighted_anchor.detach().mean()),
                           "rank_loss": float(rank.detach().mean())}
        return loss


class PrototypeConsistencyLoss(nn.Module):
    r"""Keep the prototypes' label-to-label similarities close to those of the semantic vectors.

    :math:`\frac{1}{L^2}\sum_{c,c'} (\cos(p_c, p_{c'}) - \cos(t_c, t_{c'}))^2` with ``prototypes``
    :math:`p` ``(L, d)`` and ``semantic`` :math:`t` ``(L, text_dim)``; a scalar.

    Examples
    --------
    >>> import torch
    >>> t = torch.randn(5, 384)
    >>> float(PrototypeConsistencyLoss()(2 * t, t))  # scale-free: same directions, zero loss
    0.0
    """

    def forward(self, prototypes, semantic):
        p = F.normalize(prototypes.float(), dim=1)
        t = F.normalize(semantic.float(), dim=1)
        return ((p @ p.t() - t @ t.t()) ** 2).mean()
