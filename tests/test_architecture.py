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
    # nor numpy: the cycle imports the item spool, which takes numpy only when items are read
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom retain.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'avalanche', 'numpy')))")
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
    # (an update stores what `status` needs); validate scores the model and generate samples it:
    # torch, never avalanche.
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
                ["validate", "--model", base_model, "--data", more, *sets],
                ["generate", "--model", base_model, "--device", "cpu", "--max-new-tokens", "4", "The"]]
    code = ("import json, sys\nfrom typer.testing import CliRunner\nfrom retain.cli import app\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    r = CliRunner().invoke(app, args)\n    assert r.exit_code == 0, (args, r.output)\n"
            "    print(args[0], sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'avalanche'}))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([[str(a) for a in c] for c in commands])],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["history []", "status []", "rollback []", "rollback []", "prune []", "update []",
                   "validate ['torch']", "generate ['torch']"]


# Module state a function changes at run time, by module: what it is for. Everything else a run
# needs is passed to it (the processes it spans are a ``World``, core/runtime/world.py, made where the
# run starts). A signal handler's state is the process's: one handler per process, each rank
# of a distributed run its own; the default plugin manager is a cache of what is installed.
RUN_TIME_MODULE_STATE = {
    "core/runtime/interrupts.py": {"_outcome", "_pending", "_report", "_shield_depth", "_tidy"},
    "core/pluginmanager.py": {"_DEFAULT"},
}
# Removed by issue 22: the distributed run's state, now the World's and the launcher's.
REMOVED_GLOBALS = {"_ARGV", "_EXIT_CODE", "SAVED", "_WORLD"}
_MUTATORS = {"append", "extend", "insert", "pop", "popitem", "clear", "update", "setdefault", "add", "discard",
             "remove"}


def run_time_state(path: Path) -> set[str]:
    """Module-level names of ``path`` that its functions rebind (``global``) or change in place
    (``X[k] = ...``, ``X.append(...)``), and ``module.NAME`` of modules it changes the same way."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.level or (node.module or "").startswith("retain")) for alias in node.names}  # retain's own
    found = set()

    def changed(target) -> None:
        while isinstance(target, ast.Subscript):
            target = target.value
        if isinstance(target, ast.Name) and target.id in names:
            found.add(target.id)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id in modules:
            found.add(f"{target.value.id}.{target.attr}")

    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Global):
                found.update(node.names)
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, (ast.Subscript, ast.Attribute)):
                        changed(target)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
                changed(node.func.value)
    return found


def module_state(root: Path) -> dict[str, set[str]]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", "benchmarks", "examples", "build"):
            continue
        state = run_time_state(path)
        if state:
            out[rel.as_posix()] = state
    return out


def test_no_run_state_in_module_globals():
    assert module_state(ROOT) == RUN_TIME_MODULE_STATE
    defined = {f"{path.relative_to(ROOT)}: {t.id}" for path in ROOT.rglob("*.py") if "tests" not in path.parts
               for node in ast.parse(path.read_text(encoding="utf-8")).body
               if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
               if isinstance(t, ast.Name) and t.id in REMOVED_GLOBALS}
    assert defined == set()


def test_the_module_state_check_sees_a_global_box(tmp_path):
    # The check itself must be able to fail: the globals issue 22 removed, in the shapes they had.
    (tmp_path / "cli.py").write_text("_ARGV = []\n_EXIT_CODE = [0]\n\ndef main(argv):\n    _ARGV[:] = argv\n"
                                     "    _EXIT_CODE[0] = 1\n")
    (tmp_path / "engine.py").write_text("from . import distributed\n\ndef run(report):\n"
                                        "    distributed.SAVED[0] = report['version']\n")
    (tmp_path / "world.py").write_text("_WORLD = None\n\ndef start():\n    global _WORLD\n    _WORLD = 1\n")
    assert module_state(tmp_path) == {"cli.py": {"_ARGV", "_EXIT_CODE"}, "engine.py": {"distributed.SAVED"},
                                      "world.py": {"_WORLD"}}


# --- the shape of the cycle: plugins return what they change; the cycle alone announces steps ------

MAX_FUNCTION_LINES = 60  # in core/: a function that does not fit on a screen does several things
MAX_ENGINE_LINES = 150  # core/engine.py: the options of each command; the stages are core/cycle.py's
STEP_EVENTS = {"step_started", "step_finished"}
ANNOUNCES_STEPS = {"core/cycle.py"}  # the cycle: the only module that tells the renderer a step began


def _modules(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def run_state_writes() -> list[str]:
    """Every place a plugin or strategy module sets an attribute of a run (``run.x = ...``,
    ``run.x += ...``, ``del run.x``, ``setattr(run, ...)``): a plugin returns what it changes."""
    found = []
    for path in _modules("plugins", "strategies"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in ast.walk(target)]
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "run":
                    found.append(f"{path.relative_to(ROOT)}:{t.lineno} sets run.{t.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "run"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.id}(run, ...)")
    return sorted(found)


def step_announcements() -> list[str]:
    """Every call of a step event (``hook.step_started(...)``) outside the cycle's module."""
    found = []
    for path in [*_modules("core", "plugins", "strategies", "tune", "compare", "cli"), ROOT / "trainer.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STEP_EVENTS
                    and str(path.relative_to(ROOT)) not in ANNOUNCES_STEPS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.attr}")
    return sorted(found)


