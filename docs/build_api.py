"""Build docs/api.md, the API reference, from the public objects' docstrings.

Run ``python docs/build_api.py``; ``--check`` fails (exit 1) when a public object has no docstring
or no Examples section, which is how CI keeps the reference complete ("builds without warnings").
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# (module, public names) in the order the reference shows them.
PUBLIC = [
    ("dp_sklearn.estimators", ["DeepPneumoniaClassifier", "MaskAttentionClassifier", "ContrastivePretrainer",
                               "ClassBalancedWeighting", "ClassBalancedSampler", "ImageResampler",
                               "LocalDiscriminationPretrainer", "MultiLabelMetricClassifier",
                               "RadiomicsContrastiveClassifier"]),
    ("dp_sklearn.losses", ["ClassBalancedLoss", "NTXentLoss", "SupConLoss"]),
    ("dp_sklearn.nn.backbones", ["build_backbone"]),
    ("dp_sklearn.data.io", ["read_image", "read_images", "XRayReader"]),
    ("dp_sklearn.data.augment", ["RadiographAugment"]),
    ("dp_sklearn.datasets", ["load_cxr1k"]),
    ("dp_sklearn.metrics", ["lesion_focus"]),
    ("dp_sklearn.tuning", ["tune", "default_search_space", "OptunaSearchCV"]),
    ("dp_sklearn.explain", ["GradCAM"]),
    ("dp_sklearn", ["class_balanced_weights"]),
]


def render(check: bool) -> tuple[str, list[str]]:
    problems, parts = [], ["# API reference", "", "Generated from the docstrings by `python docs/build_api.py`.", ""]
    for module_name, names in PUBLIC:
        module = importlib.import_module(module_name)
        parts += [f"## `{module_name}`", ""]
        for name in names:
            obj = getattr(module, name, None)
            if obj is None:
                problems.append(f"{module_name}.{name} does not exist")
                continue
            doc = inspect.getdoc(obj) or ""
            if not doc:
                problems.append(f"{module_name}.{name} has no docstring")
            elif "Examples" not in doc:
                problems.append(f"{module_name}.{name} has no Examples section")
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            parts += [f"### `{name}{sig}`", "", doc, ""]
    return "\n".join(parts), problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 on a missing docstring or example")
    parser.add_argument("--out", default=str(HERE / "api.md"))
    args = parser.parse_args(argv)
    text, problems = render(args.check)
    Path(args.out).write_text(text)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 1 if (problems and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
