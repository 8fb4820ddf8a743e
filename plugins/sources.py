"""Built-in data sources: JSONL, plain text (files or folders), CSV, each also gzip- or
zstd-compressed; Parquet, Arrow and Hugging Face ``datasets`` (``plugins/tables.py``); SQL
(``plugins/sql.py``).

Each yields an ``Item`` per usable record and a ``Reject`` (file, line, reason)
per unusable one; a location that cannot be read at all is a ``SourceError``.
Files are read line by line in bounded pieces: a record over ``max_record_bytes``
(a 100 MB line, say) becomes a reject without ever being held in memory, and a
bad line (invalid UTF-8, broken JSON, a ragged CSV row) costs only itself.
A compressed file is recognised by its first bytes, whatever its name, and
decompressed as it is read: a file cut short rejects what it lost, after the
lines it still had. Every built-in source streams (``streams = True``: records
come as they are read, never a whole file at once); ``retain plugins`` says so.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Literal

from pydantic import AfterValidator, Field

from retain.core.errors import SourceError
from retain.core.hookspecs import hookimpl
from retain.core.data.items import Item, Reject


MAX_RECORD_BYTES = 16 * 1024 * 1024
_EXCERPT = 200
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _files(location: str) -> list[Path]:
    path = Path(location)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise SourceError(f"data source not found: {location}")


_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class Damaged(Exception):
    """The data stops being readable part way (a compressed file cut short or corrupt):
    what came before stands, the rest is one reject."""

    def __init__(self, line: int, why: str):
        super().__init__(why)
        self.line, self.why = line, why


@contextlib.contextmanager
def _open(path: Path):
    """``path`` as a binary stream, decompressed as it is read if its first bytes say gzip or zstd."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP):
            import gzip

            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        elif magic == _ZSTD:
            zstandard = _zstandard(path)
            # zstandard ends a cut-short frame quietly; its headers say so (gzip raises EOFError itself).
            reader = io.BufferedReader if _zstd_frames_end(raw) else _CutShort
            with reader(zstandard.ZstdDecompressor().stream_reader(
                    raw, read_across_frames=True, closefd=False)) as stream:
                yield stream
        else:
            yield raw


