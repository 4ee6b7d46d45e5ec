"""Explanations and localization: Grad-CAM on torch hooks, regions and boxes from heat maps.

* :class:`GradCAM` — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017, Eq. (1)-(2): for a target layer with activations
  :math:`A^k` (``(N, K, h, w)``) and a class score :math:`y^c`,

  .. math::

      \\alpha^c_k = \\frac{1}{hw} \\sum_{ij} \\frac{\\partial y^c}{\\partial A^k_{ij}}, \\qquad
      L^c = \\operatorname{ReLU}\\Big(\\sum_k \\alpha^c_k A^k\\Big),

  upsampled bilinearly to the input size and min-max normalised per image to [0, 1].
  Works on any layer of any ``nn.Module`` (e.g. the project's backbones: ``net.backbone`` or
  ``net.backbone.layer3``), in float32 or under autocast; the forward hook lives only during a
  call, so no hook is ever left on the model.
* :func:`cam_to_region` / :func:`cam_to_box` — the region rule of Han et al. (2021/2022,
  knowledge-augmented contrastive learning with radiomics): min-max normalise the map,
  Gaussian-blur it, threshold at 0.5, keep the strongest connected region and take its bounding
  box; a box covering (nearly) the whole image is shrunk to its central part.
* :func:`masks_to_boxes`, :func:`box_iou`, :func:`pointing_game` — localization metrics against
  radiologist masks.
* :func:`estimator_gradcam` — Grad-CAM of a fitted dp_sklearn estimator (e.g. the plain CNN
  ``MaskAttentionClassifier``), for comparisons.

Boxes are ``(x0, y0, x1, y1)`` integer pixel coordinates with exclusive ends, so the box of an
image ``img`` is ``img[y0:y1, x0:x1]``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GradCAM",
    "box_iou",
    "boxes_to_masks",
    "cam_to_box",
    "cam_to_region",
    "estimator_gradcam",
    "find_target_layer",
    "gaussian_blur",
    "masks_to_boxes",
    "pointing_game",
]


def _first_output(output):
    """The logits of a model that returns a tensor, a ``(logits, aux)`` tuple or a dict with "logits"."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    raise TypeError(
        f"the model returned {type(output).__name__}; Grad-CAM needs logits (N, C), a tuple whose first item "
        "is the logits, or a dict with 'logits' (or pass output_fn=...)."
    )


def find_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM looks at by default: the backbone's output feature map.

    ``model.backbone`` when the model has one (dp_sklearn's networks), else ``model.layer4``
    (a ResNet trunk), else raises ``ValueError``.
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Module):
        return layer4
    raise ValueError(
        f"cannot guess the target layer of {type(model).__name__}: pass target_layer= (the module whose "
        "output feature map (N, K, h, w) Grad-CAM should weight)."
    )


