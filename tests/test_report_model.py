"""The update report as a typed model (core/storage/report.py): what a run writes reads back the
same, every report.json written so far reads, and one that does not fit says which field."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from conftest import TINY, write_jsonl
from retain.cli import app
from retain.core.errors import ModelError
from retain.core.storage.report import SCHEMA_VERSION, UpdateReport, parse_report, read_report
from retain.core.storage.store import ModelStore

runner = CliRunner()

# A report.json as retain 1fceb46 wrote it for an update: no schema_version, no rejects, no samples.
OLD = {
    "run": "5be0c1f2a9d4", "kind": "fine_tuning", "model_dir": "/srv/model", "parent": "0001",
    "counts": {"collected": 20, "preprocessed": 20, "duplicates": 1, "new": 19, "trained": 15, "holdout": 4,
               "tokens": 3574, "bytes": 4764},
    "skipped": [{"deduper": "exact", "origin": "n.jsonl:3", "reason": "already trained on in 0001"}],
    "epoch_losses": [4.23, 4.19],
    "metrics": {"retention_loss_before": 4.30, "retention_loss_after": 4.25, "retention_items": 24,
                "drift_since": "0001", "drift_after": -0.012},
    "verdicts": [{"validator": "finite", "status": "pass", "reason": "losses and weights are finite",
                  "numbers": {}, "remedy": "", "seconds": 0.0004},
                 {"validator": "learning", "status": "warn", "reason": "new loss fell 1.6%",
                  "numbers": {"drop": 0.016, "enough": False}, "remedy": "raise_lr", "seconds": None}],
    "next_steps": [{"step": "raise_lr", "validators": ["learning"], "status": "warn"}],
    "oom_retries": [], "timings": {"load": 0.14, "train": 14.8, "save": 0.3, "total": 18.2},
    "settings": {"learning_rate": 0.001, "epochs": 2, "batch_size": 8, "max_seq_length": 64},
    "strategies": ["rewarm", "replay"], "parameters": {"total": 24416, "trainable": 24416},
    "source": None,
    "early_stopping": {"epochs": [{"epoch": 1, "new_loss": 4.25, "retention_loss": 4.28, "passed": True,
                                   "failed": [], "train_loss": 4.23, "retention_items": 8}],
                       "best_epoch": 1, "stopped": ""},
    "search": None, "precision": {"asked": "fp32", "chose": "fp32", "why": "asked for fp32", "seconds": 0.0},
    "version": "0002", "status": "accepted", "replaces": None,
}


def _store_with_report(root, report) -> ModelStore:
    """A model directory whose one version has ``report`` as its report.json (checksummed)."""
    store = ModelStore(root / "model")
    writer = store.begin_version(parent=None)
    writer.write_json("report.json", report)
    writer.finish({"parent": None, "kind": "full_training", "status": "accepted", "created_at": "2026-12-07",
                   "counts": {}, "metrics": {}, "config": {}, "verdicts": []})
    store.set_current(writer.name)
    return store


def test_a_report_round_trips_through_json_unchanged():
    report = read_report(OLD, "0002").model_copy(update={"retrain": {"retrain": False, "summary": "fine"}})
    written = json.loads(json.dumps(report.to_json()))
    again = read_report(written, "0002")
    assert again == report and again.to_json() == written
    assert written == {"schema_version": SCHEMA_VERSION, **OLD, "retrain": {"retrain": False, "summary": "fine"}}
    # typed: the nested parts are models, the open ones keep each value's own type
    assert again.verdicts[1].numbers == {"drop": 0.016, "enough": False} and again.early_stopping.best_epoch == 1
    assert again.metrics["retention_items"] == 24 and type(again.metrics["retention_items"]) is int
    assert again.precision.chose == "fp32" and again.metrics["drift_since"] == "0001"


def test_a_report_is_frozen_and_a_stage_adds_its_part_with_model_copy():
    report = read_report(OLD, "0002")
    with pytest.raises(Exception):
        report.status = "rejected"
    checked = report.model_copy(update={"status": "check", "gate": "rejected"})
    assert (report.status, checked.status, checked.to_json()["gate"]) == ("accepted", "check", "rejected")
    assert "gate" not in report.to_json()  # a key no stage set is left out, as before the report was typed


def test_an_old_report_without_the_fields_added_since_reads_with_defaults():
    oldest = {k: v for k, v in OLD.items() if k not in ("precision", "early_stopping", "search", "replaces")}
    oldest.update(version=None, status=None)
    report = read_report(oldest, "0002")
    assert report.rejects is None and report.samples is None and report.precision is None
    assert report.version is None and report.counts["new"] == 19
    assert "rejects" not in report.to_json()  # retain report reads them back from rejects.jsonl
    # what tests/synthetic.py writes (counts and metrics only), and an empty object, read too
    assert read_report({"counts": {"new": 3}, "metrics": {}}, "0003").verdicts == []
    assert read_report({}, "0004").status is None


def test_unknown_keys_of_a_newer_or_third_party_writer_are_kept():
    report = read_report({**OLD, "cost": {"usd": 0.02}, "verdicts": [{**OLD["verdicts"][0], "url": "x"}]}, "0002")
    assert report.model_extra == {"cost": {"usd": 0.02}}
    assert report.to_json()["cost"] == {"usd": 0.02} and report.to_json()["verdicts"][0]["url"] == "x"


@pytest.mark.parametrize("change, field", [
    ({"parameters": {"total": "many"}}, "parameters.total"),
    ({"metrics": {"drift_after": [0.1]}}, "metrics.drift_after"),
    ({"verdicts": [{"validator": "finite", "status": 3}]}, "verdicts[0].status"),
    ({"epoch_losses": "4.2"}, "epoch_losses"),
    ({"precision": {"asked": "fp32"}}, "precision.chose"),
])
def test_a_wrong_type_on_disk_is_a_model_error_naming_the_field(change, field):
    with pytest.raises(ModelError, match=re.escape(f"version 0002: report.json field '{field}' is invalid")):
        read_report({**OLD, **change}, "0002")


def test_a_newer_schema_or_text_that_is_not_json_is_a_clear_error():
    with pytest.raises(ModelError, match="schema version 2, which this retain cannot read"):
        read_report({**OLD, "schema_version": 2}, "0002")
    with pytest.raises(ModelError, match="version 0002: report.json is not valid JSON"):
        parse_report("{not json", "0002")
    assert parse_report(json.dumps({**OLD, "schema_version": 1}), "0002").version == "0002"


def test_retain_report_renders_an_old_report_and_names_a_bad_field(tmp_path):
    # 1fceb46 wrote report.json before it set the version and status (its --json had them)
    store = _store_with_report(tmp_path, {**OLD, "version": None, "status": None})
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", "--model", str(store.root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "<b>learning</b>" in out.read_text(encoding="utf-8")
    bad = _store_with_report(tmp_path / "bad", {**OLD, "parameters": {"total": "many"}})
    r = runner.invoke(app, ["report", "--model", str(bad.root), "--out", str(out)])
    assert r.exit_code == 5 and "report.json field 'parameters.total' is invalid" in r.output


def test_history_goes_on_past_a_bad_report(tmp_path):
    # The learning rate of a version whose manifest has no settings comes from its report: a
    # report that does not fit is not trusted, its cell is empty, and the table is printed.
    def rate(store):
        r = runner.invoke(app, ["history", "--model", str(store.root), "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)[0]["learning_rate"]

    assert rate(_store_with_report(tmp_path / "good", OLD)) == 0.001
    assert rate(_store_with_report(tmp_path / "bad", {**OLD, "counts": []})) is None
    assert rate(_store_with_report(tmp_path / "worse", {**OLD, "settings": {"learning_rate": "fast"}})) is None


def test_the_update_report_is_a_model_and_its_json_is_what_cli_prints(base_model, new_texts, tmp_path):
    from retain.core import cycle
    from retain.core.config import load_config
    from retain.core.engine import Engine

    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:12])
    engine = Engine(load_config(None, TINY))
    store = ModelStore(base_model)
    run = cycle.candidate(engine.setup, "fine_tuning", [str(data)], store, store.current(), writes=False)
    report = cycle.not_saved(engine.setup, run, "check")
    assert isinstance(report, UpdateReport) and report.status == "check" and report.gate in ("accepted", "rejected")
    assert read_report(json.loads(json.dumps(report.to_json())), "-") == report


def test_what_a_plugin_fills_in_never_fails_the_report():
    # A validator's numbers and a strategy's counts are theirs: any JSON value is kept.
    odd = {**OLD, "counts": {**OLD["counts"], "replay_sources": ["a", "b"]},
           "verdicts": [{**OLD["verdicts"][0], "numbers": {"per_source": {"a": 1.0}}, "remedy": None}]}
    assert read_report(odd, "0002").to_json() == {"schema_version": SCHEMA_VERSION, **odd}
