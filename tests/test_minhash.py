"""The minhash deduper: near-duplicates of items learned in earlier runs, of held-out
items (contamination), and within a batch; its index lives in ledger.sqlite and obeys
the chain rule."""

from __future__ import annotations

import pytest

from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import ConfigError
from retain.core.items import Item
from retain.core.known import KnownItems
from retain.core.nearindex import NearDuplicateIndex, Spec
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.store import ModelStore
from retain.plugins.dedupers import MinhashDeduper, MinhashOptions

from conftest import TINY, write_jsonl

MINHASH = [*TINY, "fine_tuning.epochs=1", "dedupers=[exact, minhash]"]


def typo(text: str) -> str:
    """A near-duplicate: one letter changed in the middle (Jaccard of char 5-grams > 0.95)."""
    i = len(text) // 2
    return text[:i] + ("x" if text[i] != "x" else "y") + text[i + 1:]


@pytest.fixture
def long_texts(new_texts):
    from retain.demo import docstring_paragraphs

    texts = [t for t in docstring_paragraphs() if len(t) >= 250 and t not in new_texts]
    assert len(texts) >= 30
    return texts


def test_near_duplicates_of_learned_and_held_out_items_are_skipped_next_run(base_model, long_texts, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", long_texts[:30])
    r1 = Engine(load_config(None, MINHASH)).update([str(first)], base_model)
    assert r1["version"] == "0002" and r1["counts"]["holdout"] >= 2
    store = ModelStore(base_model)
    held_hashes = {h["hash"] for h in store.read_jsonl("0002", "holdout.jsonl")}
    held = [t for t in long_texts[:30] if Item(t).hash in held_hashes]
    learned = [t for t in long_texts[:30] if Item(t).hash not in held_hashes]
    line_of = {t: i for i, t in enumerate(long_texts[:30], 1)}

    # A later run (fresh engine, nothing in memory): variants of 4 learned and 2 held-out items.
    batch = [typo(t) for t in learned[:4] + held[:2]]
    r2 = Engine(load_config(None, MINHASH)).update([str(write_jsonl(tmp_path / "b.jsonl", batch))],
                                                    base_model)
    assert r2["status"] == "nothing_new"  # nothing was trained on
    assert r2["counts"]["duplicates"] == 6
    assert r2["counts"]["contaminating"] == 2
    by_origin = {s["origin"]: s for s in r2["skipped"]}
    for n, original in enumerate(learned[:4] + held[:2], 1):
        entry = by_origin[f"{tmp_path / 'b.jsonl'}:{n}"]
        assert entry["deduper"] == "minhash"
        assert entry["version"] == "0002"
        assert entry["matched"] == f"{first}:{line_of[original]}"
        assert entry["matched_hash"] == Item(original).hash
        assert entry["kind"] == ("holdout" if n > 4 else "learned")


def test_exact_copy_of_a_held_out_item_counts_as_contaminating(base_model, tmp_path):
    store = ModelStore(base_model)
    held = store.read_jsonl("0001", "holdout.jsonl")  # retention items of the base model
    report = Engine(load_config(None, TINY)).update(
        [str(write_jsonl(tmp_path / "c.jsonl", [held[0]["text"], held[1]["text"].upper()]))], base_model)
    assert report["counts"]["contaminating"] == 2
    assert {s["kind"] for s in report["skipped"]} == {"holdout"}
    assert all("held out by version 0001" in s["reason"] for s in report["skipped"])


def test_near_duplicates_within_one_batch(long_texts):
    items = [Item(long_texts[0], file="n", line=1), Item(long_texts[1], file="n", line=2),
             Item(typo(long_texts[0]), file="n", line=3), Item(long_texts[2], file="n", line=4),
             Item(typo(typo(long_texts[1])), file="n", line=5)]
    dupes = MinhashDeduper(MinhashOptions()).find_duplicates(items, KnownItems(None, []))
    assert sorted(dupes) == [2, 4]
    assert dupes[2].details["matched"] == "n:1" and dupes[2].details["similarity"] >= 0.8
    assert dupes[4].details["matched"] == "n:2"


def _index_with(store: ModelStore, version: str, texts: list[str], spec: Spec) -> None:
    NearDuplicateIndex(store.ledger, spec).remember(version, [(Item(t).hash, t) for t in texts])
    store.ledger.add(version, [(Item(t).hash, "train", "test", f"t:{i}") for i, t in enumerate(texts)])


def test_index_rows_count_only_for_versions_in_the_chain(base_model, long_texts):
    store = ModelStore(base_model)
    deduper = MinhashDeduper(MinhashOptions())
    _index_with(store, "0007", long_texts[:3], deduper.spec)  # a version that never became current
    items = [Item(typo(t)) for t in long_texts[:3]]
    assert deduper.find_duplicates(items, KnownItems(store.ledger, ["0001"])) == {}
    found = deduper.find_duplicates(items, KnownItems(store.ledger, ["0007", "0001"]))
    assert sorted(found) == [0, 1, 2]
    # 0007 has no version directory: recover() drops its rows from the ledger and the index.
    store.recover()
    index = NearDuplicateIndex(store.ledger, deduper.spec)
    assert index.count("0007") == 0
    assert store.ledger.find([Item(t).hash for t in long_texts[:3]], ["0007"]) == {}


def test_items_indexed_under_other_options_are_still_found(base_model, long_texts):
    store = ModelStore(base_model)
    old = MinhashDeduper(MinhashOptions(shingle="word", shingle_size=3, num_perm=64))
    _index_with(store, "0001", long_texts[:2], old.spec)
    new = MinhashDeduper(MinhashOptions(threshold=0.7))
    found = new.find_duplicates([Item(long_texts[1]), Item(long_texts[5])], KnownItems(store.ledger, ["0001"]))
    assert list(found) == [0] and found[0].details["matched_hash"] == Item(long_texts[1]).hash


@pytest.mark.parametrize("bad", ["options.minhash.threshold=1.5", "options.minhash.num_perm=-3",
                                 "options.minhash.shingle_size=0", "options.minhash.shingle=line",
                                 "options.minhash.threshold=fast"])
def test_bad_minhash_options_are_config_errors(bad):
    with pytest.raises(ConfigError, match="options.minhash"):
        Registry(make_plugin_manager()).check_config(load_config(None, [*MINHASH, bad]))
