"""The items a run ingests, held in a spool: memory bounded by a batch, not by the corpus.

Ingest reads its sources, cleans and deduplicates in batches (``BATCH_ITEMS`` items or
``BATCH_BYTES`` of text, whichever comes first; ``core/data/ingest.py``), and each step
appends what it keeps to an ``ItemSpool``: one record per item, one after the other, with
only the end offset of each record (8 bytes an item) in memory.

    ItemSpool   the records: in memory while under ``SPOOL_MEMORY`` (a daily update's 45
                items never touch the disk), beyond that an unnamed temporary file in the
                system temp folder (``TMPDIR``): it has no name, so nothing is left behind
                when the run ends, fails or is killed; never in the model directory
    ItemView    some items of a spool by position (a numpy index array): "the kept ones
                less the held-out", "less those over the token cap", without a copy

Both are ``Sequence[Item]``: ``len``, ``view[i]`` reads one record, iterating reads the
file in large sequential chunks. A record is the item's fields pickled (exact for any
``meta`` a source gives: a Parquet timestamp comes back a timestamp); the file is this
process's own, written and read by it alone.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import tempfile
import weakref
from array import array
from typing import Iterable, Iterator, Sequence

from retain.core.data.items import Item


class _LazyNumpy:
    """numpy on first use (then the module itself, in its place): the cycle imports this module,
    and a command that reads no data (``--help``, ``status``) starts without numpy's 80 ms."""

    def __getattr__(self, name: str):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()

SPOOL_MEMORY = 32 << 20   # bytes of records held in memory before the spool moves to a temp file
READ_CHUNK = 1 << 20      # bytes read at once when iterating
READ_ITEMS = 8192         # items a view reads at once, in the spool's order
BATCH_ITEMS = 8192        # ingest's batch: at most this many items...
BATCH_BYTES = 16 << 20    # ...or this many bytes of text, whichever comes first


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """While passes over the items run, the objects alive before them are left out of the
    garbage collector's full collections (``gc.freeze``; back in the oldest generation after).
    A batch of items read back from the spool lives through a few young collections, and every
    few batches that set off a full one, which walks every object of the process: 600,000 with
    torch and avalanche-lib loaded, 40% of preprocess's CPU time."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _record(item: Item) -> bytes:
    return pickle.dumps((item.text, item.source, item.file, item.line, item.meta or None),
                        protocol=pickle.HIGHEST_PROTOCOL)


def _item(record: bytes) -> Item:
    return _fields_item(pickle.loads(record))


def _fields_item(fields: tuple) -> Item:
    text, source, file, line, meta = fields
    item = object.__new__(Item)  # the fields set at once: a frozen dataclass's __init__ sets each
    item.__dict__.update(text=text, source=source, file=file, line=line, meta=meta or {})  # through a call
    return item


class ItemSpool(Sequence[Item]):
    """Items appended in order, read back by position or in order."""

    def __init__(self, items: Iterable[Item] = (), memory: int | None = None):
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY if memory is None else memory, mode="w+b")
        self._ends = array("q")  # end offset of each record; a record starts where the one before ends
        self._text_bytes = array("i")  # each item's text in UTF-8 bytes: where an even sample is cut
        self._size = 0
        self._closer = weakref.finalize(self, self._file.close)
        self.extend(items)

    def append(self, item: Item) -> None:
        self.extend((item,))

    def extend(self, items: Iterable[Item]) -> range:
        """Append ``items``, written as one block; their positions."""
        items = list(items)
        if not items:
            return range(len(self), len(self))
        records = [_record(it) for it in items]
        self._text_bytes.extend(len(it.text.encode("utf-8", "surrogatepass")) for it in items)
        self._file.seek(self._size)
        self._file.write(b"".join(records))
        for r in records:
            self._size += len(r)
            self._ends.append(self._size)
        return range(len(self) - len(records), len(self))

    def __len__(self) -> int:
        return len(self._ends)

    @property
    def on_disk(self) -> bool:
        """Whether the records moved from memory to the temporary file."""
        return bool(getattr(self._file, "_rolled", False))

    @property
    def nbytes(self) -> int:
        return self._size

    def text_bytes(self) -> np.ndarray:
        """Each item's text, in UTF-8 bytes."""
        return np.frombuffer(self._text_bytes, dtype=np.int32).astype(np.int64) if len(self) else np.zeros(0, np.int64)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a spool of {len(self)}")
        start = self._ends[i - 1] if i else 0
        self._file.seek(start)
        return _item(self._file.read(self._ends[i] - start))

    def __iter__(self) -> Iterator[Item]:
        return self.read(range(len(self)))

    def read(self, positions: Iterable[int]) -> Iterator[Item]:
        """The items at ``positions`` (ascending), read in chunks of about ``READ_CHUNK`` bytes."""
        ends, buffer, buffer_start, buffer_end = self._ends, b"", 0, 0
        for i in positions:
            start, end = (ends[i - 1] if i else 0), ends[i]
            if start < buffer_start or end > buffer_end:
                self._file.seek(start)
                buffer = self._file.read(max(end - start, READ_CHUNK))
                buffer_start, buffer_end = start, start + len(buffer)
            yield _item(buffer[start - buffer_start:end - buffer_start])

    def view(self, index: np.ndarray | None = None) -> "ItemView":
        """These items at ``index`` (all of them by default)."""
        return ItemView(self, np.arange(len(self), dtype=np.int64) if index is None else index)

    def close(self) -> None:
        """The records go (the temporary file, if there is one, is deleted with them)."""
        self._closer()


