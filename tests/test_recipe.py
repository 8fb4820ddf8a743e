"""The update recipe: re-warm and re-decay, replay the full training records by default,
early stopping that keeps the best epoch."""

from __future__ import annotations

import json
import math

import pytest

from retain import Strategy, hookimpl
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.quality.evaluation import score_texts
from retain.core.storage.models import load_version
from retain.core.pluginmanager import make_plugin_manager
from retain.core.storage.store import ModelStore
from retain.core.learning.strategy import TrainSettings

from conftest import TINY, write_jsonl


def _update(model_dir, texts, tmp_path, *overrides, pm=None, name="new.jsonl") -> dict:
    data = write_jsonl(tmp_path / name, texts)
    return Engine(load_config(None, [*TINY, *overrides]), pm=pm).update([str(data)], model_dir)


def test_schedule_warms_up_then_decays_to_the_floor():
    from retain.core.learning.training import lr_lambda

    s = TrainSettings(1e-3, 3, 8, 64, schedule="cosine", warmup_fraction=0.1, min_lr_ratio=0.2)
    f = lr_lambda(s, 100)
    assert [f(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])   # 10 warm-up steps
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.6)   # cosine half way
    assert f(99) == pytest.approx(0.2, abs=1e-3) and f(150) == pytest.approx(0.2)  # the floor
    # A cooldown over the last fifth of the 90 steps after warm-up: the peak until step 82, then
    # the same cosine, compressed, to the same floor (warm-up, stable, decay).
    s.cooldown_fraction = 0.2
    f = lr_lambda(s, 100)
    assert f(9) == pytest.approx(1.0) and f(50) == pytest.approx(1.0) and f(82) == pytest.approx(1.0)
    assert f(91) == pytest.approx(0.6) and f(99) == pytest.approx(0.2, abs=0.01) and f(150) == pytest.approx(0.2)


class LrProbe(Strategy):
    """Test-only: records the learning rate of every optimizer step."""

    name = "lrprobe"

    def __init__(self):
        self.lrs: list[float] = []

    def avalanche_plugins(self, run) -> list:
        from avalanche.core import SupervisedPlugin

        lrs = self.lrs

        class Record(SupervisedPlugin):
            def before_update(self, strategy, **kw):
                lrs.append(strategy.optimizer.param_groups[0]["lr"])
        return [Record()]


class Probes:
    def __init__(self):
        self.made: list[LrProbe] = []

    @hookimpl
    def register_strategies(self, register):
        register("lrprobe", self._make)

    def _make(self, options):
        self.made.append(LrProbe())
        return self.made[-1]


def test_rewarm_with_replay_rises_to_the_full_training_peak_and_ends_at_the_floor(base_model, new_texts, tmp_path):
    probes = Probes()
    report = _update(base_model, new_texts[:40], tmp_path, "fine_tuning.strategy=rewarm,replay,lrprobe",
                     "fine_tuning.early_stopping.enabled=false", "validators=[finite]",
                     pm=make_plugin_manager(extra_plugins=[probes]))
    lrs = probes.made[0].lrs
    peak = load_config(None, TINY).full_training.learning_rate
    assert report["settings"]["learning_rate"] == peak and report["settings"]["schedule"] == "cosine"
    assert lrs[0] < 0.5 * peak and max(lrs) == pytest.approx(peak, rel=0.02)  # warm-up, then the peak
    assert lrs.index(max(lrs)) < len(lrs) // 4
    # The schedule spans every step, the replayed rows' included: it ends at the floor (10%).
    assert lrs[-1] == pytest.approx(0.1 * peak, rel=0.3)
    assert report["counts"]["replay_tokens"] > 0


def test_rewarm_with_a_cooldown_holds_the_peak_and_decays_only_at_the_end(base_model, new_texts, tmp_path):
    probes = Probes()
    report = _update(base_model, new_texts[:40], tmp_path, "fine_tuning.strategy=rewarm,lrprobe",
                     "options.rewarm.cooldown=0.3", "fine_tuning.early_stopping.enabled=false", "validators=[finite]",
                     pm=make_plugin_manager(extra_plugins=[probes]))
    lrs, peak = probes.made[0].lrs, report["settings"]["learning_rate"]
    assert report["settings"]["cooldown_fraction"] == 0.3
    at_peak = [i for i, lr in enumerate(lrs) if lr == pytest.approx(peak)]
    # Warm-up (a tenth), then the peak until 70% of the rest, then the decay to the floor (10%).
    assert at_peak and at_peak[0] < len(lrs) // 5 and at_peak[-1] >= int(0.6 * len(lrs))
    decay = lrs[at_peak[-1]:]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.25 * peak  # a few steps: near the floor


