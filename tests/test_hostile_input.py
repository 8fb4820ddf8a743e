"""Hostile input: junk bytes, bad encodings, a 100 MB line, wrong shapes, bad configs.

Every bad record becomes a rejects-file entry with its file and line; every bad
config is one clear error; nothing crashes and nothing good is lost.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.data.ingest import collect
from retain.core.errors import ConfigError, PluginError
from retain.core.data.items import Item, Reject
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.storage.store import ModelStore
from retain.plugins.sources import CsvOptions, CsvSource, JsonlOptions, JsonlSource, TextOptions, TextSource

from conftest import TINY

HUNDRED_MB = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def huge_line_file(tmp_path_factory):
    """'"text"', one 100 MB line, '"after"': readable as JSONL, CSV (header "text") and text."""
    path = tmp_path_factory.mktemp("huge") / "huge.data"
    block = b"a" * (1 << 20)
    with open(path, "wb") as f:
        f.write(b'"text"\n')
        for _ in range(HUNDRED_MB // len(block)):
            f.write(block)
        f.write(b'\n"after"\n')
    yield path
    path.unlink()


@pytest.mark.parametrize("source", [JsonlSource(JsonlOptions()), CsvSource(CsvOptions()),
                                    TextSource(TextOptions(split="line"))], ids=["jsonl", "csv", "text"])
def test_a_100_mb_line_is_rejected_without_being_read_into_memory(source, huge_line_file):
    tracemalloc.start()
    try:
        out = list(source.read(str(huge_line_file)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    big = [r for r in out if isinstance(r, Reject) and r.line == 2]
    assert len(big) == 1 and "104,857,600 bytes, over the 16,777,216-byte limit" in big[0].reason
    assert [it.text.strip('"') for it in out if isinstance(it, Item)][-1] == "after"  # the line after survives
    assert peak < 3 * 16 * 1024 * 1024  # bounded by the record limit, not by the 100 MB line


def test_junk_files_each_record_is_an_item_or_a_reject_with_its_line(tmp_path):
    (tmp_path / "junk.jsonl").write_bytes(
        b'{"text": "good one"}\n'
        b"\x00\x01\x02\xff\xfe binary junk\n"
        b'{"text": "caf\xe9"}\n'                       # Latin-1, not UTF-8
        b'[{"text": "an array"}]\n'
        b'{"text": 42}\n'
        b'{"body": "wrong field"}\n'
        b'"just a string is fine"\n'
        b'{"text": "\\ud83d broken surrogate"}\n'
        + b"[" * 100_000 + b"\n"                        # nesting bomb
        + b'\n   \n{"text": "good two"}')
    (tmp_path / "ragged.csv").write_bytes(
        b"id,text,lang\n1,hello there,en\n2,too,many,fields,here\n3\n4,,en\n5,\"quoted, with comma\",en\n"
        b"6,bad \xff byte,en\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"\n \n\t\n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "mixed.txt").write_bytes(b"first paragraph\n\nsecond \xc3\x28 paragraph\nstill second\n\nthird\n")
    registry = Registry(make_plugin_manager())
    items, rejects = collect([str(tmp_path / n) for n in
                              ("junk.jsonl", "ragged.csv", "empty.jsonl", "blank.txt", "binary.txt", "mixed.txt")],
                             registry, load_config(None, TINY))
    got = {(r.file.rsplit("/", 1)[1], r.line) for r in rejects}
    assert {it.text for it in items} == {"good one", "just a string is fine", "good two", "hello there",
                                         "quoted, with comma", "first paragraph", "third"}
    assert got == {("junk.jsonl", n) for n in (2, 3, 4, 5, 6, 8, 9)} | {
        ("ragged.csv", n) for n in (3, 4, 5, 7)} | {
        ("empty.jsonl", None), ("blank.txt", None), ("binary.txt", None), ("mixed.txt", 3)}
    reasons = {(r.file.rsplit("/", 1)[1], r.line): r.reason for r in rejects}
    assert "invalid UTF-8" in reasons[("junk.jsonl", 3)]
    assert "got list" in reasons[("junk.jsonl", 4)]
    assert "surrogate" in reasons[("junk.jsonl", 8)]
    assert "row has 5 fields, header has 3" in reasons[("ragged.csv", 3)]
    assert "invalid UTF-8" in reasons[("ragged.csv", 7)]
    assert "binary file" in reasons[("binary.txt", None)]
    assert "empty file" in reasons[("empty.jsonl", None)]


def test_update_on_hostile_files_completes_and_records_every_reject(base_model, new_texts, tmp_path,
                                                                     huge_line_file):
    good = tmp_path / "good.jsonl"
    good.write_bytes("".join(json.dumps({"text": t}) + "\n" for t in new_texts[:12]).encode() + b"\xff junk\n")
    huge = tmp_path / "huge.jsonl"
    huge.symlink_to(huge_line_file)
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"text\n\"unterminated\n\xff\xfe\x00\n")
    report = Engine(load_config(None, TINY)).update([str(good), str(huge), str(junk)], base_model)
    assert report["version"] == "0002"
    assert report["counts"]["collected"] == 12 + 2  # "text" and "after" are JSON strings
    rows = [json.loads(line) for line in (base_model / "rejects.jsonl").read_text("utf-8").splitlines()]
    assert {(r["file"], r["line"]) for r in rows} == {(str(good), 13), (str(huge), 2), (str(junk), 3)}
    assert report["counts"]["rejected"] == 3


@pytest.mark.parametrize("override, error, words", [
    ("fine_tuning.epochs=three", ConfigError, "fine_tuning.epochs': expected int"),
    ("fine_tuning.batch_size=-8", ConfigError, "must be > 0"),
    ("model.vocab_size=0", ConfigError, "must be > 0"),
    ("validation.holdout_max=-1", ConfigError, "must be >= 0"),
    ("fine_tuning.learning_rate=.nan", ConfigError, "finite"),
    ("options.jsonl.max_record_bytes=-5", ConfigError, "max_record_bytes': must be > 0"),
    ("options.csv.delimiter=';;'", ConfigError, "one character"),
    ("options.jsonl.feild=body", ConfigError, "unknown config key 'options.jsonl.feild'"),
    ("options.nosuchplugin.x=1", ConfigError, "no installed plugin is named 'nosuchplugin'"),
    ("dedupers=[exact, fuzzy]", PluginError, "unknown deduper 'fuzzy'"),
    ("fine_tuning.strategy=[low_lr, magic]", PluginError, "unknown strategy 'magic'"),
    ("validators=finite,nope", PluginError, "unknown validator 'nope'"),
])
def test_bad_configs_are_one_clear_error(override, error, words):
    with pytest.raises(error, match=words.replace(".", r"\.").replace("[", r"\[")):
        Engine(load_config(None, [*TINY, override]))


def test_cli_bad_config_and_unknown_plugin_exit_codes_without_traceback(base_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"model:\n  n_layer: \xff\xfe\n")
    runner = CliRunner()
    cases = [(["--config", str(cfg)], 3), (["--set", "fine_tuning.epochs=-1"], 3),
             (["--set", "dedupers=[exact,nope]"], 6), (["--strategy", "magic"], 6)]
    for extra, code in cases:
        result = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *extra])
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output and "error:" in result.output
    assert ModelStore(base_model).versions() == ["0001"]