def _zstd_frames_end(raw) -> bool:
    """Whether every zstd frame of ``raw`` is whole: its frame and block headers are walked to
    the end of the file (a seek per block, nothing decompressed); ``raw`` is left at 0."""
    size, pos = raw.seek(0, io.SEEK_END), 0
    try:
        while pos < size:
            raw.seek(pos)
            head = raw.read(14)
            magic = int.from_bytes(head[:4], "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # a skippable frame: its length follows
                pos += 8 + int.from_bytes(head[4:8], "little")
                continue
            if magic != 0xFD2FB528 or len(head) < 5:
                return False
            descriptor = head[4]
            single = descriptor >> 5 & 1
            pos += 5 + (not single) + (0, 1, 2, 4)[descriptor & 3] + (single, 2, 4, 8)[descriptor >> 6]
            last = False
            while not last:
                raw.seek(pos)
                block = int.from_bytes(raw.read(3), "little")
                last, kind = block & 1, block >> 1 & 3
                pos += 3 + (1 if kind == 1 else block >> 3)  # an RLE block stores one byte
                if pos > size:
                    return False
            pos += 4 * (descriptor >> 2 & 1)  # the content checksum
        return pos == size
    finally:
        raw.seek(0)


class _CutShort(io.BufferedReader):
    """A stream whose data ends before its end marker: reading past what it holds is EOFError."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data and size != 0:
            raise EOFError("compressed data ended before its end marker")
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        if not line and size != 0:
            raise EOFError("compressed data ended before its end marker")
        return line


def _zstandard(path: Path):
    try:
        import zstandard
    except ImportError:
        raise SourceError(f"{path} is zstd-compressed, and reading it needs zstandard: "
                          "pip install 'retain[zstd]'") from None
    return zstandard


def _damage(exc: BaseException) -> str | None:
    """What a read error says when it is the data's fault (cut short, corrupt), else None."""
    if isinstance(exc, EOFError):
        return "compressed data cut short (the file ends before its end marker)"
    if isinstance(exc, zlib.error) or type(exc).__name__ in ("BadGzipFile", "ZstdError"):
        return f"compressed data is damaged: {exc}"
    return None


def _per_file(source: str, path: Path, records: Iterator[Item | Reject]) -> Iterator[Item | Reject]:
    """``records`` of one file; data that turns unreadable part way ends it with one reject."""
    try:
        yield from records
    except Damaged as exc:
        yield Reject(f"{exc.why} (after line {exc.line}): the rest of the file is lost", source,
                     str(path), exc.line + 1, "")


def _lines(path: Path, limit: int) -> Iterator[tuple[int, bytes | None, int, bytes]]:
    """(line number, the line without its newline or None if over ``limit`` bytes, its size,
    its first bytes). Reads in bounded pieces: an oversize line is never held in memory."""
    with _open(path) as f:
        lineno = 0
        while line := _readline(f, limit + 1, lineno):
            lineno += 1
            if line.endswith(b"\n"):
                yield lineno, line[:-1], len(line) - 1, b""
            elif len(line) <= limit:
                yield lineno, line, len(line), b""
            else:
                head, size = line[:_EXCERPT], len(line)
                while line and not line.endswith(b"\n"):
                    line = _readline(f, 1 << 20, lineno)
                    size += len(line)
                yield lineno, None, size - line.endswith(b"\n"), head


def _readline(f, limit: int, lineno: int) -> bytes:
    return _read(f, limit, lineno, f.readline)


def _read(f, limit: int, lineno: int, how=None) -> bytes:
    """``f.read(limit)`` (or ``how(limit)``); data that turns unreadable is ``Damaged``."""
    try:
        return (how or f.read)(limit)
    except Exception as exc:
        why = _damage(exc)
        if why is None:
            raise
        raise Damaged(lineno, why) from None


def _too_big(what: str, size: int, limit: int, source: str) -> str:
    return (f"{what} is {size:,} bytes, over the {limit:,}-byte limit "
            f"(options.{source}.max_record_bytes)")


def _printable(text: str) -> str:
    """An excerpt safe to write as UTF-8 (undecodable bytes shown as U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:_EXCERPT]


@dataclass
class JsonlOptions:
    field: str = "text"
    max_record_bytes: Annotated[int, Field(gt=0)] = MAX_RECORD_BYTES  # a longer line is rejected unread


class JsonlSource:
    """One JSON object per line; the text is in a configurable field."""

    streams = True  # line by line: records come as they are read

    def __init__(self, options: JsonlOptions):
        self.field = options.field
        self.limit = options.max_record_bytes

    def read(self, location: str) -> Iterator[Item | Reject]:
        for path in _files(location):
            yield from _per_file("jsonl", path, self._read_file(path))

    def _read_file(self, path: Path) -> Iterator[Item | Reject]:
        records = 0
        for lineno, raw, size, head in _lines(path, self.limit):
            if raw is None:
                records += 1
                yield Reject(_too_big("line", size, self.limit, "jsonl"), "jsonl", str(path), lineno,
                             head.decode("utf-8", "replace"))
            elif raw.strip():
                records += 1
                yield self._record(raw, path, lineno)
        if not records:
            yield Reject("empty file: no JSON lines", "jsonl", str(path), None, "")

    def _record(self, raw: bytes, path: Path, lineno: int) -> Item | Reject:
        def reject(reason: str) -> Reject:
            return Reject(reason, "jsonl", str(path), lineno, raw[:_EXCERPT].decode("utf-8", "replace"))
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return reject(f"invalid UTF-8 at byte {exc.start}")
        except json.JSONDecodeError as exc:
            return reject(f"invalid JSON: {exc.msg} (column {exc.colno})")
        except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, [[[[...]]]]
            return reject(f"invalid JSON: {type(exc).__name__}: {str(exc)[:100]}")
        if isinstance(record, str):
            text, meta = record, {}
        elif isinstance(record, dict):
            text = record.get(self.field)
            if not isinstance(text, str):
                got = "missing" if self.field not in record else type(text).__name__
                return reject(f"field '{self.field}' is {got}, expected a string")
            meta = {k: v for k, v in record.items() if k != self.field}
        else:
            return reject(f"expected an object with a '{self.field}' field, got {type(record).__name__}")
        if not text.strip():
            return reject(f"field '{self.field}' is empty")
        if _SURROGATE.search(text):
            return reject(f"field '{self.field}' holds an unpaired surrogate escape (not valid Unicode)")
        return Item(text, "jsonl", str(path), lineno, meta)


@dataclass
class TextOptions:
    split: Literal["paragraph", "file", "line"] = "paragraph"
    max_record_bytes: Annotated[int, Field(gt=0)] = MAX_RECORD_BYTES  # a longer line, paragraph or file is rejected


class TextSource:
    """Plain-text files or folders: one item per file, per paragraph or per line."""

    streams = True  # line by line: records come as they are read

    def __init__(self, options: TextOptions):
        self.split = options.split
        self.limit = options.max_record_bytes

    def read(self, location: str) -> Iterator[Item | Reject]:
        for path in _files(location):
            yield from _per_file("text", path, self._read_file(path))

    def _read_file(self, path: Path) -> Iterator[Item | Reject]:
        with _open(path) as f:
            sniff = _read(f, 8192, 0)
        if b"\x00" in sniff:
            yield Reject("binary file (NUL bytes in its first 8 KiB)", "text", str(path), None,
                         sniff[:_EXCERPT].decode("utf-8", "replace"))
        elif self.split == "file":
            yield self._whole(path)
        else:
            yield from self._pieces(path)

    def _whole(self, path: Path) -> Item | Reject:
        with _open(path) as f:
            # A plain file's size is known unread; a compressed one's is counted as it is read.
            size = path.stat().st_size if isinstance(getattr(f, "raw", None), io.FileIO) else None
            data = _read(f, self.limit + 1, 0) if size is None or size <= self.limit else b""
            if size is None and len(data) > self.limit:
                size = len(data) + sum(len(chunk) for chunk in iter(lambda: _read(f, 1 << 20, 0), b""))
        if size is not None and size > self.limit:
            return Reject(_too_big("file", size, self.limit, "text"), "text", str(path), None, "")
        text, why = _decode(data.removeprefix(_BOM))
        if text is not None and "\x00" in text:
            text, why = None, "binary data (NUL bytes)"
        if text is None:
            return Reject(why or "", "text", str(path), None, data[:_EXCERPT].decode("utf-8", "replace"))
        if not text.strip():
            return Reject("empty file", "text", str(path), None, "")
        return Item(text.replace("\r\n", "\n").strip(), "text", str(path), 1)

    def _pieces(self, path: Path) -> Iterator[Item | Reject]:
        """Items per line, or per paragraph (lines up to a blank line); a bad line rejects its piece."""
        records = 0
        start, buf, size, problem, excerpt = None, [], 0, None, ""
        for lineno, raw, n, head in _lines(path, self.limit):
            if raw is None:
                text, why = None, _too_big("line", n, self.limit, "text")
            else:
                raw = raw.removeprefix(_BOM) if lineno == 1 else raw
                text, why = _decode(raw.removesuffix(b"\r"))
                if text is not None and "\x00" in text:
                    text, why = None, "NUL byte in the line (binary data)"
            blank = text is not None and not text.strip()
            if self.split == "line":
                if not blank:
                    records += 1
                    yield (Item(text.strip(), "text", str(path), lineno) if text is not None else
                           Reject(why, "text", str(path), lineno, _printable((raw or head).decode("utf-8", "replace"))))
                continue
            if blank:
                if start is not None:
                    records += 1
                    yield self._paragraph(path, start, buf, problem, excerpt)
                    start, buf, size, problem, excerpt = None, [], 0, None, ""
                continue
            if start is None:
                start, excerpt = lineno, (raw or head)[:_EXCERPT].decode("utf-8", "replace")
            if text is None:
                problem = problem or f"line {lineno}: {why}"
            elif problem is None:
                size += n + 1
                if size > self.limit:
                    problem, buf = _too_big("paragraph", size, self.limit, "text"), []
                else:
                    buf.append(text)
        if start is not None:
            records += 1
            yield self._paragraph(path, start, buf, problem, excerpt)
        if not records:
            yield Reject("empty file", "text", str(path), None, "")

    @staticmethod
    def _paragraph(path: Path, start: int, buf: list[str], problem: str | None, excerpt: str) -> Item | Reject:
        if problem is not None:
            return Reject(problem, "text", str(path), start, excerpt)
        return Item("\n".join(buf).strip(), "text", str(path), start)


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"


# The delimiter a file's suffix implies when options.csv.delimiter is "auto".
_DELIMITERS = {".tsv": "\t"}


def _one_character_or_auto(delimiter: str) -> str:
    if delimiter != "auto" and len(delimiter) != 1:
        raise ValueError(f"must be one character or 'auto', got {delimiter!r}")
    return delimiter


@dataclass
class CsvOptions:
    column: str = "text"
    delimiter: Annotated[str, AfterValidator(_one_character_or_auto)] = "auto"  # one character for every file;
                                                                                # "auto": tab for .tsv, comma otherwise
    max_record_bytes: Annotated[int, Field(gt=0)] = MAX_RECORD_BYTES  # a longer line is rejected unread


class CsvSource:
    """A CSV (or TSV) file with a header row; the text is in a configurable column."""

    streams = True  # line by line: records come as they are read

    def __init__(self, options: CsvOptions):
        self.column = options.column
        self.delimiter = options.delimiter
        self.limit = options.max_record_bytes

    def read(self, location: str) -> Iterator[Item | Reject]:
        # The module-wide field limit (128 KiB by default) would reject long texts our
        # own record limit allows; it is only ever raised, never lowered.
        csv.field_size_limit(max(csv.field_size_limit(), self.limit))
        for path in _files(location):
            yield from _per_file("csv", path, self._read_file(path))

    def delimiter_for(self, path: Path) -> str:
        if self.delimiter != "auto":
            return self.delimiter
        return _DELIMITERS.get(path.suffix.lower(), ",")

    def _read_file(self, path: Path) -> Iterator[Item | Reject]:
        oversize: list[Reject] = []
        delimiter = self.delimiter_for(path)

        def lines() -> Iterator[str]:
            for lineno, raw, size, head in _lines(path, self.limit):
                if raw is None:  # stands in as an empty line so line numbers stay right
                    oversize.append(Reject(_too_big("line", size, self.limit, "csv"), "csv", str(path),
                                           lineno, head.decode("utf-8", "replace")))
                    yield "\n"
                    continue
                raw = raw.removeprefix(_BOM) if lineno == 1 else raw
                # Undecodable bytes become lone surrogates: only the row holding them is rejected.
                yield raw.decode("utf-8", "surrogateescape") + "\n"

        reader = csv.reader(lines(), delimiter=delimiter)
        header: list[str] | None = None
        col, records = 0, 0
        while True:
            try:
                row: list[str] | csv.Error | None = next(reader)
            except StopIteration:
                row = None
            except csv.Error as exc:
                row = exc
            records += len(oversize)
            yield from oversize
            oversize.clear()
            if row is None:
                break
            if isinstance(row, csv.Error):
                records += 1
                yield Reject(f"malformed CSV: {row}", "csv", str(path), reader.line_num, "")
                continue
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
                if self.column not in header:
                    raise SourceError(f"{path}: no column '{self.column}' in the header "
                                      f"({_printable(', '.join(header[:10]))}); set options.csv.column")
                col = header.index(self.column)
                continue
            records += 1
            lineno, excerpt = reader.line_num, _printable(delimiter.join(row))
            if len(row) != len(header):
                yield Reject(f"row has {len(row)} fields, header has {len(header)}", "csv", str(path),
                             lineno, excerpt)
            elif any(_SURROGATE.search(cell) for cell in row):
                yield Reject("invalid UTF-8 in this row", "csv", str(path), lineno, excerpt)
            elif not row[col].strip():
                yield Reject(f"column '{self.column}' is empty", "csv", str(path), lineno, excerpt)
            else:
                meta = {h: v for h, v in zip(header, row) if h != self.column}
                yield Item(row[col], "csv", str(path), lineno, meta)
        if header is None:
            yield Reject("empty file: no header row", "csv", str(path), None, "")
        elif not records:
            yield Reject("no data rows under the header", "csv", str(path), None, "")


# Compressed forms of a suffix a source reads (the data is recognised by its first bytes anyway:
# the suffixes only pick the source for a file named so).
COMPRESSED = (".gz", ".zst", ".zstd")


def _with_compressed(*suffixes: str) -> tuple[str, ...]:
    return (*suffixes, *(s + c for s in suffixes for c in COMPRESSED))


# The option naming the text's field (or column) of each built-in source: what --text-field sets.
TEXT_FIELD_OPTIONS = ("jsonl.field", "csv.column", "parquet.field", "arrow.field", "datasets.field",
                      "sql.column")

@hookimpl
def register_sources(register):
    from retain.plugins.sql import SqlOptions, SqlSource
    from retain.plugins.tables import (SAVED_MARKERS, ArrowSource, DatasetsOptions, DatasetsSource,
                                       ParquetSource, TableOptions)

    register("jsonl", JsonlSource, options=JsonlOptions, suffixes=_with_compressed(".jsonl", ".ndjson"),
             description="JSON Lines: one object per line, text in options.jsonl.field (gzip/zstd too)")
    register("text", TextSource, options=TextOptions, suffixes=_with_compressed(".txt", ".md", ".text"),
             description="plain-text files or folders, split per paragraph, file or line (gzip/zstd too)")
    register("csv", CsvSource, options=CsvOptions, suffixes=_with_compressed(".csv", ".tsv"),
             description="CSV or TSV (by suffix, or options.csv.delimiter) with a header row, "
                         "text in options.csv.column (gzip/zstd too)")
    register("parquet", ParquetSource, options=TableOptions, suffixes=(".parquet", ".pq"),
             description="Parquet files, read in record batches, text in options.parquet.field (pyarrow)")
    register("arrow", ArrowSource, options=TableOptions, suffixes=(".arrow", ".feather", ".ipc"),
             description="Arrow IPC / Feather v2 files, memory-mapped, text in options.arrow.field (pyarrow)")
    register("datasets", DatasetsSource, options=DatasetsOptions, folder_markers=SAVED_MARKERS,
             description="a Hugging Face dataset folder (save_to_disk) or local data files, never the hub; "
                         "text in options.datasets.field")
    register("sql", SqlSource, options=SqlOptions,
             description="rows of a SQL database (SQLAlchemy URL: postgresql://, sqlite:///...), a query's "
                         "or a table's, through a server-side cursor")
