"""Ingest in bounded memory (core/data/spool.py, core/data/ingest.py): the item spool round
trip, in memory and spilled to a temp file; duplicates found across batches exactly as within
one; the same held-out items as before batches; the memory of ingesting N items bounded by the
batch (plus a few bytes an item), not by N; a failed run leaves no spool behind."""

from __future__ import annotations

import gc
import random
import re
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from retain.core.config import load_config
from retain.core.data import ingest, spool as spools
from retain.core.data.items import Item, normalize_text, text_hash
from retain.core.data.spool import ItemSpool, even_sample
from retain.core.engine import Engine
from retain.core.errors import RetainError
from retain.core.pluginmanager import Registry, default_plugin_manager
from retain.core.run import FULL_TRAINING, Run

from conftest import TINY, write_jsonl


def _items(n: int, start: int = 0) -> list[Item]:
    return [Item(f"item {i}: caf\u00e9 \u2013 \U0001f600 " + "x" * (i % 7), "jsonl", "/data/a.jsonl", i + 1,
                 {"id": i, "tags": ["a", i]} if i % 2 else {}) for i in range(start, start + n)]


@pytest.mark.parametrize("memory", [1 << 30, 256])
def test_spool_round_trip_in_memory_and_on_disk(memory):
    items = _items(50) + [Item("no line", "python", "<python>", None, {}), Item("surrogate \udc80 kept")]
    spool = ItemSpool(memory=memory)
    for part in (items[:7], items[7:8], items[8:]):
        spool.extend(part)
    assert spool.on_disk == (memory == 256)
    assert len(spool) == len(items)
    assert list(spool) == items and [spool[i] for i in range(len(items))] == items
    assert [it.meta for it in spool] == [it.meta for it in items]  # meta is not compared by Item's ==
    assert spool[-1] == items[-1] and spool[3:6] == items[3:6]
    view = spool.view().without([0, 2, 4])
    assert list(view) == [it for i, it in enumerate(items) if i not in (0, 2, 4)]
    assert list(view.take([5, 1])) == [view[5], view[1]]  # any order, by position
    spool.close()
    assert spool._file.closed


def test_the_data_hash_is_sorted_by_the_ledger_and_counts_only_trained_items(tmp_path):
    """A version's data_hash: sha256 over its trained items' sorted hashes, sorted by SQLite (no
    list of every hash in memory), the same in any order, blind to its held-out items."""
    import hashlib

    from retain.core.storage.store import Ledger

    items = _items(40)
    hashes = [it.hash for it in items]
    expected = hashlib.sha256("".join(sorted(hashes[:30])).encode()).hexdigest()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = [(it.hash, "train" if i < 30 else "holdout", it.source, it.origin) for i, it in enumerate(items)]
    ledger.add("0001", rows)
    ledger.add("0002", list(reversed(rows)))
    ledger.add("0003", rows[1:])
    assert ledger.data_hash("0001") == ledger.data_hash("0002") == expected
    assert ledger.data_hash("0003") != expected
    ledger.close()


def test_normalized_text_is_the_regex_form_for_every_code_point():
    """The ledger's hashes must not move: split()/join() takes the whitespace \\s+ took."""
    old = re.compile(r"\s+")
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    assert [c for c in chars if (old.fullmatch(c) is not None) != c.isspace()] == []
    rng = random.Random(0)
    pool = [chr(c) for c in range(0x3100)] + [" ", "\n", "\t", "\x1c", "\u2028", "\xa0", "\u3000"] * 40
    for _ in range(3000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30))).replace("\ud800", "")
        assert normalize_text(s) == old.sub(" ", __import__("unicodedata").normalize("NFKC", s).casefold()).strip()
    assert text_hash(" Caf\u00e9\tAU  lait ") == text_hash("café au lait")


