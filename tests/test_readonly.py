"""A model directory on a read-only mount: every reading command serves it, every writing
command refuses it with one clear StorageError (exit 12) before any work. And a writing
command leaves no trace where it found no model (rollback, prune) or made none (a failed
train or import).

The read-only directory is a real one: a small tmpfs remounted read-only (chmod does not stop
root). Where mounting is not permitted (not root, no CAP_SYS_ADMIN), those tests skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.errors import StorageError

from conftest import TINY, write_jsonl

runner = CliRunner()


def _sets(extra=()):
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def read_only_model(_base_model, tmp_path):
    """A copy of the tiny model (with an update, so validate has a parent to compare with) on a
    tmpfs remounted read-only; its ledger in WAL mode, without -wal or -shm files."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a read-only file system")
    mnt = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    made = _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt))
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {made.stderr.strip()}")
    try:
        shutil.copytree(_updated_model(_base_model), mnt / "model")
        assert not list((mnt / "model").glob("ledger.sqlite-*"))
        ro = _mount("-o", "remount,ro", str(mnt))
        if ro.returncode != 0:
            pytest.skip(f"remounting read-only is not permitted here: {ro.stderr.strip()}")
        yield mnt / "model"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


_UPDATED: dict[str, Path] = {}


def _updated_model(base: Path) -> Path:
    """The session's base model plus one accepted update, built once."""
    if "model" not in _UPDATED:
        from retain.core.config import load_config
        from retain.core.engine import Engine
        from retain.demo import docstring_paragraphs

        root = base.parent / "updated"
        shutil.copytree(base, root / "model")
        data = write_jsonl(root / "new.jsonl", docstring_paragraphs()[100:130])
        Engine(load_config(None, TINY + ["validators=[finite]"])).update([str(data)], root / "model")
        _UPDATED["model"] = root / "model"
    return _UPDATED["model"]


def test_reading_commands_serve_a_read_only_model(read_only_model, old_texts, new_texts, tmp_path):
    model = str(read_only_model)
    # 5 items the model learned or held out: the ledger must really be read to skip them.
    data = str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20] + old_texts[:5]))
    before = sorted(p.name for p in read_only_model.iterdir())

    r = runner.invoke(app, ["update", "-d", data, "-m", model, "--dry-run", "--json", *_sets()])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["counts"]["duplicates"] == 5 and report["counts"]["new"] == 20

    # --check trains and validates in memory and writes nothing: a read-only directory serves it.
    r = runner.invoke(app, ["update", "-d", data, "-m", model, "--check", "--json",
                            *_sets(["validators=[finite]"])])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["status"] == "check" and report["counts"]["duplicates"] == 5

    r = runner.invoke(app, ["status", "-m", model, "-d", data, "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["status", "-m", model])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["history", "-m", model, "--json"])
    assert r.exit_code == 0 and [row["version"] for row in json.loads(r.stdout)] == ["0001", "0002"]
    r = runner.invoke(app, ["validate", "-m", model, "-d", data, "--json", *_sets(["validators=[finite]"])])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["already_learned"] == 5
    r = runner.invoke(app, ["export", "-m", model, "-o", str(tmp_path / "exported"), "--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    assert sorted(p.name for p in read_only_model.iterdir()) == before


@pytest.mark.parametrize("command", ["update", "train", "prune", "rollback", "import"])
def test_writing_commands_refuse_a_read_only_model_before_any_work(read_only_model, new_texts, tmp_path,
                                                                   command):
    model, data = str(read_only_model), str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20]))
    args = {"update": ["update", "-d", data, *_sets()], "train": ["train", "-d", data, *_sets()],
            "prune": ["prune", "--keep", "1"], "rollback": ["rollback", "0001"],
            "import": ["import", str(read_only_model / "versions" / "0001" / "model.safetensors")]}[command]
    r = runner.invoke(app, [*args, "-m", model, "--json"])
    assert r.exit_code == StorageError.exit_code == 12, r.output
    error = json.loads(r.stdout)["error"]
    assert error["kind"] == "storage"
    assert error["message"].startswith(f"the disk of {model} is read-only") and "only read it" in error["message"]
    assert "Load model" not in r.output and "Collect" not in r.output  # refused before any step
    assert "Traceback" not in r.output


def test_a_new_model_directory_on_a_read_only_mount_is_a_storage_error(read_only_model, new_texts, tmp_path):
    data = str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20]))
    target = read_only_model.parent / "new-model"
    r = runner.invoke(app, ["train", "-d", data, "-m", str(target), *_sets()])
    assert r.exit_code == 12, r.output
    assert f"the disk of {target} is read-only" in r.output
    assert not target.exists()


