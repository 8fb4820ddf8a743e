"""The update recipe: re-warm and re-decay, replay the full training records by default,
early stopping that keeps the best epoch."""

from __future__ import annotations

import json
import math

import pytest

from retain import Strategy, hookimpl
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.evaluation import score_texts
from retain.core.models import load_version
from retain.core.pluginmanager import make_plugin_manager
from retain.core.store import ModelStore
from retain.core.strategy import TrainSettings

from conftest import TINY, write_jsonl


def _update(model_dir, texts, tmp_path, *overrides, pm=None, name="new.jsonl") -> dict:
    data = write_jsonl(tmp_path / name, texts)
    return Engine(load_config(None, [*TINY, *overrides]), pm=pm).update([str(data)], model_dir)


def test_schedule_warms_up_then_decays_to_the_floor():
    from retain.core.training import lr_lambda

    s = TrainSettings(1e-3, 3, 8, 64, schedule="cosine", warmup_fraction=0.1, min_lr_ratio=0.2)
    f = lr_lambda(s, 100)
    assert [f(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])   # 10 warm-up steps
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.6)   # cosine half way
    assert f(99) == pytest.approx(0.2, abs=1e-3) and f(150) == pytest.approx(0.2)  # the floor


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
    from retain.core.early_stopping import Epoch, Tracker

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


def test_a_time_limit_stops_training_with_its_decay_landed_and_keeps_a_judged_epoch(base_model, new_texts,
                                                                                    tmp_path):
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
