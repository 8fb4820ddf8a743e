"""The model directory: versions, the CURRENT pointer, the ledger, rejects, the lock.

    my-model/
      CURRENT             name of the current version, replaced atomically
      versions/0001/      manifest.json, model.safetensors, tokenizer.json,
                          holdout.jsonl, strategy/*.safetensors|json, ledger.jsonl.gz
                          (the version's own ledger rows: a lost ledger is rebuilt from them)
      versions/.index.json  each version's summary (parent, kind, status, counts): a cache
                          of its manifest, checked against the manifest's mtime and size
                          (never what a deletion is decided by)
      versions/.prune-intent.json  while a prune runs: what recover() finishes
      ledger.sqlite       every item a version learned (or held out): hash, version, role;
                          and per version, pending (before its rename) or committed
      rejects.jsonl       inputs that could not be used, with reasons
      .lock               one writer at a time

A version is written to ``versions/.tmp-*`` and renamed into place; it becomes
the model only when CURRENT names it. A disk that refuses a write (full, read-only,
failing) is a ``StorageError`` wherever it happens under the lock (``storage_error``),
and what was half-written is removed, or left for ``recover`` (docs/reliability.md). What a model "knows" is defined by the
chain CURRENT -> parent -> ..., so ledger rows of a version that never became
current (crash, rejection, rollback) simply do not count: no flag to keep in sync.
Rows are deleted only when their version is known to be gone (``Ledger``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from retain.core.runtime import interrupts
from retain.core.errors import LockedError, ModelError, StorageError
from retain.core.storage.manifest import FORMAT, MANIFEST, Manifest, read_manifest

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
HOLDOUT = "holdout.jsonl"
INDEX = ".index.json"  # in versions/: each version's summary, a cache of fields of its manifest
PRUNE_INTENT = ".prune-intent.json"  # in versions/ while a prune runs: what recover() finishes
PRUNED_PREFIX = ".tmp-pruned-"  # a version prune is deleting: .tmp-pruned-<version>-<pid>
LEDGER_RECORD = "ledger.jsonl.gz"  # in each version: its ledger rows, to rebuild a lost ledger from
LEDGER_PIECE = 65536            # ledger rows written to it at a time
ROOT_KINDS = ("full_training", "import")  # versions that start a lineage: a model made, not updated


SUMMARY_FIELDS = frozenset({"parent", "kind", "status", "pruned", "builds_on", "counts", "epochs", "states"})


def summarize(manifest: dict) -> dict:
    """A manifest's ``ModelStore.summary``."""
    m = Manifest.model_validate(manifest)
    states = {f.split("/", 1)[1].rsplit(".", 1)[0] for f in m.files if f.startswith("strategy/")}
    return {"parent": m.parent, "kind": m.kind, "status": m.status, "pruned": "pruned" in m.model_fields_set,
            "builds_on": m.builds_on,
            "counts": {k: m.counts[k] for k in ("trained", "holdout", "tokens", "bytes", "replay_tokens")
                       if k in m.counts},
            "epochs": len(m.epoch_losses), "states": sorted(states)}


