"""The update cycle end to end on a tiny model: learning, dedupe, ledger, versions, rejects."""

from __future__ import annotations

import json

import pytest

from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl, lr


def _update(model_dir, data_files, *extra):
    return Engine(load_config(None, [*TINY, *extra])).update([str(p) for p in data_files], model_dir)


def test_update_lowers_new_data_loss_and_moves_current(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    report = _update(base_model, [data], "fine_tuning.epochs=4", *lr(0.003))
    m = report["metrics"]
    assert m["new_holdout_items"] >= 5
    assert m["new_loss_after"] < m["new_loss_before"] - 0.05
    assert report["epoch_losses"][-1] < report["epoch_losses"][0]
    store = ModelStore(base_model)
    assert store.current() == report["version"] == "0002"
    assert store.chain() == ["0002", "0001"]


def test_duplicates_exact_and_normalized_are_skipped(base_model, old_texts, new_texts, tmp_path):
    fresh = new_texts[:10]
    batch = fresh + [fresh[0], "  " + fresh[1].upper() + "  ", fresh[2].replace(" ", "\t "), old_texts[5]]
    report = _update(base_model, [write_jsonl(tmp_path / "n.jsonl", batch)])
    assert report["counts"]["collected"] == 14
    assert report["counts"]["duplicates"] == 4
    reasons = " | ".join(s["reason"] for s in report["skipped"])
    assert "in this batch" in reasons
    # old_texts[5] was either trained on or held out by version 0001
    assert "by version 0001" in reasons


def test_ledger_persists_across_runs(base_model, new_texts, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", new_texts[:12])
    r1 = _update(base_model, [first])
    assert r1["counts"]["duplicates"] == 0
    # A second run, in a new engine and process-like fresh state, sees the first run's items.
    second = write_jsonl(tmp_path / "b.jsonl", new_texts[:12] + new_texts[12:20])
    r2 = _update(base_model, [second])
    assert r2["counts"]["duplicates"] == 12
    assert r2["counts"]["new"] == 8
    assert ModelStore(base_model).chain() == ["0003", "0002", "0001"]


def test_malformed_jsonl_line_goes_to_rejects_and_run_continues(base_model, new_texts, tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": t}) for t in new_texts[:10]]
    lines.insert(3, '{"text": "unterminated')
    lines.insert(6, json.dumps({"body": "wrong field"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = _update(base_model, [path])
    assert report["counts"]["rejected"] == 2
    assert report["counts"]["collected"] == 10
    rows = [json.loads(l) for l in (base_model / "rejects.jsonl").read_text().splitlines()]
    assert {(r["line"], r["file"]) for r in rows} == {(4, str(path)), (7, str(path))}
    assert any("invalid JSON" in r["reason"] for r in rows)
    assert any("field 'text' is missing" in r["reason"] for r in rows)
    assert report["version"] == "0002"


def test_previous_version_still_loadable_after_update(base_model, new_texts, tmp_path):
    store = ModelStore(base_model)
    before = {k: v.clone() for k, v in load_version(store, "0001").model.state_dict().items()}
    _update(base_model, [write_jsonl(tmp_path / "n.jsonl", new_texts[:12])])
    old = load_version(store, "0001").model.state_dict()
    assert all((old[k] == before[k]).all() for k in before)
    new = load_version(store).model.state_dict()
    assert any((new[k] != before[k]).any() for k in before)


def test_nothing_new_makes_no_version(base_model, old_texts, tmp_path):
    report = _update(base_model, [write_jsonl(tmp_path / "old.jsonl", old_texts[:20])])
    assert report["status"] == "nothing_new"
    assert report["counts"]["duplicates"] == 20
    assert ModelStore(base_model).versions() == ["0001"]


def test_update_without_model_is_a_model_error(tmp_path, new_texts):
    from retain.core.errors import ModelError

    with pytest.raises(ModelError, match="retain train"):
        _update(tmp_path / "nothing-here", [write_jsonl(tmp_path / "n.jsonl", new_texts[:5])])


def test_an_item_that_cleaning_changes_is_recognised_on_the_next_run(base_model, new_texts, tmp_path):
    # Dedupe compares the cleaned text, whose hash the ledger keeps: a record with a control
    # character (which `clean` removes and the hash does not) is not trained on twice.
    raw = [t.replace(" ", " \x07", 1) for t in new_texts[:12]]
    first = _update(base_model, [write_jsonl(tmp_path / "a.jsonl", raw)])
    assert first["counts"]["duplicates"] == 0 and first["counts"]["trained"] > 0
    again = _update(base_model, [write_jsonl(tmp_path / "b.jsonl", raw)])
    assert again["counts"]["duplicates"] == 12 and again["counts"]["trained"] == 0


def test_a_raw_variant_of_a_held_out_item_is_caught_as_contaminating(base_model, tmp_path):
    held = ModelStore(base_model).read_jsonl("0001", "holdout.jsonl")[0]["text"]
    variant = held.replace(" ", " \x01", 1)  # `clean` removes the control character
    report = _update(base_model, [write_jsonl(tmp_path / "v.jsonl", [variant])])
    assert report["counts"]["contaminating"] == 1
    assert report["skipped"][0]["kind"] == "holdout"


def test_holdout_max_zero_holds_out_nothing(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:20])
    report = _update(base_model, [data], "validation.holdout_max=0")
    assert report["counts"]["holdout"] == 0 and report["counts"]["trained"] == 20
