"""Sources keep every record (item or reject); config is typed and overridable."""

from __future__ import annotations

import pytest

from retain.core.config import Config, load_config
from retain.core.errors import ConfigError, SourceError
from retain.core.data.items import Item, Reject, normalize_text, text_hash
from retain.core.data.ingest import collect
from retain.core.pluginmanager import Registry, make_plugin_manager


@pytest.fixture(scope="module")
def registry():
    return Registry(make_plugin_manager())


def _read(registry, spec, *overrides):
    return collect([spec], registry, load_config(None, list(overrides)))


def test_text_paragraphs_keep_line_numbers(registry, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("First para\nstill first.\n\n\nSecond para.\n\nThird.\n")
    items, rejects = _read(registry, str(f))
    assert [(i.text, i.line) for i in items] == [("First para\nstill first.", 1), ("Second para.", 5), ("Third.", 7)]
    assert rejects == []


def test_text_folder_one_item_per_file_and_bad_files_rejected(registry, tmp_path):
    (tmp_path / "a.txt").write_text("alpha file")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 latin-1")
    (tmp_path / "c.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "d.txt").write_text("   \n")
    items, rejects = _read(registry, str(tmp_path), "options.text.split=file")
    assert [i.text for i in items] == ["alpha file"]
    reasons = sorted(r.reason for r in rejects)
    assert len(rejects) == 3
    assert any("invalid UTF-8" in r for r in reasons) and any("binary" in r for r in reasons)
    assert "empty file" in reasons


def test_csv_column_and_ragged_rows(registry, tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('id,text\n1,"hello, world"\n2\n3,\n4,"multi\nline"\n')
    items, rejects = _read(registry, str(f))
    assert [(i.text, i.line, i.meta) for i in items] == [("hello, world", 2, {"id": "1"}),
                                                        ("multi\nline", 6, {"id": "4"})]
    assert sorted((r.line, r.reason.split(",")[0]) for r in rejects) == [(3, "row has 1 fields"),
                                                                       (4, "column 'text' is empty")]


def test_tsv_is_tab_separated_and_csv_still_comma_separated(registry, tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text("id\ttext\n1\thello, world, again\n2\tno commas here\n")
    items, rejects = _read(registry, str(tsv))
    assert [(i.text, i.line, i.meta) for i in items] == [("hello, world, again", 2, {"id": "1"}),
                                                        ("no commas here", 3, {"id": "2"})]
    assert rejects == []
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('id,text\n1,"tab\there, comma"\n')
    items, rejects = _read(registry, str(csv_file))
    assert [(i.text, i.meta) for i in items] == [("tab\there, comma", {"id": "1"})] and rejects == []
    # options.csv.delimiter, when set, wins over the suffix for every file.
    semi = tmp_path / "s.csv"
    semi.write_text("id;text\n1;a, b\n")
    items, _ = _read(registry, str(semi), "options.csv.delimiter=;")
    assert [(i.text, i.meta) for i in items] == [("a, b", {"id": "1"})]
    with pytest.raises(SourceError, match="no column 'text'"):  # the header is one field, "id<TAB>text"
        _read(registry, str(tsv), "options.csv.delimiter=,")


def test_csv_missing_column_names_it(registry, tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("id,body\n1,x\n")
    with pytest.raises(SourceError, match="no column 'text'"):
        _read(registry, str(f))


def test_jsonl_custom_field_and_prefix_spec(registry, tmp_path):
    f = tmp_path / "data.log"  # unknown suffix: choose the source by name
    f.write_text('{"body": "one"}\n"a bare string"\n[1, 2]\n\n{"body": 3}\n')
    items, rejects = _read(registry, f"jsonl:{f}", "options.jsonl.field=body")
    assert [(i.text, i.line) for i in items] == [("one", 1), ("a bare string", 2)]
    assert [(r.line, r.reason) for r in rejects] == [
        (3, "expected an object with a 'body' field, got list"),
        (5, "field 'body' is int, expected a string")]
    with pytest.raises(SourceError, match="cannot tell the format"):
        _read(registry, str(f))


def test_normalized_hash_ignores_case_space_and_unicode_form():
    assert text_hash("Caf\u00e9  au\tLAIT ") == text_hash("cafe\u0301 au lait")
    assert normalize_text("ﬁne  Print") == "fine print"
    assert text_hash("a b") != text_hash("ab")


def test_config_defaults_match_the_design_document():
    cfg = load_config()
    assert (cfg.fine_tuning.learning_rate, cfg.fine_tuning.epochs, cfg.fine_tuning.batch_size,
            cfg.fine_tuning.max_seq_length) == (0.0001, 3, 8, 512)
    assert (cfg.full_training.learning_rate, cfg.full_training.epochs, cfg.full_training.init) == (0.001, 10, "random")
    # the shipped YAML and the dataclass defaults agree (options there only document defaults)
    shipped, defaults = cfg.to_dict(), Config().to_dict()
    shipped.pop("options"), defaults.pop("options")
    assert shipped == defaults


@pytest.mark.parametrize("override, message", [
    ("fine_tuning.batch_size=-4", "'fine_tuning.batch_size': must be > 0"),
    ("model.d_model=30", "'model.d_model': 30 must be divisible by n_head"),
    ("device=tpu", "'device': expected 'auto' | 'cpu' | 'cuda'"),
    ("fine_tuning=3", "'fine_tuning': expected FineTuningConfig"),
    ("validation.holdout_fraction=1.5", "must be in [0, 1)"),
    ("fine_tuning.strategy=[1]", "'fine_tuning.strategy[0]': expected str"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_plugin_options_are_typed(registry, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match="'options.jsonl.feild'"):
        _read(registry, str(f), "options.jsonl.feild=body")


def test_a_folder_of_jsonl_files_is_read_as_json_lines(registry, tmp_path):
    # Each file of a --data folder picks its source by suffix: the texts, not the raw JSON lines.
    (tmp_path / "a.jsonl").write_text('{"text": "first item"}\n{"text": "second item"}\n')
    (tmp_path / "notes.txt").write_text("a plain paragraph")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "third item"}\n{"oops": 1}\n')
    items, rejects = _read(registry, str(tmp_path))
    assert sorted(i.text for i in items) == ["a plain paragraph", "first item", "second item", "third item"]
    assert [(r.source, r.line) for r in rejects] == [("jsonl", 2)]


def test_an_unknown_source_name_lists_the_known_ones(registry, tmp_path):
    with pytest.raises(SourceError, match="unknown source 'xml'.*jsonl"):
        _read(registry, f"xml:{tmp_path / 'file.xml'}")
