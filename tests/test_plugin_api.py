"""The plugin author's API: one module (``retain.plugin``), each contract written once
(``core/contracts.py``) and checked when a plugin registers, the docs and hookspecs saying
the same as the contracts, and a model family installed from ``examples/`` like a user would."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retain.core import contracts, hookspecs
from retain.core.errors import PluginError
from retain.core.pluginmanager import CONTRACTS, Registry, make_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "plugins.md", ROOT / "docs" / "models.md", ROOT / "README.md"]
EXAMPLES = ROOT / "examples"
BIGRAM = EXAMPLES / "retain-bigram-family"


# --- one module ---------------------------------------------------------------------------------

def _imported_names(text: str, module: str) -> set[str]:
    """Every name ``from MODULE import ...`` brings in, in Python source or a markdown code block."""
    names = set()
    for match in re.finditer(rf"^\s*from {re.escape(module)} import \(?([^)\n]+(?:\n[^)\n]+)*?)\)?$",
                             text, re.M):
        names |= {n.strip().split(" as ")[0] for n in match.group(1).replace("\n", ",").split(",") if n.strip()}
    return names


def _plugin_texts() -> dict[Path, str]:
    files = [*DOCS, *EXAMPLES.rglob("*.py"), *EXAMPLES.rglob("*.md")]
    files = [f for f in files if not {"build", "dist"} & set(f.relative_to(ROOT).parts)]  # a local pip's copies
    return {f: f.read_text(encoding="utf-8") for f in files}


def test_docs_and_examples_import_only_from_retain_plugin():
    import retain.plugin

    told = set()
    for path, text in _plugin_texts().items():
        if path.name == "README.md" and path.parent == ROOT:
            continue  # the user's side (ModelTrainer) imports from retain
        modules = re.findall(r"^\s*from (retain[\w.]*) import\b|^\s*import (retain[\w.]*)\s*$", text, re.M)
        stray = [m for pair in modules for m in pair if m and m != "retain.plugin"]
        assert not stray, f"{path}: imports {stray}"
        told |= _imported_names(text, "retain.plugin")
    # and what the docs name as retain.plugin.X in prose
    for path in DOCS:
        told |= set(re.findall(r"retain\.plugin\.(\w+)", path.read_text(encoding="utf-8")))
    assert {"hookimpl", "Item", "Reject", "SourceError", "Strategy", "Evidence", "Verdict", "lower_lr",
            "rows_from_ids", "token_losses", "loads_adapters", "VersionWriter"} <= told
    assert told <= set(retain.plugin.__all__), told - set(retain.plugin.__all__)
    for name in retain.plugin.__all__:
        assert getattr(retain.plugin, name) is not None


def test_the_old_import_paths_still_work():
    import retain
    import retain.plugin

    for name in ("Item", "Reject", "hookimpl", "Strategy", "TrainSettings", "Verdict", "Evidence",
                 "ConfigError", "SourceError", "ModelError", "PluginError"):
        assert getattr(retain, name) is getattr(retain.plugin, name)


def test_importing_retain_plugin_imports_no_torch():
    # A plugin's registering module imports retain.plugin; `retain plugins` must stay light.
    code = ("import sys, retain.plugin; assert 'torch' not in sys.modules, 'torch'; "
            "from retain.plugin import hookimpl, Item, ModelFamily, loads_adapters; "
            "assert 'torch' not in sys.modules; from retain.plugin import rows_from_ids; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_type_checker_sees_every_lazy_name():
    tree = ast.parse((ROOT / "plugin.py").read_text(encoding="utf-8"))
    guarded = {alias.name for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", "") == "TYPE_CHECKING"
               for sub in node.body for alias in sub.names}
    import retain.plugin

    assert guarded == set(retain.plugin._TORCH)


# --- checked when a plugin registers ---------------------------------------------------------

class Model:
    family, module, context, pad_id = "nowords", None, 8, 0

    def encode(self, texts, max_len): ...
    def token_losses(self, logits, targets): ...
    def generate(self, prompts, *, max_new_tokens, temperature, seed): ...
    def architecture(self): return {}
    def save(self, writer): return {}


class ModelWithoutEncode(Model):
    encode = None


class Family:
    def __init__(self, options=None): ...
    def create(self, config, texts, context): return Model()
    def load(self, files, entry): return Model()
    def architecture_from_config(self, config): return {}


def _registry(kind: str, name: str, factory, plugin: str = "acme"):
    class Plugin:
        pass

    def register_it(self, register):
        register(name, factory)

    setattr(Plugin, f"register_{kind}", hookspecs.hookimpl(register_it))
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(Plugin(), name=plugin)
    return Registry(pm)


def test_a_family_missing_a_method_is_refused_at_registration():
    class NoLoad(Family):
        load = None

    with pytest.raises(PluginError, match=r"plugin 'acme' registered model family 'broken', but its "
                                          r"factory's class NoLoad has no load \(required by "
                                          r"retain.plugin.ModelFamily\)"):
        _registry("models", "broken", NoLoad)


def test_a_family_whose_model_lacks_encode_is_refused_at_registration():
    class Annotated(Family):
        def create(self, config, texts, context) -> ModelWithoutEncode: ...

    with pytest.raises(PluginError, match=r"plugin 'acme' registered model family 'broken', but "
                                          r"Annotated.create makes ModelWithoutEncode, which has no encode"):
        _registry("models", "broken", Annotated)


def test_a_factory_function_is_checked_on_what_it_builds():
    registry = _registry("validators", "judge", lambda options: object())  # a lambda: nothing to see
    with pytest.raises(PluginError, match=r"plugin 'acme' registered validator 'judge', but what its factory "
                                          r"built \(object\) has no validate"):
        registry.build("validators", "judge", None)


def test_a_family_is_checked_on_the_model_it_makes():
    from retain.core.config import load_config
    from retain.core.storage.models import create_model

    class Unannotated(Family):
        def create(self, config, texts, context):
            return ModelWithoutEncode()

    registry = _registry("models", "nowords", Unannotated)
    with pytest.raises(PluginError, match=r"model family 'nowords', but the model it made "
                                          r"\(ModelWithoutEncode\) has no encode"):
        create_model(registry, load_config(None, ["model.family=nowords"]), ["a b"], 8)


@pytest.mark.parametrize("kind, contract", sorted(CONTRACTS.items()))
def test_every_kind_is_checked_against_its_contract(kind, contract):
    class Empty:
        def __init__(self, options=None): ...

    required = contracts.methods(contract)
    assert required, kind
    with pytest.raises(PluginError, match=f"has no {re.escape(', '.join(required))} "):
        _registry(kind, "empty", Empty)


def test_every_builtin_plugin_meets_its_contract():
    registry = Registry(make_plugin_manager())
    for kind, table in registry.by_kind.items():
        for name in table:
            registry.build(kind, name, None)


# --- written once: the docs, the hookspecs and the contracts agree -------------------------------

def _doc_protocols() -> dict[str, dict[str, list[str]]]:
    """{protocol: {method: [parameters], attribute: "attribute"}} from the ``class X(Protocol):``
    blocks of docs/plugins.md."""
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    out: dict[str, dict[str, list[str]]] = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if "(Protocol)" not in block:
            continue
        for node in ast.parse(block).body:
            if isinstance(node, ast.ClassDef):
                out[node.name] = {f.name: [a.arg for a in (*f.args.args, *f.args.kwonlyargs)][1:]
                                  for f in node.body if isinstance(f, ast.FunctionDef)}
                out[node.name].update({f.target.id: "attribute" for f in node.body if isinstance(f, ast.AnnAssign)})
    return out


def test_the_docs_list_each_protocol_as_contracts_declares_it():
    documented = _doc_protocols()
    assert {"Source", "Preprocessor", "Deduper", "Validator", "ModelFamily", "LanguageModel"} <= set(documented)
    for name, methods in documented.items():
        contract = getattr(contracts, name)
        declared = {m: list(inspect.signature(getattr(contract, m)).parameters)[1:] for m in contracts.methods(contract)}
        declared.update({a: "attribute" for a in contracts.attributes(contract)})
        assert methods == declared, f"docs/plugins.md's {name} differs from core/contracts.py"


def test_the_docs_list_the_strategy_methods_strategy_has():
    from retain.core.learning.strategy import Strategy

    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text[text.index("### Strategy"):text.index("### Model family")]
    assert re.findall(r"^\| `(\w+)\(", section, re.M) == ["load_state_dict", "configure", "warnings",
                                                           "avalanche_plugins", "counts", "state_dict"]
    assert set(contracts.methods(Strategy)) == {"load_state_dict", "configure", "warnings", "avalanche_plugins",
                                                "counts", "state_dict"}


def test_the_plugin_docs_point_at_no_internal_module():
    # Authors import from retain.plugin; the built-ins are named only as examples to read.
    for text in ((ROOT / "docs" / "plugins.md").read_text(encoding="utf-8"), inspect.getdoc(hookspecs),
                 *(inspect.getdoc(f) for f in vars(hookspecs).values() if hasattr(f, "retain_spec")),
                 *(inspect.getdoc(c) or "" for c in vars(contracts).values() if isinstance(c, type))):
        assert "retain.core" not in text, text[:80]


def test_renew_is_part_of_the_written_contract():
    assert contracts.methods(contracts.RenewsModels) == ["renew"]
    assert "renew" in inspect.getdoc(hookspecs.register_models)
    assert "RenewsModels" in (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")


def test_the_hookspecs_name_every_run_kind_and_step():
    from retain.core.run import FINE_TUNING, FULL_TRAINING, IMPORT

    doc = inspect.getdoc(hookspecs)
    for kind in (FULL_TRAINING, FINE_TUNING, IMPORT):
        assert f'"{kind}"' in doc, kind
    announced = set()  # every step the cycle (core/cycle.py) announces is a documented one
    for module in [*(ROOT / "core").glob("*.py"), *(ROOT / "tune").glob("*.py")]:
        text = module.read_text(encoding="utf-8")
        announced |= set(re.findall(r"\bstep\(\s*setup,\s*run,\s*\"(\w+)\"", text))
        announced |= set(re.findall(r"step_started\(run=\w+, step=\"(\w+)\"", text))
    assert {"load", "import", "save"} <= announced <= set(hookspecs.STEPS), announced - set(hookspecs.STEPS)
    started, finished = inspect.getdoc(hookspecs.step_started), inspect.getdoc(hookspecs.step_finished)
    for step in hookspecs.STEPS:
        assert f'"{step}"' in started and f"- {step}:" in finished, step


# --- a model family from examples/, installed as a user would -----------------------------------

def _install(package: Path, tmp_path: Path) -> dict:
    """``pip install`` a copy of ``package`` into a folder of its own; the environment that sees it."""
    source = tmp_path / "src"
    shutil.copytree(package, source)  # build outside the repo: no build/ or egg-info left behind
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--no-compile", "--target", str(target), str(source)], check=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_an_installed_family_missing_a_method_is_refused_naming_it(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(BIGRAM, broken)
    module = broken / "retain_bigram_family" / "__init__.py"
    module.write_text(module.read_text(encoding="utf-8").replace("def load(", "def lode("), encoding="utf-8")
    env = _install(broken, tmp_path)
    run = subprocess.run([sys.executable, "-m", "retain.cli", "plugins"], env=env, capture_output=True, text=True)
    assert run.returncode == 6, run.stderr
    assert ("plugin 'bigram' registered model family 'bigram', but its factory's class BigramFamily has no "
            "load (required by retain.plugin.ModelFamily)") in run.stderr
    assert "Traceback" not in run.stderr


def test_installed_example_family_trains_and_updates(tmp_path, old_texts, new_texts, tiny_overrides):
    """pip install examples/retain-bigram-family, then `retain train --set model.family=bigram`
    and `retain update`: the family is found through its entry point, really trains, and the
    model directory remembers it."""
    from safetensors.torch import load_file

    from conftest import write_jsonl

    env = _install(BIGRAM, tmp_path)
    retain = [sys.executable, "-m", "retain.cli"]

    listing = subprocess.run([*retain, "plugins", "--json"], env=env, capture_output=True, text=True, check=True)
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["bigram"]["package"] == "retain-bigram-family 0.1.0"
    assert plugins["bigram"]["provides"] == ["model family:bigram"]

    model = tmp_path / "model"
    sets = [a for s in [*tiny_overrides, "full_training.learning_rate=0.03", "options.rewarm.peak_lr=0.03"]
            for a in ("--set", s)]
    old, new = write_jsonl(tmp_path / "old.jsonl", old_texts[:120]), write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    train = subprocess.run([*retain, "train", "--model", str(model), "--data", str(old), "--json", *sets,
                            "--set", "model.family=bigram"], env=env, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    trained = json.loads(train.stdout)
    assert trained["version"] == "0001" and trained["status"] == "accepted"
    assert trained["epoch_losses"][-1] < trained["epoch_losses"][0]
    assert trained["metrics"]["retention_loss_after"] < trained["metrics"]["retention_loss_before"] - 0.05

    update = subprocess.run([*retain, "update", "--model", str(model), "--data", str(new), "--json", *sets],
                            env=env, capture_output=True, text=True)  # no model.family: the manifest says
    assert update.returncode in (0, 10), update.stderr
    updated = json.loads(update.stdout)
    assert updated["version"] == "0002"
    assert updated["metrics"]["new_loss_after"] < updated["metrics"]["new_loss_before"]
    versions = model / "versions"
    manifest = json.loads((versions / "0002" / "manifest.json").read_text())
    assert manifest["model"]["family"] == "bigram" and "bigram.safetensors" in manifest["files"]
    before, after = (load_file(versions / v / "bigram.safetensors")["table.weight"] for v in ("0001", "0002"))
    assert before.shape == (258, 258) and not after.equal(before)
