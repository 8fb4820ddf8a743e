"""One writer at a time: while a model directory is locked, a `retain update` exits with
LockedError (code 7), one with --wait runs once the lock is released, and readers only
ever see complete versions (they follow CURRENT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from retain.core.storage.models import load_version
from retain.core.data.items import Item
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl


def _update(model, data, *extra) -> subprocess.Popen:
    sets = [arg for s in [*TINY, "fine_tuning.epochs=1"] for arg in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "retain.cli", "update", "-d", str(data), "-m", str(model),
                             *sets, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _has_open(proc: subprocess.Popen, path: Path) -> bool:
    """Whether ``proc`` holds a file descriptor on ``path`` (Linux: /proc/PID/fd)."""
    fds = Path(f"/proc/{proc.pid}/fd")
    try:
        names = os.listdir(fds)
    except FileNotFoundError:
        return False
    for name in names:
        try:
            if os.readlink(fds / name) == str(path):
                return True
        except OSError:
            pass  # closed meanwhile
    return False


def test_second_writer_fails_cleanly_or_waits_and_readers_see_whole_versions(base_model, new_texts, tmp_path):
    store = ModelStore(base_model)
    lock_file = (base_model / ".lock").resolve()
    with store.lock():  # this test process is the writer holding the directory
        refused = _update(base_model, write_jsonl(tmp_path / "b.jsonl", new_texts[12:24]))
        patient = _update(base_model, write_jsonl(tmp_path / "c.jsonl", new_texts[:12]), "--wait", "300",
                          "--json", "--quiet")

        out = refused.communicate(timeout=120)[0]
        assert refused.returncode == 7, out
        assert f"being updated by another process (pid {os.getpid()})" in out
        assert "--wait" in out and "Traceback" not in out

        # The patient one has opened the lock file, which this process still holds: it is
        # waiting, and stays waiting for as long as the lock is held.
        deadline = time.monotonic() + 120
        while not _has_open(patient, lock_file):
            assert patient.poll() is None, patient.communicate()[0]
            assert time.monotonic() < deadline, "the --wait update never reached the lock"
            time.sleep(0.05)
        time.sleep(1.0)
        assert patient.poll() is None, patient.communicate()[0]
        assert store.versions() == ["0001"] and store.current() == "0001"

    # Released: the waiting update runs now. Readers meanwhile: whatever CURRENT names is
    # complete and verifies.
    seen = set()
    while patient.poll() is None:
        loaded = load_version(store)
        seen.add(loaded.version)
        assert not loaded.version.startswith(".")
        time.sleep(0.25)
    out = patient.communicate()[0]
    assert patient.returncode == 0, out

    report = json.loads(out)
    assert report["status"] == "accepted" and report["version"] == "0002"
    assert store.versions() == ["0001", "0002"] and store.chain() == ["0002", "0001"]
    assert seen <= {"0001", "0002"}

    def versions_of(texts):
        return {v for v, _ in store.ledger.find([Item(t).hash for t in texts], store.chain()).values()}

    assert versions_of(new_texts[:12]) == {"0002"}
    assert versions_of(new_texts[12:24]) == set()  # the refused run recorded nothing
