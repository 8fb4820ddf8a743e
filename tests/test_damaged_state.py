"""What a damaged or half-changed model directory must never cost: a wrong index entry,
an absent version folder, a prune killed half way, a lost ledger, a broken CURRENT, one
damaged shared file. Prune and rollback decide from the manifests, a dry run writes
nothing, the ledger forgets only versions known to be gone (and is rebuilt, never
treated as empty), and every command says clearly what is wrong.

Most tests build a model directory through the store's own writer (manifests, checksums,
hard links, ledger rows and records) with fake weights: prune, rollback and recover read
manifests and checksums, never the weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.errors import ModelError
from retain.core.storage.versions import plan_prune
from retain.core.storage.store import INDEX, LEDGER_RECORD, MANIFEST, PRUNE_INTENT, TOKENIZER, WEIGHTS, ModelStore

from conftest import TINY, write_jsonl

runner = CliRunner(env={"COLUMNS": "200"})
SETS = [arg for o in TINY for arg in ("--set", o)]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _rows(version: str, n: int = 4) -> list[tuple[str, str, str, str]]:
    return [(hashlib.sha256(f"{version}-{i}".encode()).hexdigest(), "train" if i else "holdout", "t.jsonl", f"t:{i}")
            for i in range(n)]


def _version(store: ModelStore, parent: str | None, kind: str, status: str) -> str:
    """One version as commit writes it: files, record, pending ledger rows, rename, CURRENT."""
    writer = store.begin_version(parent=parent)
    writer.write_text(WEIGHTS, f"weights of {writer.name}")
    writer.write_text(TOKENIZER, "the same tokenizer in every version")
    writer.write_text("strategy/replay.json", f"[{writer.name!r}]".replace("'", '"'))
    rows = _rows(writer.name)
    writer.write_ledger_record(rows)
    store.ledger.add(writer.name, rows)
    writer.finish({"parent": parent, "kind": kind, "status": status,
                   "counts": {"trained": 3, "holdout": 1}})
    if status == "accepted":
        store.set_current(writer.name)
    return writer.name


def _model(root: Path, extra_rejected: bool = False) -> Path:
    """0001 full training, 0002 rejected, 0003 and 0004 accepted updates: 0004 -> 0003 -> 0001."""
    store = ModelStore(root)
    _version(store, None, "full_training", "accepted")
    _version(store, "0001", "fine_tuning", "rejected")
    _version(store, "0001", "fine_tuning", "accepted")
    _version(store, "0003", "fine_tuning", "accepted")
    if extra_rejected:
        _version(store, "0004", "fine_tuning", "rejected")
    store.save_index()
    store.ledger.close()
    return root


def _learned(model: Path, chain: list[str]) -> dict[str, int]:
    store = ModelStore(model)
    try:
        return store.ledger.count(chain)
    finally:
        store.ledger.close()


def _damage_index(model: Path, version: str, **fields) -> None:
    """Change fields of a version's index entry, keeping the (mtime, size) it was indexed at."""
    path = model / "versions" / INDEX
    data = json.loads(path.read_text(encoding="utf-8"))
    data["versions"][version][2].update(fields)
    path.write_text(json.dumps(data), encoding="utf-8")


# --- a damaged index decides nothing -----------------------------------------------------------

