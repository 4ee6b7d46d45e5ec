"""The documentation builds with Sphinx with no warning, and its API reference is complete."""

import ast
import doctest
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The packages whose exported names the API reference must cover.
EXPORTING = ["dp_sklearn", "dp_sklearn.estimators", "dp_sklearn.nn", "dp_sklearn.losses", "dp_sklearn.data",
             "dp_sklearn.datasets", "dp_sklearn.utils"]


def documented_objects():
    """``{qualified name: object}`` for every entry of the autosummary lists in docs/api.rst."""
    objects, module = {}, None
    for line in (DOCS / "api.rst").read_text().splitlines():
        if m := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = importlib.import_module(m.group(1))
        elif module is not None and re.fullmatch(r"   [A-Za-z_]\w*", line):
            name = line.strip()
            objects[f"{module.__name__}.{name}"] = getattr(module, name)
    return objects


def exported_names(package):
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):  # constants (paths) and submodules aside
            yield f"{package}.{name}", obj


def test_api_reference_lists_every_exported_name():
    documented = {id(obj) for obj in documented_objects().values()}
    missing = [name for package in EXPORTING for name, obj in exported_names(package) if id(obj) not in documented]
    assert not missing, f"exported but not in docs/api.rst: {missing}"


@pytest.mark.parametrize("name, obj", sorted(documented_objects().items()))
def test_documented_object_has_examples(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    assert re.search(r"^Examples\n-{8}", doc, flags=re.M), f"{name} has no Examples section"


@pytest.mark.docs
def test_sphinx_build_has_no_warnings(tmp_path):
    """``sphinx -W`` (warnings are errors) on a copy of docs/, so autosummary's generated pages
    stay out of the checkout; the package is imported from this checkout."""
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "generated"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("DP_SKLEARN_DOCS_INTERSPHINX", None)  # the build must not need the network
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", str(src), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800,  # ~10 s of CPU; slack for busy CI
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a Python warning
    html = tmp_path / "html"
    assert (html / "architecture.html").exists() and (html / "extending.html").exists()
    page = (html / "generated" / "dp_sklearn.MaskAttentionClassifier.html").read_text()
    assert "attention_maps" in page and ":class:" not in page  # roles rendered, not shown raw
    math = (html / "generated" / "dp_sklearn.losses.AttentionDiceLoss.html").read_text()
    assert 'class="math' in math and ".. math::" not in math


# Layers that must not import from the estimators (docs/architecture.md, "Layers").
LOWER = ["nn", "losses", "data", "datasets", "utils", "explain.py", "metrics.py", "radiomics.py", "plotting.py"]
UPPER = {"dp_sklearn.estimators", "dp_sklearn.tuning", "dp_sklearn.cli"}


def imported_modules(path):
    """Absolute names of the dp_sklearn modules that ``path`` imports (lazy imports included)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
            elif node.module:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_do_not_import_the_estimators(layer):
    target = ROOT / "dp_sklearn" / layer
    files = [target] if target.suffix else sorted(target.rglob("*.py"))
    bad = [(f.relative_to(ROOT).as_posix(), name) for f in files for name in imported_modules(f)
           if any(name == up or name.startswith(up + ".") for up in UPPER)]
    assert not bad, bad


@pytest.mark.parametrize("page", ["architecture.md", "extending.md"])
def test_guide_code_imports_public_modules_only(page):
    """The guides show the public way: no import from a private module (``_torch``, ``_compat``...)."""
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)
    private = [line for block in blocks for line in block.splitlines()
               if re.match(r"\s*(from|import) dp_sklearn\S*\._", line)]
    assert not private, private


@pytest.mark.docs
@pytest.mark.parametrize("page", ["architecture.md", "extending.md"])
def test_guide_code_blocks_run(page, tmp_path, monkeypatch, capsys):
    """The Python blocks of a guide page run in order, and so do the doctests of what they define."""
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{Path(page).stem}"}
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), namespace)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for name, obj in list(namespace.items()):
        if getattr(obj, "__module__", None) == namespace["__name__"] and obj.__doc__:
            runner.run(doctest.DocTestParser().get_doctest(obj.__doc__, dict(namespace), name, page, 0))
    assert runner.failures == 0
