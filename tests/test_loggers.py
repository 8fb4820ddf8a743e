"""Trackers on the event hooks (issue 23, item 1): `--log-to mlflow,tensorboard`.

A train and two updates are logged for real, into a SQLite store and event files inside a
temporary model directory, and read back with MLflow's own client and TensorBoard's own
event reader; then `retain rollback` must move the `champion` alias. A logger that fails
(raises on every call, or a server that is down) is a warning and nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import ConfigError, PluginError
from retain.core.hookspecs import hookimpl
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

runner = CliRunner()
# One epoch of a third of the usual base: the trackers are under test, not the model.
QUICK = [*TINY, "full_training.epochs=1"]


def _sets(overrides) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory, old_texts, new_texts) -> Path:
    """A model trained and updated twice with `--log-to mlflow,tensorboard`, then rolled back."""
    pytest.importorskip("mlflow", reason="the mlflow logger needs it: pip install 'retain[mlflow]'")
    pytest.importorskip("tensorboard", reason="the tensorboard logger needs it: pip install 'retain[tensorboard]'")
    root = tmp_path_factory.mktemp("logged")
    model = root / "model"
    base = write_jsonl(root / "old.jsonl", old_texts[:100])
    steps = [["train", "--data", str(base)]]
    for i, part in enumerate((new_texts[:30], new_texts[30:60])):
        steps.append(["update", "--data", str(write_jsonl(root / f"new{i}.jsonl", part))])
    for step in steps:
        r = runner.invoke(app, [*step, "--model", str(model), "--log-to", "mlflow,tensorboard", "--json",
                                *_sets(QUICK)])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "accepted"
    assert ModelStore(model).current() == "0003"
    return model


def _client(model: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{model.resolve() / 'mlflow.db'}"  # the default: a SQLite store in the model directory
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_mlflow_holds_a_run_per_version_with_metrics_tags_artifacts_and_the_registry(logged_model):
    client = _client(logged_model)
    experiment = client.get_experiment_by_name(str(logged_model.resolve()))  # one per model directory
    runs = {r.data.tags["retain.version"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0001", "0002", "0003"]
    assert [runs[v].data.tags["retain.kind"] for v in sorted(runs)] == ["full_training", "fine_tuning", "fine_tuning"]
    update = runs["0003"]
    assert update.info.status == "FINISHED"
    assert update.data.tags["retain.status"] == "accepted" and update.data.tags["verdict/retention"] == "pass"
    assert update.data.params["strategies"] == "rewarm,replay,average" and update.data.params["epochs"] == "2"
    assert int(update.data.params["counts/trained"]) > 0

    report = json.loads((logged_model / "versions" / "0003" / "report.json").read_text())
    history = client.get_metric_history(update.info.run_id, "epoch/train_loss")  # the epoch is the step
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(report["epoch_losses"])
    for name, key in (("retention/loss/after", "retention_loss_after"), ("learning/loss/after", "new_loss_after"),
                      ("learning/loss/before", "new_loss_before")):
        (point,) = client.get_metric_history(update.info.run_id, name)
        assert (point.step, point.value) == (3, pytest.approx(report["metrics"][key]))  # the version is the step
    retention = next(v for v in report["verdicts"] if v["validator"] == "retention")
    (point,) = client.get_metric_history(update.info.run_id, "validator/retention/relative_change")
    assert (point.step, point.value) == (3, pytest.approx(retention["numbers"]["relative_change"]))

    artifacts = [a.path for a in client.list_artifacts(update.info.run_id)]
    assert "report.json" in artifacts
    local = Path(client.download_artifacts(update.info.run_id, "report.json", str(logged_model.parent)))
    assert json.loads(local.read_text())["version"] == "0003"

    # The registry mirrors the versions: each accepted one a model version whose source is its folder.
    name = logged_model.name
    versions = {mv.tags["retain.version"]: mv for mv in client.search_model_versions(f"name = '{name}'")}
    assert sorted(versions) == ["0001", "0002", "0003"]
    assert Path(versions["0002"].source) == logged_model.resolve() / "versions" / "0002"
    assert versions["0003"].run_id == update.info.run_id
    assert client.get_model_version_by_alias(name, "champion").tags["retain.version"] == "0003"


def test_rollback_moves_the_champion_alias(logged_model, tmp_path):
    import shutil

    model = tmp_path / "model"  # a copy, with its own SQLite store: the other tests read the original
    shutil.copytree(logged_model, model)
    r = runner.invoke(app, ["rollback", "--model", str(model)])
    assert r.exit_code == 0, r.output
    assert "0003 -> 0002" in r.output
    client = _client(model)
    assert client.get_model_version_by_alias(model.name, "champion").tags["retain.version"] == "0002"
    r = runner.invoke(app, ["rollback", "--model", str(model), "1"])
    assert r.exit_code == 0, r.output
    assert client.get_model_version_by_alias(model.name, "champion").tags["retain.version"] == "0001"


def test_tensorboard_holds_the_same_scalars(logged_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = EventAccumulator(str(logged_model / "tensorboard" / "versions"))
    versions.Reload()
    for version in ("0002", "0003"):
        report = json.loads((logged_model / "versions" / version / "report.json").read_text())
        points = {e.step: e.value for e in versions.Scalars("retention/loss/after")}
        assert points[int(version)] == pytest.approx(report["metrics"]["retention_loss_after"], rel=1e-6)
        points = {e.step: e.value for e in versions.Scalars("learning/loss/after")}
        assert points[int(version)] == pytest.approx(report["metrics"]["new_loss_after"], rel=1e-6)
    assert sorted(e.step for e in versions.Scalars("gate/accepted")) == [1, 2, 3]
    assert "version/verdicts/text_summary" in versions.Tags()["tensors"]

    runs = sorted((logged_model / "tensorboard" / "runs").iterdir())
    assert [p.name.split("-")[2] for p in runs] == ["full_training", "fine_tuning", "fine_tuning"]
    last = EventAccumulator(str(runs[-1]))
    last.Reload()
    report = json.loads((logged_model / "versions" / "0003" / "report.json").read_text())
    assert [e.step for e in last.Scalars("epoch/train_loss")] == [1, 2]
    assert [e.value for e in last.Scalars("epoch/train_loss")] == pytest.approx(report["epoch_losses"], rel=1e-6)


# --- a logger that fails is a warning, never a failed update -------------------------------------

class Exploding:
    """A logger whose every method raises."""

    calls = 0

    def __init__(self, options):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def explode(**kwargs):
            type(self).calls += 1
            raise RuntimeError(f"tracker down ({name})")
        return explode

    def close(self, error):
        type(self).calls += 1
        raise RuntimeError("tracker down (close)")


class ExplodingPlugin:
    @hookimpl
    def register_loggers(self, register):
        register("exploding", Exploding)


class Warnings:
    def __init__(self):
        self.messages = []

    @hookimpl
    def warning_raised(self, run, message):
        self.messages.append(message)


def test_a_logger_raising_on_every_call_leaves_the_update_accepted(base_model, new_texts, tmp_path):
    pm = make_plugin_manager(extra_plugins=[ExplodingPlugin()])
    heard = Warnings()
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:30])
    engine = Engine(load_config(None, [*TINY, "loggers=[exploding]"]), pm=pm, listeners=[heard])
    report = engine.update([str(data)], base_model)
    assert report["status"] == "accepted" and report["version"] == "0002"
    store = ModelStore(base_model)
    assert store.current() == "0002"
    for rel in store.manifest("0002")["files"]:  # every file of the version, checked against its checksum
        store.verified_path("0002", rel)
    assert json.loads((base_model / "versions" / "0002" / "report.json").read_text())["status"] == "accepted"
    failures = [m for m in heard.messages if "logger 'exploding'" in m]
    assert len(failures) == 1 and "tracker down" in failures[0] and "unaffected" in failures[0]
    assert Exploding.calls == 2  # its first call, and close: nothing in between


def test_an_mlflow_server_that_is_down_is_a_warning(base_model, new_texts, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow logger needs it: pip install 'retain[mlflow]'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:30])
    heard = Warnings()
    report = Engine(load_config(None, [*TINY, "loggers=[mlflow]"]), listeners=[heard]).update([str(data)], base_model)
    assert report["status"] == "accepted" and ModelStore(base_model).current() == "0002"
    assert [m for m in heard.messages if "logger 'mlflow' failed" in m]
    assert not (base_model / "mlflow.db").exists()  # the environment's tracking URI, not the default


# --- choosing loggers -----------------------------------------------------------------------------

def test_an_unknown_logger_names_the_key_and_the_choices(tmp_path):
    registry = Registry(make_plugin_manager())
    with pytest.raises(PluginError, match=r"unknown logger 'wandb' in config key 'loggers' \(known: .*mlflow, "
                                          r"tensorboard\)"):
        registry.check_config(load_config(None, ["loggers=mlflow,wandb"]))
    with pytest.raises(ConfigError, match="config key 'loggers': names mlflow more than once"):
        load_config(None, ["loggers=[mlflow, mlflow]"])
    r = runner.invoke(app, ["update", "--data", "x.jsonl", "--model", str(tmp_path), "--log-to", "wandb"])
    assert r.exit_code == PluginError.exit_code and "unknown logger 'wandb'" in r.output


def test_the_tracking_uri_is_the_configs_then_the_environments_then_a_sqlite_store_in_the_model(
        tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow logger needs it: pip install 'retain[mlflow]'")
    from retain.plugins.loggers import MlflowOptions
    from retain.plugins.mlflow_logger import MlflowLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert MlflowLogger(MlflowOptions()).tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert MlflowLogger(MlflowOptions()).tracking_uri(tmp_path) == "http://tracking:5000"
    assert MlflowLogger(MlflowOptions(tracking_uri="sqlite:///x.db")).tracking_uri(tmp_path) == "sqlite:///x.db"


def test_without_loggers_import_retain_imports_no_tracker_and_an_update_no_mlflow(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:30])
    script = (
        "import sys\n"
        "import retain, retain.plugin\n"
        "assert not {'mlflow', 'tensorboard'} & set(sys.modules), 'import retain'\n"
        "from retain.core.config import load_config\n"
        "from retain.core.engine import Engine\n"
        f"report = Engine(load_config(None, {TINY!r})).update([{str(data)!r}], {str(base_model)!r})\n"
        "assert report['status'] == 'accepted', report['status']\n"
        # (avalanche-lib imports tensorboard itself, for its own logger: only mlflow is ours to keep out)
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_the_python_api_logs_fine_tune_and_save_model_as_one_run(base_model, new_texts):
    pytest.importorskip("mlflow", reason="the mlflow logger needs it: pip install 'retain[mlflow]'")
    from retain import ModelTrainer

    trainer = ModelTrainer(load_config(None, [*TINY, "loggers=[mlflow]"]))
    trainer.load_model(base_model)
    report = trainer.fine_tune(new_texts[:30])
    assert trainer.save_model() == "0002"
    client = _client(base_model)
    (run,) = client.search_runs([client.get_experiment_by_name(str(base_model.resolve())).experiment_id])
    assert run.data.tags["retain.version"] == "0002" and run.data.tags["retain.run"] == report["run"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/train_loss")] == [1, 2]
    assert client.get_model_version_by_alias(base_model.name, "champion").tags["retain.version"] == "0002"


def test_an_import_and_a_rejected_update_each_have_a_run_and_only_the_import_a_model_version(
        base_model, new_texts, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow logger needs it: pip install 'retain[mlflow]'")
    from retain.core.errors import UpdateRejected

    model = tmp_path / "imported"
    r = runner.invoke(app, ["import", str(base_model / "versions" / "0001" / "model.safetensors"), "--tokenizer",
                            str(base_model / "versions" / "0001" / "tokenizer.json"), "--model", str(model),
                            "--log-to", "mlflow", *_sets(TINY)])
    assert r.exit_code == 0, r.output
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:30])
    rejecting = [*TINY, "loggers=[mlflow]", "options.learning.min_drop=0.9"]  # no update learns that much
    with pytest.raises(UpdateRejected):
        Engine(load_config(None, rejecting)).update([str(data)], model)
    client = _client(model)
    runs = client.search_runs([client.get_experiment_by_name(str(model.resolve())).experiment_id])
    by_version = {run.data.tags["retain.version"]: run for run in runs}
    assert by_version["0001"].data.tags["retain.kind"] == "import"
    rejected = by_version["0002"]
    assert rejected.data.tags["retain.status"] == "rejected" and rejected.data.tags["verdict/learning"] == "fail"
    (point,) = client.get_metric_history(rejected.info.run_id, "gate/accepted")
    assert (point.step, point.value) == (2, 0.0)
    assert [mv.tags["retain.version"] for mv in client.search_model_versions(f"name = '{model.name}'")] == ["0001"]
    assert client.get_model_version_by_alias(model.name, "champion").tags["retain.version"] == "0001"


def test_the_metric_names_follow_one_scheme():
    from retain.plugins.loggers import epoch_scalars, version_scalars, version_step

    report = {"version": "0042", "status": "rejected", "epoch_losses": [3.0, 2.5],
              "metrics": {"retention_loss_after": 4.1, "new_loss_after": float("nan"), "drift_since": "0001",
                          "something_new": 7},
              "verdicts": [{"validator": "my check", "status": "warn", "numbers": {"loss>1": 2, "why": "text"}}],
              "counts": {"trained": 48}, "timings": {"train": 1.5},
              "early_stopping": {"epochs": [{"epoch": 1, "new_loss": 4.0, "retention_loss": 4.2}]}}
    assert version_step(report["version"]) == 42
    assert version_scalars(report) == {
        "retention/loss/after": 4.1, "metrics/something_new": 7.0,   # not a number (NaN, text): not logged
        "validator/my check/status": 0.5, "validator/my check/loss_1": 2.0,
        "counts/trained": 48.0, "time/train": 1.5, "gate/accepted": 0.0}
    assert epoch_scalars(report) == [("epoch/learning/loss", 4.0, 1), ("epoch/retention/loss", 4.2, 1)]
    # a search's winner trained in a trial's process: its epoch losses come from the report
    assert epoch_scalars(report, train_loss_logged=False)[:2] == [("epoch/train_loss", 3.0, 1),
                                                                  ("epoch/train_loss", 2.5, 2)]
