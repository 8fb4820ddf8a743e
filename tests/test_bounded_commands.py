"""Bounded memory beyond ingest and training (issue 24, item 4): the commands that read a
corpus's items read them a batch at a time, and hold a few bytes an item at most, not the
items. Each test measures the Python heap's peak (tracemalloc) at two corpus sizes."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from retain.core.config import load_config
from retain.core.data import spool
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

WORDS = ["".join(chr(97 + (i * 7 + j * 13) % 26) for j in range(3 + i % 6)) + str(i) for i in range(5000)]


def _texts(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of 24 random words."""
    rng = random.Random(seed)
    return [f"[{i}] " + " ".join(rng.choice(WORDS) for _ in range(24)) for i in range(n)]


def _peak(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 250 items: a few thousand items are many batches."""
    monkeypatch.setattr(spool, "BATCH_ITEMS", 250)
    monkeypatch.setattr(spool, "READ_ITEMS", 250)
    monkeypatch.setattr(spool, "SPOOL_MEMORY", 1 << 16)


def test_status_data_counts_tokens_a_batch_at_a_time(base_model, tmp_path, small_batches):
    """``retain status --data`` counts the pending items' tokens and bytes: before, a tuple of
    every item, a list of every text and one encoding of them all (2.2 KB an item here). Now
    its peak grows with the items as its ingest's does (``cycle.plan``), no more."""
    from retain.cli.versions import _pending_items
    from retain.core import cycle
    from retain.core.engine import Engine
    from retain.core.storage.models import content_tokens, load_version

    store, config = ModelStore(base_model, read_only=True), load_config(None, TINY)
    setup = Engine(config, allow_empty=True).setup
    peaks, ingest, pending = {}, {}, {}
    for n in (20, 1000, 4000):  # the first: the imports and the model's load are not the items'
        data = [str(write_jsonl(tmp_path / f"{n}.jsonl", _texts(n)))]
        ingest[n] = _peak(lambda: cycle.plan(setup, data, store))
        peaks[n] = _peak(lambda: pending.update({n: _pending_items(data, store, config)}))
    lm = load_version(store).lm
    texts = _texts(1000)
    assert pending[1000] == (1000, {"tokens": content_tokens(lm.encode(texts, lm.context), 1000),
                                    "bytes": sum(len(t.encode()) for t in texts)})  # as in one encoding
    per_item = (peaks[4000] - peaks[1000] - (ingest[4000] - ingest[1000])) / 3000
    assert per_item < 64, f"the peak grew {per_item:.0f} bytes an item beyond ingest's ({peaks}, {ingest})"