DAMAGES = {
    # 0004's parent said to be 0001: 0003 would look unneeded, and be deleted
    "wrong parent": ("0004", {"parent": "0001"}, ["--no-keep-full-trainings"]),
    # the full training said to be an update: --keep-full-trainings would stub it
    "wrong kind": ("0001", {"kind": "fine_tuning"}, ["--keep-full-trainings"]),
    # an entry of another state (a rejected root): 0001 would look unneeded, and be deleted
    "stale entry": ("0003", {"status": "rejected", "parent": None}, ["--no-keep-full-trainings"]),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_prune_decides_from_the_manifests_not_a_damaged_index(tmp_path, damage):
    model = _model(tmp_path / "model")
    version, fields, flags = DAMAGES[damage]
    _damage_index(model, version, **fields)
    assert ModelStore(model).summary(version) != ModelStore(model).summary_from_manifest(version)

    plan = plan_prune(ModelStore(model), 1, "--keep-full-trainings" in flags)
    assert plan.delete == ["0002"] and "0001" in plan.keep + plan.stub and "0003" in plan.stub

    result = _cli("prune", "--model", model, "--keep", "1", *flags)
    assert result.exit_code == 0, result.output
    store = ModelStore(model)
    assert store.versions() == ["0001", "0003", "0004"]
    assert store.chain() == ["0004", "0003", "0001"]
    assert _learned(model, ["0004", "0003", "0001"]) == {"train": 9, "holdout": 3}
    if "--keep-full-trainings" in flags:  # the full training stays whole
        assert (model / "versions/0001" / WEIGHTS).exists() and "pruned" not in store.manifest("0001")
    # the index was corrected from the manifests
    assert ModelStore(model).summary(version) == ModelStore(model).summary_from_manifest(version)


# --- a dry run writes nothing; an absent folder loses nothing ----------------------------------

def _snapshot(model: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(model).as_posix(): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(model.rglob("*"))}


def test_prune_dry_run_writes_nothing_even_with_a_version_folder_absent(tmp_path):
    model = _model(tmp_path / "model", extra_rejected=True)
    aside = tmp_path / "aside"
    os.rename(model / "versions/0005", aside)  # moved aside, or a volume not mounted yet
    before = _snapshot(model)
    assert not (model / "ledger.sqlite-wal").exists()

    for args in (["--keep", "1", "--dry-run", "--no-keep-full-trainings"], ["--keep", "1", "--dry-run", "--json", "--no-keep-full-trainings"]):
        result = _cli("prune", "--model", model, *args)
        assert result.exit_code == 0, result.output
    assert _snapshot(model) == before  # ledger.sqlite byte for byte, no -wal, no .lock, no index
    assert "0002" in json.loads(result.stdout.strip().splitlines()[-1])["delete"]

    # Writing commands recover first: the absent version's rows are kept, and said so.
    rolled = _cli("rollback", "--model", model, "0003")
    assert rolled.exit_code == 0 and "0005 is missing" in rolled.output
    assert _learned(model, ["0005"]) == {"train": 3, "holdout": 1}
    pruned = _cli("prune", "--model", model, "--keep", "1", "--no-keep-full-trainings")
    assert pruned.exit_code == 0 and "0005 is missing" in pruned.output
    assert _learned(model, ["0005"]) == {"train": 3, "holdout": 1}
    assert _learned(model, ["0002"]) == {}  # a version prune deleted itself: its rows go
    assert ModelStore(model).next_version_name() == "0006"  # the absent version's name is not reused

    os.rename(aside, model / "versions/0005")  # back, with its rows: its branch (0004) was abandoned
    assert "0005" in ModelStore(model).versions() and _learned(model, ["0005"]) == {"train": 3, "holdout": 1}


def test_prune_with_a_version_of_the_current_chain_absent_is_a_clear_error_and_deletes_nothing(tmp_path):
    model = _model(tmp_path / "model")
    os.rename(model / "versions/0003", tmp_path / "aside")
    for args in (["--dry-run"], []):
        result = _cli("prune", "--model", model, "--keep", "1", *args)
        assert result.exit_code == 5 and "version 0003 is missing" in result.output, result.output
        assert "moved aside? a volume not mounted?" in result.output
    assert ModelStore(model).versions() == ["0001", "0002", "0004"]
    assert _learned(model, ["0003"]) == {"train": 3, "holdout": 1}


def test_an_old_ledger_is_migrated_and_only_unfinished_rows_are_dropped(tmp_path):
    import sqlite3

    model = _model(tmp_path / "model")
    db = sqlite3.connect(model / "ledger.sqlite")  # as retain wrote it before row states
    with db:
        db.execute("DROP TABLE row_versions")
        db.execute("CREATE TABLE row_versions (version TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO row_versions VALUES (?)", [(v,) for v in ("0001", "0003", "0004", "0009")])
        db.executemany("INSERT INTO items VALUES (?, '0009', 'train', 's', 'o')", [(h,) for h, *_ in _rows("0009")])
    db.close()
    store = ModelStore(model)
    notes = store.recover()
    assert store.ledger.states() == {"0001": "committed", "0002": "committed", "0003": "committed",
                                     "0004": "committed"}
    assert any("dropped 4 ledger rows of unfinished versions" in n for n in notes)
    store.ledger.close()


def test_a_version_whose_ledger_mark_failed_is_marked_by_recover(tmp_path, monkeypatch):
    import sqlite3

    from retain.core.storage.store import Ledger

    model = _model(tmp_path / "model")
    store = ModelStore(model)
    with monkeypatch.context() as m:  # the disk refuses the mark after the rename
        m.setattr(Ledger, "commit_version", lambda self, v: (_ for _ in ()).throw(sqlite3.OperationalError("disk full")))
        assert _version(store, "0004", "fine_tuning", "accepted") == "0005"
    assert store.ledger.states()["0005"] == "pending" and store.current() == "0005"
    store.recover()  # the folder is there: the rename happened
    assert store.ledger.states()["0005"] == "committed"
    store.ledger.close()


# --- a prune killed half way is finished by recover --------------------------------------------

def _killed(model: Path, fault: str, *command: str) -> None:
    env = {**os.environ, "RETAIN_FAULT_AT": fault}
    done = subprocess.run([sys.executable, "-m", "retain", *command, "--model", str(model)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr


def _killed_prune(model: Path, fault: str) -> None:
    _killed(model, fault, "prune", "--keep", "1", "--no-keep-full-trainings")


def test_a_prune_killed_between_a_stub_and_its_files_is_finished_by_recover(tmp_path):
    model = _model(tmp_path / "model")
    _killed_prune(model, "stubbed")
    stub = model / "versions/0001"
    assert "pruned" in json.loads((stub / MANIFEST).read_text()) and (stub / WEIGHTS).exists()
    assert (model / "versions" / PRUNE_INTENT).exists()

    result = _cli("prune", "--model", model, "--keep", "1", "--no-keep-full-trainings")  # any writing command recovers first
    assert result.exit_code == 0 and "interrupted prune" in result.output, result.output
    assert not (stub / WEIGHTS).exists() and not (stub / "strategy").exists()
    assert (stub / TOKENIZER).exists() and not (model / "versions" / PRUNE_INTENT).exists()
    assert ModelStore(model).versions() == ["0001", "0003", "0004"]


def test_a_prune_killed_while_rewriting_a_stub_manifest_leaves_the_version_whole(tmp_path):
    model = _model(tmp_path / "model")
    before = (model / "versions/0001" / MANIFEST).read_bytes()
    _killed_prune(model, "replace-manifest.json")
    assert list((model / "versions/0001").glob(".manifest.json.tmp-*"))
    store = ModelStore(model)
    with store.lock():
        store.recover()
    assert (model / "versions/0001" / MANIFEST).read_bytes() == before and (model / "versions/0001" / WEIGHTS).exists()
    assert not list((model / "versions").rglob(".*tmp*")) and not (model / "versions" / PRUNE_INTENT).exists()
    assert _cli("rollback", "--model", model, "1").exit_code == 0  # whole, every checksum holds


def test_a_prune_killed_while_deleting_a_version_is_finished_by_recover(tmp_path):
    model = _model(tmp_path / "model")
    _killed_prune(model, "pruned-renamed")
    assert ModelStore(model).versions() == ["0001", "0003", "0004"]  # 0002 renamed aside, not yet gone
    assert _learned(model, ["0002"]) == {"train": 3, "holdout": 1}
    store = ModelStore(model)
    with store.lock():
        notes = store.recover()
    assert "recovered from an interrupted prune: deleted version 0002" in notes
    assert not list((model / "versions").glob(".tmp-*"))
    assert _learned(model, ["0002"]) == {}


def test_a_rollback_killed_before_current_moves_leaves_the_model_as_it_was(tmp_path):
    model = _model(tmp_path / "model")
    _killed(model, "replace-CURRENT", "rollback")
    assert ModelStore(model).current() == "0004" and list(model.glob(".CURRENT.tmp-*"))
    result = _cli("rollback", "--model", model)
    assert result.exit_code == 0 and "0004 -> 0003" in result.output
    assert not list(model.glob(".CURRENT.tmp-*"))


# --- a lost ledger is rebuilt, never empty ------------------------------------------------------

@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_ledger_is_rebuilt_from_the_versions_records(tmp_path, loss):
    model = _model(tmp_path / "model")
    chain = ["0004", "0003", "0001"]
    if loss == "deleted":
        (model / "ledger.sqlite").unlink()
    else:
        (model / "ledger.sqlite").write_bytes(b"")
    result = _cli("rollback", "--model", model, "0002")  # refused, but only after recover rebuilt the ledger
    assert result.exit_code == 5 and "rejected by the quality gate" in result.output, result.output
    assert "had no record of what versions 0001, 0002, 0003, 0004 learned" in result.output
    assert _learned(model, chain) == {"train": 9, "holdout": 3}
    assert ModelStore(model).ledger.find([_rows("0003")[1][0]], chain) == {_rows("0003")[1][0]: ("0003", "train")}


def test_a_reading_command_refuses_a_lost_ledger_and_writes_nothing(tmp_path):
    model = _model(tmp_path / "model")
    (model / "ledger.sqlite").unlink()
    data = write_jsonl(tmp_path / "d.jsonl", ["an item the chain may have learned"])
    for args in (["update", "--data", data, "--dry-run"], ["status", "--data", data]):
        result = _cli(args[0], "--model", model, *args[1:])
        assert result.exit_code == 5, (args, result.output)
        assert "has no record of what versions 0001, 0003, 0004 learned" in result.output, result.output
    assert not list(model.glob("ledger.sqlite*"))


def test_a_lost_ledger_without_records_is_refused(tmp_path):
    model = _model(tmp_path / "model")
    # a version saved before versions kept their record
    path = model / "versions/0003" / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["files"][LEDGER_RECORD]
    path.write_text(json.dumps(manifest))
    (model / "versions/0003" / LEDGER_RECORD).unlink()
    (model / "ledger.sqlite").unlink()
    result = _cli("prune", "--model", model, "--keep", "5")
    assert result.exit_code == 5 and "no record of what version 0003" in result.output, result.output
    assert "refusing to treat those items as new" in result.output


def test_an_update_after_the_ledger_is_lost_learns_nothing_twice(base_model, old_texts, tmp_path):
    (base_model / "ledger.sqlite").unlink()
    data = write_jsonl(tmp_path / "again.jsonl", old_texts[:40])
    result = _cli("update", "--model", base_model, "--data", data, *SETS)
    assert "rebuilt from its ledger.jsonl.gz" in result.output, result.output
    assert "Nothing new to learn" in result.output and ModelStore(base_model).versions() == ["0001"]


# --- CURRENT: a clear error everywhere, repaired by rollback ------------------------------------

CURRENTS = {"not text": b"\xff\xfe\x00", "empty": b"", "dot-dot": b"..\n", "missing version": b"0009\n",
            "rejected version": b"0002\n", "incomplete version": b"0005\n"}


@pytest.mark.parametrize("content", CURRENTS, ids=list(CURRENTS))
def test_a_broken_current_is_a_clear_error_and_rollback_repairs_it(tmp_path, content):
    model = _model(tmp_path / "model")
    (model / "versions/0005").mkdir()  # a folder without a manifest
    (model / "CURRENT").write_bytes(CURRENTS[content])
    data = write_jsonl(tmp_path / "d.jsonl", ["some text"])
    for args in (["status"], ["history"], ["prune", "--keep", "1"], ["prune", "--keep", "1", "--dry-run"],
                 ["update", "--data", data, "--dry-run"], ["rollback"]):
        result = _cli(args[0], "--model", model, *args[1:])
        assert result.exit_code == 5, (args, result.output)
        assert "CURRENT" in result.output and "Traceback" not in result.output, (args, result.output)
        assert "retain rollback --model" in result.output and "0004" in result.output
    repaired = _cli("rollback", "--model", model, "4")
    assert repaired.exit_code == 0 and "repaired CURRENT" in repaired.output, repaired.output
    assert ModelStore(model).current() == "0004"
    assert _cli("history", "--model", model).exit_code == 0


# --- one damaged file shared by several versions ------------------------------------------------

def test_a_damaged_shared_file_is_reported_as_one_file_with_the_versions_it_breaks(tmp_path):
    model = _model(tmp_path / "model")
    inodes = {(model / "versions" / v / TOKENIZER).stat().st_ino for v in ("0001", "0002", "0003", "0004")}
    assert len(inodes) == 1  # identical files are hard links (VersionWriter._share_with_parent)
    (model / "versions/0004" / TOKENIZER).write_text("truncated")
    with pytest.raises(ModelError) as exc:
        ModelStore(model).verified_path("0001", TOKENIZER)
    assert "one file on disk, shared by hard link by 4 versions (0001, 0002, 0003, 0004)" in str(exc.value)
    result = _cli("rollback", "--model", model, "3")
    assert result.exit_code == 5 and "shared by hard link by 4 versions" in result.output
    status = _cli("status", "--model", model, *SETS)  # the advice alone would not load the tokenizer
    assert "warning: version 0004: tokenizer.json does not match its checksum" in status.output
    assert "shared by hard link by 4 versions" in status.output