class GradCAM:
    """Grad-CAM heat maps from a forward hook on ``target_layer``.

    Parameters
    ----------
    model : nn.Module
        Maps images ``(N, C, H, W)`` to logits ``(N, n_classes)`` (or a tuple/dict holding them,
        see ``output_fn``).
    target_layer : nn.Module or str or None, default=None
        The module whose output ``(N, K, h, w)`` is weighted; a str is looked up with
        ``model.get_submodule`` (e.g. ``"backbone.layer3"``); None uses
        :func:`find_target_layer`.
    output_fn : callable or None
        Turns the model's output into logits; by default a tensor is taken as it is and the
        first item of a tuple / the ``"logits"`` entry of a dict is used.
    autocast_dtype : torch.dtype or None, default=None
        Run the forward pass under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``);
        the map itself is computed in float32.
    batch_size : int or None, default=None
        Process the input in chunks of this size (None: all at once).

    Notes
    -----
    During a call the model is put in eval mode (BatchNorm uses its running statistics and
    nothing is updated) and restored afterwards. Gradients are taken with
    ``torch.autograd.grad`` with respect to the hooked activations only, so the parameters'
    ``.grad`` are never touched (Grad-CAM can run inside a training loop). The input is made to
    require gradients, so frozen models work too. The hook is registered on entry and removed on
    exit of each call, even on error.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 3))
    >>> cam = GradCAM(net, target_layer=net[1])
    >>> cam(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2, 16, 16])
    """

    def __init__(self, model, target_layer=None, *, output_fn=None, autocast_dtype=None, batch_size=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        if target_layer is None:
            target_layer = find_target_layer(model)
        elif isinstance(target_layer, str):
            target_layer = model.get_submodule(target_layer)
        if not isinstance(target_layer, nn.Module):
            raise TypeError(f"target_layer must be an nn.Module, a submodule name or None, got {type(target_layer).__name__}.")
        self.model = model
        self.target_layer = target_layer
        self.output_fn = output_fn
        self.autocast_dtype = autocast_dtype
        self.batch_size = batch_size

    def _targets(self, target, logits):
        n, n_classes = logits.shape
        if target is None:
            return logits.detach().argmax(1)
        t = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
        t = t.to(device=logits.device, dtype=torch.long).reshape(-1)
        if t.numel() == 1 and n != 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"target must be None, one class index or one per image ({n}), got {t.numel()} values.")
        if bool(((t < 0) | (t >= n_classes)).any()):
            raise ValueError(f"target class indices must lie in [0, {n_classes}).")
        return t

    def _one(self, x, target, size):
        store = {}

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise ValueError(
                    f"target_layer {type(module).__name__} returned "
                    f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}; "
                    "Grad-CAM needs a feature map (N, K, h, w)."
                )
            store["act"] = output

        handle = self.target_layer.register_forward_hook(hook)
        try:
            x = x.detach().clone().requires_grad_(True)
            ctx = (
                torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None else contextlib.nullcontext()
            )
            with torch.enable_grad(), ctx:
                out = self.model(x)
            logits = (self.output_fn or _first_output)(out)
            if "act" not in store:
                raise RuntimeError("target_layer was not called during the forward pass; is it part of the model?")
            act = store["act"]
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the model's logits must have shape (N, n_classes), got {tuple(logits.shape)}.")
            t = self._targets(target, logits)
            score = logits.float().gather(1, t[:, None]).sum()
            (grad,) = torch.autograd.grad(score, act)
        finally:
            handle.remove()
        with torch.no_grad():
            weights = grad.float().mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * act.detach().float()).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
            return _minmax(cam)

    def __call__(self, x, target=None):
        """Grad-CAM maps ``(N, H, W)`` in [0, 1] at the input's size.

        Parameters
        ----------
        x : Tensor or ndarray (N, C, H, W), or (N, H, W) for one-channel models
        target : None, int or array-like (N,)
            Class index per image; None uses each image's predicted class.

        Returns
        -------
        Tensor (on the model's device) when ``x`` is a tensor, else float32 ndarray. A map whose
        weighted sum is nowhere positive is all zeros.
        """
        as_numpy = not isinstance(x, torch.Tensor)
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if as_numpy else x
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"x must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}.")
        x = x.to(device)
        if target is not None and not isinstance(target, (int, np.integer)):
            target = torch.as_tensor(np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target))
            if target.ndim == 0:
                target = target.reshape(1)
        was_training = self.model.training
        self.model.eval()
        try:
            step = self.batch_size or len(x)
            maps = []
            for start in range(0, len(x), step):
                t = target
                if isinstance(target, torch.Tensor) and target.numel() == len(x):
                    t = target[start:start + step]
                maps.append(self._one(x[start:start + step], t, tuple(x.shape[-2:])))
            cam = torch.cat(maps) if maps else x.new_zeros((0, *x.shape[-2:]))
        finally:
            self.model.train(was_training)
        return cam.cpu().numpy().astype(np.float32) if as_numpy else cam


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation of ``(N, H, W)`` to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def gaussian_blur(maps, sigma):
    """Blur ``(N, H, W)`` maps with a separable Gaussian of std ``sigma`` pixels (reflect padding).

    ``sigma <= 0`` returns the maps unchanged. Accepts tensors or arrays; returns the same kind.
    """
    as_numpy = not isinstance(maps, torch.Tensor)
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32)) if as_numpy else maps.float()
    if sigma and sigma > 0:
        radius = max(1, int(round(3 * float(sigma))))
        coords = torch.arange(-radius, radius + 1, dtype=torch.float32, device=t.device)
        kernel = torch.exp(-0.5 * (coords / float(sigma)) ** 2)
        kernel = kernel / kernel.sum()
        x = t[:, None]
        h, w = x.shape[-2:]
        pad_w, pad_h = min(radius, w - 1), min(radius, h - 1)
        kw, kh = kernel[radius - pad_w: radius + pad_w + 1], kernel[radius - pad_h: radius + pad_h + 1]
        x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
        x = F.conv2d(x, (kw / kw.sum()).view(1, 1, 1, -1))
        x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else x
        x = F.conv2d(x, (kh / kh.sum()).view(1, 1, -1, 1))
        t = x[:, 0]
    return t.cpu().numpy() if as_numpy else t


def _as_maps(cam) -> tuple[np.ndarray, bool]:
    arr = cam.detach().float().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam, dtype=np.float32)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"maps must have shape (H, W) or (N, H, W), got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("maps must be finite.")
    return arr, single


def _central_box(h, w, fraction):
    bh, bw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    y0, x0 = (h - bh) // 2, (w - bw) // 2
    return np.array([x0, y0, x0 + bw, y0 + bh])


