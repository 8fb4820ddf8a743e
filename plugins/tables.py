"""Columnar sources: Parquet, Arrow IPC (Feather v2) and Hugging Face ``datasets``, streamed.

One column holds the text (``options.NAME.field``, or ``--text-field``). Only that column is
read, ``batch_size`` records at a time: Parquet through ``iter_batches``, Arrow files
memory-mapped and sliced, a ``datasets`` folder through ``load_from_disk`` (memory-mapped)
or ``load_dataset(..., streaming=True)``. Nothing holds a whole file.

As in the line-based sources, every record is an item or a reject with its reason: a file
without the field is one reject saying which columns it has; a null, a number or an empty
string in the field is a reject for that record; a file that stops being readable part way
keeps what came before and rejects the rest. pyarrow and datasets are optional
(``retain[parquet]``, ``retain[datasets]``) and imported on first read.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator

from pydantic import Field

from retain.core.errors import SourceError
from retain.core.data.items import Item, Reject
from retain.plugins.sources import _SURROGATE, MAX_RECORD_BYTES, _files, _printable, _too_big

_EXCERPT = 200
BATCH_SIZE = 1024


def _pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise SourceError(f"reading {what} needs pyarrow: pip install 'retain[parquet]'") from None
    return pyarrow


@dataclass
class TableOptions:
    field: str = "text"                                              # the column holding the text
    batch_size: Annotated[int, Field(gt=0)] = BATCH_SIZE             # records read at a time
    max_record_bytes: Annotated[int, Field(gt=0)] = MAX_RECORD_BYTES  # a longer text is rejected


class _Records:
    """Items and rejects from batches of one column's values, numbered from 1 per file."""

    def __init__(self, source: str, field: str, limit: int, what: str = "field"):
        self.source, self.field, self.limit, self.what = source, field, limit, what

    def missing(self, where: str, columns: Iterable[str]) -> Reject:
        shown = ", ".join(list(columns)[:20]) or "none"
        return Reject(f"no {self.what} '{self.field}' (columns: {shown}); set "
                      f"options.{self.source}.{self.what} or --text-field", self.source, where, None, "")

    def of(self, where: str, batches: Iterable[list[Any]]) -> Iterator[Item | Reject]:
        """``batches`` of values; a batch that cannot be read ends the file with one reject."""
        row = 0
        batches = iter(batches)
        while True:
            try:
                values = next(batches, None)
            except (OSError, ValueError, UnicodeDecodeError) as exc:  # pyarrow's errors are these
                yield Reject(f"unreadable from record {row + 1} on: {type(exc).__name__}: {str(exc)[:200]}",
                             self.source, where, row + 1, "")
                return
            if values is None:
                break
            for value in values:
                row += 1
                yield self.record(value, where, row)
        if row == 0:
            yield Reject("empty: no records", self.source, where, None, "")

    def record(self, value: Any, where: str, row: int) -> Item | Reject:
        if isinstance(value, str):
            if not value.strip():
                return Reject(f"{self.what} '{self.field}' is empty", self.source, where, row, "")
            if _SURROGATE.search(value):
                return Reject(f"{self.what} '{self.field}' holds an unpaired surrogate (not valid Unicode)",
                              self.source, where, row, _printable(value))
            if len(value) * 4 > self.limit and len(value.encode("utf-8", "surrogatepass")) > self.limit:
                size = len(value.encode("utf-8", "surrogatepass"))
                return Reject(_too_big("text", size, self.limit, self.source), self.source, where, row,
                              value[:_EXCERPT])
            return Item(value, self.source, where, row)
        if isinstance(value, _Undecodable):
            return Reject(f"{self.what} '{self.field}' is invalid UTF-8 at byte {value.at}", self.source, where,
                          row, value[:_EXCERPT].decode("utf-8", "replace"))
        got = "null" if value is None else type(value).__name__
        return Reject(f"{self.what} '{self.field}' is {got}, expected a string", self.source, where, row,
                      repr(value)[:_EXCERPT])


def _strings(pa, column) -> list[Any]:
    """A column's values as Python objects; invalid UTF-8 in a string becomes its bytes (a reject)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        raw = column.cast(pa.binary()).to_pylist()
        return [_decoded(b) for b in raw]


class _Undecodable(bytes):
    """A string column's value that is not UTF-8 (a reject saying where)."""

    at = 0


