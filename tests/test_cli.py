"""The command line: exit codes, one-line errors, --json, overrides, plugin listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.errors import ConfigError, ModelError, PluginError, SourceError
from retain.core.store import ModelStore

from conftest import TINY, write_jsonl

runner = CliRunner()


def _sets(extra=()):
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


def test_train_then_update_json(tmp_path, old_texts, new_texts):
    base = write_jsonl(tmp_path / "old.jsonl", old_texts[:120])
    r = runner.invoke(app, ["train", "--data", str(base), "--model", str(tmp_path / "m"), "--json", *_sets()])
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert trained["kind"] == "full_training" and trained["version"] == "0001"
    assert len(trained["epoch_losses"]) == 2

    new = write_jsonl(tmp_path / "new.jsonl", new_texts[:20] + new_texts[:3])
    r = runner.invoke(app, ["update", "--data", str(new), "--model", str(tmp_path / "m"), "--json",
                            "--epochs", "3", "--lr", "0.002", *_sets()])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # stdout holds the JSON object alone
    assert report["version"] == "0002" and report["parent"] == "0001"
    assert report["counts"]["duplicates"] == 3
    assert len(report["epoch_losses"]) == 3          # --epochs reached the run
    assert report["settings"]["learning_rate"] == 0.002
    assert {"collect", "dedupe", "train", "validate", "save", "total"} <= set(report["timings"])
    assert report["metrics"]["new_loss_after"] < report["metrics"]["new_loss_before"]


def test_update_prints_the_seed_steps(base_model, new_texts, tmp_path):
    new = write_jsonl(tmp_path / "new.jsonl", new_texts[:15] + new_texts[:2])
    r = runner.invoke(app, ["update", "-d", str(new), "-m", str(base_model), *_sets()])
    assert r.exit_code == 0, r.output
    out = r.stdout
    for line in ("Load model", "Collect new data: 17 items", "Preprocess: 17 items", "Skip duplicates: 2 (15 items left)",
                 "Tokenize", "Fine-tune (low_lr)", "Epoch 1/2: Loss=", "Epoch 2/2: Loss=", "Validate",
                 "version 0002 is now current"):
        assert line in out, line


def test_bad_config_key_is_one_clear_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fine_tuning:\n  learning_rat: 0.1\n")
    r = runner.invoke(app, ["update", "-d", "x.jsonl", "-m", str(tmp_path), "-c", str(cfg)])
    assert r.exit_code == ConfigError.exit_code
    assert "unknown config key 'fine_tuning.learning_rat'" in r.stderr
    assert "did you mean 'learning_rate'" in r.stderr
    assert "Traceback" not in r.output


def test_wrong_type_names_the_key(tmp_path):
    r = runner.invoke(app, ["update", "-d", "x", "-m", str(tmp_path), "--set", "fine_tuning.epochs=three"])
    assert r.exit_code == ConfigError.exit_code
    assert "'fine_tuning.epochs': expected int, got str 'three'" in r.stderr


def test_update_without_model_suggests_train(tmp_path, new_texts):
    new = write_jsonl(tmp_path / "n.jsonl", new_texts[:3])
    r = runner.invoke(app, ["update", "-d", str(new), "-m", str(tmp_path / "none")])
    assert r.exit_code == ModelError.exit_code
    assert "retain train" in r.stderr


def test_missing_data_and_unknown_plugin(base_model, tmp_path):
    r = runner.invoke(app, ["update", "-d", str(tmp_path / "nope.jsonl"), "-m", str(base_model)])
    assert r.exit_code == SourceError.exit_code and "not found" in r.stderr
    new = write_jsonl(tmp_path / "n.jsonl", ["some new text here"] * 2)
    r = runner.invoke(app, ["update", "-d", str(new), "-m", str(base_model), "--strategy", "nonesuch"])
    assert r.exit_code == PluginError.exit_code and "unknown strategy 'nonesuch'" in r.stderr


def test_strict_makes_rejects_fatal(base_model, tmp_path, new_texts):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": new_texts[0]}) + "\nnot json\n")
    r = runner.invoke(app, ["update", "-d", str(path), "-m", str(base_model), "--strict", *_sets()])
    assert r.exit_code == SourceError.exit_code
    assert "bad.jsonl:2" in r.stderr
    assert ModelStore(base_model).versions() == ["0001"]


def test_config_command_applies_overrides():
    r = runner.invoke(app, ["config", "--set", "fine_tuning.strategy=replay,ewc", "--set", "seed=7"])
    assert r.exit_code == 0
    assert "- replay\n  - ewc" in r.stdout and "seed: 7" in r.stdout


def test_plugins_lists_builtins_with_hooks_and_package():
    r = runner.invoke(app, ["plugins", "--json"])
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["sources"]["hooks"] == ["register_sources"]
    assert rows["sources"]["package"].startswith("retain ")
    assert {"source:jsonl", "source:text", "source:csv"} <= set(rows["sources"]["provides"])
    assert "strategy:low_lr" in rows["strategies"]["provides"]


def test_device_cuda_without_gpu_is_a_config_error(base_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    new = write_jsonl(tmp_path / "n.jsonl", ["fresh text for the device check"] * 1)
    r = runner.invoke(app, ["update", "-d", str(new), "-m", str(base_model), "--device", "cuda", *_sets()])
    assert r.exit_code == ConfigError.exit_code and "no CUDA device" in r.stderr


def _imported_modules(command: list[str]) -> tuple[str, set[str]]:
    """Run ``command`` with Python's import-time report on; its stdout and every module it imported."""
    r = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line]
    return r.stdout, set(rows[1:])  # rows[0] is the report's header


@pytest.mark.parametrize("args, shown", [(["--help"], "Exit codes:"), (["update", "--help"], "--dry-run")],
                         ids=["help", "update-help"])
def test_help_does_not_import_torch_or_avalanche(args, shown):
    # What keeps the command line quick to start: torch and avalanche-lib load only in the
    # commands that train or evaluate. Checked on the real entry points, not by timing them.
    commands = [[sys.executable, "-m", "retain.cli", *args]]
    exe = Path(sys.executable).with_name("retain")
    if exe.exists():  # the console script, where installed beside this interpreter
        commands.append([str(exe), *args])
    for command in commands:
        out, modules = _imported_modules(command)
        assert shown in out, out
        assert {"typer", "retain.core.errors"} <= modules, command  # the report lists real imports
        heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "avalanche"))
        assert not heavy, (command, heavy[:10])


def test_train_strategy_flag_prepares_state_for_the_first_update(tmp_path, old_texts):
    base = write_jsonl(tmp_path / "old.jsonl", old_texts[:60])
    r = runner.invoke(app, ["train", "-d", str(base), "-m", str(tmp_path / "m"), "--strategy", "replay,ewc",
                            *_sets(["options.replay.buffer_size=20"])])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "m" / "versions" / "0001" / "manifest.json").read_text())
    saved = {f for f in manifest["files"] if f.startswith("strategy/")}
    assert any(f.startswith("strategy/replay.") for f in saved), saved
    assert "strategy/ewc.safetensors" in saved


def test_a_strategy_named_twice_is_a_config_error(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:12])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--strategy", "low_lr,low_lr",
                            *_sets()])
    assert r.exit_code == 3, r.output
    assert "fine_tuning.strategy" in r.output and "low_lr more than once" in r.output
    assert "Traceback" not in r.output