def long_functions() -> list[str]:
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {node.end_lineno - node.lineno + 1} lines"
            for path in _modules("core")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def long_orchestrator() -> list[str]:
    lines = len((ROOT / "core" / "engine.py").read_text(encoding="utf-8").splitlines())
    return [f"core/engine.py has {lines} lines"] if lines > MAX_ENGINE_LINES else []


def test_no_plugin_or_strategy_sets_the_run_state():
    assert run_state_writes() == []


def test_only_the_cycle_announces_steps():
    assert step_announcements() == []


def test_no_function_in_core_is_longer_than_a_screen():
    assert long_functions() == []


def test_the_orchestrating_class_is_thin():
    # The engine composes the cycle's stages with each command's options; a stage or a step
    # written there instead of core/cycle.py makes it grow.
    assert long_orchestrator() == []


def test_the_shape_checks_see_what_they_forbid(tmp_path, monkeypatch):
    # Each check must be able to fail: a strategy writing the run (five spellings), a plugin
    # announcing a step, and a long core function are all caught.
    for package in ("core", "plugins", "strategies", "tune", "compare", "cli"):
        (tmp_path / package).mkdir()
    (tmp_path / "strategies" / "bad.py").write_text(
        "def configure(settings, run):\n    run.lm = wrap(run.lm)\n    run.counts += 1\n"
        "    setattr(run, 'after', None)\n    a, run.x = 1, 2\n    run.counts['k'] = 1\n")
    (tmp_path / "plugins" / "loud.py").write_text("def f(pm, run):\n    pm.hook.step_started(run=run, step='x')\n")
    (tmp_path / "core" / "long.py").write_text("def f():\n" + "    x = 1\n" * 61)
    (tmp_path / "cli" / "update.py").write_text("def f(pm, run):\n    pm.hook.step_finished(run=run, step='x')\n")
    (tmp_path / "core" / "engine.py").write_text("x = 1\n" * 151)
    (tmp_path / "core" / "cycle.py").write_text("def f(pm, run):\n    pm.hook.step_finished(run=run, step='x')\n")
    (tmp_path / "trainer.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert run_state_writes() == ["strategies/bad.py:2 sets run.lm", "strategies/bad.py:3 sets run.counts",
                                  "strategies/bad.py:4 calls setattr(run, ...)", "strategies/bad.py:5 sets run.x",
                                  "strategies/bad.py:6 sets run.counts"]
    assert step_announcements() == ["cli/update.py:2 calls step_finished", "plugins/loud.py:2 calls step_started"]
    assert long_functions() == ["core/long.py:1 f has 62 lines"]
    assert long_orchestrator() == ["core/engine.py has 151 lines"]


def test_plugins_see_the_run_read_only():
    # What hooks and strategies receive: every attribute reads through; setting one is refused
    # with what to do instead.
    from retain.core.config import Config
    from retain.core.run import FINE_TUNING, Run

    run = Run("r1", FINE_TUNING, Config(), Path("m"), parent="0001")
    view = run.view()
    assert (view.id, view.parent, view.full, view.counts is run.counts) == ("r1", "0001", False, True)
    for attempt in (lambda: setattr(view, "lm", object()), lambda: delattr(view, "after")):
        try:
            attempt()
        except AttributeError as exc:
            assert "read-only" in str(exc) and "return what you change" in str(exc)
        else:
            raise AssertionError("a plugin set an attribute of the run")
    assert run.lm is None
