"""The sources ML data ships in: Parquet, Arrow, Hugging Face datasets, gzip/zstd files, SQL.

Each on a small fixture with a record it must reject, and why; each streams: records come
while the file (table) is being read, in bounded batches, never after reading all of it.
PostgreSQL runs for real, a server started in a temporary folder (skipped where absent).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import pwd
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.errors import SourceError
from retain.core.data.ingest import collect, folder_files, source_for
from retain.core.data.items import Item, Reject
from retain.core.pluginmanager import Registry, describe_plugins, make_plugin_manager
from retain.plugin import hookimpl

from conftest import TINY

PARQUET = "pip install 'retain[parquet]'"


@pytest.fixture(scope="module")
def registry():
    return Registry(make_plugin_manager())


def _read(registry, spec, *overrides):
    return collect([spec], registry, load_config(None, list(overrides)))


def _got(items, rejects):
    return [(i.text, i.line) for i in items], [(r.line, r.reason) for r in rejects]


def _table(pa):
    # A null, a blank string and an over-long text: each a reject, the rest items, in order.
    return pa.table({"id": [1, 2, 3, 4, 5], "body": ["alpha one", None, "   ", "x" * 64, "epsilon five"],
                     "label": [1, 2, 3, 4, 5]})


ROW_REJECTS = [(2, "field 'body' is null, expected a string"), (3, "field 'body' is empty"),
               (4, "text is 64 bytes, over the 32-byte limit (options.{source}.max_record_bytes)")]


# --- Parquet and Arrow ------------------------------------------------------------------------

def test_parquet_reads_the_text_field_in_batches_and_rejects_with_reasons(registry, tmp_path):
    pa = pytest.importorskip("pyarrow", reason=PARQUET)
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(_table(pa), path, row_group_size=2)
    items, rejects = _read(registry, str(path), "options.parquet.field=body", "options.parquet.batch_size=2",
                           "options.parquet.max_record_bytes=32")
    assert _got(items, rejects) == ([("alpha one", 1), ("epsilon five", 5)],
                                    [(n, r.format(source="parquet")) for n, r in ROW_REJECTS])
    assert {i.source for i in items} == {"parquet"} and items[0].file == str(path)
    # The default field is text: a file without it is one reject naming the columns there.
    items, rejects = _read(registry, str(path))
    assert items == [] and [(r.line, r.reason) for r in rejects] == [
        (None, "no field 'text' (columns: id, body, label); set options.parquet.field or --text-field")]
    # A column that is not text: every record a reject saying what it holds, not a crash.
    items, rejects = _read(registry, str(path), "options.parquet.field=label")
    assert items == [] and {r.reason for r in rejects} == {"field 'label' is int, expected a string"}
    assert len(rejects) == 5


def test_not_a_parquet_file_is_a_reject_and_pyarrow_missing_names_the_extra(registry, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow", reason=PARQUET)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    items, rejects = _read(registry, str(bad))
    assert items == [] and rejects[0].reason.startswith("not a Parquet file")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(SourceError, match=r"needs pyarrow: pip install 'retain\[parquet\]'"):
        _read(registry, str(bad))


def test_invalid_utf8_in_a_string_column_rejects_that_record_only(registry, tmp_path):
    pa = pytest.importorskip("pyarrow", reason=PARQUET)
    import pyarrow.parquet as pq

    # A string column is not checked for UTF-8 when written: a broken exporter can store Latin-1.
    column = pa.array([b"good text", b"caf\xe9 latin-1", b"fine again"], type=pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": column}), tmp_path / "d.parquet")
    items, rejects = _read(registry, str(tmp_path / "d.parquet"))
    assert _got(items, rejects) == ([("good text", 1), ("fine again", 3)],
                                    [(2, "field 'text' is invalid UTF-8 at byte 3")])


@pytest.mark.parametrize("kind", ["feather", "stream"])
def test_arrow_files_and_streams_are_read_with_rejects(registry, tmp_path, kind):
    pa = pytest.importorskip("pyarrow", reason=PARQUET)
    import pyarrow.feather

    table = _table(pa)
    if kind == "feather":  # Feather v2: the IPC file format, random access
        path = tmp_path / "d.feather"
        pyarrow.feather.write_feather(table, path, chunksize=2)
        spec = str(path)
    else:  # the IPC stream format (what save_to_disk writes), named by the source
        path = tmp_path / "d.data"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
        spec = f"arrow:{path}"
    items, rejects = _read(registry, spec, "options.arrow.field=body", "options.arrow.batch_size=1",
                           "options.arrow.max_record_bytes=32")
    assert _got(items, rejects) == ([("alpha one", 1), ("epsilon five", 5)],
                                    [(n, r.format(source="arrow")) for n, r in ROW_REJECTS])


def test_text_field_option_on_the_command_line(base_model, tmp_path):
    pa = pytest.importorskip("pyarrow", reason=PARQUET)
    import pyarrow.parquet as pq

    path = tmp_path / "new.parquet"
    pq.write_table(pa.table({"body": [f"a new sentence number {i} about parquet" for i in range(12)] + [None]}),
                   path)
    sets = [a for s in TINY for a in ("--set", s)]
    r = CliRunner().invoke(app, ["update", "-d", str(path), "-m", str(base_model), "--dry-run", "--json",
                                 "--text-field", "body", *sets])
    assert r.exit_code == 0, r.output
    counts = json.loads(r.stdout)["counts"]
    assert (counts["collected"], counts["rejected"]) == (12, 1)


# --- Hugging Face datasets --------------------------------------------------------------------

def test_a_saved_dataset_folder_is_read_by_datasets_with_rejects(registry, tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install 'retain[datasets]'")
    one = datasets.Dataset.from_dict({"text": ["hf one", "", "hf three"], "n": [1, 2, 3]})
    one.save_to_disk(str(tmp_path / "ds"))
    both = datasets.DatasetDict({"train": one, "test": datasets.Dataset.from_dict({"text": ["held", None]})})
    both.save_to_disk(str(tmp_path / "dd"))
    # --data FOLDER: save_to_disk's files mark it, so datasets reads it whole (not file by file as text).
    assert source_for(str(tmp_path / "ds"), registry) == ("datasets", str(tmp_path / "ds"))
    items, rejects = _read(registry, str(tmp_path / "ds"))
    assert _got(items, rejects) == ([("hf one", 1), ("hf three", 3)], [(2, "field 'text' is empty")])
    items, rejects = _read(registry, str(tmp_path / "dd"))
    assert [(i.text, i.file) for i in items] == [("hf one", f"{tmp_path / 'dd'}[train]"),
                                                 ("hf three", f"{tmp_path / 'dd'}[train]"),
                                                 ("held", f"{tmp_path / 'dd'}[test]")]
    assert [(r.file, r.line, r.reason) for r in rejects] == [
        (f"{tmp_path / 'dd'}[train]", 2, "field 'text' is empty"),
        (f"{tmp_path / 'dd'}[test]", 2, "field 'text' is null, expected a string")]
    items, _ = _read(registry, str(tmp_path / "dd"), "options.datasets.split=test")
    assert [i.text for i in items] == ["held"]
    # In a --data folder beside other files, the saved dataset is one entry.
    (tmp_path / "notes.txt").write_text("a paragraph")
    assert [s for s, _ in folder_files(str(tmp_path), registry)] == ["datasets", "datasets", "text"]


def test_datasets_reads_local_data_files_and_never_the_hub(registry, tmp_path):
    pytest.importorskip("datasets", reason="pip install 'retain[datasets]'")
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "from a data file"}\n{"text": 7}\n'))
    items, rejects = _read(registry, f"datasets:{path}")
    assert [i.text for i in items] == ["from a data file"] and len(rejects) == 1
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(SourceError, match="retain never downloads"):
        _read(registry, "datasets:someone/some_dataset")


# --- compressed JSONL, text, CSV ---------------------------------------------------------------

def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard", reason="pip install 'retain[zstd]'")
    return zstandard.ZstdCompressor().compress(data)


JSONL = b'{"text": "first item"}\n{"text": 42}\nnot json\n{"text": "fourth item"}\n'


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_is_read_with_its_rejects(registry, tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    path.write_bytes(gzip.compress(JSONL) if suffix.endswith(".gz") else _zstd(JSONL))
    assert source_for(str(path), registry)[0] == "jsonl"
    items, rejects = _read(registry, str(path))
    assert [(i.text, i.line) for i in items] == [("first item", 1), ("fourth item", 4)]
    assert [(r.line, r.reason.split(" (")[0]) for r in rejects] == [
        (2, "field 'text' is int, expected a string"), (3, "invalid JSON: Expecting value")]


def test_compressed_text_and_csv_and_a_name_that_does_not_say_so(registry, tmp_path):
    (tmp_path / "t.txt.zst").write_bytes(_zstd(b"para one\nstill one\n\n\xff bad\n\npara three\n"))
    items, rejects = _read(registry, str(tmp_path / "t.txt.zst"))
    assert _got(items, rejects) == ([("para one\nstill one", 1), ("para three", 6)],
                                    [(4, "line 4: invalid UTF-8 at byte 0")])
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"id,text\n1,hello there\n2,\n"))
    items, rejects = _read(registry, str(tmp_path / "c.csv.gz"))
    assert _got(items, rejects) == ([("hello there", 2)], [(3, "column 'text' is empty")])
    (tmp_path / "whole.gz").write_bytes(gzip.compress(b"a whole file of text\n"))  # the bytes say gzip
    items, _ = _read(registry, f"text:{tmp_path / 'whole.gz'}", "options.text.split=file",
                     "options.text.max_record_bytes=20")
    assert items == []
    items, _ = _read(registry, f"text:{tmp_path / 'whole.gz'}", "options.text.split=file")
    assert [i.text for i in items] == ["a whole file of text"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_a_compressed_file_cut_short_keeps_its_lines_and_rejects_the_rest(registry, tmp_path, suffix):
    data = b"".join(b'{"text": "item %d"}\n' % i for i in range(20000))
    packed = gzip.compress(data) if suffix.endswith(".gz") else _zstd(data)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(packed[: len(packed) // 2])
    items, rejects = _read(registry, str(path))
    assert 1000 < len(items) < 20000 and items[0].text == "item 0"
    last = rejects[-1]
    assert last.reason.startswith("compressed data cut short") and "the rest of the file is lost" in last.reason
    assert last.line == items[-1].line + 1 or last.line == items[-1].line + 2  # a half line may be rejected


# --- SQL ----------------------------------------------------------------------------------------

SQL = "pip install 'retain[sql]'"


def _sqlite(path: Path, rows) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER, body TEXT)")
    db.executemany("INSERT INTO notes VALUES (?, ?)", rows)
    db.commit()
    db.close()
    return path


def test_sql_on_sqlite_by_table_or_query_and_it_never_writes(registry, tmp_path):
    pytest.importorskip("sqlalchemy", reason=SQL)
    db = _sqlite(tmp_path / "n.db", [(1, "sql one"), (2, None), (3, ""), (4, "sql four")])
    url = f"sqlite:///{db}"
    items, rejects = _read(registry, f"sql:{url}?table=notes&column=body")
    assert _got(items, rejects) == ([("sql one", 1), ("sql four", 4)],
                                    [(2, "column 'body' is null, expected a string"), (3, "column 'body' is empty")])
    assert {(i.source, i.file) for i in items} == {("sql", url)}
    items, rejects = _read(registry, f"sql:{url}?query=SELECT+body+FROM+notes+WHERE+id+>+2+ORDER+BY+id")
    assert _got(items, rejects) == ([("sql four", 2)], [(1, "column 'body' is empty")])
    items, _ = _read(registry, f"sql:{url}", "options.sql.table=notes", "options.sql.column=body",
                     "options.sql.batch_size=1")
    assert [i.text for i in items] == ["sql one", "sql four"]
    with pytest.raises(SourceError, match="readonly"):
        _read(registry, f"sql:{url}?query=DELETE+FROM+notes")
    assert sqlite3.connect(db).execute("SELECT count(*) FROM notes").fetchone() == (4,)
    with pytest.raises(SourceError, match="give a query or a table"):
        _read(registry, f"sql:{url}")
    with pytest.raises(SourceError, match="no such table: nope"):
        _read(registry, f"sql:{url}?table=nope")
    with pytest.raises(SourceError, match="not found"):
        _read(registry, f"sql:sqlite:///{tmp_path / 'missing.db'}?table=notes")


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the test's own, on a Unix socket in a temporary folder; its URL."""
    pytest.importorskip("sqlalchemy", reason=SQL)
    pytest.importorskip("psycopg", reason=SQL)
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root without a 'nobody' user to start PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "nobody", "--"]
    folder = Path(tempfile.mkdtemp(prefix="retain-pg-"))
    if as_user:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    data, log = folder / "data", folder / "log"

    def run(*args):
        done = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    try:
        run(bindir / "initdb", "-D", data, "-U", "retain", "--auth=trust", "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-o",
            f"-k {folder} -c listen_addresses='' -c fsync=off", "start")
    except AssertionError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc}")
    try:
        yield f"postgresql://retain@/postgres?host={folder}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_sql_on_a_real_postgresql_server_streams_through_a_server_side_cursor(registry, postgres):
    import sqlalchemy as sa

    engine = sa.create_engine(postgres.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS notes")
        conn.exec_driver_sql("CREATE TABLE notes (id int, body text, n int)")
        conn.exec_driver_sql("CREATE SEQUENCE IF NOT EXISTS counter")
        conn.exec_driver_sql("INSERT INTO notes SELECT i, CASE WHEN i = 3 THEN NULL ELSE 'note ' || i END, i "
                             "FROM generate_series(1, 5000) AS i")
    items, rejects = _read(registry, f"sql:{postgres}&query=SELECT+body+FROM+notes+ORDER+BY+id+LIMIT+5")
    assert _got(items, rejects) == ([("note 1", 1), ("note 2", 2), ("note 4", 4), ("note 5", 5)],
                                    [(3, "column 'body' is null, expected a string")])
    items, rejects = _read(registry, f"sql:{postgres}&table=public.notes&column=n")
    assert items == [] and len(rejects) == 5000 and rejects[0].reason == "column 'n' is int, expected a string"

    # Server-side: after the first record, the server holds the source's cursor open, fetching by batch.
    source = registry.build("sources", "sql", load_config(None, ["options.sql.batch_size=100"]))
    records = iter(source.read(f"{postgres}&table=notes&column=body"))
    assert next(records).text.startswith("note ")
    with engine.connect() as conn:
        seen = conn.execute(sa.text("SELECT query FROM pg_stat_activity WHERE query LIKE 'FETCH FORWARD%'")).all()
    assert seen and all(0 < int(q.split()[2]) <= 100 for (q,) in seen), seen  # "FETCH FORWARD n FROM c"
    assert sum(1 for _ in records) == 4999
    with pytest.raises(SourceError, match="cannot execute nextval.. in a read-only transaction"):
        _read(registry, f"sql:{postgres}&query=SELECT+nextval('counter')::text")  # a query that writes
    engine.dispose()


# --- streaming: a record comes before the file is read ------------------------------------------

def _position(path: Path) -> int | None:
    """How far this process has read ``path`` through an open descriptor (Linux: /proc/self/fdinfo)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return int(Path(f"/proc/self/fdinfo/{fd}").read_text().split()[1])
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="reads /proc/self/fdinfo (Linux)")
@pytest.mark.parametrize("name", ["big.jsonl", "big.txt", "big.csv", "big.jsonl.gz", "big.txt.zst"])
def test_line_sources_yield_the_first_record_having_read_a_sliver_of_a_large_file(registry, tmp_path, name):
    noise = random.Random(0)  # compressed, the file is still large
    lines = b"text\n" + b"".join(b'"record %d: %s"\n' % (i, noise.randbytes(24).hex().encode()) for i in range(200_000))
    path = tmp_path / name
    path.write_bytes(gzip.compress(lines, 1) if name.endswith(".gz") else
                     _zstd(lines) if name.endswith(".zst") else lines)
    spec_source, _ = source_for(str(path), registry)
    source = registry.build("sources", spec_source, load_config(None, ["options.text.split=line"]))
    records = iter(source.read(str(path)))
    assert isinstance(next(records), (Item, Reject))
    read = _position(path)
    assert read is not None and read < path.stat().st_size / 20, (read, path.stat().st_size)
    assert sum(1 for _ in records) >= 200_000 - 1


def test_columnar_and_sql_sources_hold_a_batch_not_the_file(registry, tmp_path):
    pa = pytest.importorskip("pyarrow", reason=PARQUET)
    pytest.importorskip("sqlalchemy", reason=SQL)
    import pyarrow.feather
    import pyarrow.parquet as pq

    texts = [f"record {i} " + "with words that make the text a hundred bytes long " * 2 for i in range(100_000)]
    table = pa.table({"text": texts})  # about 11 MB of text
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=5000, compression="none")
    pyarrow.feather.write_feather(table, tmp_path / "big.feather", compression="uncompressed", chunksize=5000)
    db = sqlite3.connect(tmp_path / "big.db")
    db.execute("CREATE TABLE t (text TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", ((t,) for t in texts))
    db.commit()
    db.close()
    del table, texts
    size = (tmp_path / "big.parquet").stat().st_size
    for spec in (str(tmp_path / "big.parquet"), str(tmp_path / "big.feather"),
                 f"sql:sqlite:///{tmp_path / 'big.db'}?table=t"):
        name, location = source_for(spec, registry)
        source = registry.build("sources", name, load_config(None, []))
        arrow_before = pa.total_allocated_bytes()
        tracemalloc.start()
        try:
            count = sum(1 for _ in source.read(location))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert count == 100_000
        assert peak < size / 5, (spec, peak, size)  # a batch of records, not the 11 MB of them
        assert pa.total_allocated_bytes() - arrow_before < size / 5


# --- retain plugins: which sources stream ---------------------------------------------------------

class _WholeFileSource:
    """Reads its location whole."""

    streams = False

    def __init__(self, options):
        pass

    def read(self, location):
        yield Item(Path(location).read_text(), "whole", location, 1)


class _WholeFilePlugin:
    @hookimpl
    def register_sources(self, register):
        register("whole", _WholeFileSource)


def test_plugins_says_which_sources_stream(monkeypatch):
    pm = make_plugin_manager(extra_plugins=[_WholeFilePlugin()])
    rows = {r["name"]: r for r in describe_plugins(pm)}
    assert rows["sources"]["streams"] == {name: True for name in
                                          ("jsonl", "text", "csv", "parquet", "arrow", "datasets", "sql")}
    (whole,) = [r for r in rows.values() if "source:whole" in r["provides"]]
    assert whole["streams"] == {"whole": False} and "streams" not in rows["strategies"]
    import retain.core.pluginmanager as pluginmanager

    monkeypatch.setattr(pluginmanager, "default_plugin_manager", lambda: pm)
    r = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "240"})
    assert r.exit_code == 0 and "source:whole (does not stream)" in r.output
    assert "source:jsonl (does not stream)" not in r.output