# --- no trace where no model is, or none was made -------------------------------------------------

@pytest.mark.parametrize("args", [["rollback"], ["rollback", "1"], ["prune", "--keep", "1"],
                                  ["prune", "--keep", "1", "--dry-run"]])
def test_rollback_and_prune_create_nothing_where_there_is_no_model(tmp_path, args):
    empty, missing = tmp_path / "empty", tmp_path / "missing" / "model"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    for where in (empty, missing):
        r = runner.invoke(app, [*args, "-m", str(where)])
        assert r.exit_code == 5, r.output
        assert "no model in" in r.output or "holds no current model" in r.output
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "missing").exists()


def test_a_failed_import_leaves_the_directory_as_it_was(tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x80\x04 not safetensors at all")
    new = tmp_path / "a" / "b" / "model"
    r = runner.invoke(app, ["import", str(bad), "-m", str(new)])
    assert r.exit_code == 5, r.output
    assert not (tmp_path / "a").exists()  # the directory and the parents it made are gone

    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["import", str(bad), "-m", str(empty)])
    assert r.exit_code == 5, r.output
    assert empty.is_dir() and list(empty.iterdir()) == []  # kept, as empty as it was


def test_a_failed_first_training_leaves_no_directory(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", ["a single item is not enough to train on"])
    r = runner.invoke(app, ["train", "-d", str(one), "-m", str(tmp_path / "model"), *_sets()])
    assert r.exit_code == 4, r.output
    assert not (tmp_path / "model").exists()


def test_a_failed_import_into_a_model_keeps_everything(base_model, tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x80\x04 not safetensors at all")
    before = sorted(p.name for p in base_model.iterdir())
    r = runner.invoke(app, ["import", str(bad), "-m", str(base_model)])
    assert r.exit_code == 5, r.output
    assert sorted(p.name for p in base_model.iterdir()) == before
    assert (base_model / "CURRENT").read_text().strip() == "0001"


def test_a_ledger_the_disk_cannot_read_is_not_blamed_on_the_deduper(base_model, new_texts, tmp_path, monkeypatch):
    import sqlite3

    from retain.core.storage.store import Ledger

    def disk_error(self, hashes, chain):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Ledger, "find", disk_error)
    data = str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20]))
    r = runner.invoke(app, ["update", "-d", data, "-m", str(base_model), "--dry-run", "--json", *_sets()])
    assert r.exit_code == 12, r.output
    message = json.loads(r.stdout)["error"]["message"]
    assert message == f"cannot read the ledger {base_model / 'ledger.sqlite'}: disk I/O error"
    assert "deduper" not in r.output


def test_a_first_training_refused_by_the_lock_removes_nothing_of_the_writer(tmp_path, new_texts):
    from retain.core.storage.store import ModelStore

    data = str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20]))
    writer = ModelStore(tmp_path / "model")
    with writer.lock():  # another process making the model: its directory, its lock
        (tmp_path / "model" / "versions").mkdir()
        r = runner.invoke(app, ["train", "-d", data, "-m", str(tmp_path / "model"), *_sets()])
        assert r.exit_code == 7, r.output
        assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [".lock", "versions"]


def test_reading_commands_leave_a_writable_ledger_byte_identical(base_model, new_texts, old_texts, tmp_path):
    """The read-only view is used on a writable directory too: no schema written, no row, no
    -wal or -shm left behind. (A ledger from before the row_versions table stays without it.)"""
    import sqlite3

    ledger = base_model / "ledger.sqlite"
    db = sqlite3.connect(ledger)
    db.execute("DROP TABLE row_versions")
    db.commit()
    db.close()
    before = ledger.read_bytes()
    data = str(write_jsonl(tmp_path / "new.jsonl", new_texts[:10] + old_texts[:3]))
    for args in (["update", "-d", data, "--dry-run", *_sets()], ["update", "-d", data, "--check", *_sets()],
                 ["status", "-d", data], ["validate", "-d", data, "--version", "0001"]):
        r = runner.invoke(app, [*args, "-m", str(base_model)])
        assert r.exit_code in (0, 5), r.output  # validate 0001: no parent (after reading)
        assert ledger.read_bytes() == before, args
        assert sorted(p.name for p in base_model.glob("ledger.sqlite*")) == ["ledger.sqlite"], args