def cam_to_region(cam, threshold=0.5, blur_sigma=1.0, *, full_image_fraction=0.9, center_fraction=0.5,
                  connectivity=2):
    """Strongest connected region of heat maps and its bounding box (Han et al.'s rule).

    Steps per map: min-max normalise to [0, 1]; Gaussian blur (``blur_sigma`` pixels); min-max
    normalise again; threshold (``>= threshold``); label the connected components
    (``scipy.ndimage.label``, 8-connected for ``connectivity=2``); keep the component with the
    largest heat mass (sum of the blurred map over it); take its bounding box. When the box
    covers at least ``full_image_fraction`` of the image in both height and width (the map did
    not single anything out), box and region become the central ``center_fraction`` of the image.
    A constant map (nothing above the others) also gives the central box.

    Parameters
    ----------
    cam : array-like or Tensor (N, H, W) or (H, W)
    threshold : float in (0, 1], default=0.5
    blur_sigma : float >= 0, default=1.0
    full_image_fraction : float in (0, 1], default=0.9
    center_fraction : float in (0, 1], default=0.5
    connectivity : {1, 2}, default=2

    Returns
    -------
    regions : bool ndarray (N, H, W) (or (H, W) for one map)
    boxes : int64 ndarray (N, 4) (or (4,)) as ``(x0, y0, x1, y1)``, exclusive ends.

    Examples
    --------
    >>> import numpy as np
    >>> cam = np.zeros((16, 16)); cam[2:6, 9:14] = 1.0
    >>> region, box = cam_to_region(cam, blur_sigma=0)
    >>> box.tolist(), int(region.sum())
    ([9, 2, 14, 6], 20)
    """
    from scipy import ndimage

    if not 0 < float(threshold) <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}.")
    if blur_sigma is None or float(blur_sigma) < 0:
        raise ValueError(f"blur_sigma must be a number >= 0, got {blur_sigma!r}.")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}.")
    maps, single = _as_maps(cam)
    n, h, w = maps.shape
    norm = _minmax(torch.from_numpy(maps))
    blurred = _minmax(gaussian_blur(norm, float(blur_sigma))).numpy()
    structure = ndimage.generate_binary_structure(2, connectivity)
    regions = np.zeros((n, h, w), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        fg = blurred[i] >= threshold
        if blurred[i].max() <= 0 or not fg.any():
            labels, count = None, 0
        else:
            labels, count = ndimage.label(fg, structure=structure)
        if count:
            mass = ndimage.sum_labels(blurred[i], labels, index=np.arange(1, count + 1))
            region = labels == (int(np.argmax(mass)) + 1)
            rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
            box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            full = (box[3] - box[1]) >= full_image_fraction * h and (box[2] - box[0]) >= full_image_fraction * w
        else:
            full = True
        if full:
            box = _central_box(h, w, center_fraction)
            region = np.zeros((h, w), dtype=bool)
            region[box[1]:box[3], box[0]:box[2]] = True
        regions[i], boxes[i] = region, box
    return (regions[0], boxes[0]) if single else (regions, boxes)


def cam_to_box(cam, threshold=0.5, blur_sigma=1.0, **kwargs):
    """Bounding boxes ``(N, 4)`` (``(x0, y0, x1, y1)``, exclusive ends) of :func:`cam_to_region`."""
    return cam_to_region(cam, threshold, blur_sigma, **kwargs)[1]


def masks_to_boxes(masks):
    """Bounding boxes ``(N, 4)`` of all foreground pixels of each mask; ``-1`` rows for empty masks.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 8, 8), bool); m[0, 1:3, 4:7] = True
    >>> masks_to_boxes(m).tolist()
    [[4, 1, 7, 3]]
    """
    m = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks) > 0
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}.")
    boxes = np.full((len(m), 4), -1, dtype=np.int64)
    rows_any, cols_any = m.any(2), m.any(1)
    for i in range(len(m)):
        rows, cols = np.flatnonzero(rows_any[i]), np.flatnonzero(cols_any[i])
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def boxes_to_masks(boxes, shape):
    """Boolean masks ``(N, H, W)`` that are True inside each ``(x0, y0, x1, y1)`` box.

    Pixel boxes with exclusive ends, as :func:`masks_to_boxes` returns them; ``shape`` is
    ``(H, W)``. This is how bounding-box annotations become the ``masks`` of ``fit``.

    Examples
    --------
    >>> boxes_to_masks([[1, 0, 3, 2]], (3, 4)).astype(int)[0]
    array([[0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    h, w = shape
    yy, xx = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    return ((yy >= b[:, 1, None, None]) & (yy < b[:, 3, None, None])
            & (xx >= b[:, 0, None, None]) & (xx < b[:, 2, None, None]))


def box_iou(boxes_a, boxes_b):
    """Intersection over union of paired boxes ``(N, 4)`` (pixel boxes, exclusive ends).

    Rows where either box is invalid (negative coordinates, e.g. :func:`masks_to_boxes` of an
    empty mask, or zero area) give NaN.

    Examples
    --------
    >>> box_iou([[0, 0, 4, 4]], [[2, 0, 6, 4]]).round(3).tolist()
    [0.333]
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if a.shape != b.shape:
        raise ValueError(f"boxes_a and boxes_b must have the same shape, got {a.shape} and {b.shape}.")
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    valid = (a.min(1) >= 0) & (b.min(1) >= 0) & (area_a > 0) & (area_b > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, inter / (area_a + area_b - inter), np.nan)


