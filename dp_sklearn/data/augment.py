"""Batched, on-device augmentations for radiographs that move lesion masks with the images.

:class:`RadiographAugment` draws per-sample random parameters, composes every geometric
operation (random resized crop, rotation, translation, scale, horizontal flip) into one
affine matrix per sample, and warps images and masks with a single ``affine_grid`` +
``grid_sample`` call, so a mask stays aligned with its image by construction. Intensity
operations (brightness, contrast, gamma, Gaussian blur, noise) then touch the images only.
:func:`resize_batch` is the deterministic resize used at evaluation time.
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IdentityAugment", "RadiographAugment", "build_augment", "resize_batch", "tta_view", "two_views"]


def _size_pair(size, name: str):
    if size is None:
        return None
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
        ok = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ValueError(f"{name} must be None, a positive int or a pair (H, W) of positive ints, got {size!r}.")
    return h, w


def _range(value, name: str, low=None, high=None, positive=False):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {value!r}.") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise ValueError(f"{name} must be a finite pair with min <= max, got {value!r}.")
    if positive and a <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    if (low is not None and a < low) or (high is not None and b > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}.")
    return a, b


def _scalar(value, name: str, low=0.0, high=None):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{low}, {high if high is not None else 'inf'}], got {value!r}.")
    return float(value)


def _check_batch(images, masks):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}.")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}; convert with .float() / 255.")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch.")
    if masks is None:
        return None
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor (N, 1, H, W) or None, got {type(masks).__name__}.")
    if masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"masks must have shape (N, 1, H, W) matching images {tuple(images.shape)}, got {tuple(masks.shape)}."
        )
    # Binarise: {0, 1} float or bool in, {0, 1} float out (values > 0.5 count as lesion).
    return (masks.to(images.device) > 0.5).to(images.dtype)


def resize_batch(images, size, masks=None):
    """Deterministically resize a batch (and its masks) for evaluation.

    Images use antialiased bilinear interpolation; masks use area interpolation then a
    0.5 threshold (a majority vote when shrinking, nearest-like when enlarging).

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W), floating point
    size : int or (int, int)
        Output (H, W); an int gives a square.
    masks : Tensor of shape (N, 1, H, W) or None
        Binary masks (bool or float in {0, 1}).

    Returns
    -------
    images : Tensor of shape (N, C, *size), the input dtype
        Returned alone when ``masks`` is None.
    (images, masks) : tuple
        When masks are given; masks are float {0, 1} in the images' dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 1, 64, 64)
    >>> m = torch.zeros(2, 1, 64, 64); m[:, :, 16:48, 16:48] = 1
    >>> xs, ms = resize_batch(x, 32, masks=m)
    >>> xs.shape, float(ms.sum() / 2)
    (torch.Size([2, 1, 32, 32]), 256.0)
    """
    masks = _check_batch(images, masks)
    size = _size_pair(size, "size")
    if tuple(images.shape[-2:]) != size:
        dtype = images.dtype
        images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        images = images.to(dtype)
        if masks is not None:
            masks = (F.interpolate(masks.float(), size=size, mode="area") >= 0.5).to(dtype)
    return images if masks is None else (images, masks)


class RadiographAugment(nn.Module):
    """Random geometric and intensity augmentation of radiograph batches, masks included.

    Geometry, per sample, composed into one affine map and applied with one
    ``grid_sample`` to images (bilinear) and masks (bilinear, then thresholded at 0.5):

    1. random resized crop: area fraction ``s ~ U(crop_scale)`` of the input, aspect ratio
       ``r ~ logU(crop_ratio)`` *relative to the output's aspect ratio* (``r = 1`` means no
       stretching; for square outputs this is torchvision's ``RandomResizedCrop``), placed
       uniformly inside the image (sides longer than the image are clipped to it), and
       resized to ``output_size`` through the same grid;
    2. rotation ``~ U(-rotation, rotation)`` degrees, translation ``~ U(-translate, translate)``
       of the output width/height, isotropic scale ``~ U(scale)``, about the output centre;
    3. horizontal flip with probability ``hflip``. Vertical flips are never applied.

    Samples outside the source image read zeros (black, like the film border) for both
    images and masks. Intensity, per sample, on images only, in this order: brightness
    ``x * U(1 - brightness, 1 + brightness)``; contrast ``(x - mean) * U(1 - contrast,
    1 + contrast) + mean``; clamp to [0, 1]; gamma ``x ** g`` with ``g ~ logU(gamma)``;
    Gaussian blur with probability ``blur_prob`` and ``sigma ~ U(blur_sigma)`` (separable,
    grouped convolution, replicate padding); Gaussian noise with std ``~ U(0, noise_std)``;
    clamp to [0, 1].

    Parameters
    ----------
    output_size : None, int or (int, int), default=None
        Output (H, W); None keeps the input size. An output larger than the input is
        allowed (upsampling). For a much smaller output, resize first with
        :func:`resize_batch`, because ``grid_sample`` does not antialias.
    crop_scale : (float, float), default=(0.6, 1.0)
        Range of the crop area as a fraction of the image area, within (0, 1].
    crop_ratio : (float, float), default=(3/4, 4/3)
        Range of the crop aspect ratio relative to the output's, sampled log-uniformly.
    rotation : float, default=10
        Maximum absolute rotation in degrees.
    translate : float, default=0.06
        Maximum absolute translation as a fraction of the output width / height.
    scale : (float, float), default=(0.9, 1.1)
        Range of the isotropic zoom factor (> 1 zooms in).
    hflip : float, default=0.0
        Probability of a horizontal flip. Off by default: the heart sits on the patient's
        left, so a flipped radiograph is anatomically implausible (situs inversus).
    brightness, contrast : float, default=0.2
        Maximum relative change of brightness and contrast, in [0, 1].
    gamma : (float, float), default=(0.8, 1.25)
        Range of the gamma exponent, sampled log-uniformly.
    blur_prob : float, default=0.3
        Probability of a Gaussian blur.
    blur_sigma : (float, float), default=(0.1, 1.5)
        Range of the blur standard deviation in output pixels.
    noise_std : float, default=0.02
        Maximum standard deviation of additive Gaussian noise.
    geometric, intensity : bool, default=True
        Switch off the geometric or the intensity part (with ``geometric=False`` a
        different ``output_size`` is reached by :func:`resize_batch`).

    Notes
    -----
    Images are expected in [0, 1] and floating point; they are processed in float32 and
    returned in their input dtype and on their device. Random parameters are drawn with
    ``torch.rand(..., generator=generator)`` on the generator's device and then moved to
    the images' device, so a seeded CPU generator gives the same augmentation for the same
    inputs on any device (up to float rounding of the warp). On CUDA prefer a CUDA
    generator (or None): drawing the per-pixel noise on the CPU and copying it dominates
    the cost (256 images of 224 px on an H100: 97 ms with a CPU generator, 3 ms with a
    CUDA one). ``generator=None`` uses the global RNG of the images' device, which
    ``torch.manual_seed`` seeds.

    Examples
    --------
    >>> import torch
    >>> aug = RadiographAugment(output_size=48)
    >>> x = torch.rand(4, 1, 64, 64)
    >>> m = torch.zeros(4, 1, 64, 64); m[:, :, 20:40, 10:30] = 1
    >>> xa, ma = aug(x, m, generator=torch.Generator().manual_seed(0))
    >>> xa.shape, ma.shape, bool(((ma == 0) | (ma == 1)).all())
    (torch.Size([4, 1, 48, 48]), torch.Size([4, 1, 48, 48]), True)
    >>> float(xa.min()) >= 0 and float(xa.max()) <= 1
    True
    """

    def __init__(
        self,
        output_size=None,
        crop_scale=(0.6, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        rotation=10.0,
        translate=0.06,
        scale=(0.9, 1.1),
        hflip=0.0,
        brightness=0.2,
        contrast=0.2,
        gamma=(0.8, 1.25),
        blur_prob=0.3,
        blur_sigma=(0.1, 1.5),
        noise_std=0.02,
        geometric=True,
        intensity=True,
    ):
        super().__init__()
        self.output_size = _size_pair(output_size, "output_size")
        self.crop_scale = _range(crop_scale, "crop_scale", high=1.0, positive=True)
        self.crop_ratio = _range(crop_ratio, "crop_ratio", positive=True)
        self.rotation = _scalar(rotation, "rotation", 0.0, 180.0)
        self.translate = _scalar(translate, "translate", 0.0, 1.0)
        self.scale = _range(scale, "scale", positive=True)
        self.hflip = _scalar(hflip, "hflip", 0.0, 1.0)
        self.brightness = _scalar(brightness, "brightness", 0.0, 1.0)
        self.contrast = _scalar(contrast, "contrast", 0.0, 1.0)
        self.gamma = _range(gamma, "gamma", positive=True)
        self.blur_prob = _scalar(blur_prob, "blur_prob", 0.0, 1.0)
        self.blur_sigma = _range(blur_sigma, "blur_sigma", positive=True)
        self.noise_std = _scalar(noise_std, "noise_std", 0.0)
        self.geometric = bool(geometric)
        self.intensity = bool(intensity)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, crop_scale={self.crop_scale}, rotation={self.rotation}, "
            f"hflip={self.hflip}, geometric={self.geometric}, intensity={self.intensity}"
        )

    # -- random numbers -------------------------------------------------------------
    @staticmethod
    def _uniform(n, low, high, generator, device):
        # Draw where the generator lives (the global RNG of the images' device for None).
        gen_device = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float32)
        return (low + (high - low) * u).to(device)

    def _log_uniform(self, n, low, high, generator, device):
        return torch.exp(self._uniform(n, math.log(low), math.log(high), generator, device))

    # -- geometry -------------------------------------------------------------------
    def _affine(self, n, in_hw, out_hw, generator, device):
        """Return theta (n, 2, 3) mapping output normalised coords to input normalised coords."""
        (H, W), (Ho, Wo) = in_hw, out_hw
        u = lambda lo, hi: self._uniform(n, lo, hi, generator, device)  # noqa: E731

        # Crop size in input pixels: area s*H*W, aspect (w/h) = r * Wo/Ho, clipped to the image.
        area = u(*self.crop_scale) * (H * W)
        aspect = self._log_uniform(n, *self.crop_ratio, generator, device) * (Wo / Ho)
        cw = torch.sqrt(area * aspect).clamp(max=W)
        ch = torch.sqrt(area / aspect).clamp(max=H)
        cx = u(-0.5, 0.5) * (W - cw)  # crop centre, pixels from the image centre
        cy = u(-0.5, 0.5) * (H - ch)

        angle = torch.deg2rad(u(-self.rotation, self.rotation))
        tx = u(-self.translate, self.translate) * Wo
        ty = u(-self.translate, self.translate) * Ho
        zoom = u(*self.scale)
        flip = torch.where(u(0.0, 1.0) < self.hflip, -1.0, 1.0)

        # Chain (right to left): output normalised -> output pixels -> undo translate,
        # rotate, zoom, flip -> crop window in input pixels -> input normalised.
        cos, sin = torch.cos(angle), torch.sin(angle)
        zeros, ones = torch.zeros_like(cos), torch.ones_like(cos)

        def mat(a, b, c, d, e, f):
            return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1),
                                torch.stack([zeros, zeros, ones], -1)], -2)

        to_out_px = mat(ones * Wo / 2, zeros, zeros, zeros, ones * Ho / 2, zeros)
        untranslate = mat(ones, zeros, -tx, zeros, ones, -ty)
        unrotate = mat(cos, sin, zeros, -sin, cos, zeros)  # R(-angle)
        unzoom_flip = mat(flip / zoom, zeros, zeros, zeros, 1 / zoom, zeros)
        crop = mat(cw / Wo, zeros, cx, zeros, ch / Ho, cy)
        to_in_norm = mat(ones * 2 / W, zeros, zeros, zeros, ones * 2 / H, zeros)
        theta = to_in_norm @ crop @ unzoom_flip @ unrotate @ untranslate @ to_out_px
        return theta[:, :2, :]

    # -- intensity ------------------------------------------------------------------
    def _blur(self, x, generator):
        n, c = x.shape[:2]
        device = x.device
        sigma = self._uniform(n, *self.blur_sigma, generator, device)
        apply = self._uniform(n, 0.0, 1.0, generator, device) < self.blur_prob
        radius = max(1, math.ceil(3 * self.blur_sigma[1]))
        offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)
        delta = (offsets == 0).float().expand_as(kernel)
        kernel = torch.where(apply[:, None], kernel, delta)  # unblurred samples get the identity
        kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel) group
        h, w = x.shape[-2:]
        y = x.reshape(1, n * c, h, w)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
        return y.reshape(n, c, h, w)

    def _intensity(self, x, generator):
        n, device = x.shape[0], x.device
        view = (n, 1, 1, 1)
        b = self._uniform(n, 1 - self.brightness, 1 + self.brightness, generator, device)
        c = self._uniform(n, 1 - self.contrast, 1 + self.contrast, generator, device)
        g = self._log_uniform(n, *self.gamma, generator, device)
        x = x * b.view(view)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c.view(view) + mean).clamp(0, 1)
        x = x.pow(g.view(view))
        if self.blur_prob > 0:
            x = self._blur(x, generator)
        if self.noise_std > 0:
            std = self._uniform(n, 0.0, self.noise_std, generator, device)
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
            x = x + noise.to(device) * std.view(view)
        return x.clamp(0, 1)

    def forward(self, images, masks=None, generator=None):
        """Augment a batch.

        Parameters
        ----------
        images : Tensor of shape (N, C, H, W), floating point in [0, 1]
            Usually ``C = 1``; any device.
        masks : Tensor of shape (N, 1, H, W) or None
            Binary lesion masks (bool, or float in {0, 1}; values > 0.5 count as lesion).
        generator : torch.Generator or None
            Source of randomness, on the CPU or the images' device; None uses the global
            RNG of the images' device.

        Returns
        -------
        images : Tensor of shape ``(N, C, *output_size)``, the input dtype, values in [0, 1]
            Returned alone when ``masks`` is None.
        (images, masks) : tuple
            Masks float {0, 1} of shape ``(N, 1, *output_size)``, in the images' dtype.
        """
        masks = _check_batch(images, masks)
        dtype, device = images.dtype, images.device
        n, c, h, w = images.shape
        out_hw = self.output_size or (h, w)
        x = images.float()

        if self.geometric:
            theta = self._affine(n, (h, w), out_hw, generator, device)
            grid = F.affine_grid(theta, [n, 1, *out_hw], align_corners=False)
            # One warp for images and masks together keeps them aligned by construction.
            stacked = x if masks is None else torch.cat([x, masks.float()], dim=1)
            warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            x = warped[:, :c]
            if masks is not None:
                masks = warped[:, c:] >= 0.5
        elif tuple(out_hw) != (h, w):
            resized = resize_batch(x, out_hw, masks=masks)
            x, masks = resized if masks is not None else (resized, None)

        if self.intensity:
            x = self._intensity(x, generator)
        x = x.to(dtype)
        return x if masks is None else (x, masks.to(dtype))


class IdentityAugment(nn.Module):
    """No augmentation, with :class:`RadiographAugment`'s call contract (``augment=False``)."""

    def forward(self, images, masks=None, generator=None):
        return images if masks is None else (images, masks)


