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
from retain.core.runtime.preload import Preload
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

WORDS = ["".join(chr(97 + (i * 7 + j * 13) % 26) for j in range(3 + i % 6)) + str(i) for i in range(5000)]


def _texts(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of 24 random words."""
    rng = random.Random(seed)
    return [f"[{i}] " + " ".join(rng.choice(WORDS) for _ in range(24)) for i in range(n)]


def _peak(fn) -> int:
    # The training stack imported first, and no earlier test's background import still going:
    # its allocations would count in this peak (core/runtime/preload.py).
    Preload().wait()
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 250 items, 64 KB read at once: a few thousand items are many batches."""
    monkeypatch.setattr(spool, "BATCH_ITEMS", 250)
    monkeypatch.setattr(spool, "READ_ITEMS", 250)
    monkeypatch.setattr(spool, "SPOOL_MEMORY", 1 << 16)
    monkeypatch.setattr(spool, "READ_CHUNK", 1 << 16)


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


def test_a_search_sends_a_corpus_to_its_trials_as_a_file(tmp_path, small_batches):
    """``--auto`` sends each trial the stage result it goes on from (``Measured.to_json``): a
    list of every item before, as dicts, in the search and again in every trial. Items a spool
    holds on disk now go as a file of records, read back into the trial's own spool."""
    from retain.core.data.items import Item
    from retain.core.data.spool import ItemSpool
    from retain.core.run import Measured

    def corpus(n: int) -> ItemSpool:
        spool = ItemSpool()
        for start in range(0, n, 250):
            spool.extend(Item(t, "jsonl", "/d.jsonl", start + i + 1, {"id": start + i} if i % 2 else {})
                         for i, t in enumerate(_texts(min(250, n - start), seed=start)))
        return spool

    sent, read = {}, {}
    for n in (20, 1000, 4000):  # the first: the imports are not the items'
        view = corpus(n).view()
        measured = Measured(view, (Item("held out"),), {"new": n}, ("old",), ("held out",), None, None)
        folder = tmp_path / str(n)
        folder.mkdir()
        spec, back = {}, []
        sent[n] = _peak(lambda: spec.update(measured.to_json(folder)))
        read[n] = _peak(lambda: back.append(Measured.from_json(spec)))
        assert back[0].holdout == measured.holdout and back[0].counts == {"new": n}
        assert ("items" in spec) == (n == 20)  # 20 items: the spool still in memory
        if n == 1000:
            assert list(back[0].items) == list(view)
            assert [it.meta for it in back[0].items] == [it.meta for it in view]
    for name, peaks in (("to_json", sent), ("from_json", read)):
        per_item = (peaks[4000] - peaks[1000]) / 3000
        assert per_item < 64, f"{name}'s peak grew {per_item:.0f} bytes an item ({peaks})"
    # A day's items (the spool still in memory) are listed, as they always were.
    small = Measured(corpus(5).view(), (), {}, (), (), None, None)
    assert len(small.to_json(tmp_path)["items"]) == 5 and not (tmp_path / "items.records").exists()


@pytest.fixture(scope="module")
def _updated_model(tmp_path_factory, _base_model, new_texts):
    """The base model and an update of it (0002): a version with a parent, to validate."""
    from conftest import private_copy
    from retain.core.engine import Engine

    root = tmp_path_factory.mktemp("updated")
    model = private_copy(_base_model, root)
    Engine(load_config(None, TINY)).update([str(write_jsonl(root / "new.jsonl", new_texts[:40]))], model)
    return model


def test_validate_scores_its_data_a_batch_at_a_time(_updated_model, tmp_path, monkeypatch):
    """``retain validate --data`` judges a version on every usable item of the data: before, a
    list of every item, of every hash and text, and one encoding of them all. Its peak now grows
    as its ingest's does; the result is the one a single batch gives."""
    from retain.core.data import ingest as ingesting
    from retain.core.engine import Engine
    from retain.core.run import FULL_TRAINING, Run
    from retain.core.storage.versions import validate_version

    config = load_config(None, TINY)
    store = ModelStore(_updated_model, read_only=True)

    def validate(data):
        return validate_version(Engine(config), store, None, data)

    def ingest_only(data):
        run = Run("r", FULL_TRAINING, config, tmp_path, parent=None, writes=False)
        ingesting.collect_step(run, Engine(config).registry, store, data, None, strict=False)
        ingesting.preprocess_step(run, Engine(config).registry, store)

    data = {n: [str(write_jsonl(tmp_path / f"{n}.jsonl", _texts(n)))] for n in (20, 1000, 3000)}
    whole = validate(data[1000])  # in one batch (8,192 items)
    monkeypatch.setattr(spool, "BATCH_ITEMS", 250)
    monkeypatch.setattr(spool, "READ_ITEMS", 250)
    monkeypatch.setattr(spool, "SPOOL_MEMORY", 1 << 16)
    monkeypatch.setattr(spool, "READ_CHUNK", 1 << 16)
    peaks, ingest, results = {}, {}, {}
    for n in (20, 1000, 3000):  # the first: the imports and the models' load are not the items'
        ingest[n] = _peak(lambda: ingest_only(data[n]))
        peaks[n] = _peak(lambda: results.update({n: validate(data[n])}))
    batched = results[1000]
    assert batched["items"] == whole["items"] == 1000 and batched["already_learned"] == 0
    # The same verdicts; losses the same but for the last digits (scoring batches of other rows)
    assert [(v["validator"], v["status"]) for v in batched["verdicts"]] == \
        [(v["validator"], v["status"]) for v in whole["verdicts"]] and batched["passed"] == whole["passed"]
    for key, value in whole["metrics"].items():
        assert batched["metrics"][key] == pytest.approx(value, rel=1e-7), key
    per_item = (peaks[3000] - peaks[1000] - (ingest[3000] - ingest[1000])) / 2000
    assert per_item < 64, f"the peak grew {per_item:.0f} bytes an item beyond ingest's ({peaks}, {ingest})"


def test_an_auto_trial_given_the_items_as_a_file_trains_as_given_them_listed(base_model, new_texts, tmp_path,
                                                                              monkeypatch):
    pytest.importorskip("optuna", reason="--auto needs Optuna, in the test extra: pip install '.[test]'")
    from retain.core.engine import Engine
    from retain.tune import auto_update, default_executor
    from test_auto import Recording

    config = load_config(None, [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=1"])
    data = [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))]
    listed = auto_update(Engine(config), data, base_model, budget=500.0, check=True)
    monkeypatch.setattr(spool, "SPOOL_MEMORY", 256)  # the search's items on disk: they go as a file
    executor = Recording(default_executor(1))
    try:
        from_file = auto_update(Engine(config), data, base_model, budget=500.0, check=True, executor=executor)
    finally:
        executor.shutdown(wait=True)
    assert "items_file" in executor.specs[0] and "items" not in executor.specs[0]
    trials = [r["search"]["trials"][0] for r in (listed, from_file)]
    assert trials[0]["error"] is None and trials[1]["error"] is None
    for key in ("new_loss_after", "retention_loss_after", "epochs_trained"):
        assert trials[1][key] == trials[0][key], key