def test_a_default_full_training_records_a_replay_buffer_every_later_update_finds(tmp_path, old_texts, new_texts):
    # `retain train` with a config whose updates do not replay: the buffer is recorded anyway.
    cfg = load_config(None, [*TINY, "fine_tuning.strategy=low_lr"])
    model = tmp_path / "model"
    Engine(cfg).train([str(write_jsonl(tmp_path / "old.jsonl", old_texts[:120]))], model)
    store = ModelStore(model)
    assert store.manifest("0001")["files"].get("strategy/replay.json")
    # An update without replay does not carry the buffer; a later one with replay still finds it.
    _update(model, new_texts[:20], tmp_path, "fine_tuning.strategy=low_lr", "validators=[finite]")
    assert "strategy/replay.json" not in store.manifest("0002")["files"]
    report = _update(model, new_texts[20:40], tmp_path, "fine_tuning.strategy=rewarm,replay",
                     "validators=[finite]", name="second.jsonl")
    assert report["counts"]["replay_tokens"] > 0
    buffer = json.loads((model / "versions" / "0003" / "strategy" / "replay.json").read_text())["texts"]
    base_buffer = json.loads((model / "versions" / "0001" / "strategy" / "replay.json").read_text())["texts"]
    assert set(buffer) & set(base_buffer)


def test_early_stopping_keeps_the_best_epoch(base_model, new_texts, tmp_path):
    # At lr 0.01 the held-out new items get worse after the first epoch: the update stops at
    # the second of 8 and puts the first epoch's weights back.
    report = _update(base_model, new_texts[:20], tmp_path, "fine_tuning.strategy=naive", "fine_tuning.epochs=8",
                     "full_training.learning_rate=0.01", "validators=[finite]")
    stop = report["early_stopping"]
    losses = [e["new_loss"] for e in stop["epochs"]]
    assert len(losses) < 8 and "did not improve" in stop["stopped"]
    best = stop["best_epoch"]
    assert best < len(losses) and losses[best - 1] == min(losses)
    # What was saved is the best epoch: scored again from disk, and as the gate saw it.
    store = ModelStore(base_model)
    lm = load_version(store).lm
    held_out = [r["text"] for r in store.read_jsonl(store.current(), "holdout.jsonl")]
    saved = float(score_texts(lm, held_out, 64).mean())
    assert saved == pytest.approx(losses[best - 1], rel=1e-6)
    assert report["metrics"]["new_loss_after"] == pytest.approx(saved, rel=1e-6)
    assert saved < losses[-1]


def test_early_stopping_stops_when_a_threshold_is_crossed_and_prefers_accepted_epochs():
    from retain.core.learning.early_stopping import Epoch, Tracker

    t = Tracker(patience=2, min_delta=0.001)
    t.see(Epoch(1, 4.0, 3.0, True))
    t.see(Epoch(2, 3.8, 3.1, True))
    assert not t.stopped and t.best.epoch == 2
    t.see(Epoch(3, 3.5, 3.3, False, ["retention"]))   # learns more, but forgets past the gate
    assert "failed retention after epoch 2 passed" in t.stopped
    assert t.best.epoch == 2                           # the accepted epoch, not the lowest loss

    quiet = Tracker(patience=1, min_delta=0.01)
    quiet.see(Epoch(1, 4.0, None, True))
    quiet.see(Epoch(2, 3.99, None, True))              # less than 1% better: no improvement
    assert "did not improve for 1 epoch after epoch 1" in quiet.stopped and quiet.best.epoch == 2