class ItemView(Sequence[Item]):
    """Items of a spool by position, in the order of ``index``; narrowing makes a new view.
    Only the index is in memory (8 bytes an item): each item, and its hash, is read back."""

    def __init__(self, spool: ItemSpool, index: np.ndarray):
        self.spool = spool
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._narrowed(np.arange(len(self.index))[i])
        return self.spool[int(self.index[i])]

    def __iter__(self) -> Iterator[Item]:
        """In order, ``READ_ITEMS`` at a time, each such chunk read in the spool's order (an item
        cleaning changed sits at the spool's end: a jump, not a seek per item)."""
        for start in range(0, len(self.index), READ_ITEMS):
            chunk = self.index[start:start + READ_ITEMS]
            order = np.argsort(chunk, kind="stable")
            items: list = [None] * len(chunk)
            for o, item in zip(order.tolist(), self.spool.read(chunk[order].tolist())):
                items[o] = item
            yield from items

    def _narrowed(self, positions: np.ndarray) -> "ItemView":
        return ItemView(self.spool, self.index[positions])

    def text_bytes(self) -> np.ndarray:
        """Each item's text in UTF-8 bytes, from the spool (no item read)."""
        return self.spool.text_bytes()[self.index]

    def take(self, positions: Sequence[int]) -> "ItemView":
        """The items at ``positions`` of this view (ascending positions keep the order)."""
        return self._narrowed(np.asarray(positions, dtype=np.int64))

    def without(self, positions: Iterable[int]) -> "ItemView":
        """This view less the items at ``positions`` of it."""
        keep = np.ones(len(self.index), dtype=bool)
        keep[np.fromiter(positions, dtype=np.int64)] = False
        return self._narrowed(np.nonzero(keep)[0])

    def __add__(self, other: Sequence[Item]) -> "Joined":  # ``run.items + run.holdout``, as with lists
        return Joined(self, other)


class Texts(Sequence[str]):
    """The texts of ``items``, read back as they are iterated: a view's texts are never listed
    (what a new tokenizer learns from, up to ``full_training.tokenizer_sample_mb``; what
    ``status --data`` and ``validate --data`` encode)."""

    def __init__(self, items: Sequence[Item]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.items[i].text

    def __iter__(self) -> Iterator[str]:
        return (it.text for it in self.items)


class Joined(Sequence[Item]):
    """Two sequences of items one after the other, neither copied."""

    def __init__(self, first: Sequence[Item], second: Sequence[Item]):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]

    def __iter__(self) -> Iterator[Item]:
        yield from self.first
        yield from self.second


def without(items: Sequence[Item], positions: Iterable[int]) -> Sequence[Item]:
    """``items`` less those at ``positions``: a narrower view of a spool, or a shorter list."""
    positions = set(positions)
    if not positions:
        return items
    if isinstance(items, ItemView):
        return items.without(sorted(positions))
    return [it for i, it in enumerate(items) if i not in positions]


def batched(items: Iterable[Item], size: int | None = None, max_bytes: int | None = None) -> Iterator[list[Item]]:
    """``items`` in lists of at most ``size`` items or about ``max_bytes`` characters of text
    (``BATCH_ITEMS``, ``BATCH_BYTES``)."""
    size, max_bytes = size or BATCH_ITEMS, max_bytes or BATCH_BYTES
    batch: list[Item] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += len(item.text)
        if len(batch) >= size or chars >= max_bytes:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def write_records(items: Iterable[Item], path) -> None:
    """``items`` to the file ``path``, a batch at a time: a spool's records one after the other
    (``read_records`` gives them back). How a run's items go to another process of the same
    user (an ``--auto`` trial, ``tune/trial.py``) without a list of them all."""
    with open(path, "wb") as f:
        for batch in batched(items):
            f.write(b"".join(_record(it) for it in batch))


def read_records(path) -> ItemSpool:
    """The items ``write_records`` wrote to ``path``, into a spool of their own, a batch at a time."""
    def records() -> Iterator[Item]:
        with open(path, "rb") as f:
            while f.peek(1):
                yield _fields_item(pickle.load(f))

    spool = ItemSpool()
    for batch in batched(records()):
        spool.extend(batch)
    return spool


def even_sample(items: Sequence[Item], max_bytes: int) -> list[int]:
    """Positions of items spread evenly over ``items`` whose texts hold at most ``max_bytes``
    (UTF-8); every position when they all fit (the same sample each time)."""
    if isinstance(items, ItemView):
        sizes = items.spool.text_bytes()[items.index]
    else:
        sizes = np.array([len(it.text.encode("utf-8", "surrogatepass")) for it in items], dtype=np.int64)
    total = int(sizes.sum())
    if total <= max_bytes:
        return list(range(len(sizes)))
    wanted = max(1, int(len(sizes) * max_bytes / total))
    picked = np.unique(np.linspace(0, len(sizes) - 1, wanted).round().astype(np.int64))
    within = np.cumsum(sizes[picked]) <= max_bytes
    return picked[within].tolist() or picked[:1].tolist()
