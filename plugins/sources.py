"""Built-in data sources: JSONL, plain text (files or folders), CSV.

Each yields an ``Item`` per usable record and a ``Reject`` (file, line, reason)
per unusable one; a location that cannot be read at all is a ``SourceError``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from retain.core.errors import SourceError
from retain.core.hookspecs import hookimpl
from retain.core.items import Item, Reject


def _files(location: str) -> list[Path]:
    path = Path(location)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise SourceError(f"data source not found: {location}")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass
class JsonlOptions:
    field: str = "text"


class JsonlSource:
    """One JSON object per line; the text is in a configurable field."""

    def __init__(self, options: JsonlOptions):
        self.field = options.field

    def read(self, location: str) -> Iterator[Item | Reject]:
        for path in _files(location):
            for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
                if not raw.strip():
                    continue
                excerpt = raw[:200].decode("utf-8", "replace")

                def reject(reason: str) -> Reject:
                    return Reject(reason, "jsonl", str(path), lineno, excerpt)
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    yield reject(f"invalid UTF-8 at byte {exc.start}")
                    continue
                except json.JSONDecodeError as exc:
                    yield reject(f"invalid JSON: {exc.msg} (column {exc.colno})")
                    continue
                if isinstance(record, str):
                    text, meta = record, {}
                elif isinstance(record, dict):
                    text = record.get(self.field)
                    if not isinstance(text, str):
                        got = "missing" if self.field not in record else type(text).__name__
                        yield reject(f"field '{self.field}' is {got}, expected a string")
                        continue
                    meta = {k: v for k, v in record.items() if k != self.field}
                else:
                    yield reject(f"expected an object with a '{self.field}' field, got {type(record).__name__}")
                    continue
                if not text.strip():
                    yield reject(f"field '{self.field}' is empty")
                    continue
                yield Item(text, "jsonl", str(path), lineno, meta)


@dataclass
class TextOptions:
    split: Literal["paragraph", "file", "line"] = "paragraph"


class TextSource:
    """Plain-text files or folders: one item per file, per paragraph or per line."""

    def __init__(self, options: TextOptions):
        self.split = options.split

    def read(self, location: str) -> Iterator[Item | Reject]:
        for path in _files(location):
            data = _read_bytes(path)
            if b"\x00" in data:
                yield Reject("binary file (contains NUL bytes)", "text", str(path), None,
                             data[:200].decode("utf-8", "replace"))
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data[:exc.start].count(b"\n") + 1
                yield Reject(f"invalid UTF-8 at byte {exc.start}", "text", str(path), line,
                             data[max(0, exc.start - 100):exc.start + 100].decode("utf-8", "replace"))
                continue
            text = text.replace("\r\n", "\n").lstrip("\ufeff")
            if self.split == "file":
                if text.strip():
                    yield Item(text.strip(), "text", str(path), 1)
                else:
                    yield Reject("empty file", "text", str(path), None, "")
                continue
            yield from self._pieces(text, path)

    def _pieces(self, text: str, path: Path) -> Iterator[Item]:
        start, buf = None, []
        for lineno, line in enumerate(text.split("\n"), 1):
            if self.split == "line":
                if line.strip():
                    yield Item(line.strip(), "text", str(path), lineno)
                continue
            if line.strip():
                if start is None:
                    start = lineno
                buf.append(line)
            elif buf:
                yield Item("\n".join(buf).strip(), "text", str(path), start)
                start, buf = None, []
        if buf:
            yield Item("\n".join(buf).strip(), "text", str(path), start)


@dataclass
class CsvOptions:
    column: str = "text"
    delimiter: str = ","


class CsvSource:
    """A CSV file with a header row; the text is in a configurable column."""

    def __init__(self, options: CsvOptions):
        self.column = options.column
        self.delimiter = options.delimiter

    def read(self, location: str) -> Iterator[Item | Reject]:
        for path in _files(location):
            data = _read_bytes(path)
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                yield Reject(f"invalid UTF-8 at byte {exc.start}", "csv", str(path), None, "")
                continue
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter)
            try:
                header = next(reader, None)
                if header is None:
                    yield Reject("empty file", "csv", str(path), None, "")
                    continue
                if self.column not in header:
                    raise SourceError(f"{path}: no column '{self.column}' in the header "
                                      f"({', '.join(header[:10])}); set options.csv.column")
                col = header.index(self.column)
                for row in reader:
                    lineno = reader.line_num
                    if not any(cell.strip() for cell in row):
                        continue
                    excerpt = self.delimiter.join(row)[:200]
                    if len(row) != len(header):
                        yield Reject(f"row has {len(row)} fields, header has {len(header)}",
                                     "csv", str(path), lineno, excerpt)
                    elif not row[col].strip():
                        yield Reject(f"column '{self.column}' is empty", "csv", str(path), lineno, excerpt)
                    else:
                        meta = {h: v for h, v in zip(header, row) if h != self.column}
                        yield Item(row[col], "csv", str(path), lineno, meta)
            except csv.Error as exc:
                yield Reject(f"malformed CSV: {exc}", "csv", str(path), reader.line_num, "")


@hookimpl
def register_sources(register):
    register("jsonl", JsonlSource, options=JsonlOptions, suffixes=(".jsonl", ".ndjson"),
             description="JSON Lines: one object per line, text in options.jsonl.field")
    register("text", TextSource, options=TextOptions, suffixes=(".txt", ".md", ".text"),
             description="plain-text files or folders, split per paragraph, file or line")
    register("csv", CsvSource, options=CsvOptions, suffixes=(".csv", ".tsv"),
             description="CSV with a header row, text in options.csv.column")
