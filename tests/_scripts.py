"""Load a script of the repository (a benchmark or an example) as a module, without installing it."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(path):
    """Execute ``path`` (absolute, or relative to the repository root) as a module named after its stem."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
