"""Input validation, device/precision selection and seeding."""

from .device import autocast, resolve_device, resolve_precision, seed_everything
from .files import atomic_write
from .validation import PixelRangeWarning, check_images, check_masks

__all__ = ["PixelRangeWarning", "atomic_write", "autocast", "check_images", "check_masks", "resolve_device", "resolve_precision", "seed_everything"]
