"""Token shards (core/data/shards.py): the rows a run trains on, on disk, kept with the version.

A round trip gives the rows a family's ``encode`` gives; batches are the length-bucketed ones
of before; each version keeps its chain's shards by hard link and replay draws from all of
them; held-out items never enter a shard; a kill mid-tokenize leaves no shard any version
references."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.data.items import text_hash
from retain.core.storage.models import load_version
from retain.core.data.shards import SHARDS, History, ShardWriter, encode_to_shard, ids_of
from retain.core.storage.store import ModelStore
from retain.core.learning.training import LengthBatches

from conftest import TINY, write_jsonl


def _texts(old_texts) -> list[str]:
    long = " ".join(old_texts[:40])  # several windows of 32 tokens: split, never cut
    return [*old_texts[:30], long, "x", *old_texts[30:60]]


def test_shard_round_trip_gives_the_rows_of_encode(base_model, old_texts, tmp_path):
    lm = load_version(ModelStore(base_model)).lm
    texts = _texts(old_texts)
    for max_len in (32, 512):
        expected = lm.encode(texts, max_len)
        rows = encode_to_shard(lm, iter(texts), max_len, tmp_path / f"scratch-{max_len}")
        assert rows.shard.tokens.dtype == np.uint16  # a 2,048-token vocabulary
        got = rows.in_memory()
        width = expected.x.size(1)
        assert torch.equal(got.x[:, :width], expected.x) and torch.equal(got.y[:, :width], expected.y)
        assert torch.equal(got.owner, expected.owner)
        assert rows.tokens == expected.tokens and torch.equal(rows.lengths(), torch.tensor(expected.lengths()))
        assert max(expected.owner.bincount().tolist()) > 1 or max_len == 512  # the long text split
        # What training reads: each row padded to the training width, from the map.
        data = rows.dataset(max_len)
        for r in range(len(rows)):
            x, y, _ = data[r]
            n = int((expected.y[r] != -100).sum())
            assert torch.equal(x[:n], expected.x[r, :n]) and torch.equal(y[:n], expected.y[r, :n])
            assert bool((y[n:] == -100).all())


def test_ids_read_back_from_rows_when_a_family_has_no_encode_ids(base_model, old_texts):
    lm = load_version(ModelStore(base_model)).lm

    class NoIds:  # a family with encode only
        pad_id = lm.pad_id

        def encode(self, texts, max_len):
            return lm.encode(texts, max_len)

    texts = _texts(old_texts)
    assert [list(i) for i in ids_of(NoIds(), texts)] == [list(i) for i in lm.encode_ids(texts)]


def test_an_id_past_uint16_widens_the_shard_to_uint32(tmp_path):
    writer = ShardWriter(tmp_path, "s")
    writer.add([[1, 2, 3], [4]])
    writer.add([[70_000, 5]])
    shard = writer.close()
    assert shard.tokens.dtype == np.uint32 and not (tmp_path / "s.uint16").exists()
    assert [shard.ids(i).tolist() for i in range(len(shard))] == [[1, 2, 3], [4], [70_000, 5]]


def _old_length_batches(lengths, batch_size, seed, window=50):
    """LengthBatches as it was before shards (lists), to check the order did not change."""
    generator = torch.Generator().manual_seed(seed)
    rows = list(range(len(lengths)))
    order = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
    batches = []
    for start in range(0, len(order), batch_size * window):
        chunk = sorted(order[start:start + batch_size * window], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def test_length_batches_are_those_of_before_and_follow_the_seed():
    lengths = torch.randint(1, 60, (1234,), generator=torch.Generator().manual_seed(3)).tolist()
    for seed in (0, 7):
        new = LengthBatches(torch.tensor(lengths), 8, seed)
        assert list(new) == _old_length_batches(lengths, 8, seed)
        assert list(LengthBatches(lengths, 8, seed)) == list(LengthBatches(torch.tensor(lengths), 8, seed))
    assert len(LengthBatches(lengths, 8, 0)) == len(_old_length_batches(lengths, 8, 0))
    assert sorted(r for b in LengthBatches(lengths, 8, 0) for r in b) == list(range(1234))


def _update(model_dir, texts, path, *extra):
    return Engine(load_config(None, [*TINY, *extra])).update([str(write_jsonl(path, texts))], model_dir)


def test_replay_draws_from_three_earlier_versions_shards(base_model, new_texts, tmp_path):
    _update(base_model, new_texts[:20], tmp_path / "a.jsonl")
    _update(base_model, new_texts[20:40], tmp_path / "b.jsonl")
    store = ModelStore(base_model)
    assert store.chain() == ["0003", "0002", "0001"]
    files = store.manifest("0003")["files"]
    assert {f"{SHARDS}/{v}.uint16" for v in ("0001", "0002", "0003")} <= set(files)
    # The chain's shards are the earlier versions' files, hard-linked, not copies.
    for v in ("0001", "0002"):
        mine = os.stat(store.versions_dir / "0003" / SHARDS / f"{v}.uint16")
        theirs = os.stat(store.versions_dir / v / SHARDS / f"{v}.uint16")
        assert (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
    history = History.of(store, "0003")
    assert [v for v, _ in history.shards] == ["0001", "0002", "0003"]
    drawn = history.draw(math.inf, 32, 1, torch.Generator().manual_seed(0))
    assert set(drawn.versions()) == {"0001", "0002", "0003"}
    assert sum(drawn.lengths().tolist()) == sum(int(s.lengths.clip(min=1).sum()) - len(s) for _, s in history.shards)
    some = history.draw(200, 32, 1, torch.Generator().manual_seed(0))
    assert 200 <= sum(some.lengths().tolist()) < 200 + 32 * 8
    again = history.draw(200, 32, 1, torch.Generator().manual_seed(0))
    assert again.places == some.places  # reproducible from the seed
    # Capped (options.replay.base_share): the full training's shard gives at most that share of the
    # tokens, the updates' the rest; uniform, the base's part follows its size (~87% here).
    def base_part(drawn) -> float:
        lengths = drawn.lengths().tolist()
        return sum(n for n, v in zip(lengths, drawn.versions()) if v == "0001") / sum(lengths)

    uniform = history.draw(4000, 32, 1, torch.Generator().manual_seed(0))
    assert base_part(uniform) > 0.6
    for share in (0.2, 0.5):
        part = base_part(history.draw(4000, 32, 1, torch.Generator().manual_seed(0), "0001", share))
        assert abs(part - share) < 0.15, (share, part)
    above = history.draw(4000, 32, 1, torch.Generator().manual_seed(0), "0001", 0.95)
    assert above.places == uniform.places  # a cap above the base's part changes nothing
    updates_tokens = sum(int(s.lengths.clip(min=1).sum()) - len(s) for v, s in history.shards if v != "0001")
    none_left = history.draw(updates_tokens * 3, 32, 1, torch.Generator().manual_seed(0), "0001", 0.0)
    assert 0 < base_part(none_left) < 1  # the updates ran out: the base fills the rest
    # An update with replay draws from all of them.
    report = _update(base_model, new_texts[40:60], tmp_path / "c.jsonl")
    assert report["version"] == "0004" and report["counts"]["replay_tokens"] > 0
    assert {f"{SHARDS}/{v}.uint16" for v in ("0001", "0002", "0003", "0004")} <= set(store.manifest("0004")["files"])


def test_held_out_items_never_enter_a_shard(base_model, new_texts, tmp_path):
    report = _update(base_model, new_texts[:30], tmp_path / "a.jsonl", "preprocessors=[]")  # texts as given
    store = ModelStore(base_model)
    loaded = load_version(store, report["version"])
    shard = dict(History.of(store, report["version"]).shards)[report["version"]]
    assert len(shard) == report["counts"]["trained"]
    in_shard = {tuple(shard.ids(i).tolist()) for i in range(len(shard))}
    held = [r["text"] for r in store.read_jsonl(report["version"], "holdout.jsonl")]
    assert held
    assert not in_shard & {tuple(i) for i in loaded.lm.encode_ids(held)}
    trained = [t for t in new_texts[:30] if text_hash(t) not in {text_hash(h) for h in held}]
    assert in_shard == {tuple(i) for i in loaded.lm.encode_ids(trained)}


def test_kill_during_tokenize_leaves_no_half_shard_in_a_version(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:30])
    args = [sys.executable, "-m", "retain", "update", "--data", str(data), "--model", str(base_model), "--quiet"]
    for key_value in TINY:
        args += ["--set", key_value]
    env = {**os.environ, "RETAIN_FAULT_AT": "shard-chunk"}
    killed = subprocess.run(args, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    store = ModelStore(base_model)
    left = [p.name for p in store.versions_dir.iterdir() if p.name.startswith(".tmp-shards-")]
    assert left  # the half shard, in a scratch folder no version names
    assert store.current() == "0001" and store.versions() == ["0001"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".tmp-")]
    for version in store.versions():
        for name, shard in History.of(store, version).shards:  # every file checked against its checksum
            assert shard.offsets[-1] == len(shard.tokens)


def test_a_lineage_whose_base_kept_no_shard_replays_its_reservoir(tmp_path):
    """A model trained before versions kept shards: its updates' shards hold only the latest items,
    so replay keeps drawing from the reservoir (which reaches back to the base data)."""
    from types import SimpleNamespace

    from retain.strategies.replay import Replay

    writer = ShardWriter(tmp_path, "0002")
    writer.add([[1, 2, 3]])
    writer.close()

    class Store:  # version 0002, an update, on a base 0001 saved before shards
        base_tokens = 100

        def manifest(self, version):
            return {"files": {f"{SHARDS}/0002.uint16": "x", f"{SHARDS}/0002.offsets": "x"}}

        def verified_path(self, version, rel, manifest=None):
            return tmp_path / rel.split("/", 1)[1]

        def chain(self, version):
            return ["0002", "0001"]

        def lineage_root(self, chain):
            return "0001"

        def summary(self, version):
            return {"counts": {"tokens": self.base_tokens}}

    store = Store()
    run = SimpleNamespace(base=SimpleNamespace(reader=SimpleNamespace(store=store), version="0002"))
    assert Replay.history(run) is None
    store.base_tokens = 0  # an import without base data: the updates' shards are the whole history
    assert [v for v, _ in Replay.history(run).shards] == ["0002"]