def build_augment(augment, defaults=None, *, name="augment") -> nn.Module:
    """The augmentation module an estimator's ``augment`` parameter asks for.

    Parameters
    ----------
    augment : bool, dict or nn.Module
        ``True``: :class:`RadiographAugment` with ``defaults``; a dict: its arguments on top of
        ``defaults``; an ``nn.Module``: a deep copy of it; ``False``: :class:`IdentityAugment`.
    defaults : dict, optional
        :class:`RadiographAugment` arguments the estimator sets (e.g. ``output_size``).
    name : str
        The parameter's name, for the error message.

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> build_augment({"rotation": 5.0}, {"output_size": (32, 32)}).output_size
    (32, 32)
    >>> type(build_augment(False)).__name__
    'IdentityAugment'
    """
    defaults = dict(defaults or {})
    if augment is True:
        return RadiographAugment(**defaults)
    if augment is False:
        return IdentityAugment()
    if isinstance(augment, dict):
        return RadiographAugment(**{**defaults, **augment})
    if isinstance(augment, nn.Module):
        return copy.deepcopy(augment)
    raise TypeError(f"{name} must be a bool, a dict of RadiographAugment arguments or an nn.Module, "
                    f"got {type(augment).__name__}.")


#: The fixed views of test-time augmentation: (shift x, shift y) as a fraction of the width /
#: height, and a zoom factor (> 1 zooms in). Mild versions of the training geometry.
TTA_VIEWS = ((0.04, 0.0, 1.0), (-0.04, 0.0, 1.0), (0.0, 0.04, 1.0), (0.0, -0.04, 1.0),
                   (0.0, 0.0, 1.08), (0.03, 0.03, 1.04), (-0.03, -0.03, 1.04), (0.0, 0.0, 0.94))


