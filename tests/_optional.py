"""Import an optional library or skip the test, whatever the reason it cannot be imported.

``pytest.importorskip`` skips only on ``ImportError``; an installed but broken library raises
other errors on import (torchvision built for another torch raises ``RuntimeError``, a
mismatched compiled extension ``AttributeError`` or ``OSError``). Those should skip the
cross-check that needs the library, with the reason, not error the test run.
"""

import importlib

import pytest


def import_or_skip(name, reason=None):
    """Return ``importlib.import_module(name)``; on any exception skip the calling test."""
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any import failure means "library unusable here"
        why = reason or f"optional library {name!r} cannot be imported"
        pytest.skip(f"{why}: {type(e).__name__}: {e}")
