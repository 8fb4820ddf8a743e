"""What `pip install retain` gets, and what the suite imports.

The checkout's root is the package ``retain`` itself: its subpackages are found by setup.py,
and the wheel is built here from a copy of the checkout (a build leaves build/ and an
egg-info behind) and read. The suite runs in pytest's importlib mode (pyproject.toml):
nothing beside the checkout may be imported in place of an installed package. Every
package the code or the suite imports is declared, so a fresh clone's install has it.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_INSTALLED = ("tests", "benchmarks", "examples", "docs")


def _copy_of_the_checkout(dst: Path) -> Path:
    """The checkout as a fresh clone has it: .gitignore's patterns (a venv, caches, builds) left out."""
    patterns = [".git", *(line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
                          if line.strip() and not line.startswith("#"))]

    def ignored(folder, names):
        return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]

    shutil.copytree(ROOT, dst, ignore=ignored, symlinks=True)
    return dst


def _package_folders() -> dict[str, Path]:
    """Every folder of the checkout that holds modules, by its installed name (retain.core, ...)."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        parts = here.relative_to(ROOT).parts
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d in ("build", "dist", "__pycache__")
                                           or d.endswith(".egg-info") or (not parts and d in NOT_INSTALLED))]
        if any(f.endswith(".py") for f in files):
            found[".".join(["retain", *parts])] = here
    return found


def test_the_wheel_holds_every_subpackage_and_config_yaml_and_nothing_beside_the_package(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools: pip install -e '.[test]'")
    source = _copy_of_the_checkout(tmp_path / "checkout")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "--wheel-dir", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("retain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    packages = _package_folders()
    assert {"retain", "retain.core", "retain.plugins", "retain.strategies", "retain.compare", "retain.demo",
            "retain.tune"} <= set(packages)
    # A folder of modules without __init__.py imports in the checkout (a namespace package) and
    # is left out of the wheel: it must be a package.
    namespaces = [name for name, folder in packages.items() if not (folder / "__init__.py").exists()]
    assert not namespaces, f"folders of modules without an __init__.py: {namespaces}"
    missing = [p for p in packages if p.replace(".", "/") + "/__init__.py" not in names]
    assert not missing, f"subpackages missing from the wheel: {missing}"
    assert "retain/config.yaml" in names
    assert "retain/setup.py" not in names  # the build script is not a module of the package
    outside = sorted(n for n in names if n.split("/")[0] != "retain" and not n.startswith("retain-"))
    assert not outside, f"files outside the package: {outside[:10]}"
    beside = sorted(n for n in names if n.split("/")[:2][-1] in NOT_INSTALLED)
    assert not beside, f"tests, benchmarks, examples or docs in the wheel: {beside[:10]}"
    # Every module of the checkout's packages made it, not only their __init__.py.
    modules = {f"retain/{p.relative_to(ROOT).as_posix()}" for folder in packages.values()
               for p in folder.glob("*.py") if p != ROOT / "setup.py"}
    assert modules <= names, sorted(modules - names)[:10]


PROBE = '''
import importlib.util, sys
from pathlib import Path

import conftest

CHECKOUT = Path(__file__).resolve().parents[1]
BESIDE = CHECKOUT.parent


def test_nothing_is_imported_from_beside_the_checkout():
    assert str(BESIDE) not in [str(Path(p).resolve()) for p in sys.path if p], sys.path
    for name in ("ray", "beside_the_checkout"):
        spec = importlib.util.find_spec(name)
        places = [] if spec is None else [spec.origin or "", *(spec.submodule_search_locations or [])]
        assert not any(str(place).startswith(str(BESIDE / name)) for place in places), (name, places)
    # The checkout's folder is named like an installed module: that module is still the installed one.
    import packaging.version
    assert CHECKOUT not in Path(packaging.__file__).resolve().parents, packaging.__file__
    # The shared helpers are one module: the tests' `from conftest import` and pytest's conftest.
    assert sys.modules["conftest"] is conftest and not [n for n in sys.modules if n.endswith(".conftest")]
'''


def test_a_folder_beside_the_checkout_does_not_change_what_the_suite_imports(tmp_path):
    # A folder named `ray` beside the checkout (Ray's own temp folder) was imported by
    # `pytest.importorskip("ray")` as a namespace package: the Ray tests failed instead of skipping.
    # And a checkout in a folder named `packaging` was imported as `packaging` (setuptools and
    # avalanche-lib then failed to import the real one).
    beside = tmp_path / "beside"
    (beside / "ray").mkdir(parents=True)
    (beside / "beside_the_checkout").mkdir()
    (beside / "beside_the_checkout" / "__init__.py").write_text("", encoding="utf-8")
    checkout = _copy_of_the_checkout(beside / "packaging")
    (checkout / "tests" / "test_probe_imports.py").write_text(PROBE, encoding="utf-8")
    # The README's test command, on the probe alone, with the checkout's pytest settings.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                          "tests/test_probe_imports.py"], cwd=checkout, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def _declared() -> set[str]:
    """Every distribution pyproject.toml declares: dependencies and every extra."""
    import re

    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def test_every_package_the_code_or_the_suite_imports_is_declared():
    # numpy and qpsolvers were imported directly and came only through avalanche-lib's
    # dependencies. (quadprog is imported by qpsolvers, not by name: the gem tests catch it.)
    import ast
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    files = [p for folder in _package_folders().values() for p in folder.glob("*.py")]
    files += sorted((ROOT / "tests").glob("*.py"))
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    declared = _declared() | {"retain"}
    # A module no installed distribution provides is the standard library's, the suite's own
    # (conftest, a test's example plugin) or an optional extra's that is not installed here.
    undeclared = {name: owners[name] for name in sorted(imported - set(sys.stdlib_module_names))
                  if name in owners and not {d.lower().replace("_", "-") for d in owners[name]} & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