def _decoded(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = _Undecodable(value)
        bad.at = exc.start
        return bad


class ParquetSource:
    """Parquet files (or a folder of them), read in record batches of the text column only."""

    streams = True

    def __init__(self, options: TableOptions):
        self.options = options
        self.records = _Records("parquet", options.field, options.max_record_bytes)

    def read(self, location: str) -> Iterator[Item | Reject]:
        pa = _pyarrow("Parquet")
        for path in _files(location):
            if path.name.startswith("_") and path != Path(location):  # _SUCCESS, _metadata beside Spark's parts
                continue
            yield from self._read_file(pa, path)

    def _read_file(self, pa, path: Path) -> Iterator[Item | Reject]:
        try:
            parquet = pa.parquet.ParquetFile(path)
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            yield Reject(f"not a Parquet file: {str(exc)[:200]}", "parquet", str(path), None, "")
            return
        names = parquet.schema_arrow.names
        if self.options.field not in names:
            yield self.records.missing(str(path), names)
            return
        batches = parquet.iter_batches(batch_size=self.options.batch_size, columns=[self.options.field])
        yield from self.records.of(str(path), (_strings(pa, b.column(0)) for b in batches))


class ArrowSource:
    """Arrow IPC files (Feather v2, .arrow: file or stream format), memory-mapped, sliced in batches."""

    streams = True

    def __init__(self, options: TableOptions):
        self.options = options
        self.records = _Records("arrow", options.field, options.max_record_bytes)

    def read(self, location: str) -> Iterator[Item | Reject]:
        pa = _pyarrow("Arrow files")
        for path in _files(location):
            yield from self._read_file(pa, path)

    def _read_file(self, pa, path: Path) -> Iterator[Item | Reject]:
        with pa.memory_map(str(path)) as mapped:
            try:
                batches, schema = _ipc_batches(pa, mapped)
            except (OSError, ValueError) as exc:
                yield Reject(f"not an Arrow IPC file (Feather v2, .arrow): {str(exc)[:200]}", "arrow",
                             str(path), None, "")
                return
            if self.options.field not in schema.names:
                yield self.records.missing(str(path), schema.names)
                return
            index, size = schema.get_field_index(self.options.field), self.options.batch_size
            slices = (batch.slice(start, size).column(index)
                      for batch in batches for start in range(0, batch.num_rows, size))
            yield from self.records.of(str(path), (_strings(pa, column) for column in slices))


def _ipc_batches(pa, mapped) -> tuple[Iterator[Any], Any]:
    """The record batches of an IPC file (random access) or stream, read one at a time."""
    try:
        reader = pa.ipc.open_file(mapped)
        return (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema
    except (OSError, ValueError):
        mapped.seek(0)
        reader = pa.ipc.open_stream(mapped)
        return iter(reader), reader.schema


# --- Hugging Face datasets: local only --------------------------------------------------------

# A folder written by save_to_disk: a Dataset's (dataset_info.json) or a DatasetDict's (dataset_dict.json).
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json")
# The packaged builder that reads a local data file, by suffix.
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
             ".txt": "text", ".arrow": "arrow"}


def _data_suffix(path: Path) -> str:
    """A data file's format suffix, under any compression datasets decompresses: a.jsonl.gz is .jsonl."""
    suffixes = [s.lower() for s in path.suffixes]
    while len(suffixes) > 1 and suffixes[-1] in (".gz", ".zst", ".bz2", ".xz", ".lz4"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


@dataclass
class DatasetsOptions(TableOptions):
    split: str = ""  # one split of a DatasetDict (e.g. "train"); "" reads every split


def _datasets():
    """datasets, offline: retain never downloads. The variables are read when the modules are
    imported: set before, and in the modules if an earlier import read them already."""
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise SourceError("reading a Hugging Face dataset needs datasets: pip install 'retain[datasets]'") from None
    datasets.config.HF_HUB_OFFLINE = True
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    return datasets


class DatasetsSource:
    """A Hugging Face dataset on this machine: a save_to_disk folder, or local data files; never the hub."""

    streams = True

    def __init__(self, options: DatasetsOptions):
        self.options = options
        self.records = _Records("datasets", options.field, options.max_record_bytes)

    def read(self, location: str) -> Iterator[Item | Reject]:
        path = Path(location)
        if not path.exists():
            raise SourceError(f"datasets: {location} is not a folder or file on this machine, and retain "
                              "never downloads: fetch a hub dataset yourself (huggingface-cli download "
                              "--repo-type dataset NAME --local-dir DIR) and give DIR")
        datasets = _datasets()
        try:
            if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
                splits = self._saved(datasets, path)
            else:
                splits = self._data_files(datasets, path)
        except (OSError, ValueError) as exc:  # FileNotFoundError, DatasetNotFoundError, a bad split
            raise SourceError(f"datasets: cannot read {location}: {type(exc).__name__}: {exc}") from None
        for name, dataset in splits:
            where = f"{path}[{name}]" if name else str(path)
            columns = dataset.column_names  # None: a stream whose columns are known once read
            if columns is not None and self.options.field not in columns:
                yield self.records.missing(where, columns)
                continue
            if columns is not None:
                dataset = dataset.select_columns([self.options.field])
            batches = dataset.iter(batch_size=self.options.batch_size)
            yield from self.records.of(where, (self._values(batch) for batch in batches))

    def _values(self, batch: dict[str, list]) -> list[Any]:
        """The field's values of a batch (nulls where a record of a schemaless stream lacks it)."""
        if self.options.field in batch:
            return batch[self.options.field]
        return [None] * len(next(iter(batch.values()), []))

    def _saved(self, datasets, path: Path) -> list[tuple[str, Any]]:
        """save_to_disk's folder, memory-mapped (keep_in_memory stays False)."""
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return self._splits(loaded, path)
        return [("", loaded)]

    def _data_files(self, datasets, path: Path) -> list[tuple[str, Any]]:
        """Local data files (a file, or a folder of them) through datasets' packaged builders, streamed."""
        if path.is_dir():
            loaded = datasets.load_dataset(str(path), streaming=True)
        else:
            builder = _BUILDERS.get(_data_suffix(path))
            if builder is None:
                raise SourceError(f"datasets: cannot tell how to read {path} (known suffixes: "
                                  f"{', '.join(sorted(_BUILDERS))})")
            loaded = datasets.load_dataset(builder, data_files={"train": str(path)}, streaming=True)
        return self._splits(loaded, path)

    def _splits(self, loaded, path: Path) -> list[tuple[str, Any]]:
        if self.options.split:
            if self.options.split not in loaded:
                raise SourceError(f"datasets: {path} has no split '{self.options.split}' (splits: "
                                  f"{', '.join(loaded)}); set options.datasets.split")
            return [(self.options.split, loaded[self.options.split])]
        return list(loaded.items())