def tta_view(images, k):
    """View ``k`` of test-time augmentation: the same fixed shift/zoom for every image.

    ``k = 0`` is the image itself; ``k = 1 .. 8`` are ``TTA_VIEWS[k - 1]``: a shift of 4 % along
    each axis, then mild zooms. Every image gets the same view, so a prediction does not depend on
    the batch an image falls in. Outside the image reads black, as in :class:`RadiographAugment`.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
    k : int in [0, 8]

    Returns
    -------
    Tensor of the input's shape and dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 1, 50, 50); x[..., 20:30, 20:30] = 1
    >>> bool(torch.equal(tta_view(x, 0), x))
    True
    >>> torch.allclose(tta_view(x, 1), torch.roll(x, 2, dims=-1), atol=1e-5)  # 4 % of 50 px right
    True
    """
    if not 0 <= int(k) <= len(TTA_VIEWS):
        raise ValueError(f"the test-time view must lie in [0, {len(TTA_VIEWS)}], got {k!r}.")
    if k == 0:
        return images
    dx, dy, zoom = TTA_VIEWS[k - 1]
    theta = torch.tensor([[1 / zoom, 0.0, -2 * dx], [0.0, 1 / zoom, -2 * dy]], dtype=torch.float32,
                         device=images.device).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    view = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return view.to(images.dtype)


def two_views(augment: nn.Module, x: torch.Tensor):
    """Two independently augmented views of a batch ``x`` ``(N, 1, H, W)``.

    The batch is augmented once as ``cat([x, x])`` (each row draws its own random
    parameters, so the two copies of an image get different views) — one batched call
    instead of two. Used by :class:`ContrastivePretrainer` and by the hand-written
    reference loop of ``benchmarks/pretrain_throughput.py``.
    """
    views = augment(torch.cat([x, x]))
    if isinstance(views, (tuple, list)):  # an augmentation that returns (images, masks)
        views = views[0]
    if x.is_cuda:
        views = views.contiguous(memory_format=torch.channels_last)
    return views[: len(x)], views[len(x):]
