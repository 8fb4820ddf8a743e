"""One writer at a time: while one `retain update` holds a model directory, a second
one exits with LockedError (code 7), one with --wait runs after it, and readers only
ever see complete versions (they follow CURRENT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from retain.core.models import load_version
from retain.core.items import Item
from retain.core.store import ModelStore

from conftest import TINY, write_jsonl


def _update(model, data, *extra) -> subprocess.Popen:
    sets = [arg for s in [*TINY, "fine_tuning.epochs=1"] for arg in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "retain.cli", "update", "-d", str(data), "-m", str(model),
                             *sets, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _holds_lock(model, proc: subprocess.Popen) -> bool:
    lock = model / ".lock"
    return lock.exists() and lock.read_text().strip() == str(proc.pid)


def test_second_writer_fails_cleanly_or_waits_and_readers_see_whole_versions(base_model, new_texts, tmp_path):
    first = _update(base_model, write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))
    deadline = time.monotonic() + 120
    while not _holds_lock(base_model, first):
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the first update never took the lock"
        time.sleep(0.05)

    refused = _update(base_model, write_jsonl(tmp_path / "b.jsonl", new_texts[12:24]))
    # The same data as the first: if it waits its turn it finds all of it already learned.
    patient = _update(base_model, write_jsonl(tmp_path / "c.jsonl", new_texts[:12]), "--wait", "300",
                      "--json", "--quiet")

    out = refused.communicate(timeout=120)[0]
    assert refused.returncode == 7, out
    assert f"being updated by another process (pid {first.pid})" in out
    assert "--wait" in out and "Traceback" not in out

    # Readers meanwhile: whatever CURRENT names is complete and verifies.
    store, seen = ModelStore(base_model), set()
    while first.poll() is None or patient.poll() is None:
        loaded = load_version(store)
        seen.add(loaded.version)
        assert not loaded.version.startswith(".")
        time.sleep(0.25)
    assert first.wait() == 0, first.communicate()[0]
    out = patient.communicate()[0]
    assert patient.returncode == 0, out

    # The waiting update ran after the first had committed: it found every item learned by 0002.
    report = json.loads(out)
    assert report["status"] == "nothing_new" and report["counts"]["duplicates"] == 12
    assert all("by version 0002" in s["reason"] for s in report["skipped"])
    assert store.versions() == ["0001", "0002"] and store.chain() == ["0002", "0001"]
    assert seen <= {"0001", "0002"}
    def versions_of(texts):
        return {v for v, _ in store.ledger.find([Item(t).hash for t in texts], store.chain()).values()}

    assert versions_of(new_texts[:12]) == {"0002"}
    assert versions_of(new_texts[12:24]) == set()  # the refused run recorded nothing
