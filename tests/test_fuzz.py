"""Property-based tests (hypothesis): sources and the config loader on arbitrary input.

Sources: every non-blank record of any byte string becomes exactly one Item or
Reject (with its line), never an exception, and whatever they yield can be
hashed and written to the rejects file. Config: any YAML gives a Config or a
ConfigError/PluginError, never another exception.
"""

from __future__ import annotations

import csv
import json

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from retain.core.config import Config, load_config
from retain.core.errors import ConfigError, PluginError, SourceError
from retain.core.data.items import Item, Reject
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.plugins.sources import (MAX_RECORD_BYTES, CsvOptions, CsvSource, JsonlOptions, JsonlSource,
                                    TextOptions, TextSource)

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any character, with lone surrogates (which hypothesis leaves out by default) made common:
# JSON can spell them ("\ud83d") and they break anything that encodes text later.
chars = st.characters() | st.characters(categories=["Cs"])


def any_text(max_size: int):
    # st.text() drops surrogates even from such an alphabet; joining characters keeps them.
    return st.lists(chars, max_size=max_size).map("".join)


texts = any_text(20)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6)
json_lines = st.one_of(
    st.binary(max_size=80),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["text", "body", "id"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()),
    any_text(60).map(
        lambda t: json.dumps({"text": t}, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)
text_lines = st.one_of(st.binary(max_size=60), any_text(60).map(
    lambda t: t.encode("utf-8", "surrogatepass")), st.sampled_from([b"", b"  ", b"\r", b"\xef\xbb\xbf"]))
limits = st.sampled_from([24, MAX_RECORD_BYTES])  # 24 bytes exercises the oversize path


def _write(tmp_path_factory, data: bytes, name: str):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    return path


def _usable(out: list) -> None:
    """Whatever a source yields must survive the rest of the pipeline."""
    for r in out:
        assert isinstance(r, (Item, Reject))
        if isinstance(r, Item):
            assert r.text.strip()
            r.hash  # noqa: B018 - hashing must not raise (unpaired surrogates would)
            json.dumps(r.text, ensure_ascii=False).encode("utf-8")
        else:
            json.dumps(r.to_json(), ensure_ascii=False).encode("utf-8")


def _text_blank(raw: bytes, first: bool, limit: int) -> bool:
    if len(raw) > limit:
        return False
    raw = raw.removeprefix(b"\xef\xbb\xbf") if first else raw
    try:
        text = raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text and not text.strip()


@FUZZ
@given(lines=st.lists(json_lines, max_size=8), limit=limits)
def test_jsonl_every_nonblank_line_is_one_item_or_reject(tmp_path_factory, lines, limit):
    data = b"\n".join(lines)
    out = list(JsonlSource(JsonlOptions(max_record_bytes=limit)).read(
        str(_write(tmp_path_factory, data, "f.jsonl"))))
    _usable(out)
    expected = [n for n, raw in enumerate(data.split(b"\n"), 1) if len(raw) > limit or raw.strip()]
    if expected:
        assert sorted(r.line for r in out) == expected
    else:
        assert len(out) == 1 and isinstance(out[0], Reject) and "empty" in out[0].reason


@FUZZ
@given(lines=st.lists(text_lines, max_size=10), split=st.sampled_from(["line", "paragraph"]), limit=limits)
def test_text_every_nonblank_line_or_paragraph_is_one_item_or_reject(tmp_path_factory, lines, split, limit):
    data = b"\n".join(lines)
    out = list(TextSource(TextOptions(split=split, max_record_bytes=limit)).read(
        str(_write(tmp_path_factory, data, "f.txt"))))
    _usable(out)
    if b"\x00" in data[:8192]:
        assert len(out) == 1 and "binary" in out[0].reason
        return
    blank = [_text_blank(raw, n == 1, limit) for n, raw in enumerate(data.split(b"\n"), 1)]
    if split == "line":
        expected = [n for n, b in enumerate(blank, 1) if not b]
    else:  # a paragraph starts at a non-blank line after a blank one (or the start)
        expected = [n for n, b in enumerate(blank, 1) if not b and (n == 1 or blank[n - 2])]
    if expected:
        assert [r.line for r in out] == expected
    else:
        assert len(out) == 1 and "empty" in out[0].reason


csv_cells = st.one_of(any_text(12), st.binary(max_size=8).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(['"', ",", "\n", "\r\n", '""']))


@FUZZ
@given(rows=st.lists(st.lists(csv_cells, max_size=4), max_size=6), junk=st.binary(max_size=40),
       header=st.sampled_from([b"text,lang\n", b"lang,text\n", b"\xef\xbb\xbftext\n", b""]))
def test_csv_every_nonblank_row_is_one_item_or_reject(tmp_path_factory, rows, junk, header):
    body = "".join(",".join(r) + "\n" for r in rows).encode("utf-8", "surrogatepass")
    data = header + body + junk
    path = _write(tmp_path_factory, data, "f.csv")
    try:
        out = list(CsvSource(CsvOptions()).read(str(path)))
    except SourceError as exc:  # the header lacks the column: a clear error is the right answer
        assert "no column 'text'" in str(exc)
        return
    _usable(out)
    # The same rows as the csv module reads them, to count what must be accounted for.
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    try:
        lines = [line + "\n" for line in text.split("\n")]
        parsed = [r for r in csv.reader(lines) if any(c.strip() for c in r)]
    except csv.Error:
        return  # a malformed row: its reject is checked by test_hostile_input
    if len(parsed) > 1:
        assert len(out) == len(parsed) - 1
    else:
        assert len(out) == 1 and isinstance(out[0], Reject)


config_keys = st.sampled_from(["seed", "device", "model", "fine_tuning", "full_training", "validation",
                               "dedupers", "preprocessors", "validators", "options", "epochs", "n_layer",
                               "learning_rate", "batch_size", "strategy", "jsonl", "minhash", "threshold",
                               "max_record_bytes", "split", "holdout_max", "retention_fraction", "nope"])
yaml_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | any_text(10) | \
    st.sampled_from(["cpu", "auto", "low_lr", "exact", "minhash", "finite", "clean", "line"])
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(config_keys, inner, max_size=4), max_leaves=12)


def _load(tmp_path_factory, text: str) -> None:
    path = _write(tmp_path_factory, text.encode("utf-8", "surrogatepass"), "config.yaml")
    try:
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        Registry(make_plugin_manager()).check_config(cfg)
    except (ConfigError, PluginError) as exc:
        assert str(exc).strip()


@FUZZ
@given(data=st.dictionaries(config_keys, yaml_values, max_size=6))
def test_config_from_any_mapping_is_a_config_or_a_clear_error(tmp_path_factory, data):
    _load(tmp_path_factory, yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(text=any_text(200))
def test_config_from_any_text_is_a_config_or_a_clear_error(tmp_path_factory, text):
    _load(tmp_path_factory, text)
