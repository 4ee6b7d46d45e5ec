"""Input validation, device/precision selection, seeding, and writing files and outputs."""

from .device import autocast, resolve_device, resolve_precision, seed_everything
from .files import atomic_write
from .outputs import check_out, write_rows
from .validation import PixelRangeWarning, check_images, check_masks

__all__ = ["PixelRangeWarning", "atomic_write", "autocast", "check_images", "check_masks", "check_out", "resolve_device", "resolve_precision", "seed_everything",
           "write_rows"]
