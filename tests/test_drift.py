"""Drift since the last full training: the gate's cumulative check, the vocabulary check,
and a full training that keeps its tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from retain import Strategy, hookimpl
from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import UpdateRejected
from retain.core.storage.models import load_version
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.storage.store import ModelStore
from retain.core.quality.validation import Evidence
from retain.demo import base_corpus, stdlib_functions

from conftest import TINY, private_copy, write_jsonl


class Jitter(Strategy):
    """Test-only: adds seeded noise to the weights at the end of each update, a small step of
    forgetting every time (the training itself runs at a negligible learning rate)."""

    name = "jitter"
    sigma = 0.02

    def avalanche_plugins(self, run) -> list:
        from avalanche.core import SupervisedPlugin

        seed = sum(map(ord, run.items[0].text)) % 2**31

        class Noise(SupervisedPlugin):
            def after_training_exp(self, strategy, **kw):
                g = torch.Generator().manual_seed(seed)
                with torch.no_grad():
                    for p in strategy.model.parameters():
                        p.add_(torch.randn(p.shape, generator=g) * Jitter.sigma)
        return [Noise()]


class JitterPlugin:
    @hookimpl
    def register_strategies(self, register):
        register("jitter", lambda options: Jitter())


def test_the_gate_rejects_small_steps_that_add_up(base_model, new_texts, tmp_path):
    cfg = load_config(None, [*TINY, "fine_tuning.strategy=low_lr,jitter", "fine_tuning.learning_rate=1e-7",
                             "fine_tuning.epochs=1", "validators=[finite,retention]"])
    limits = cfg.options.get("retention", {})
    step_limit, drift_limit = limits["max_increase"], limits["max_drift"]
    engine = Engine(cfg, pm=make_plugin_manager(extra_plugins=[JitterPlugin()]))
    store = ModelStore(base_model)
    steps = []
    for i in range(8):
        data = write_jsonl(tmp_path / f"day{i}.jsonl", new_texts[5 * i:5 * i + 5])
        try:
            report, accepted = engine.update([str(data)], base_model), True
        except UpdateRejected as exc:
            report, accepted = exc.report, False
        verdict = next(v for v in report["verdicts"] if v["validator"] == "retention")
        steps.append((accepted, verdict, report))
        if not accepted:
            break
    accepted_steps = [v for ok, v, _ in steps if ok]
    assert len(accepted_steps) >= 2  # it took several steps
    # Every step alone is small: none passes the per-step threshold.
    assert all(v["numbers"]["relative_change"] < step_limit for _, v, _ in steps)
    assert all(v["numbers"]["drift"] <= drift_limit for v in accepted_steps)
    assert accepted_steps[-1]["numbers"]["drift"] > accepted_steps[0]["numbers"]["drift"]  # it adds up
    ok, rejected, report = steps[-1]
    assert not ok and rejected["numbers"]["drift"] > drift_limit
    assert "since the full training, however small each step" in rejected["reason"]
    assert report["metrics"]["drift_since"] == "0001"
    # The rejected candidate is kept aside; the model stays the last accepted step.
    assert store.current() == report["parent"] and report["status"] == "rejected"


def _evidence(**kw) -> Evidence:
    per = torch.full((10,), 4.0, dtype=torch.float64)
    base = dict(kind="fine_tuning", epoch_losses=[3.0], retention_before=4.0, retention_after=4.08,
                new_before=5.0, new_after=4.0, retention_items_before=per, retention_items_after=per * 1.02)
    return Evidence(**{**base, **kw})


def test_retention_reports_the_step_and_the_cumulative_numbers():
    retention = Registry.of(make_plugin_manager()).build("validators", "retention", load_config(None))
    step_only = retention.validate(_evidence())
    assert step_only.status == "warn" and "since full training" not in step_only.reason
    drifted = retention.validate(_evidence(drift_baseline=4.0, drift_after=4.3, drift_version="0001"))
    assert drifted.status == "fail"
    assert "(+2%)" in drifted.reason and "since full training 0001: 4.0000 -> 4.3000 (+7.5%)" in drifted.reason
    assert drifted.numbers["drift"] == pytest.approx(0.075)
    within = retention.validate(_evidence(drift_baseline=4.0, drift_after=4.1, drift_version="0001"))
    assert within.status == "warn" and "(+2.5%)" in within.reason


def test_the_gate_never_accepts_silently_what_the_retrain_advice_condemns():
    # One story: below retrain.max_retention_drift (4%) fine; above it accepted with a warning that
    # says `retain status` now recommends a full retrain; above the gate's max_drift (5%) rejected.
    config = load_config(None)
    retention = Registry.of(make_plugin_manager()).build("validators", "retention", config)
    limit, gate = config.retrain.max_retention_drift, config.options["retention"]["max_drift"]
    assert limit < gate
    drifted = _evidence(retention_after=4.0, retention_items_after=torch.full((10,), 4.0, dtype=torch.float64),
                        drift_baseline=4.0, drift_after=4.0 * (1 + 0.045), drift_version="0001", retrain_drift=limit)
    verdict = retention.validate(drifted)
    assert verdict.status == "warn", verdict.reason
    assert "(+4.5%)" in verdict.reason and "above retrain.max_retention_drift 4.0%" in verdict.reason
    assert "`retain status` now recommends a full retrain" in verdict.reason
    assert verdict.remedy.startswith("quality degrades:") and "retain train" in verdict.remedy
    # Just below it: a pass (and a rise that rounds to the threshold shows the digits that tell them apart).
    below = retention.validate(_evidence(retention_after=4.0, retention_items_after=torch.full((10,), 4.0,
                                         dtype=torch.float64), drift_baseline=4.0, drift_after=4.0 * 1.0399,
                                         drift_version="0001", retrain_drift=limit))
    assert below.status == "pass" and "(+3.99%)" in below.reason


# --- vocabulary drift ------------------------------------------------------------------------------

VOCAB = [o for o in TINY if not o.startswith("model.vocab_size")] + ["model.vocab_size=1024"]


@pytest.fixture(scope="module")
def _vocab_base(tmp_path_factory) -> tuple:
    """A base whose tokenizer (1,024 tokens) is fitted to the Python language reference."""
    paragraphs = base_corpus(2000)
    root = tmp_path_factory.mktemp("vocab")
    Engine(load_config(None, VOCAB)).train([str(write_jsonl(root / "base.jsonl", paragraphs[:240]))], root / "model")
    return root / "model", paragraphs[240:300]


def _status(model, data) -> dict:
    result = CliRunner().invoke(app, ["status", "--model", str(model), "--data", str(data), "--json",
                                      *[f"--set={o}" for o in VOCAB]])
    assert result.exit_code == 0, result.output
    return next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "vocabulary")


def test_vocabulary_drift_fires_on_a_domain_the_tokenizer_does_not_fit(_vocab_base, tmp_path):
    model, more_of_the_base = _vocab_base
    quiet = _status(model, write_jsonl(tmp_path / "more.jsonl", more_of_the_base))
    assert not quiet["retrain"] and quiet["numbers"]["rise"] < 0.15
    code = _status(model, write_jsonl(tmp_path / "code.jsonl", stdlib_functions()[:60]))
    assert code["retrain"] and code["numbers"]["rise"] > 0.15
    assert "no update can change a vocabulary" in code["reason"]


def test_vocabulary_drift_counts_what_the_updates_learned(_vocab_base, tmp_path):
    from retain.core.quality.retrain import assess

    model = private_copy(_vocab_base[0], tmp_path)
    Engine(load_config(None, [*VOCAB, "validators=[finite]"])).update(
        [str(write_jsonl(tmp_path / "code.jsonl", stdlib_functions()[:60]))], model)
    store = ModelStore(model)
    assert store.manifest("0002")["counts"]["tokens"] > 0
    assessment = assess(store, load_config(None, VOCAB))
    check = next(c for c in assessment.checks if c.name == "vocabulary")
    assert check.retrain and assessment.retrain and "tokenizer does not fit" in assessment.summary


def test_a_full_training_can_keep_the_current_tokenizer(_vocab_base, tmp_path, old_texts):
    model = private_copy(_vocab_base[0], tmp_path)
    data = write_jsonl(tmp_path / "all.jsonl", old_texts[:120])
    before = load_version(ModelStore(model)).lm.tokenizer_json
    Engine(load_config(None, [*VOCAB, "full_training.tokenizer=keep"])).train([str(data)], model)
    kept = load_version(ModelStore(model)).lm
    assert ModelStore(model).current() == "0002" and kept.tokenizer_json == before
    Engine(load_config(None, VOCAB)).train([str(data)], model)  # the default trains a new one
    assert load_version(ModelStore(model)).lm.tokenizer_json != before


def test_keeping_a_tokenizer_needs_a_model(tmp_path, old_texts):
    from retain.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no current model"):
        Engine(load_config(None, [*TINY, "full_training.tokenizer=keep"])).train(
            [str(write_jsonl(tmp_path / "old.jsonl", old_texts[:40]))], tmp_path / "model")
