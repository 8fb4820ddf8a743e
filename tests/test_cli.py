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
from retain.core.storage.store import ModelStore

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


def test_update_prints_the_design_documents_steps(base_model, new_texts, tmp_path):
    new = write_jsonl(tmp_path / "new.jsonl", new_texts[:15] + new_texts[:2])
    r = runner.invoke(app, ["update", "-d", str(new), "-m", str(base_model), *_sets()])
    assert r.exit_code == 0, r.output
    out = r.stdout
    for line in ("Load model", "Collect new data: 17 items", "Preprocess: 17 items", "Skip duplicates: 2 (15 items left)",
                 "Tokenize", "Fine-tune (rewarm, replay, average)", "Epoch 1/2: Loss=", "Epoch 2/2: Loss=", "Validate",
                 "version 0002 is now current"):
        assert line in out, line


def test_the_step_line_says_when_the_work_budget_cut_the_epochs(base_model, new_texts, tmp_path):
    new = write_jsonl(tmp_path / "new.jsonl", new_texts[:15])
    r = runner.invoke(app, ["update", "-d", str(new), "-m", str(base_model), "--epochs", "3", *_sets(),
                            "--set", "options.replay.horizon=1000"])  # a budget that cannot pay for 3
    assert r.exit_code == 0, r.output
    assert "2 epochs (3 asked: the replay's work budget, options.replay.horizon 1000)" in r.stdout
    assert "Epoch 2/2: Loss=" in r.stdout and "Epoch 3/" not in r.stdout


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


# --- one exit-code scheme, and --json errors -------------------------------------------------

def _json_error(r) -> dict:
    """The error object --json printed on stdout (the last line, alone or in a report)."""
    return json.loads(r.stdout.strip().splitlines()[-1])["error"]


@pytest.mark.parametrize("args", [["update", "-d", "x.jsonl"], ["status"], ["history"], ["rollback"],
                                  ["prune", "--keep", "1"], ["train", "-d", "x.jsonl"]],
                         ids=["update", "status", "history", "rollback", "prune", "train"])
def test_model_that_is_a_file_exits_5(tmp_path, args):
    model = tmp_path / "model.pth"
    model.write_bytes(b"not a directory")
    r = runner.invoke(app, [*args, "--model", str(model), "--json"])
    assert r.exit_code == ModelError.exit_code, r.output
    assert "is a file, not a model directory" in r.stderr and "Traceback" not in r.output
    err = _json_error(r)
    assert err["code"] == 5 and err["kind"] == "model" and "is a file" in err["message"]


def test_usage_errors_exit_2_with_a_json_object(base_model):
    r = runner.invoke(app, ["prune", "--model", str(base_model), "--keep", "0", "--json"])
    assert r.exit_code == 2, r.output
    err = _json_error(r)
    assert err["code"] == 2 and err["kind"] == "usage" and "--keep" in err["message"]
    assert ModelStore(base_model).versions() == ["0001"]
    r = runner.invoke(app, ["histroy", "--json"])
    assert r.exit_code == 2 and _json_error(r)["kind"] == "usage"
    r = runner.invoke(app, ["prune", "--model", str(base_model), "--keep", "0"])
    assert r.exit_code == 2 and r.stdout == ""  # no JSON unless asked
    # A mistake in the command line found after parsing is a usage error too, not the config's 3.
    r = runner.invoke(app, ["config", "--set", "fine_tuning.epochs", "--json"])
    assert r.exit_code == 2, r.output
    err = _json_error(r)
    assert err["kind"] == "usage" and "--set expects KEY=VALUE, got 'fine_tuning.epochs'" in err["message"]


def test_history_of_a_missing_model_exits_5(tmp_path):
    r = runner.invoke(app, ["history", "--model", str(tmp_path / "DOES-NOT-EXIST")])
    assert r.exit_code == ModelError.exit_code and "no model in" in r.stderr, r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["history", "--model", str(empty)]).exit_code == ModelError.exit_code


def test_unknown_source_names_the_known_ones(base_model):
    r = runner.invoke(app, ["update", "--data", "xml:file", "--model", str(base_model), "--json"])
    assert r.exit_code == SourceError.exit_code, r.output
    assert "unknown source 'xml'" in r.stderr and "known: arrow, csv, datasets, jsonl, parquet, sql, text" in r.stderr
    error_line = r.stderr.strip().splitlines()[-1]
    assert _json_error(r) == {"code": 4, "kind": "data", "message": error_line[len("error: "):]}


def test_every_user_error_is_a_json_object_with_its_kind(base_model, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fine_tuning:\n  learning_rat: 0.1\n")
    cases = [(["update", "-d", "x", "-m", str(base_model), "-c", str(cfg)], 3, "config"),
             (["update", "-d", "x", "-m", str(base_model), "--strategy", "nonesuch"], 6, "plugin"),
             (["config", "--set", "dedupers=[nonesuch]"], 6, "plugin")]
    for args, code, kind in cases:
        r = runner.invoke(app, [*args, "--json"])
        assert r.exit_code == code, (args, r.output)
        err = _json_error(r)
        assert (err["code"], err["kind"]) == (code, kind) and err["message"] in r.stderr, (args, err)
    # A bug is exit 1 with its traceback, and under --json the error object too.
    from retain.core.storage import versions

    monkeypatch.setattr(versions, "history", lambda store: 1 / 0)
    r = runner.invoke(app, ["history", "-m", str(base_model), "--json"])
    assert r.exit_code == 1 and isinstance(r.exception, ZeroDivisionError)
    assert _json_error(r) == {"code": 1, "kind": "internal", "message": "ZeroDivisionError: division by zero"}


def test_a_rejected_update_prints_its_report_with_the_error(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:20])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--json",
                            *_sets(["options.learning.min_drop=0.99"])])
    assert r.exit_code == 10, r.output
    report = json.loads(r.stdout)
    assert report["status"] == "rejected" and report["version"] == "0002"
    assert report["error"]["code"] == 10 and report["error"]["kind"] == "rejected"


