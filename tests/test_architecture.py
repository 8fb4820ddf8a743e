"""The shape of the code: who may import whom, and what the command line's start-up costs.

Core is the update cycle and nothing else: it knows no terminal, no command
line, and none of the plugins it runs (they come in through the entry points,
like third-party ones). Plugins and strategies know no command line.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> module prefixes it must not import (absolute "retain.x" names, or third-party roots)
FORBIDDEN = {
    "core": ["retain.cli", "retain.render", "retain.trainer", "retain.plugins", "retain.strategies",
             "retain.compare", "retain.demo", "rich", "typer"],
    "plugins": ["retain.cli", "retain.render", "typer"],
    "strategies": ["retain.cli", "retain.render", "typer"],
}


def imports_of(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = ["retain", package, *path.relative_to(ROOT / package).with_suffix("").parts]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def forbidden_edges() -> list[str]:
    edges = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in sorted(imports_of(path, package)):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    edges.append(f"{path.relative_to(ROOT)} imports {name}")
    return edges


def test_no_forbidden_imports():
    assert forbidden_edges() == []


def test_the_import_check_sees_a_forbidden_edge(tmp_path, monkeypatch):
    # The check itself must be able to fail: a core module importing the renderer is caught,
    # in both the absolute and the relative spelling.
    core = tmp_path / "core"
    core.mkdir()
    (core / "bad.py").write_text("from retain.render import ConsoleRenderer\nfrom ..cli import app\nimport rich\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert forbidden_edges() == ["core/bad.py imports retain.cli", "core/bad.py imports retain.cli.app",
                                 "core/bad.py imports retain.render",
                                 "core/bad.py imports retain.render.ConsoleRenderer", "core/bad.py imports rich"]


def test_help_imports_no_torch_or_avalanche():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom retain.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'avalanche')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_commands_that_read_the_registry_import_no_torch(tmp_path):
    # `retain plugins` loads every entry point: the built-in model family and scenarios must
    # register without importing their torch code.
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom retain.cli import app\n"
            "r = CliRunner().invoke(app, ['plugins', '--json'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'avalanche')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_commands_that_train_nothing_import_no_avalanche(base_model, new_texts, tmp_path):
    # history, status, rollback, prune and `update --dry-run` read the model directory: no torch
    # (an update stores what `status` needs); validate scores the model: torch, never avalanche.
    from retain.core.config import load_config
    from retain.core.engine import Engine

    from conftest import TINY, write_jsonl

    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:12])
    Engine(load_config(None, TINY)).update([str(data)], base_model)
    more = write_jsonl(tmp_path / "more.jsonl", new_texts[12:24])
    sets = [arg for o in TINY for arg in ("--set", o)]
    commands = [["history", "--model", base_model], ["status", "--model", base_model, *sets],
                ["rollback", "--model", base_model, "0001"], ["rollback", "--model", base_model, "0002"],
                ["prune", "--model", base_model, "--keep", "5"],
                ["update", "--model", base_model, "--data", more, "--dry-run", *sets],
                ["validate", "--model", base_model, "--data", more, *sets]]
    code = ("import json, sys\nfrom typer.testing import CliRunner\nfrom retain.cli import app\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    r = CliRunner().invoke(app, args)\n    assert r.exit_code == 0, (args, r.output)\n"
            "    print(args[0], sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'avalanche'}))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([[str(a) for a in c] for c in commands])],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["history []", "status []", "rollback []", "rollback []", "prune []", "update []",
                   "validate ['torch']"]