def test_an_even_sample_is_everything_below_the_cap_and_spread_beyond():
    items = _items(1000)
    view = ItemSpool(items).view()
    total = sum(len(it.text.encode()) for it in items)
    assert even_sample(view, total) == list(range(1000)) == even_sample(items, total)
    picked = even_sample(view, total // 10)
    assert 80 <= len(picked) <= 100 and picked == sorted(picked) and picked[-1] > 900
    assert sum(len(items[i].text.encode()) for i in picked) <= total // 10
    assert even_sample(view, total // 10) == picked  # the same sample each time


class _Store:
    """What the ingest steps use of a model store: no version, no ledger, rejects kept."""

    ledger = None

    def __init__(self):
        self.rejects = []

    def chain(self, version=None):
        return []

    def check_ledger(self, chain):
        pass

    def append_rejects(self, rejects, run_id):
        self.rejects += rejects
        return Path("rejects.jsonl")


def _ingest(data: list[str], overrides: list[str] = ()) -> Run:
    config = load_config(None, [*TINY, *overrides])
    registry = Registry.of(default_plugin_manager())
    run = Run("r", FULL_TRAINING, config, Path("unused"), parent=None, writes=False)
    store = _Store()
    ingest.collect_step(run, registry, store, data, None, strict=False)
    ingest.preprocess_step(run, registry, store)
    ingest.dedupe_step(run, ingest.build_dedupers(registry, config), store)
    ingest.holdout_step(run)
    return run


def _near(text: str) -> str:
    i = len(text) // 2
    return text[:i] + ("x" if text[i] != "x" else "y") + text[i + 1:]


def test_duplicates_across_batches_are_skipped_as_within_one(tmp_path, monkeypatch, old_texts):
    texts = [t for t in old_texts if len(t) > 200][:40]
    rng = random.Random(1)
    stream = list(texts)
    for i in range(25):  # copies (case and spacing changed) and near-copies, far and near their first
        t = rng.choice(texts)
        stream.insert(rng.randrange(len(stream) + 1), t.upper().replace(" ", "  ") if i % 2 else _near(t))
    data = [str(write_jsonl(tmp_path / "d.jsonl", stream))]
    settings = ["dedupers=[exact, minhash]"]
    whole = _ingest(data, settings)
    monkeypatch.setattr(spools, "BATCH_ITEMS", 3)
    monkeypatch.setattr(spools, "SPOOL_MEMORY", 1024)
    batched = _ingest(data, settings)
    assert whole.counts["duplicates"] > 10 and {s["kind"] for s in whole.skipped} == {"batch"}
    key = lambda s: (s["origin"], s["deduper"], s["reason"], s.get("matched"))  # noqa: E731
    assert sorted(map(key, batched.skipped)) == sorted(map(key, whole.skipped))
    assert batched.counts == whole.counts
    assert list(batched.items) == list(whole.items) and batched.holdout == whole.holdout
    assert batched.items.spool.on_disk and not whole.items.spool.on_disk


def test_the_held_out_items_are_those_split_holdout_picks(tmp_path, monkeypatch):
    items = _items(500)
    data = [str(write_jsonl(tmp_path / "d.jsonl", [it.text for it in items]))]
    monkeypatch.setattr(spools, "BATCH_ITEMS", 64)
    run = _ingest(data, ["validation.retention_fraction=0.05", "validation.retention_max=200"])
    collected = [Item(it.text.strip(), "jsonl", data[0], it.line) for it in items]  # as cleaned
    train, held = ingest.split_holdout(collected, 0.05, 200, run.config.seed)
    assert [it.text for it in run.holdout] == [it.text for it in held] and len(held) == 25
    assert [it.text for it in run.items] == [it.text for it in train] and len(train) == 475
    # pinned: what split_holdout held out of 100 items with seed 0 before batches (fb3d0e4)
    assert ingest.holdout_positions(100, 0.1, 200, 0) == [5, 33, 38, 49, 51, 53, 61, 62, 65, 97]


def _peak_ingesting(path: Path) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run = _ingest([str(path)])
        assert run.counts["new"] > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ingest_memory_is_bounded_by_the_batch_not_the_corpus(tmp_path, monkeypatch):
    """10x the items: the peak grows by the per-item arrays (offsets, hashes, positions: about
    100 bytes an item), not by the items (hundreds of bytes each, held in lists before)."""
    monkeypatch.setattr(spools, "BATCH_ITEMS", 2048)
    monkeypatch.setattr(spools, "SPOOL_MEMORY", 1 << 20)
    sizes = {}
    for n in (10_000, 100_000):
        path = write_jsonl(tmp_path / f"{n}.jsonl", (f"[{i}] " + "words of a line " * 6 for i in range(n)))
        sizes[n] = _peak_ingesting(path)
    per_item = (sizes[100_000] - sizes[10_000]) / 90_000
    assert per_item < 128, f"the peak grew {per_item:.0f} bytes an item ({sizes})"
    assert sizes[100_000] < 2.5 * sizes[10_000], sizes


def test_a_failed_run_leaves_no_spool(tmp_path, monkeypatch, old_texts):
    made = []
    original = ItemSpool.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ItemSpool, "__init__", record)
    monkeypatch.setattr(spools, "SPOOL_MEMORY", 512)  # on disk at once
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    data = write_jsonl(tmp_path / "d.jsonl", old_texts[:40])

    def fail(*args, **kwargs):
        raise RuntimeError("the tokenizer broke")

    monkeypatch.setattr("retain.core.storage.models.create_model", fail)
    with pytest.raises((RuntimeError, RetainError)):
        Engine(load_config(None, TINY)).train([str(data)], tmp_path / "model")
    assert made and all(s.on_disk for s in made)
    assert all(s._file.closed for s in made)
    assert list(scratch.iterdir()) == [] and not (tmp_path / "model").exists()


def test_clean_skips_only_texts_that_cleaning_leaves_as_they_are():
    """The preprocessor's one-search shortcut gives what the full cleaning gives, on texts of
    every kind of whitespace, control character and Unicode form."""
    from retain.plugins.preprocessors import Clean, CleanOptions, clean_text

    clean = Clean(CleanOptions())
    pool = list("ab c\u00e9") + ["e\u0301", "\n", "\n\n", "\r", "\r\n", "\t", "  ", "\x00", "\x0b", "\x0c", "\x1c",
                                 "\x7f", "\x85", "\xa0", "\u2028", "\u3000", "\ufb01", "\u212b", " "]
    rng = random.Random(2)
    shortcut = 0
    for _ in range(20_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        out = clean(Item(text))
        expected = clean_text(text)
        assert (out.text if isinstance(out, Item) else "") == expected, repr(text)
        shortcut += expected == text
    assert shortcut > 100  # both ways were taken


@pytest.mark.parametrize("sample_mb", [64, 0.002])
def test_the_tokenizer_learns_from_every_item_below_the_sample_cap(tmp_path, monkeypatch, old_texts, sample_mb):
    """Below ``full_training.tokenizer_sample_mb`` a new tokenizer is trained on every trained
    item's text, in order, as before the spool; above it on an even sample of at most the cap."""
    seen = []

    def create(registry, config, texts, context):
        assert not isinstance(texts, list)  # read from the spool as it is iterated, not held as strings
        seen.append(list(texts))
        raise RuntimeError("stop here")

    monkeypatch.setattr("retain.core.storage.models.create_model", create)
    data = write_jsonl(tmp_path / "d.jsonl", old_texts)
    with pytest.raises(RuntimeError, match="stop here"):
        Engine(load_config(None, [*TINY, f"full_training.tokenizer_sample_mb={sample_mb}"])).train(
            [str(data)], tmp_path / "model")
    run = _ingest([str(data)])
    trained = [it.text for it in run.items]
    if sample_mb == 64:
        assert seen == [trained]
    else:
        assert 0 < len(seen[0]) < len(trained) and sum(len(t.encode()) for t in seen[0]) <= 2000
        positions = [trained.index(t) for t in seen[0]]
        assert positions == sorted(positions) and positions[-1] > len(trained) * 0.8  # spread over all


def test_the_measured_stage_result_keeps_the_items_on_disk(tmp_path, old_texts):
    """``measure``'s result (what a search's trials go on from) holds the run's view, not a tuple
    of every item: at 1 GB that tuple was 2.5 GB of the run's peak."""
    run = _ingest([str(write_jsonl(tmp_path / "d.jsonl", old_texts))])
    measured = run.measured()
    assert measured.items is run.items and len(measured.to_json()["items"]) == len(run.items)
    other = Run("o", FULL_TRAINING, run.config, Path("unused"), parent=None, writes=False)
    other.take(measured)
    assert other.items is run.items