def test_train_refuses_a_directory_that_is_not_a_model_unless_forced(tmp_path, old_texts):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"\xff\xd8")
    base = write_jsonl(tmp_path / "old.jsonl", old_texts[:40])
    r = runner.invoke(app, ["train", "-d", str(base), "-m", str(target), *_sets()])
    assert r.exit_code == ModelError.exit_code and "--force" in r.stderr, r.output
    assert sorted(p.name for p in target.iterdir()) == ["holiday.jpg"]  # nothing written, not even a lock
    r = runner.invoke(app, ["train", "-d", str(base), "-m", str(target), "--force", *_sets()])
    assert r.exit_code == 0, r.output
    assert ModelStore(target).current() == "0001" and (target / "holiday.jpg").exists()


# --- help that is true ----------------------------------------------------------------------

def test_short_help_and_version():
    from retain import __version__

    assert runner.invoke(app, ["-h"]).exit_code == 0
    r = runner.invoke(app, ["update", "-h"])
    assert r.exit_code == 0 and "--dry-run" in r.stdout
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"retain {__version__}"


def test_help_labels_no_flag_bool_and_keeps_sentences_whole():
    from typer.main import get_command

    group = get_command(app)
    outs = {name: runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).stdout for name in group.commands}
    outs["retain"] = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    for name, out in outs.items():
        assert "<bool>" not in out, name
    assert "preprocess, tokenize, fine-tune, validate, save." in outs["update"]
    for command in group.commands.values():  # no paragraph of a docstring breaks where its source line did
        for text in [command.help, *(p.help for p in command.params)]:
            assert all("\n" not in para for para in (text or "").split("\n\n")), (command.name, text)


def test_each_commands_json_help_says_what_it_prints():
    from typer.main import get_command

    group = get_command(app)
    helps = {name: next(p.help for p in cmd.params if p.name == "json_out")
             for name, cmd in group.commands.items() if any(p.name == "json_out" for p in cmd.params)}
    assert {"plugins", "strategies", "history", "status", "rollback", "prune", "validate", "compare",
            "config"} <= set(helps)
    assert "list of plugins" in helps["plugins"] and "list of versions" in helps["history"]
    assert "assessment" in helps["status"] and "configuration" in helps["config"]
    assert len(set(helps.values()) - {helps["train"]}) == len(helps) - 2  # train and update share one
    # The shape the help names is the shape printed: the listing commands print an array.
    for name in ("plugins", "strategies", "history"):
        assert "as one JSON array" in helps[name], helps[name]
    assert all("as one JSON object" in helps[n] for n in helps if n not in ("plugins", "strategies", "history"))
    assert isinstance(json.loads(runner.invoke(app, ["plugins", "--json"]).stdout), list)


def test_the_design_documents_recipe_is_named_so():
    r = runner.invoke(app, ["strategies", "--json"])
    low_lr = next(s for s in json.loads(r.stdout) if s["name"] == "low_lr")
    assert low_lr["description"].startswith("The design document's recipe")


# --- retain config ----------------------------------------------------------------------------

def test_config_checks_plugins_and_options_as_update_does():
    r = runner.invoke(app, ["config", "--set", "validators=[finite,nonesuch]"])
    assert r.exit_code == PluginError.exit_code and "nonesuch" in r.stderr, r.output
    r = runner.invoke(app, ["config", "--set", "options.jsonl.fieldd=body"])
    assert r.exit_code == ConfigError.exit_code and "options.jsonl.fieldd" in r.stderr, r.output
    r = runner.invoke(app, ["config", "--json", "--set", "fine_tuning.epochs=2"])
    assert r.exit_code == 0 and json.loads(r.stdout)["fine_tuning"]["epochs"] == 2


def test_config_shows_a_models_stored_config(base_model, tmp_path):
    r = runner.invoke(app, ["config", "--model", str(base_model), "--json"])
    assert r.exit_code == 0, r.output
    stored = json.loads(r.stdout)
    assert stored["model"]["d_model"] == 32 and stored["model"]["n_layer"] == 1  # TINY, not the defaults
    assert runner.invoke(app, ["config", "--model", str(tmp_path / "none")]).exit_code == ModelError.exit_code
    both = runner.invoke(app, ["config", "--model", str(base_model), "--config", "x.yaml"])
    assert both.exit_code == 2


def test_retain_config_writes_a_file_the_api_reads(tmp_path):
    from retain import ModelTrainer
    from retain.core.config import load_config

    r = runner.invoke(app, ["config"])
    path = tmp_path / "config.yaml"
    path.write_text(r.stdout)
    assert ModelTrainer(str(path), verbose=False).config == load_config(None) == ModelTrainer(verbose=False).config