def _alive(scratch: str) -> bool:
    """Is the process named in a run's shard scratch folder (``.tmp-shards-<pid>-...``) running?"""
    pid = scratch[len(".tmp-shards-"):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fault_point(phase: str) -> None:
    """Test-only seam: ``RETAIN_FAULT_AT=<phase>`` SIGKILLs this process at ``phase``
    (tests/test_crash.py), to prove a crash there leaves a consistent model directory;
    with ``RETAIN_FAULT_SIGNAL=INT`` it sends SIGINT instead (tests/test_interrupt.py); with
    ``RETAIN_FAULT_RANK=R`` only rank R of a torchrun run is hit (tests/test_distributed.py)."""
    rank = os.environ.get("RETAIN_FAULT_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    if os.environ.get("RETAIN_FAULT_AT") == phase:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("RETAIN_FAULT_SIGNAL", "KILL")))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through ``.NAME.tmp-PID`` renamed over it: the old file or the new
    one, never half of either (``recover`` removes a temporary file a kill left in a version)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with interrupts.shielded():  # Ctrl-C acts after the replace: no .tmp file left behind
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            fault_point(f"replace-{path.name}")  # test-only
            os.replace(tmp, path)
        except BaseException:  # a full disk, say: the old file stays, and no .tmp beside it
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


# --- a disk that refuses: one error of its own (StorageError, exit 12), never a traceback ---

STORAGE_ERRNOS = {  # errno: (what happened, the remedy)
    errno.ENOSPC: ("is full", "free space on it (or move the model directory to a larger disk)"),
    errno.EDQUOT: ("is over your quota", "free space within your quota (or raise it)"),
    errno.EROFS: ("is read-only", "remount it read-write, or work on a copy on a writable disk"),
    errno.EIO: ("failed (I/O error)", "check the disk (dmesg, smartctl) and restore from a copy if it is failing"),
    0: ("refused to create or open a file", "check that it has free space and that the directory is writable"),
}
_SQLITE_ERRNOS = {"SQLITE_FULL": errno.ENOSPC, "SQLITE_READONLY": errno.EROFS, "SQLITE_IOERR": errno.EIO}
_SQLITE_MESSAGES = {"database or disk is full": errno.ENOSPC, "readonly database": errno.EROFS,
                    "disk I/O error": errno.EIO}
_OS_MESSAGES = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT,
                "read-only file system": errno.EROFS, "input/output error": errno.EIO}


def storage_errno(exc: BaseException, where: Path | None = None) -> int | None:
    """The errno of STORAGE_ERRNOS that ``exc`` reports, whoever raised it: an OSError, SQLite
    (which names no errno: its result code; for "unable to open", the state of the disk of
    ``where``, else 0: a file it could not create), or a library that words it (safetensors:
    "os error 28", "Os { code: 28"; "No space left on device")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno if exc.errno in STORAGE_ERRNOS else None
    if isinstance(exc, sqlite3.Error):
        name = (getattr(exc, "sqlite_errorname", "") or "").split("_")[:2]
        code = _SQLITE_ERRNOS.get("_".join(name))
        code = code or next((c for m, c in _SQLITE_MESSAGES.items() if m in str(exc)), None)
        if code is None and "unable to open" in str(exc):  # SQLite keeps the errno to itself
            code = (_disk_state(where) if where is not None else None) or 0
        return code
    text = str(exc)
    numbered = re.search(r"(?:os error |Os \{ code: )(\d+)", text)
    if numbered and int(numbered.group(1)) in STORAGE_ERRNOS and int(numbered.group(1)):
        return int(numbered.group(1))
    return next((c for m, c in _OS_MESSAGES.items() if m in text.lower()), None)


def _disk_state(where: Path) -> int | None:
    """EROFS or ENOSPC when the disk holding ``where`` is read-only or full now, else None."""
    with contextlib.suppress(OSError):
        st = os.statvfs(_existing(where))
        if st.f_flag & os.ST_RDONLY:
            return errno.EROFS
        if st.f_bavail == 0 or st.f_favail == 0:
            return errno.ENOSPC
    return None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def storage_error(exc: BaseException, root: Path | None = None) -> StorageError | None:
    """``exc`` as a StorageError (one line: the disk, what it did, the remedy), or None when
    it is not a disk refusing. ``root``: the model directory being written."""
    code = storage_errno(exc, root)
    if code is None:
        return None
    what, remedy = STORAGE_ERRNOS[code]
    path = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    if path is None and isinstance(exc, sqlite3.Error) and root is not None:
        path = root / "ledger.sqlite"
    path = Path(path) if path is not None else root
    inside = root is not None and path is not None and (path == root or root in path.parents)
    disk = f"the disk of {root}" if inside or path is None else f"the disk of {path}"  # data, say
    where = f" ({path})" if inside and path != root else ""
    room = ""
    if code == errno.ENOSPC and root is not None:
        with contextlib.suppress(OSError):
            room = f", {human_bytes(free_bytes(root))} available"
    return StorageError(f"{disk} {what}{where}{room}: {remedy}, then run the command again")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the disk holding ``path``."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    return f"{n:,.0f} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"


def check_safetensors_header(path: Path, what: str) -> None:
    """Refuse anything but safetensors before a parser sees it (a pickle or zip in disguise)."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if n <= 0 or 8 + n > size or head[8:9] != b"{":
        kind = {b"\x80": "a pickle", b"P": "a zip archive (torch.save output)"}.get(head[:1], "unknown data")
        raise ModelError(f"{what} holds {kind}, not safetensors; refusing to load it "
                         "(weights are only ever read as safetensors, never unpickled)")


def _drop_partial_last_line(path: Path) -> bool:
    """Truncate a last line without its newline (a writer killed mid-append)."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0 or (f.seek(size - 1), f.read(1))[1] == b"\n":
                return False
            pos = size
            while pos > 0:  # find the previous newline, reading backwards in blocks
                step = min(1 << 16, pos)
                f.seek(pos - step)
                block = f.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            f.truncate(pos)
            os.fsync(f.fileno())
        return True
    except FileNotFoundError:
        return False


def writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder`` (False on a read-only mount, even as root)."""
    return os.access(folder, os.W_OK)


READS_ONLY = ("this command changes the model directory; status, history, validate, export and "
              "update --dry-run or --check only read it")


def refused_write(root: Path, exc: OSError) -> StorageError | None:
    """The StorageError of a writing command whose first write in ``root`` (the lock) is
    refused: the disk's reason (``storage_error``), and for a directory it may not write to, which
    commands still work there. None for another OSError (a bug, or a path that is not a directory)."""
    error = storage_error(exc, root)
    if error is None and exc.errno in (errno.EACCES, errno.EPERM):
        error = StorageError(f"the disk of {root} refused a write (permission denied): run as a user who may "
                             "write there, or work on a copy")
    if error is not None and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        error = StorageError(f"{error}; {READS_ONLY}")
    return error


LEDGER_TABLES = ("CREATE TABLE IF NOT EXISTS items (hash TEXT NOT NULL, version TEXT NOT NULL,"
                 " role TEXT NOT NULL, source TEXT, origin TEXT, PRIMARY KEY (hash, version))")


def _no_rows() -> sqlite3.Connection:
    """A ledger that knows nothing, in memory."""
    db = sqlite3.connect(":memory:")
    db.execute(LEDGER_TABLES)
    return db


class Ledger:
    """Every item a version trained on or held out, in SQLite (scales past memory).

    ``row_versions`` says, per version with rows in any table, whether it is ``pending``
    (its rows were written before its folder was renamed into place) or ``committed`` (the
    rename happened). Only a pending version whose folder is absent is known never to have
    existed; a committed version's rows go only when prune deletes that version itself, so a
    folder that is merely absent (moved aside, a volume not mounted) loses nothing.

    ``read_only``: a reading command's view (update --dry-run and --check, status, validate):
    it writes nothing, not even the schema, and reads a ledger on a read-only mount too."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._on_interrupt: int | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open_read_only() if self.read_only else sqlite3.connect(self.path)
            self._on_interrupt = interrupts.on_interrupt(self.close_now)
            if not self.read_only:
                self._create_tables(self._db)
        return self._db

    def _create_tables(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:  # "unable to open database file", say why
            if writable(self.path.parent):
                raise
            self.close()
            raise StorageError(f"cannot write to {self.path}: {self.path.parent} is read-only ({exc})") from None
        db.execute(LEDGER_TABLES)
        self._migrate(db)
        db.commit()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a ledger of an older retain up to ``row_versions (version, state)``."""
        columns = [col[1] for col in db.execute("PRAGMA table_info(row_versions)")]
        if not columns:  # a ledger from before the table: one scan, once
            db.execute("CREATE TABLE row_versions (version TEXT PRIMARY KEY, state TEXT NOT NULL)")
            db.execute("INSERT OR IGNORE INTO row_versions SELECT DISTINCT version, 'pending' FROM items")
        elif "state" not in columns:
            db.execute("ALTER TABLE row_versions ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'")
        else:
            return
        # Which of them were renamed into place is not recorded: a folder there now says so; the
        # others count as pending, as every version without a folder did before.
        versions = self.path.parent / "versions"
        for (version,) in db.execute("SELECT version FROM row_versions").fetchall():
            if (versions / version).is_dir():
                db.execute("UPDATE row_versions SET state = 'committed' WHERE version = ?", (version,))

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that cannot write. Where the folder is writable, an ordinary one with
        query_only set: closing it removes the -wal and -shm files as a writer's does (a mode=ro
        connection leaves them behind). On a read-only mount SQLite reads a WAL database only
        with its -shm file there, or as immutable, which is what a read-only mount is."""
        if not self.path.is_file():
            return _no_rows()  # nothing learned here yet; a reading command creates no file
        if writable(self.path.parent):
            db = sqlite3.connect(self.path)
            db.execute("PRAGMA query_only=ON")
        else:
            uri = self.path.resolve().as_uri()
            try:
                db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
                db.execute("SELECT 1 FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:  # no -shm beside it, and none can be made
                db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'items'").fetchone() is None:
            db.close()  # an empty file: a writer would create the tables, a reader sees no rows
            return _no_rows()
        return db

    def close(self) -> None:
        interrupts.release(self._on_interrupt)
        self._on_interrupt = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def close_now(self) -> None:
        """Close from anywhere (an interrupt): roll back an open transaction, and close the
        cursors a loop was reading from, or SQLite keeps the connection, and its -wal and
        -shm files, open until they are freed, which an interrupted process never does."""
        import gc

        if self._db is not None:
            for obj in gc.get_referrers(self._db):
                if isinstance(obj, sqlite3.Cursor):
                    obj.close()
        self.close()

    def add(self, version: str, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """rows: (hash, role, source, origin). Counted only once ``version`` is in the chain."""
        # shielded: the rows come from a generator, so an interrupt could otherwise land inside
        # executemany, where the connection cannot be closed (and its -wal file removed)
        with interrupts.shielded(), self.db:
            self.mark_version(version)
            self.db.executemany(
                "INSERT OR REPLACE INTO items (hash, version, role, source, origin) VALUES (?, ?, ?, ?, ?)",
                ((h, version, role, src, origin) for h, role, src, origin in rows),
            )
            fault_point("ledger")  # test-only: killed mid-transaction, nothing may count
        fault_point("ledger-committed")  # test-only

    def rows(self, version: str) -> Iterator[tuple[str, str, str, str]]:
        """``version``'s rows (hash, role, source, origin), in the order they were added."""
        yield from self.db.execute("SELECT hash, role, source, origin FROM items WHERE version = ? ORDER BY rowid",
                                   (version,))

    def data_hash(self, version: str) -> str:
        """sha256 over the sorted hashes of the items ``version`` trained on (its manifest's
        ``data_hash``): the same data gives the same hash, in any order. SQLite sorts them, so
        no list of every item's hash is built (a corpus of millions of items)."""
        digest = hashlib.sha256()
        for (item_hash,) in self.db.execute("SELECT hash FROM items WHERE version = ? AND role = 'train'"
                                            " ORDER BY hash", (version,)):
            digest.update(item_hash.encode())
        return digest.hexdigest()

    def mark_version(self, version: str) -> None:
        """Record that ``version`` has rows (pending until its folder is in place). Any table
        with a ``version`` column in this database calls it in the same transaction as its
        rows, so recover() can drop them."""
        self.db.execute("INSERT OR IGNORE INTO row_versions (version, state) VALUES (?, 'pending')", (version,))

    def commit_version(self, version: str) -> None:
        """``version``'s folder is in place: its rows go only with the version itself (prune)."""
        with self.db:
            self.db.execute("INSERT INTO row_versions (version, state) VALUES (?, 'committed') ON CONFLICT"
                            "(version) DO UPDATE SET state = 'committed'", (version,))

    def states(self) -> dict[str, str]:
        """{version: "pending" | "committed"} for every version the ledger has a record of.
        A read-only view of an older ledger (not migrated: a reader writes nothing) is read as
        the migration would make it."""
        columns = [col[1] for col in self.db.execute("PRAGMA table_info(row_versions)")]
        if "state" in columns:
            return dict(self.db.execute("SELECT version, state FROM row_versions"))
        source = "row_versions" if columns else "items"
        versions = self.path.parent / "versions"
        return {v: "committed" if (versions / v).is_dir() else "pending"
                for (v,) in self.db.execute(f"SELECT DISTINCT version FROM {source}")}

    def find(self, hashes: list[str], chain: list[str]) -> dict[str, tuple[str, str]]:
        """{hash: (version, role)} for the hashes learned or held out by a version in ``chain``."""
        live = set(chain)
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(hashes), 500):
            part = hashes[start:start + 500]
            q = f"SELECT hash, version, role FROM items WHERE hash IN ({','.join('?' * len(part))})"
            for h, version, role in self.db.execute(q, part):
                if version in live and h not in found:
                    found[h] = (version, role)
        return found

    def count(self, chain: list[str]) -> dict[str, int]:
        if not chain:
            return {}
        q = (f"SELECT role, COUNT(*) FROM items WHERE version IN ({','.join('?' * len(chain))})"
             " GROUP BY role")
        return dict(self.db.execute(q, chain).fetchall())

    def forget_versions_except(self, keep: list[str]) -> int:
        """Drop rows of pending versions not in ``keep`` (a crash before the rename), in every
        table with a ``version`` column. Returns the ledger (items) rows dropped."""
        kept = set(keep)
        return self.forget([v for v, state in self.states().items() if state == "pending" and v not in kept])

    def forget(self, versions: list[str]) -> int:
        """Drop every row of ``versions`` (gone for good: pruned, or never in place), in every
        table with a ``version`` column. Returns the ledger (items) rows dropped."""
        if not versions:
            return 0  # the usual case: no table is scanned
        tables = [name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if name != "row_versions"
                  and any(col[1] == "version" for col in self.db.execute(f'PRAGMA table_info("{name}")'))]
        dropped = 0
        marks = ",".join("?" * len(versions))
        with self.db:
            for name in tables:
                n = self.db.execute(f'DELETE FROM "{name}" WHERE version IN ({marks})', versions).rowcount
                dropped += n if name == "items" else 0
            self.db.execute(f"DELETE FROM row_versions WHERE version IN ({marks})", versions)
        return dropped


