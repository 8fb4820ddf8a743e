"""A year of daily versions must not make each update slower: counted, never timed. The
chain is made long cheaply by cloning a real update's version (its files hard-linked, its
manifest naming the previous clone as parent), so an update runs on a chain of 12 or 42."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import ModelError, UpdateRejected
from retain.core.storage.versions import apply_prune, plan_prune
from retain.core.storage.store import MANIFEST, ModelStore

from conftest import TINY, private_copy, write_jsonl

# The gate never rejects here (a rejected version would not lengthen the chain).
LENIENT = [*TINY, "options.retention.max_increase=10", "options.retention.max_items_worse=1",
           "options.learning.min_drop=-10", "options.loss_trend.tolerance=10",
           "options.generation.max_repetition=1", "options.generation.max_empty=1"]


@pytest.fixture(scope="module")
def _one_update(tmp_path_factory, _base_model, new_texts) -> Path:
    root = tmp_path_factory.mktemp("one-update")
    model = private_copy(_base_model, root)
    Engine(load_config(None, LENIENT)).update([str(write_jsonl(root / "day.jsonl", new_texts[:12]))], model)
    assert ModelStore(model).chain() == ["0002", "0001"]
    return model


def stretch(model: Path, length: int) -> None:
    """Clone version 0002 into 0003..``length``, each the parent of the next, each with ledger
    rows of its own; CURRENT names the last."""
    store = ModelStore(model)
    source = store.versions_dir / "0002"
    manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    for n in range(3, length + 1):
        name = f"{n:04d}"
        target = store.versions_dir / name
        shutil.copytree(source, target, copy_function=os.link)
        (target / MANIFEST).unlink()  # a new file, not the linked one
        (target / MANIFEST).write_text(json.dumps({**manifest, "parent": f"{n - 1:04d}", "version": name},
                                                  indent=2, sort_keys=True), encoding="utf-8")
        store.ledger.add(name, [(hashlib.sha256(f"{name}-{i}".encode()).hexdigest(), "train", "x", "x")
                                for i in range(5)])
    store.ledger.close()
    store.set_current(f"{length:04d}")


def counted_update(model: Path, data: Path, monkeypatch) -> tuple[collections.Counter, collections.Counter]:
    """(manifest lookups per version, manifest parses per version) of one update with the
    keep policy on."""
    lookups, parses = collections.Counter(), collections.Counter()
    lookup, parse = ModelStore.manifest, ModelStore._read_manifest

    def counting_lookup(self, version):
        lookups[version] += 1
        return lookup(self, version)

    def counting_parse(self, version, path):
        parses[version] += 1
        return parse(self, version, path)

    with monkeypatch.context() as m:
        m.setattr(ModelStore, "manifest", counting_lookup)
        m.setattr(ModelStore, "_read_manifest", counting_parse)
        try:
            Engine(load_config(None, [*LENIENT, "prune.keep_last=3"])).update([str(data)], model, advise=True)
        except UpdateRejected:
            pytest.fail("the lenient gate rejected the update: the chain did not grow")
    return lookups, parses


def test_an_update_reads_each_manifest_once_however_long_the_chain(_one_update, new_texts, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[20:32])
    counts = {}
    for length in (12, 42):
        model = shutil.copytree(_one_update, tmp_path / f"at-{length}")
        stretch(model, length)
        counts[length] = counted_update(model, data, monkeypatch)
        assert ModelStore(model).chain()[:2] == [f"{length + 1:04d}", f"{length:04d}"]
    for length, (lookups, parses) in counts.items():
        # The clones are new to the index: each is parsed once (a stub the keep policy
        # rewrote, twice), and so is the new version.
        assert all(n <= 2 for n in parses.values()), parses
        assert set(f"{n:04d}" for n in range(3, length + 2)) <= set(parses)
    # A version deep in the chain is looked up as often at 42 versions as at 12: a step that
    # walked the chain once per version it keeps (or per kept version) would look it up more.
    deep12, deep42 = counts[12][0]["0005"], counts[42][0]["0005"]
    assert deep42 == deep12
    assert max(counts[42][0].values()) == max(counts[12][0].values())
    assert deep12 <= 9


def test_the_next_update_reads_as_many_manifests_at_42_versions_as_at_12(_one_update, new_texts, tmp_path,
                                                                           monkeypatch):
    """The update before wrote each version's summary (parent, kind, status, counts) to the
    index: the steps that look at every version read those, and the manifests parsed are
    those of the versions the update uses (its parent, the lineage root, the new version)."""
    first, second = (write_jsonl(tmp_path / f"day{d}.jsonl", new_texts[a:a + 12]) for d, a in ((1, 20), (2, 32)))
    parsed = {}
    for length in (12, 42):
        model = shutil.copytree(_one_update, tmp_path / f"at-{length}")
        stretch(model, length)
        counted_update(model, first, monkeypatch)
        assert (model / "versions" / ".index.json").is_file()
        lookups, parses = counted_update(model, second, monkeypatch)
        assert ModelStore(model).chain()[0] == f"{length + 2:04d}"
        parsed[length] = parses
        assert "0005" not in parses and "0005" not in lookups, (parses, lookups)
    assert sum(parsed[42].values()) == sum(parsed[12].values()) <= 8, parsed


def test_the_index_is_a_cache_the_manifests_overrule(_one_update, tmp_path):
    model = shutil.copytree(_one_update, tmp_path / "model")
    stretch(model, 6)
    store = ModelStore(model)
    assert store.summary("0004")["status"] == "accepted"
    store.save_index()
    index = model / "versions" / ".index.json"
    assert "0004" in json.loads(index.read_text(encoding="utf-8"))["versions"]
    # A manifest rewritten since (another size, another time) is read again, not the summary.
    path = store.versions_dir / "0004" / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**manifest, "status": "rejected"}), encoding="utf-8")
    assert ModelStore(model).summary("0004")["status"] == "rejected"
    # An entry missing a field (another retain's index) is read again from the manifest.
    data = json.loads(index.read_text(encoding="utf-8"))
    del data["versions"]["0003"][2]["states"]
    index.write_text(json.dumps(data), encoding="utf-8")
    assert ModelStore(model).summary("0003")["states"] == store.summary("0003")["states"]
    # A broken index is ignored (and written anew by the next writer), never an error.
    index.write_text("{not json", encoding="utf-8")
    fresh = ModelStore(model)
    assert fresh.chain() == [f"{n:04d}" for n in range(6, 0, -1)]
    fresh.save_index()
    assert set(json.loads(index.read_text(encoding="utf-8"))["versions"]) == {f"{n:04d}" for n in range(1, 7)}
    # A write of it cut short is tidied like an unfinished version.
    stray = store.versions_dir / ".tmp-index-999.json"
    stray.write_text("{", encoding="utf-8")
    ModelStore(model).recover()
    assert not stray.exists() and store.versions() == [f"{n:04d}" for n in range(1, 7)]


def test_history_and_status_read_each_manifest_once(_one_update, tmp_path, monkeypatch):
    from retain.core.storage.versions import history
    from retain.core.quality.retrain import assess

    model = shutil.copytree(_one_update, tmp_path / "model")
    stretch(model, 30)
    for name, read in (("history", lambda s: history(s)),
                       ("status", lambda s: assess(s, load_config(None, LENIENT), device="cpu"))):
        lookups, parses = collections.Counter(), collections.Counter()
        lookup, parse = ModelStore.manifest, ModelStore._read_manifest
        with monkeypatch.context() as m:
            m.setattr(ModelStore, "manifest", lambda self, v: lookups.update([v]) or lookup(self, v))
            m.setattr(ModelStore, "_read_manifest", lambda self, v, p: parses.update([v]) or parse(self, v, p))
            read(ModelStore(model))
        assert set(parses.values()) == {1}, (name, parses)
        # history shows every version; status reads the versions' summaries (the one the
        # update before indexed, 0002, comes from the index)
        assert len(parses) == (30 if name == "history" else 29), (name, parses)
        assert lookups["0005"] <= (2 if name == "history" else 5), (name, lookups)


def test_the_chain_is_walked_once_per_store_and_again_after_a_prune_deletes(_one_update, tmp_path, monkeypatch):
    model = shutil.copytree(_one_update, tmp_path / "model")
    stretch(model, 20)
    store = ModelStore(model)
    assert store.chain() == [f"{n:04d}" for n in range(20, 0, -1)]
    walked = []
    monkeypatch.setattr(store, "manifest", lambda v: walked.append(v) or ModelStore.manifest(store, v))
    assert store.chain("0015") == [f"{n:04d}" for n in range(15, 0, -1)]
    assert walked == []  # a suffix of the walk already made
    # A branch (as after a rollback and an update) walks only its own new versions.
    branch = store.versions_dir / "0021"
    shutil.copytree(store.versions_dir / "0002", branch, copy_function=os.link)
    (branch / MANIFEST).unlink()
    manifest = json.loads((store.versions_dir / "0002" / MANIFEST).read_text(encoding="utf-8"))
    (branch / MANIFEST).write_text(json.dumps({**manifest, "parent": "0010", "version": "0021"}), encoding="utf-8")
    assert store.chain("0021") == ["0021", *[f"{n:04d}" for n in range(10, 0, -1)]]
    assert walked == ["0021"]
    # Deleting versions forgets the walks: a deleted version's chain is an error, not a memory.
    monkeypatch.undo()
    store.set_current("0021")
    plan = plan_prune(store, keep_last=1)
    assert "0015" in plan.delete and "0010" in plan.stub and "0021" in plan.keep
    apply_prune(store, plan)
    assert store.chain() == ["0021", *[f"{n:04d}" for n in range(10, 0, -1)]]
    with pytest.raises(ModelError, match="missing"):
        store.chain("0015")


def test_prune_plans_the_same_as_walking_every_kept_chain(_one_update, tmp_path):
    """The single pass over the kept chains keeps, stubs and deletes what a walk of each would."""
    model = shutil.copytree(_one_update, tmp_path / "model")
    stretch(model, 14)
    store = ModelStore(model)
    for name, parent in (("0015", "0006"), ("0016", "0015")):  # a branch off 0006
        target = store.versions_dir / name
        shutil.copytree(store.versions_dir / "0002", target, copy_function=os.link)
        (target / MANIFEST).unlink()
        manifest = json.loads((store.versions_dir / "0002" / MANIFEST).read_text(encoding="utf-8"))
        (target / MANIFEST).write_text(json.dumps({**manifest, "parent": parent, "version": name}), encoding="utf-8")
    store.set_current("0016")
    for keep_last in (1, 2, 4, 20):
        for full in (False, True):
            plan = plan_prune(store, keep_last, full)
            accepted = [v for v in store.versions() if store.manifest(v).get("status") == "accepted"]
            on_chain = [v for v in ModelStore(model).chain("0016") if v in accepted]  # 0007-0014: a side branch
            keep = set(on_chain[:keep_last]) | {"0016"} | ({"0001"} if full else set())
            needed = {v for k in keep for v in ModelStore(model).chain(k)}
            assert set(plan.keep) == keep
            assert set(plan.stub) == needed - keep
            assert set(plan.delete) == set(store.versions()) - needed
