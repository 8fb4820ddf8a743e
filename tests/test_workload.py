"""Unbounded work, bounded and said: an item over max_item_tokens is a reject with its reason,
work far beyond the model's usual size is announced with its numbers before training, and
max_seconds stops a full training too, saying so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.data.items import text_hash
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

runner = CliRunner()


def _sets(extra=()):
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


def test_an_item_over_max_item_tokens_is_a_reject_with_its_reason(base_model, new_texts, tmp_path):
    huge = " ".join(f"record{i} of one field that swallowed a whole file" for i in range(400))
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20] + [huge])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--json",
                            *_sets(["fine_tuning.max_item_tokens=1000", "validators=[finite]"])])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["counts"]["trained"] + report["counts"]["holdout"] == 20
    assert report["counts"]["rejected"] == 1
    assert "1 item over fine_tuning.max_item_tokens (1,000 tokens) not used: the largest has" in r.output
    rejects = [json.loads(line) for line in (base_model / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["line"] == 21
    assert "tokens, over fine_tuning.max_item_tokens (1,000): split the record, or raise the cap" \
        in rejects[0]["reason"]
    # Not learned: with the cap raised, the next update learns it.
    store = ModelStore(base_model)
    assert store.ledger.find([text_hash(huge)], store.chain()) == {}
    assert store.ledger.find([text_hash(new_texts[0])], store.chain())
    store.ledger.close()


def test_a_dry_run_says_what_the_cap_would_reject_and_writes_nothing(base_model, new_texts, tmp_path):
    huge = " ".join(f"word{i}" for i in range(3000))
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20] + [huge])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--check", "--json",
                            *_sets(["fine_tuning.max_item_tokens=1000", "validators=[finite]"])])
    assert r.exit_code == 0, r.output
    assert "they would go to rejects.jsonl (nothing is written)" in r.output
    assert not (base_model / "rejects.jsonl").exists()


def test_work_far_beyond_the_usual_size_is_announced_before_training(base_model, new_texts, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr("retain.core.data.workload.MIN_ANNOUNCED", 0)  # the tiny model's sizes are all small
    small = write_jsonl(tmp_path / "small.jsonl", new_texts[:2])
    r = runner.invoke(app, ["update", "-d", str(small), "-m", str(base_model), *_sets(["validators=[finite]"])])
    assert r.exit_code == 0, r.output
    assert "usual size" not in r.output  # an update as big as the last one: nothing to say
    usual = ModelStore(base_model).summary("0002")["counts"]["tokens"]

    big = write_jsonl(tmp_path / "big.jsonl", new_texts[2:60])
    r = runner.invoke(app, ["update", "-d", str(big), "-m", str(base_model), "--json",
                            *_sets(["validators=[finite]"])])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    tokens, trained = report["counts"]["tokens"], report["counts"]["trained"]
    assert tokens >= 10 * usual
    warning = next(line for line in r.output.splitlines() if "usual size" in line)
    assert f"{trained} items, {tokens:,} tokens -> " in warning
    assert f"(usual: the last update: {usual:,} tokens)" in warning
    assert "no time limit: set fine_tuning.max_seconds to bound it" in warning
    assert r.output.index("usual size") < r.output.index("Fine-tune")  # said before the work


def test_max_seconds_stops_a_full_training_and_says_so(old_texts, tmp_path):
    data = write_jsonl(tmp_path / "old.jsonl", old_texts)
    r = runner.invoke(app, ["train", "-d", str(data), "-m", str(tmp_path / "m"), "--json",
                            *_sets(["full_training.epochs=200", "full_training.max_seconds=2"])])
    assert r.exit_code in (0, 10), r.output
    report = json.loads(r.stdout)
    assert 1 <= len(report["epoch_losses"]) < 200
    assert "training stopped at its time limit (full_training.max_seconds 2 s) after step" in r.output
    assert "of 200; the weights trained until then are kept" in r.output


@pytest.mark.parametrize("key,why", [("fine_tuning.max_item_tokens=-1", "must be >= 0"),
                                     ("full_training.max_seconds=-5", "must be >= 0"),
                                     ("full_training.max_item_tokens=1.5", "expected int")])
def test_the_bounds_are_checked_config_keys(key, why):
    r = runner.invoke(app, ["config", "--set", key])
    assert r.exit_code == 3, r.output
    assert f"config key '{key.split('=')[0]}': {why}" in " ".join(r.output.split())


def test_a_dry_run_estimates_what_the_cap_would_reject_and_the_size(base_model, new_texts, tmp_path, monkeypatch):
    monkeypatch.setattr("retain.core.data.workload.MIN_ANNOUNCED", 0)
    huge = " ".join(f"word{i}" for i in range(3000))
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20] + [huge])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--dry-run",
                            *_sets(["fine_tuning.max_item_tokens=1000"])])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "about 1 item over fine_tuning.max_item_tokens (1,000 tokens) would go to rejects.jsonl: " \
           "the largest has about" in out and f"({data}:21), estimated from its bytes" in out
    assert "usual size" not in out  # 20 items against a full training of 240 and more
    assert not (base_model / "rejects.jsonl").exists()

    small = write_jsonl(tmp_path / "small.jsonl", new_texts[30:32])
    r = runner.invoke(app, ["update", "-d", str(small), "-m", str(base_model), *_sets(["validators=[finite]"])])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--dry-run", *_sets()])
    out = " ".join(r.output.split())
    assert "this update is about" in out and "x the model's usual size: 21 items, about" in out
    assert "(usual: the last update:" in out


def test_texts_encoded_in_chunks_make_the_same_rows(_base_model, new_texts, monkeypatch):
    """A folder of 100,000 small files: encoded 1,024 texts at a time into 4-byte ids, straight
    into the row tensors (0.7 GB less at the peak); the rows are those of one pass."""
    from retain.core.storage.models import load_version

    lm = load_version(ModelStore(_base_model)).lm
    texts = new_texts[:40] + ["", "x", " ".join(new_texts[:5])]  # empty, one token, many rows
    whole = lm.encode(texts, 16)
    monkeypatch.setattr("retain.plugins.gpt.ENCODE_CHUNK", 3)
    chunked = lm.encode(texts, 16)
    assert len(whole) > len(texts)  # long texts split into several rows
    for a, b in ((whole.x, chunked.x), (whole.y, chunked.y), (whole.owner, chunked.owner)):
        assert a.equal(b)


def test_a_full_training_rejects_an_item_over_its_cap_with_its_exact_size(old_texts, tmp_path):
    huge = " ".join(f"line {i} of a log pasted into one record" for i in range(300))
    data = write_jsonl(tmp_path / "old.jsonl", old_texts[:100] + [huge])
    r = runner.invoke(app, ["train", "-d", str(data), "-m", str(tmp_path / "m"), "--json",
                            *_sets(["full_training.max_item_tokens=1000"])])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["counts"]["trained"] + report["counts"]["holdout"] == 99  # 100, one a duplicate
    rejects = [json.loads(line) for line in (tmp_path / "m" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [101]
    tokens = int(rejects[0]["reason"].split(" tokens")[0].replace(",", ""))  # counted exactly
    assert tokens > 1000
    assert rejects[0]["reason"].endswith("over full_training.max_item_tokens (1,000): split the record, or raise the cap")
