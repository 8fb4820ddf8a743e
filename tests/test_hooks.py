"""Lifecycle and training hooks reach plugins; monitoring flags a rising loss."""

from __future__ import annotations

import shutil

from retain import Strategy, hookimpl
from retain.core.config import load_config
from retain.core.quality.advice import epoch_line
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.pluginmanager import make_plugin_manager
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl, lr


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def update_started(self, run):
        self.calls.append(("started", run.kind, run.parent))

    @hookimpl
    def epoch_ended(self, run, epoch, loss):
        self.calls.append(("epoch", epoch, round(loss, 6)))

    @hookimpl
    def update_finished(self, run, report):
        self.calls.append(("finished", report["version"]))


def test_lifecycle_hooks_fire_in_order(base_model, new_texts, tmp_path):
    rec = Recorder()
    engine = Engine(load_config(None, TINY), pm=make_plugin_manager(extra_plugins=[rec]))
    report = engine.update([str(write_jsonl(tmp_path / "n.jsonl", new_texts[:12]))], base_model)
    assert rec.calls == [("started", "fine_tuning", "0001"),
                         ("epoch", 1, round(report["epoch_losses"][0], 6)),
                         ("epoch", 2, round(report["epoch_losses"][1], 6)),
                         ("finished", "0002")]


class Anchor:
    """A training_penalty plugin: a huge L2 pull towards the starting weights."""

    def __init__(self):
        self.start = None

    @hookimpl
    def training_penalty(self, run, model, inputs, targets, logits):
        if self.start is None:
            self.start = {n: p.detach().clone() for n, p in model.named_parameters()}
        return 1e4 * sum(((p - self.start[n]) ** 2).sum() for n, p in model.named_parameters())


def _drift(model_dir) -> float:
    store = ModelStore(model_dir)
    a, b = (load_version(store, v).model.state_dict() for v in ("0001", store.current()))
    return float(sum((a[k] - b[k]).norm() for k in a))


def test_training_penalty_terms_are_added_to_the_loss(base_model, new_texts, tmp_path):
    data = [str(write_jsonl(tmp_path / "n.jsonl", new_texts[:20]))]
    free_dir = tmp_path / "free"
    shutil.copytree(base_model, free_dir)
    # the anchored run barely learns, by design: only the finite check gates it
    sets = [*TINY, *lr(0.003), "validators=[finite]"]
    Engine(load_config(None, sets)).update(data, free_dir)
    Engine(load_config(None, sets), pm=make_plugin_manager(extra_plugins=[Anchor()])).update(data, base_model)
    assert _drift(base_model) < 0.5 * _drift(free_dir)


def test_epoch_line_warns_when_loss_rises():
    assert epoch_line(1, 3, 2.1, None) == "Epoch 1/3: Loss=2.1000 (learning)"
    assert "too high" not in epoch_line(2, 3, 1.9, 2.1)
    assert epoch_line(3, 3, 1.8, 1.9).endswith("(converging)")
    assert "learning rate is probably too high" in epoch_line(2, 3, 2.3, 2.1)


class FinishRecordingStrategy(Strategy):
    """A strategy (registered as a plugin for the run) that records update_finished."""

    name = "finish_recorder"
    seen: list = []

    def __init__(self, options=None):
        pass

    @hookimpl
    def update_finished(self, run, report):
        FinishRecordingStrategy.seen.append(report["version"])


class RegistersFinishRecorder:
    @hookimpl
    def register_strategies(self, register):
        register("finish_recorder", FinishRecordingStrategy)


def test_strategies_receive_update_finished(base_model, new_texts, tmp_path):
    FinishRecordingStrategy.seen = []
    pm = make_plugin_manager(extra_plugins=[RegistersFinishRecorder()])
    cfg = load_config(None, [*TINY, "fine_tuning.strategy=[low_lr,finish_recorder]", "validators=[finite]"])
    report = Engine(cfg, pm=pm).update([str(write_jsonl(tmp_path / "n.jsonl", new_texts[:12]))], base_model)
    assert FinishRecordingStrategy.seen == [report["version"]] == ["0002"]


class FailsWhenFinished:
    @hookimpl
    def update_finished(self, run, report):
        raise RuntimeError("notifier down")


def test_a_plugin_failing_in_update_finished_leaves_the_saved_version_current(base_model, new_texts, tmp_path):
    from typer.testing import CliRunner

    from retain.cli import app
    from retain.core import pluginmanager

    warnings = []

    class Warnings:
        @hookimpl
        def warning_raised(self, run, message):
            warnings.append(message)

    pm = make_plugin_manager(extra_plugins=[FailsWhenFinished(), Warnings()])
    cfg = load_config(None, [*TINY, "validators=[finite]"])
    report = Engine(cfg, pm=pm).update([str(write_jsonl(tmp_path / "n.jsonl", new_texts[:12]))], base_model)
    assert report["status"] == "accepted" and ModelStore(base_model).current() == "0002"
    assert any("update_finished" in w and "notifier down" in w and "0002" in w for w in warnings)

    # and from the command line: exit 0, the warning printed, not exit 6
    old = pluginmanager._DEFAULT
    pluginmanager._DEFAULT = make_plugin_manager(extra_plugins=[FailsWhenFinished()])
    try:
        data = write_jsonl(tmp_path / "m.jsonl", new_texts[12:24])
        r = CliRunner().invoke(app, ["update", "-d", str(data), "-m", str(base_model),
                                     *[a for s in [*TINY, "validators=[finite]"] for a in ("--set", s)]])
    finally:
        pluginmanager._DEFAULT = old
    assert r.exit_code == 0, r.output
    assert "notifier down" in r.output and ModelStore(base_model).current() == "0003"