def pointing_game(cams, masks, tolerance=0):
    """Pointing-game hits: does each map's maximum fall inside the mask (dilated by ``tolerance`` px)?

    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 (they use a
    15 px tolerance at 224 px). The point is the maximum; when the maximum is a plateau (a coarse
    map upsampled bilinearly is flat around its border cells) the point is the pixel nearest to
    the plateau's centroid, so that ties do not drift to the first pixel in raster order, i.e. to
    the image's top-left corner.

    Returns
    -------
    hits : float64 ndarray (N,)
        1.0 hit, 0.0 miss, NaN where the mask is empty (no annotation). The chance level of a
        uniformly random point is the mask's area share, ``masks.mean(axis=(1, 2))``.

    Examples
    --------
    >>> import numpy as np
    >>> cam = np.zeros((2, 8, 8)); cam[0, 1, 1] = 1; cam[1, 6, 6] = 1
    >>> m = np.zeros((2, 8, 8), bool); m[:, :3, :3] = True
    >>> pointing_game(cam, m).tolist()
    [1.0, 0.0]
    """
    from scipy import ndimage

    maps, _ = _as_maps(cams)
    m = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks) > 0
    if m.ndim == 2:
        m = m[None]
    if m.shape != maps.shape:
        raise ValueError(f"masks have shape {m.shape} but the maps have {maps.shape}.")
    n, h, w = maps.shape
    hits = np.full(n, np.nan)
    for i in range(n):
        if not m[i].any():
            continue
        top = maps[i].max()
        tol = 1e-6 * max(1.0, abs(float(top)))
        ys, xs = np.nonzero(maps[i] >= top - tol)
        k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        row, col = ys[k], xs[k]
        mi = m[i]
        if tolerance > 0:
            r = int(tolerance)
            yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
            mi = ndimage.binary_dilation(mi, structure=(yy ** 2 + xx ** 2) <= tolerance ** 2)
        hits[i] = float(mi[row, col])
    return hits


def estimator_gradcam(estimator, X, target=None, *, target_layer=None, batch_size=64):
    """Grad-CAM maps ``(n, H, W)`` of a fitted dp_sklearn skorch estimator on images ``X``.

    Works for any estimator whose ``module_`` maps ``x`` (N, 1, H, W) to logits or
    ``(logits, aux)`` (``MaskAttentionClassifier``, ``RadiomicsContrastiveClassifier``). Images
    are brought to the estimator's ``image_size``; the maps are returned at ``X``'s own size.

    Parameters
    ----------
    estimator : fitted estimator with ``module_``
    X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1)
    target : None, int or array-like (n,) of class indices (encoded, ``0..n_classes-1``)
        None: each image's predicted class.
    target_layer : nn.Module, str or None
        Default: the network's backbone (its output feature map).
    batch_size : int, default=64
    """
    from .data.dataset import resize_images
    from .utils.device import resolve_device
    from .utils.validation import check_images

    module = getattr(estimator, "module_", None)
    if module is None:
        raise ValueError(f"{type(estimator).__name__} is not fitted (it has no module_).")
    images = check_images(X, allow_paths=False, min_samples=1)
    size_attr = getattr(estimator, "image_size", None)
    size = None if size_attr is None else ((size_attr, size_attr) if np.isscalar(size_attr) else tuple(size_attr))
    work = images if size is None else resize_images(images, size)
    device = getattr(estimator, "device_", None) or resolve_device(getattr(estimator, "device", "auto"))
    module.to(device)
    cam = GradCAM(module, target_layer, autocast_dtype=getattr(estimator, "amp_dtype_", None), batch_size=batch_size)
    maps = cam(torch.from_numpy(np.ascontiguousarray(work))[:, None].to(device), target=target)
    if tuple(maps.shape[-2:]) != tuple(images.shape[1:]):
        maps = F.interpolate(maps[:, None], size=images.shape[1:], mode="bilinear", align_corners=False)[:, 0]
    return maps.clamp_(0, 1).cpu().numpy().astype(np.float32)
