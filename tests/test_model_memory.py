"""The model directory remembers its model: family, architecture and tokenizer come from its
manifest, so a model trained with non-default model.* settings needs no flags afterwards; a
config that explicitly asks for another architecture still gets the retrain advice."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.quality.retrain import assess
from retain.core.storage.store import ModelStore

from conftest import write_jsonl

# The session's base model was trained with TINY: n_layer 1, n_head 2, d_model 32, vocab 300,
# context 64, where the defaults are 2, 4, 128, 2048, 512.


def architecture_check(output: str) -> dict:
    return next(c for c in json.loads(output)["checks"] if c["name"] == "architecture")


def test_status_and_update_need_no_model_flags(base_model, new_texts, tmp_path):
    status = CliRunner().invoke(app, ["status", "--model", str(base_model), "--json"])
    assert status.exit_code == 0, status.output
    check = architecture_check(status.stdout)
    assert not check["retrain"] and "from its manifest" in check["reason"]

    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20])
    update = CliRunner().invoke(app, ["update", "--data", str(data), "--model", str(base_model), "--json",
                                      "--quiet", "--set", "validators=[finite]", "--epochs", "1"])
    assert update.exit_code == 0, update.output
    report = json.loads(update.stdout)
    assert not architecture_check(json.dumps(report["retrain"]))["retrain"]
    # the new version's config says what the model is, not what the defaults are
    made = ModelStore(base_model).manifest(report["version"])["config"]
    assert (made["model"]["n_layer"], made["model"]["d_model"], made["model"]["vocab_size"],
            made["full_training"]["max_seq_length"]) == (1, 32, 300, 64)
    assert made["fine_tuning"]["epochs"] == 1  # what was asked still counts


def test_a_config_that_asks_for_another_architecture_gets_the_retrain_advice(base_model, tmp_path):
    out = CliRunner().invoke(app, ["status", "--model", str(base_model), "--json", "--set", "model.n_layer=3"])
    assert out.exit_code == 0, out.output
    check = architecture_check(out.stdout)
    assert check["retrain"] and "n_layer 1 -> 3" in check["reason"]
    assert json.loads(out.stdout)["retrain"]
    # a config file naming the model block asks for it as well (here: the defaults, explicitly)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model: {n_layer: 2, n_head: 4, d_model: 128, vocab_size: 2048}\n", encoding="utf-8")
    check = architecture_check(CliRunner().invoke(app, ["status", "--model", str(base_model), "--json",
                                                        "--config", str(cfg)]).stdout)
    assert check["retrain"] and "d_model 32 -> 128" in check["reason"]
    # and a family the model is not
    assessment = assess(ModelStore(base_model), load_config(None, ["model.family=hf"]))
    arch = next(c for c in assessment.checks if c.name == "architecture")
    assert arch.retrain and "'hf' model" in arch.reason


def test_a_retrain_without_flags_rebuilds_the_same_model(base_model, old_texts, tmp_path):
    from retain.core.engine import Engine
    from retain.core.storage.models import load_version

    data = write_jsonl(tmp_path / "all.jsonl", old_texts[:40])
    Engine(load_config(None, ["full_training.epochs=1", "device=cpu"])).train([str(data)], base_model)
    store = ModelStore(base_model)
    assert store.current() == "0002"
    arch = load_version(store).lm.architecture()
    assert (arch["n_layer"], arch["n_head"], arch["d_model"], arch["context"]) == (1, 2, 32, 64)
