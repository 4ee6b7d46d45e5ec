"""Radiograph augmentation: determinism, masks moving with images, identity, no vertical flip."""

import time

import pytest
import torch

from dp_sklearn.data.augment import RadiographAugment, resize_batch

NEUTRAL_GEOMETRY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=0, translate=0, scale=(1.0, 1.0))
NEUTRAL_INTENSITY = dict(brightness=0, contrast=0, gamma=(1.0, 1.0), blur_prob=0, noise_std=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _blobs(n=8, size=48, seed=0):
    """Binary masks with one random ellipse each (the 'lesions')."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (torch.rand(2, n, 1, 1, generator=g) * 0.5 + 0.25) * size
    ry, rx = (torch.rand(2, n, 1, 1, generator=g) * 0.15 + 0.1) * size
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float()[:, None]


def test_seeded_generator_is_deterministic():
    x, m = torch.rand(4, 1, 32, 32, generator=_gen(1)), _blobs(4, 32)
    aug = RadiographAugment(output_size=24, hflip=0.5, blur_prob=0.5)
    a = aug(x, m, generator=_gen(7))
    b = aug(x, m, generator=_gen(7))
    c = aug(x, m, generator=_gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_global_rng_is_seeded_by_manual_seed():
    x = torch.rand(3, 1, 24, 24, generator=_gen(1))
    aug = RadiographAugment()
    torch.manual_seed(11)
    a = aug(x)
    torch.manual_seed(11)
    assert torch.equal(a, aug(x))


def test_samples_get_different_parameters():
    x = torch.rand(1, 1, 32, 32, generator=_gen(1)).expand(4, 1, 32, 32)
    out = RadiographAugment()(x, generator=_gen(0))
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("output_size", [None, 40, (36, 52)])
def test_masks_move_with_images(output_size):
    masks = _blobs(16, 48)
    images = masks.clone()  # the image *is* its mask, so any misalignment shows
    aug = RadiographAugment(output_size=output_size, rotation=25, translate=0.1, hflip=0.5, intensity=False)
    img, msk = aug(images, masks, generator=_gen(3))
    assert msk.shape == img.shape and set(msk.unique().tolist()) <= {0.0, 1.0}
    inter = ((img > 0.5) & (msk > 0.5)).flatten(1).sum(1).float()
    union = ((img > 0.5) | (msk > 0.5)).flatten(1).sum(1).float()
    kept = union > 0  # a crop may miss a lesion entirely
    assert kept.sum() >= 12
    assert ((inter[kept] / union[kept]) > 0.95).all()


def test_neutral_settings_return_the_input():
    x = torch.rand(3, 1, 20, 30, generator=_gen(2))  # non-square on purpose
    m = _blobs(3, 30)[..., 5:25, :]
    out, msk = RadiographAugment(**NEUTRAL_GEOMETRY, **NEUTRAL_INTENSITY)(x, m, generator=_gen(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert torch.equal(msk, m)


def test_hflip_one_is_a_horizontal_mirror():
    x = torch.rand(2, 1, 16, 16, generator=_gen(4))
    out = RadiographAugment(**NEUTRAL_GEOMETRY, hflip=1.0, intensity=False)(x, generator=_gen(0))
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)


def test_default_never_flips_vertically():
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, :12] = 1.0  # bright top: it must stay on top
    out = RadiographAugment(intensity=False)(x, generator=_gen(5))
    top, bottom = out[:, :, :16].mean(dim=(1, 2, 3)), out[:, :, 16:].mean(dim=(1, 2, 3))
    assert RadiographAugment().hflip == 0.0
    assert (top > bottom).all()


def test_output_size_range_and_dtype():
    x = torch.rand(5, 1, 40, 40, generator=_gen(6), dtype=torch.float64)
    aug = RadiographAugment(output_size=(24, 32), brightness=0.9, contrast=0.9, noise_std=0.3, blur_prob=1.0)
    out, msk = aug(x, _blobs(5, 40).bool(), generator=_gen(0))
    assert out.shape == msk.shape == (5, 1, 24, 32)
    assert out.dtype == msk.dtype == torch.float64
    assert out.min() >= 0 and out.max() <= 1
    only_images = aug(x, generator=_gen(0))
    assert isinstance(only_images, torch.Tensor) and torch.equal(only_images, out)


def test_upsampling_output_is_allowed():
    out = RadiographAugment(output_size=64)(torch.rand(2, 1, 32, 32), generator=_gen(0))
    assert out.shape == (2, 1, 64, 64)


def test_intensity_only_keeps_masks_and_blur_keeps_flat_images_flat():
    m = _blobs(4, 32)
    flat = torch.full((4, 1, 32, 32), 0.5)
    aug = RadiographAugment(geometric=False, brightness=0, contrast=0, gamma=(1, 1), blur_prob=1.0, noise_std=0)
    out, msk = aug(flat, m, generator=_gen(0))
    assert torch.equal(msk, m)
    torch.testing.assert_close(out, flat)  # normalised kernels and replicate padding


def test_geometric_false_with_output_size_resizes():
    x, m = torch.rand(2, 1, 32, 32), _blobs(2, 32)
    out, msk = RadiographAugment(output_size=16, geometric=False, intensity=False)(x, m)
    ref, ref_m = resize_batch(x, 16, masks=m)
    assert torch.equal(out, ref) and torch.equal(msk, ref_m)


def test_resize_batch():
    x = torch.zeros(1, 1, 64, 64)
    x[..., ::2] = 1.0  # stripes: antialiasing averages them instead of picking one phase
    m = torch.zeros(1, 1, 64, 64)
    m[..., 16:48, 16:48] = 1
    xs, ms = resize_batch(x, 16, masks=m)
    assert xs.shape == ms.shape == (1, 1, 16, 16)
    torch.testing.assert_close(xs, torch.full_like(xs, 0.5), atol=0.05, rtol=0)
    assert ms.sum() == 64 and set(ms.unique().tolist()) == {0.0, 1.0}
    assert resize_batch(x, (64, 64)) is x


def test_invalid_inputs_and_parameters():
    aug = RadiographAugment()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        aug(torch.rand(1, 32, 32))
    with pytest.raises(TypeError, match="floating point"):
        aug(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="masks must have shape"):
        aug(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match="empty"):
        aug(torch.rand(0, 1, 8, 8))
    for kwargs, name in [
        (dict(output_size=0), "output_size"),
        (dict(crop_scale=(0.5, 1.2)), "crop_scale"),
        (dict(crop_ratio=(2, 1)), "crop_ratio"),
        (dict(hflip=1.5), "hflip"),
        (dict(gamma=(0, 1)), "gamma"),
        (dict(rotation=-1), "rotation"),
        (dict(noise_std=float("nan")), "noise_std"),
    ]:
        with pytest.raises(ValueError, match=name):
            RadiographAugment(**kwargs)


def test_batch_of_64_at_128px_is_fast_on_cpu():
    x = torch.rand(64, 1, 128, 128, generator=_gen(0))
    m = (torch.rand(64, 1, 128, 128, generator=_gen(1)) > 0.5).float()
    aug = RadiographAugment(blur_prob=1.0)
    aug(x[:2], m[:2])  # warm-up
    start = time.perf_counter()
    aug(x, m, generator=_gen(2))
    assert time.perf_counter() - start < 1.0