class SteadyClock:
    """Test-only: training's clock, 0.05 s further at every read (a step takes 0.05 s, always), so
    what fits in a time limit does not depend on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.05
        return self.now


def test_a_time_limit_stops_training_with_its_decay_landed_and_keeps_a_judged_epoch(base_model, new_texts,
                                                                                    tmp_path, monkeypatch):
    from retain.core.learning import training

    monkeypatch.setattr(training, "time", SteadyClock())
    probes = Probes()
    report = _update(base_model, new_texts[:40], tmp_path, "fine_tuning.strategy=rewarm,replay,lrprobe",
                     "fine_tuning.epochs=50", "fine_tuning.max_seconds=4", "validators=[finite]",
                     pm=make_plugin_manager(extra_plugins=[probes]))
    trained = len(report["epoch_losses"])
    assert 1 <= trained < 50
    assert report["early_stopping"]["best_epoch"] is not None
    assert math.isfinite(report["metrics"]["new_loss_after"])
    # The schedule was squeezed into the steps that fit: it warmed up and decayed by the limit
    # (planned over 50 epochs, the rate would still be at its peak).
    lrs, peak = probes.made[0].lrs, report["settings"]["learning_rate"]
    assert max(lrs) > 0.8 * peak and lrs[-1] < 0.5 * peak


class CountingValidators:
    """Two validators that count their calls: ``every_epoch`` as plugins are by default,
    ``at_the_gate`` with ``each_epoch = False`` (as costly as generation)."""

    def __init__(self):
        self.calls = {"every_epoch": 0, "at_the_gate": 0}

    @hookimpl
    def register_validators(self, register):
        from retain import Verdict

        calls = self.calls

        class Counting:
            def __init__(self, name):
                self.name = name

            def validate(self, evidence):
                calls[self.name] += 1
                return Verdict("pass", "counted")

        class Costly(Counting):
            each_epoch = False

        register("every_epoch", lambda options: Counting("every_epoch"))
        register("at_the_gate", lambda options: Costly("at_the_gate"))


def test_early_stopping_leaves_costly_validators_to_the_gate(base_model, new_texts, tmp_path):
    counting = CountingValidators()
    report = _update(base_model, new_texts[:20], tmp_path, "fine_tuning.epochs=3",
                     "fine_tuning.early_stopping.patience=3", "validators=[finite,every_epoch,at_the_gate]",
                     pm=make_plugin_manager(extra_plugins=[counting]))
    epochs = len(report["early_stopping"]["epochs"])
    assert epochs == 3
    # Judged after each epoch and once more by the gate; the costly one by the gate alone.
    assert counting.calls == {"every_epoch": epochs + 1, "at_the_gate": 1}
    assert [v["validator"] for v in report["verdicts"]] == ["finite", "every_epoch", "at_the_gate"]
    # The built-in generation validator is such a one (sampling costs as much as scoring).
    from retain.core.pluginmanager import Registry

    registry = Registry(make_plugin_manager())
    cfg = load_config(None, TINY)
    assert registry.build("validators", "generation", cfg).each_epoch is False
    assert getattr(registry.build("validators", "retention", cfg), "each_epoch", True) is True


def test_epochs_but_the_last_are_judged_on_the_part_of_the_retention_set_the_budget_buys(base_model, new_texts,
                                                                                         tmp_path):
    # A budget of 0 buys the floor: 8 of the pool's 24 items after epochs 1 and 2; the last
    # epoch, whose scores the gate reuses, on all 24. (Without `average`: weights averaged after
    # training are not the last epoch's, and the gate scores them again.)
    report = _update(base_model, new_texts[:20], tmp_path, "fine_tuning.strategy=[rewarm,replay]",
                     "fine_tuning.epochs=3",
                     "fine_tuning.early_stopping.patience=3", "validation.eval_budget=0")
    assert [e["retention_items"] for e in report["early_stopping"]["epochs"]] == [8, 8, 24]
    assert report["metrics"]["retention_items"] == 24
    assert report["metrics"]["retention_loss_after"] == pytest.approx(
        report["early_stopping"]["epochs"][-1]["retention_loss"], rel=1e-9)
    # With the budget to score every item, every epoch is judged on all of them.
    ample = _update(base_model, new_texts[20:40], tmp_path, "fine_tuning.strategy=[rewarm,replay]",
                    "fine_tuning.epochs=2",
                    "fine_tuning.early_stopping.patience=3", "validation.eval_budget=100", name="more.jsonl")
    items = ample["metrics"]["retention_items"]  # the pool, grown by the first update's held-out items
    assert [e["retention_items"] for e in ample["early_stopping"]["epochs"]] == [items, items] and items > 24


def test_an_update_stopped_early_on_a_part_is_judged_by_the_gate_on_the_whole_set(base_model, new_texts, tmp_path):
    from retain.core.storage import retention

    report = _update(base_model, new_texts[:20], tmp_path, "fine_tuning.strategy=naive", "fine_tuning.epochs=8",
                     "full_training.learning_rate=0.01", "validators=[finite,retention]",
                     "validation.eval_budget=0")
    epochs = report["early_stopping"]["epochs"]
    assert len(epochs) < 8 and all(e["retention_items"] == 8 for e in epochs)  # stopped before the last
    # The kept epoch was judged on 8 items: the gate scored the saved weights on all 24.
    assert report["metrics"]["retention_items"] == 24
    store = ModelStore(base_model)
    cfg = load_config(None, TINY)
    texts = retention.load(store, "0001", cfg.validation.eval_max_items, cfg.seed).texts[:24]
    saved = float(score_texts(load_version(store, report["version"]).lm, texts, 64).mean())
    assert report["metrics"]["retention_loss_after"] == pytest.approx(saved, rel=1e-6)


def test_the_drift_reference_on_a_part_pairs_each_text_with_its_own_loss():
    from retain.core.quality.drift import Baseline

    ref = Baseline("0001", 2.5, 2.75, ["a", "b", "c", "d"], 64, [1.0, 2.0, 3.0, 4.0])
    part = ref.subset(2, prefer={"c"})
    assert part.texts == ["a", "c"] and part.losses == [1.0, 3.0]
    assert part.loss == 2.0 and part.before == pytest.approx(2.2)  # the same recorded rise, +10%
    assert ref.subset(4, set()) is ref
    unpaired = Baseline("0001", 2.5, None, ["a", "b", "c"], 64, None)
    assert unpaired.subset(1, set()) is unpaired  # no per-text losses: the whole reference


# --- the learning rate asked for is the one used ----------------------------------------------------

class _Run:
    """What a strategy's configure and warnings read of a run (no model: lora's attach is stubbed)."""

    def __init__(self, config):
        self.config, self.lm, self.base, self.strategies = config, None, None, []


@pytest.mark.parametrize("strategy", ["naive", "low_lr", "rewarm", "lora", "replay,ewc", "naive,replay"])
def test_an_explicit_update_rate_is_the_rate_of_every_strategy(strategy, monkeypatch):
    from retain.cli.common import _load
    from retain.core.storage.models import configure_strategies
    from retain.core.pluginmanager import Registry
    from retain.strategies import lora_adapters

    monkeypatch.setattr(lora_adapters, "attach", lambda lm, base, options: lm)
    config = _load(None, TINY, "fine_tuning", 0.01, None, None, strategy)  # retain update --lr 1e-2
    registry = Registry.of(make_plugin_manager())
    run = _Run(config)
    run.strategies = [registry.build("strategies", name, config) for name in config.fine_tuning.strategy]
    run.settings = TrainSettings(config.fine_tuning.learning_rate, 3, 8, 64, learning_rate_from="fine_tuning.learning_rate")
    configure_strategies(run, lambda message: None)
    assert run.settings.learning_rate == 0.01, run.settings.learning_rate_from


def test_the_step_line_says_where_the_rate_came_from_and_ewc_without_importances_warns(base_model, new_texts,
                                                                                        tmp_path):
    from typer.testing import CliRunner

    from retain.cli import app

    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20])
    sets = [a for o in [*TINY, "fine_tuning.epochs=1", "validators=[finite]"] for a in ("--set", o)]
    r = CliRunner().invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--strategy", "replay,ewc",
                                 "--json", *sets])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    # Without rewarm the update trains at low_lr's rate, and says so rather than dropping the re-warm silently.
    assert report["settings"]["learning_rate"] == 1e-4
    assert "lr 0.0001 (fine_tuning.learning_rate: no strategy of replay, ewc sets a rate of its own; rewarm" in r.stderr
    # The base was trained without ewc: nothing holds the weights this time, and the update says so.
    assert "ewc: the base version recorded no ewc importances" in r.stderr
    # Naive at an explicit rate trains at it (it took full_training.learning_rate, 1e-3, whatever --lr said).
    r = CliRunner().invoke(app, ["update", "-d", str(write_jsonl(tmp_path / "more.jsonl", new_texts[20:40])),
                                 "-m", str(base_model), "--strategy", "naive", "--lr", "1e-2", "--json", *sets])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["settings"]["learning_rate"] == 0.01
    assert "lr 0.01 (options.naive.learning_rate)" in r.stderr


def test_the_auto_search_reads_and_sets_every_strategys_own_rate():
    from retain.tune.space import Recipe, configured

    from conftest import lr

    for strategy in ("naive", "lora", "rewarm", "low_lr"):
        assert configured(load_config(None, [*TINY, *lr(0.02), f"fine_tuning.strategy=[{strategy}]"])).learning_rate == 0.02
    config = load_config(None, [*TINY, *Recipe("naive", 0.03, 2, 0.0).overrides()])
    assert config.options["naive"]["learning_rate"] == 0.03 and config.options["lora"]["learning_rate"] == 0.03