@dataclass
class VersionWriter:
    """A version being written in a temp dir; ``finish`` checksums and renames it into place."""

    store: "ModelStore"
    name: str
    tmp: Path
    parent: str | None = None  # files identical to the parent's are hard links to them, not copies
    on_interrupt: int | None = None  # interrupts token: an interrupt removes the unfinished version

    def write_json(self, rel: str, obj: Any) -> None:
        self._path(rel).write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")

    def write_text(self, rel: str, text: str) -> None:
        self._path(rel).write_text(text, encoding="utf-8")

    def write_ledger_record(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """The version's own copy of its ledger rows (``LEDGER_RECORD``): what a lost ledger is
        rebuilt from. gzip without a timestamp: the same rows give the same bytes. Written in
        pieces of ``LEDGER_PIECE`` rows: a corpus's rows are never one string in memory."""
        import gzip
        import itertools

        rows = iter(rows)
        with open(self._path(LEDGER_RECORD), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            while piece := list(itertools.islice(rows, LEDGER_PIECE)):
                text = "".join(json.dumps(list(row), ensure_ascii=False) + "\n" for row in piece)
                f.write(text.encode("utf-8", errors="backslashreplace"))

    def write_tensors(self, rel: str, tensors: dict, metadata: dict[str, str] | None = None) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(self._path(rel)), metadata=metadata)
        fault_point(f"write-{rel}")  # test-only

    def folder(self, rel: str) -> Path:
        """A new, empty folder inside the version, for a library that writes its own files
        (``save_pretrained``). Whatever it holds is checksummed with the rest by ``finish``."""
        p = self._path(rel)
        p.mkdir()
        return p

    def _path(self, rel: str) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def finish(self, manifest: dict) -> Path:
        files = {}
        linked = self._linked_to_parent()
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                if rel in linked:  # the parent's very file (its token shards): its checksum
                    files[rel] = linked[rel]
                    continue
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
                files[rel] = sha256_file(p)
        shared = self._share_with_parent({k: v for k, v in files.items() if k not in linked})
        manifest = {**manifest, "format": FORMAT, "version": self.name, "files": files}
        if shared:
            manifest["shared_with_parent"] = shared
        text = json.dumps(manifest, indent=2, sort_keys=True)
        read_manifest(json.loads(text), self.name)  # what every reader accepts: a writer's mistake fails here
        manifest_path = self.tmp / MANIFEST
        with open(manifest_path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.tmp)
        fault_point("rename")  # test-only
        final = self.store.versions_dir / self.name
        os.rename(self.tmp, final)
        interrupts.release(self.on_interrupt)
        _fsync_dir(self.store.versions_dir)
        fault_point("renamed")  # test-only: a finished version that never becomes current
        if self.store.ledger.path.exists():  # a version with ledger rows (not a search's candidate)
            # Killed before this, or refused by a full disk: the version is in place all the
            # same, and recover() marks it.
            with contextlib.suppress(sqlite3.OperationalError):
                self.store.ledger.commit_version(self.name)
        return final

    def _linked_to_parent(self) -> dict[str, str]:
        """{file: the parent's checksum of it} for the files written as hard links to the parent's
        same file (``core/data/shards.py``: a chain's shards): one file on disk, checked when read."""
        if self.parent is None:
            return {}
        try:
            theirs = self.store.manifest(self.parent).get("files", {})
        except ModelError:
            return {}
        linked = {}
        for rel, digest in theirs.items():
            mine, source = self.tmp / rel, self.store.versions_dir / self.parent / rel
            with contextlib.suppress(OSError):
                a, b = mine.stat(), source.stat()
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                    linked[rel] = digest
        return linked

    def _share_with_parent(self, files: dict[str, str]) -> list[str]:
        """Replace each file whose checksum equals the parent's same file by a hard link to
        it: a day's version costs on disk only what changed (a tokenizer, a strategy's state,
        weights a family left untouched). The link is as good as a copy: versions are never
        modified in place, and deleting the parent (prune) leaves the link's data alone."""
        if self.parent is None:
            return []
        try:
            theirs = self.store.manifest(self.parent).get("files", {})
        except ModelError:
            return []
        shared = []
        for rel, digest in files.items():
            source = self.store.versions_dir / self.parent / rel
            if theirs.get(rel) != digest or not source.is_file() or sha256_file(source) != digest:
                continue
            link = self.tmp / f"{rel}.link-tmp"
            try:
                os.link(source, link)
            except OSError:  # a filesystem without hard links: keep the copy
                continue
            os.replace(link, self.tmp / rel)
            shared.append(rel)
        return shared

    def abandon(self) -> None:
        """Remove the unfinished version and any rows already written for it (best effort:
        rows of a version that is not there never count, and ``recover`` drops them)."""
        interrupts.release(self.on_interrupt)
        shutil.rmtree(self.tmp, ignore_errors=True)
        ledger = self.store.ledger
        if not (self.store.versions_dir / self.name).exists() and ledger.path.exists():
            with contextlib.suppress(sqlite3.Error, OSError):  # the disk that failed the save
                if ledger.states().get(self.name) == "pending":
                    ledger.forget([self.name])

    def withdraw(self) -> None:
        """Remove the finished version when CURRENT could not be moved to it (a full disk):
        an accepted version CURRENT never named would be a sibling nobody chose, and the next
        run must build on CURRENT's version under this name. It goes by a ``.tmp-`` name, so
        ``recover`` finishes the removal if this is cut short; if even the rename is refused
        it stays, as a kill there leaves it (a version no chain includes)."""
        if self.store.current_name() == self.name:  # the pointer moved; its folder's fsync failed
            return
        doomed = self.store.versions_dir / f".tmp-{self.name}-{os.getpid()}-withdrawn"
        try:
            os.rename(self.store.versions_dir / self.name, doomed)
        except OSError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
        self.abandon()
        with contextlib.suppress(sqlite3.Error, OSError):  # known gone, though marked committed
            self.store.ledger.forget([self.name])


class VersionFiles:
    """Checksum-verified read access to one version's files: what a model family loads from.

    ``of(version)`` gives the same access to another version of the store, and
    ``model(version)`` loads another version through its own family (a version that
    holds only a delta, adapter weights, loads the version it builds on first).
    """

    def __init__(self, store: "ModelStore", version: str, manifest: dict | None = None,
                 loader: Callable[[str], Any] | None = None):
        self.store = store
        self.version = version
        self.manifest = manifest if manifest is not None else store.manifest(version)
        self.loader = loader  # set by core.models.load_version: version -> LanguageModel

    def has(self, rel: str) -> bool:
        return rel in self.manifest.get("files", {})

    def path(self, rel: str) -> Path:
        return self.store.verified_path(self.version, rel, self.manifest)

    def tensors(self, rel: str) -> dict:
        return self.store.read_tensors(self.version, rel, self.manifest)

    def text(self, rel: str) -> str:
        return self.store.read_text(self.version, rel, self.manifest)

    def json(self, rel: str) -> Any:
        try:
            return json.loads(self.text(rel))
        except ValueError as exc:
            raise ModelError(f"version {self.version}: {rel} is not valid JSON ({exc})") from None

    def folder(self, rel: str) -> Path:
        """A folder of the version (written with ``VersionWriter.folder``) after checking every
        file in it against its checksum, and that its ``.safetensors`` files are safetensors."""
        prefix = rel.rstrip("/") + "/"
        names = [name for name in self.manifest.get("files", {}) if name.startswith(prefix)]
        if not names:
            raise ModelError(f"version {self.version}: its manifest lists no files in {rel}/")
        on_disk = {p.relative_to(self.store.versions_dir / self.version).as_posix()
                   for p in (self.store.versions_dir / self.version / rel).rglob("*") if p.is_file()}
        extra = sorted(on_disk - set(names))
        if extra:  # a library reading the folder would read them too: refuse what is not checked
            raise ModelError(f"version {self.version}: {extra[0]} is not listed in its manifest; "
                             "refusing to load the folder")
        for name in names:
            path = self.path(name)
            if name.endswith(".safetensors"):
                check_safetensors_header(path, f"version {self.version}: {name}")
        return self.store.versions_dir / self.version / rel

    def of(self, version: str) -> "VersionFiles":
        return VersionFiles(self.store, version, loader=self.loader)

    def model(self, version: str) -> Any:
        """Another version's ``LanguageModel``, loaded through its own family."""
        if self.loader is None:
            raise ModelError(f"version {self.version}: no loader to read version {version} with")
        return self.loader(version)


# What retain itself puts in a model directory (anything else there is someone else's).
OWN_FILES = {"CURRENT", "versions", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm",
             "ledger.sqlite-journal", "rejects.jsonl", ".lock"}


class ModelStore:
    def __init__(self, root: str | Path, read_only: bool = False):
        """``read_only``: for a reading command, or a rank of several processes other than rank 0
        (``core/runtime/world.py``): its ledger opened read-only (``Ledger``), no rejects written."""
        self.root = Path(root)
        self.read_only = read_only
        if self.root.exists() and not self.root.is_dir():
            raise ModelError(f"{self.root} is a file, not a model directory")
        self.versions_dir = self.root / "versions"
        self.ledger = Ledger(self.root / "ledger.sqlite", read_only)
        # A year of daily versions is a chain 365 long, and an update asks for it (and for its
        # manifests) from many steps: each manifest is parsed once per store, a plain os.stat
        # says whether it changed since, and each parent link is read once (see ``chain``).
        self._versions_str = str(self.versions_dir)
        self._manifests: dict[str, tuple[tuple[int, int, int], dict]] = {}
        self._parents: dict[str, str | None] = {}
        # The steps that look at every version (prune's plan, the lineage root, the retrain
        # advice) need a few fields of each manifest, not its 8 KB: ``summary`` serves them from
        # versions/.index.json while the manifest's (mtime, size) match, and writers refresh it.
        self._index: dict[str, list] | None = None
        self._index_changed = False

    # --- reading -----------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / "CURRENT").is_file()

    def foreign_entries(self) -> list[str]:
        """What is in the directory that retain did not put there (sorted names)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name not in OWN_FILES
                      and not p.name.startswith(".CURRENT.tmp-"))

    def current_name(self) -> str | None:
        """What CURRENT holds, unchecked; None when it cannot be read."""
        try:
            return (self.root / "CURRENT").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def current(self) -> str:
        path = self.root / "CURRENT"
        if not path.is_file():
            unpointed = self.unpointed_first_version()
            if unpointed is not None:
                raise ModelError(f"{self.root}: version {unpointed} is complete but was never made current "
                                 "(its run was cut short); any writing command completes it, e.g. "
                                 f"retain rollback --model {self.root} {unpointed}")
            if self.root.exists() and any(self.root.iterdir()):
                raise ModelError(f"{self.root} holds no current model (no CURRENT file); "
                                 f"train one with: retain train --model {self.root} --data ...")
            raise ModelError(f"no model in {self.root}; train one first with: "
                             f"retain train --model {self.root} --data ...")
        try:
            name = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise self._broken_current("is not text (damaged?)") from None
        if not name:
            raise self._broken_current("is empty")
        if "/" in name or name.startswith(".") or not name.isprintable():
            raise self._broken_current(f"holds {name[:40]!r}, which is not a version name")
        if not (self.versions_dir / name).is_dir():
            raise self._broken_current(f"names version '{name}', which does not exist")
        try:
            status = self.manifest(name).get("status")
        except ModelError as exc:
            raise self._broken_current(f"names version '{name}', which is not a complete version ({exc})") from None
        if status != "accepted":
            was = "was rejected by the quality gate" if status == "rejected" else f"is {status!r}, not accepted"
            raise self._broken_current(f"names version '{name}', which {was}")
        return name

    def _broken_current(self, what: str) -> ModelError:
        """CURRENT cannot be used: what is wrong, and the repair, naming the newest accepted
        version (a hint: from the index)."""
        newest = None
        for version in reversed(self.versions()):
            try:
                if self.summary(version)["status"] == "accepted" and not self.summary(version)["pruned"]:
                    newest = version
                    break
            except ModelError:
                continue
        return ModelError(f"{self.root / 'CURRENT'} {what}; make an accepted version current with: retain rollback "
                          f"--model {self.root} {newest or 'VERSION'}"
                          + (f" (the newest accepted version is {newest})" if newest else ""))

    def versions(self) -> list[str]:
        try:  # scandir: the entry's type comes with the listing, no stat per version
            with os.scandir(self.versions_dir) as entries:
                return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def manifest(self, version: str) -> dict:
        """The version's manifest, checked; shared, do not modify it. Parsed once per store
        while the file is unchanged (a stat decides: prune rewrites a stub's manifest)."""
        path = f"{self._versions_str}/{version}/{MANIFEST}"  # no pathlib: this runs per version, often
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(version) from None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._manifests.get(version)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = self._read_manifest(version, path)
        self._manifests[version] = (key, data)
        self._parents[version] = data.get("parent")
        return data

    def _missing(self, version: str) -> ModelError:
        if not (self.versions_dir / version).is_dir():
            return ModelError(f"version {version} is missing: {self.versions_dir / version} is absent (moved aside? "
                              "a volume not mounted?)")
        return ModelError(f"version {version}: {MANIFEST} is missing")

    def summary(self, version: str) -> dict:
        """What walks over many versions read of a version's manifest: ``parent``, ``kind``,
        ``status``, ``pruned`` (bool), ``builds_on`` (the version its adapter weights apply to),
        ``counts`` (trained, holdout, tokens, bytes, replay_tokens), ``epochs`` (those it ran) and
        ``states`` (the strategies whose state it keeps, ``strategy/<name>.*``). From the index while the manifest's
        (mtime, size) are those it was summarized at; else from the manifest (checked)."""
        path = f"{self._versions_str}/{version}/{MANIFEST}"
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(version) from None
        index = self._index if self._index is not None else self._load_index()
        entry = index.get(version)
        if entry is not None and entry[0] == st.st_mtime_ns and entry[1] == st.st_size:
            return entry[2]
        summary = summarize(self.manifest(version))
        index[version] = [st.st_mtime_ns, st.st_size, summary]
        self._index_changed = True
        return summary

    def summary_from_manifest(self, version: str) -> dict:
        """``summary`` read from the manifest itself, never the index: what a step that deletes
        decides by. An index entry that disagrees is corrected (the next ``save_index`` writes it)."""
        summary = summarize(self.manifest(version))
        index = self._index if self._index is not None else self._load_index()
        entry = index.get(version)
        if entry is not None and entry[2] != summary:
            st = os.stat(self.versions_dir / version / MANIFEST)
            index[version] = [st.st_mtime_ns, st.st_size, summary]
            self._index_changed = True
        return summary

    def _load_index(self) -> dict[str, list]:
        self._index = {}
        try:
            with open(self.versions_dir / INDEX, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):  # none yet, or unreadable: it is only a cache
            return self._index
        if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("versions"), dict):
            self._index = {k: v for k, v in data["versions"].items()  # an entry missing a field: read again
                           if isinstance(v, list) and len(v) == 3 and isinstance(v[2], dict)
                           and SUMMARY_FIELDS <= v[2].keys()}
        return self._index

    def save_index(self) -> None:
        """Bring the index up to date (new versions, stubs the keep policy rewrote: a stat
        each, a parse for those alone) and write it if it changed; the caller holds the lock."""
        present = self.versions()
        for version in present:
            try:
                self.summary(version)
            except ModelError:  # a broken version is reported where it is used, not here
                continue
        if not self._index_changed or self._index is None:
            return
        present = set(present)
        data = {"format": FORMAT, "versions": {k: v for k, v in sorted(self._index.items()) if k in present}}
        tmp = self.versions_dir / f".tmp-index-{os.getpid()}.json"
        try:
            with interrupts.shielded():  # a cache: no fsync, but never half a file
                tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
                os.replace(tmp, self.versions_dir / INDEX)
        except OSError:
            tmp.unlink(missing_ok=True)
            return
        self._index_changed = False

    def _read_manifest(self, version: str, path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise self._missing(version) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"version {version}: {MANIFEST} is not valid JSON ({exc})") from None
        read_manifest(data, version)  # checked: a manifest that does not fit is a ModelError naming the field
        return data

    def lineage_root(self, chain: list[str]) -> str | None:
        """The version that made the model of ``chain`` (newest first): its last full training
        or import, where its architecture, tokenizer and retention baseline come from."""
        for version in chain:
            if self.summary(version)["kind"] in ROOT_KINDS:
                return version
        return None

    def chain(self, version: str | None = None) -> list[str]:
        """``version`` (default: current) and its ancestors, newest first. A version's parent
        never changes once it is in place (a stub keeps it), so each parent link is read once
        per store: a later walk, or one reaching a version walked before, follows the links in
        memory. Prune forgets them when it deletes versions (``forget_chains``)."""
        out: list[str] = []
        seen: set[str] = set()
        name: str | None = version or self.current()
        while name and name not in seen:
            out.append(name)
            seen.add(name)
            if name not in self._parents:
                self._parents[name] = self.summary(name)["parent"]
            name = self._parents[name]
        return out

    def forget_chains(self) -> None:
        """Versions were deleted: read the parent links again when next asked."""
        self._parents.clear()

    def verified_path(self, version: str, rel: str, manifest: dict | None = None) -> Path:
        """Path of a version's file after checking it against the manifest's checksum."""
        manifest = manifest or self.manifest(version)
        expected = manifest.get("files", {}).get(rel)
        path = self.versions_dir / version / rel
        if expected is None:
            raise ModelError(f"version {version}: {rel} is not listed in its manifest")
        if not path.is_file():
            raise ModelError(f"version {version}: {rel} is listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise ModelError(f"version {version}: {rel} does not match its checksum "
                             f"(truncated or modified){self._sharing(version, rel, path)}; refusing to load it")
        return path

    def damaged_shared_files(self, version: str) -> list[str]:
        """The checksum errors of ``version``'s files that are hard links shared with other
        versions (one damaged file breaks them all): cheap to check (small files, mostly),
        so ``retain status`` checks them; a file of the version's own is checked on load."""
        manifest = self.manifest(version)
        errors = []
        for rel in manifest.get("files", {}):
            path = self.versions_dir / version / rel
            try:
                if path.stat().st_nlink > 1:
                    self.verified_path(version, rel, manifest)
            except OSError:
                continue  # missing: reported on load
            except ModelError as exc:
                errors.append(str(exc))
        return errors

    def _sharing(self, version: str, rel: str, path: Path) -> str:
        """A damaged file that is one file on disk, hard-linked into several versions
        (``_share_with_parent``): which versions it breaks, said once."""
        st = path.stat()
        if st.st_nlink < 2:
            return ""
        sharing = []
        for other in self.versions():
            try:
                o = (self.versions_dir / other / rel).stat()
            except OSError:
                continue
            if (o.st_ino, o.st_dev) == (st.st_ino, st.st_dev):
                sharing.append(other)
        if len(sharing) < 2:
            return ""
        names = ", ".join(sharing) if len(sharing) <= 6 else f"{', '.join(sharing[:3])}, ..., {sharing[-1]}"
        return (f"; it is one file on disk, shared by hard link by {len(sharing)} versions ({names}): "
                f"each of them fails this check, and none is usable until {rel} is restored "
                "(from a backup, or a copy of the same version)")

    def read_tensors(self, version: str, rel: str, manifest: dict | None = None) -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.verified_path(version, rel, manifest)
        check_safetensors_header(path, f"version {version}: {rel}")
        try:
            return load_file(str(path))  # safetensors only: never pickle
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"version {version}: {rel} is not a valid safetensors file ({exc})") from None

    def read_text(self, version: str, rel: str, manifest: dict | None = None) -> str:
        path = self.verified_path(version, rel, manifest)
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(f"version {version}: {rel} is not UTF-8 text ({exc.reason})") from None

    def read_jsonl(self, version: str, rel: str, manifest: dict | None = None) -> list[dict]:
        path = self.verified_path(version, rel, manifest)
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"version {version}: {rel} is not valid JSON Lines ({exc})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ModelError(f"version {version}: {rel} holds a line that is not a JSON object")
        return rows

    def holdout(self, chain: list[str]) -> list[dict]:
        """Held-out items of every version in ``chain`` (never trained on): the retention set."""
        items = []
        for version in chain:
            m = self.manifest(version)
            if HOLDOUT in m.get("files", {}):
                items.extend(self.read_jsonl(version, HOLDOUT, m))
        return items

    # --- writing -----------------------------------------------------------
    def next_version_name(self) -> str:
        names = self.versions()
        if self.ledger.path.exists():  # a saved version whose folder is absent keeps its name
            names += list(self.ledger.states())
        nums = [int(v) for v in names if v.isdigit()]
        return f"{(max(nums) if nums else 0) + 1:04d}"

    def begin_version(self, parent: str | None = None) -> VersionWriter:
        """A new version being written; ``parent``: the version its identical files link to."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        name = self.next_version_name()
        tmp = self.versions_dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        writer = VersionWriter(self, name, tmp, parent)
        writer.on_interrupt = interrupts.on_interrupt(writer.abandon)
        return writer

    def set_current(self, version: str) -> None:
        if not (self.versions_dir / version / MANIFEST).is_file():
            raise ModelError(f"cannot make {version} current: it is not a complete version")
        atomic_write_text(self.root / "CURRENT", version + "\n")

    def append_rejects(self, rejects: list, run_id: str) -> Path:
        path = self.root / "rejects.jsonl"
        if rejects and not self.read_only:  # several processes: rank 0 writes them, once
            self.root.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a plugin's reject holding a lone surrogate still writes valid JSON;
            # shielded: an interrupt leaves no half-written line
            with interrupts.shielded(), open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
                for r in rejects:
                    f.write(json.dumps({"run": run_id, "time": now_iso(), **r.to_json()},
                                       ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return path

    def recover(self) -> list[str]:
        """Clean up after a process that died mid-update, mid-prune or mid-rollback, and
        rebuild a lost ledger; returns one warning per thing done. Call with the lock held."""
        notes = []
        if self.versions_dir.is_dir():
            notes += self._finish_prune()
            for p in self.versions_dir.iterdir():
                if p.name.startswith(".tmp-index-"):  # the index's write, cut short: a cache
                    p.unlink(missing_ok=True)
                elif p.name.startswith(".tmp-shards-") and _alive(p.name):
                    continue  # a run of a live process tokenized it (the Python API's fine_tune)
                elif p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)
                    notes.append(f"recovered from an interrupted run: removed unfinished version {p.name}")
            for p in self.versions_dir.glob("*/.*.tmp-*"):  # a stub's manifest or a page, cut short
                p.unlink(missing_ok=True)
        for p in self.root.glob(".CURRENT.tmp-*"):  # killed before the atomic replace
            p.unlink(missing_ok=True)
        unpointed = self.unpointed_first_version()
        if unpointed is not None:  # killed between its rename and CURRENT: finish the job
            atomic_write_text(self.root / "CURRENT", unpointed + "\n")
            notes.append(f"recovered from an interrupted run: made version {unpointed} current "
                         "(its run ended before CURRENT was written)")
        if _drop_partial_last_line(self.root / "rejects.jsonl"):
            notes.append("recovered from an interrupted run: removed a half-written last line of rejects.jsonl")
        if self.versions() or self.ledger.path.exists():
            notes += self._settle_ledger()
        return notes

    def _finish_prune(self) -> list[str]:
        """A prune killed half way: the versions it was deleting go, rows included, and the
        stubs whose manifest it had rewritten lose the files their manifest no longer lists."""
        notes = []
        for p in self.versions_dir.glob(PRUNED_PREFIX + "*"):
            version = p.name[len(PRUNED_PREFIX):].rsplit("-", 1)[0]
            self.ledger.forget([version])
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"recovered from an interrupted prune: deleted version {version}")
        intent = self.versions_dir / PRUNE_INTENT
        try:
            stubs = json.loads(intent.read_text(encoding="utf-8")).get("stub", [])
        except (OSError, ValueError, AttributeError):
            stubs = []
        for version in stubs:
            for tmp in (self.versions_dir / version).glob(f".{MANIFEST}.tmp-*"):  # killed mid-rewrite
                tmp.unlink()
            try:
                removed = self.manifest(version).get("pruned", {}).get("removed", [])
            except ModelError:
                continue
            left = [rel for rel in removed if ".." not in rel.split("/") and not rel.startswith("/")
                    and (self.versions_dir / version / rel).exists()]
            for rel in left:
                (self.versions_dir / version / rel).unlink()
                with contextlib.suppress(OSError):  # strategy/, emptied: as prune leaves a stub
                    (self.versions_dir / version / rel).parent.rmdir()
            if left:
                notes.append(f"recovered from an interrupted prune: removed {len(left)} files of stub {version}")
        intent.unlink(missing_ok=True)
        return notes

    def _settle_ledger(self) -> list[str]:
        """Rows of a version never renamed into place are dropped; a version renamed but not yet
        marked is marked; versions the ledger has no record of (a deleted or emptied ledger)
        are rebuilt from their own records. A saved version whose folder is absent keeps its rows."""
        notes = []
        present, states = self.versions(), self.ledger.states()
        dropped = self.ledger.forget_versions_except(present)
        if dropped:
            notes.append(f"recovered from an interrupted run: dropped {dropped} ledger rows of unfinished versions")
        for version in present:
            if states.get(version) == "pending":  # killed between the rename and the mark
                self.ledger.commit_version(version)
        missing = sorted(v for v, state in states.items() if state == "committed" and v not in set(present))
        if missing:
            notes.append(f"version{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"{'are' if len(missing) > 1 else 'is'} missing from {self.versions_dir} (moved aside? "
                         "a volume not mounted?): the ledger keeps what it learned, and its name is not reused")
        unrecorded = [v for v in present if v not in states]
        if unrecorded:
            notes += self._rebuild_ledger(unrecorded)
        return notes

    def _rebuild_ledger(self, versions: list[str]) -> list[str]:
        """Rows of ``versions`` from their ``LEDGER_RECORD``; a version of CURRENT's chain that
        learned items and has no record is an error: its items would be learned again."""
        rebuilt, lacking, near = [], [], False
        for version in versions:
            try:
                manifest = self.manifest(version)
            except ModelError:
                continue  # a broken version is reported where it is used
            counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
            if LEDGER_RECORD in manifest.get("files", {}):
                self.ledger.add(version, self.read_ledger_record(version, manifest))
                rebuilt.append(version)
                near |= "minhash" in ((manifest.get("config") or {}).get("dedupers") or [])
            elif counts.get("trained") or counts.get("holdout"):
                lacking.append(version)
                continue
            self.ledger.commit_version(version)
        try:
            chain = set(self.chain()) if lacking else set()
        except ModelError:  # no usable CURRENT: the command says so; rollback repairs it
            chain = set()
        needed = [v for v in lacking if v in chain]
        if needed:
            raise ModelError(f"{self.ledger.path} has no record of what version{'s' if len(needed) > 1 else ''} "
                             f"{', '.join(needed)} of the current model learned (deleted, emptied or replaced?), "
                             f"and {'they were' if len(needed) > 1 else 'it was'} saved before versions kept "
                             f"their own record ({LEDGER_RECORD}): restore ledger.sqlite from a backup, or "
                             "retrain (retain train); refusing to treat those items as new")
        notes = [f"{self.ledger.path.name} had no record of what version{'s' if len(rebuilt) > 1 else ''} "
                 f"{', '.join(rebuilt)} learned (deleted or emptied?): rebuilt from "
                 f"{'their' if len(rebuilt) > 1 else 'its'} {LEDGER_RECORD}"] if rebuilt else []
        if near:  # the index holds signatures of the texts, which no version keeps
            notes.append("the near-duplicate (minhash) index is not rebuilt: exact duplicates of what those "
                         "versions learned are still skipped, near-duplicates only of what is learned from now on")
        return notes

    def check_ledger(self, chain: list[str]) -> None:
        """Refuse to look items up in a ledger that lost the rows of ``chain`` (deleted or emptied,
        and not rebuilt yet: a reading command rebuilds nothing): every item would look new."""
        path = self.ledger.path
        states = self.ledger.states() if path.exists() and path.stat().st_size else {}
        lost = [v for v in sorted(chain) if v not in states
                and any(self.summary(v)["counts"].get(k) for k in ("trained", "holdout"))]
        if lost:
            raise ModelError(f"{path} has no record of what version{'s' if len(lost) > 1 else ''} "
                             f"{', '.join(lost)} learned (deleted or emptied?): the next writing command "
                             "(retain update, prune or rollback) rebuilds it from the versions' records; "
                             "until then what is new cannot be told")

    def read_ledger_record(self, version: str, manifest: dict | None = None) -> list[tuple[str, str, str, str]]:
        """A version's ``LEDGER_RECORD`` rows (hash, role, source, origin), checked."""
        import gzip

        path = self.verified_path(version, LEDGER_RECORD, manifest)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                rows = [tuple(json.loads(line)) for line in f if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"version {version}: {LEDGER_RECORD} is not valid ({exc})") from None
        if not all(len(r) == 4 and all(isinstance(x, str) or x is None for x in r) for r in rows):
            raise ModelError(f"version {version}: {LEDGER_RECORD} holds a row that is not (hash, role, source, origin)")
        return rows

    @contextlib.contextmanager
    def undone_if_failed(self) -> Iterator[None]:
        """Around a command that may make this directory a model (train, import): if it fails
        before a version is in place, what it created goes (``.lock``, the ledger, ``versions/``,
        ``rejects.jsonl``, the directory and the parents it made), so the disk is as before."""
        made = [p for p in (self.root, *self.root.parents) if not p.exists()]
        before = set(os.listdir(self.root)) if self.root.is_dir() else set()
        try:
            yield
        except Exception:
            if not self.versions():
                self.ledger.close()
                self._remove_created(before, made)
            raise

    def _remove_created(self, before: set[str], made: list[Path]) -> None:
        """Only while holding the lock again: a writer that came since (or the one whose lock
        made this command fail) keeps everything."""
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR)
        except OSError:
            return  # never got as far as the lock: nothing was created
        with contextlib.suppress(OSError):  # best effort: the command's own error is the one to tell
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            for name in sorted(set(os.listdir(self.root)) - before, key=lambda n: n == ".lock"):
                if name in OWN_FILES and (self.root / name).is_dir():
                    shutil.rmtree(self.root / name)
                elif name in OWN_FILES:
                    (self.root / name).unlink()  # .lock last, still held
        os.close(fd)
        with contextlib.suppress(OSError):
            for folder in made:  # the model directory first, then the parents made for it
                folder.rmdir()

    def unpointed_first_version(self) -> str | None:
        """A version a train or import finished writing into a directory without CURRENT, and
        was killed before CURRENT named it: the newest version, accepted, the start of its
        lineage, every file matching its checksum. None otherwise (the usual case: CURRENT is there)."""
        if (self.root / "CURRENT").exists() or not self.versions():
            return None
        newest = self.versions()[-1]
        try:
            m = self.manifest(newest)
            if m.get("status") != "accepted" or m.get("kind") not in ROOT_KINDS or m.get("parent") is not None:
                return None
            for rel in m["files"]:
                self.verified_path(newest, rel, m)
        except (ModelError, OSError):
            return None
        return newest

    def check_free_space(self, needed: int, what: str) -> None:
        """Refuse before writing anything a save the disk cannot hold (``needed`` bytes)."""
        free = free_bytes(self.root)
        if free < needed:
            raise StorageError(f"the disk of {self.root} has {human_bytes(free)} available, and {what} "
                               f"needs at least {human_bytes(needed)}: free space on it (or move the model "
                               "directory to a larger disk), then run the command again")

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[None]:
        """One writer at a time. Waits up to ``wait`` seconds, then raises LockedError.
        Whatever the disk refuses while it is held (a write, the ledger's, the lock's own)
        leaves as a StorageError naming the disk and the remedy (``storage_error``)."""
        with self._storage_errors():
            with self._flock(wait):
                yield

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise  # said already, in its own words (the lock's: a read-only directory)
        except Exception as exc:
            error = storage_error(exc, self.root)
            if error is None:
                raise
            raise error from exc

    @contextlib.contextmanager
    def _flock(self, wait: float) -> Iterator[None]:
        try:  # the first write of every writing command: a read-only directory is refused here
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            error = refused_write(self.root, exc)
            if error is None:
                raise
            raise error from None
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                        raise LockedError(
                            f"{self.root} is being updated by another process (pid {holder}); "
                            "retry later or pass --wait SECONDS") from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock
