"""Token shards: what a run trains on, on disk, read through memory maps.

A run's trained items are tokenized in chunks (``ENCODE_CHUNK`` texts at a time) and
written as one flat token array and its item offsets, so the padded rows of every item
are never in memory at once: a batch reads its rows from the map.

    shards/<version>.uint16     every trained item's ids (the family's boundary tokens
                                included), one after the other: uint16 where every id fits,
                                uint32 otherwise (the suffix says which)
    shards/<version>.offsets    int64, items + 1 entries: item i is tokens[o[i]:o[i+1]]

The shard is written into a scratch folder while the run tokenizes
(``versions/.tmp-shards-<pid>-<run>`` of the model directory, or a system temp folder
for a run that writes nothing), then moved into the version folder by the save
(``keep_in_version``): ``VersionWriter.finish`` checksums it with the weights, and it
is referenced by a version only once that version is renamed into place. A kill
before leaves a ``.tmp-`` folder, which ``ModelStore.recover`` removes.

A version also holds its parent's shards, as hard links (no copy): the shards of its
whole chain. Replay draws from them (``History``), so it reaches everything the model
learned, and a pruned ancestor's shard lives on in its descendants.
Held-out items are never in a shard: only ``run.items``, the trained ones, are written.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import uuid
import weakref
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from retain.core.runtime import interrupts
from retain.core.learning.lm import ENCODE_CHUNK, IGNORE_INDEX, Rows
from retain.core.storage.store import fault_point

SHARDS = "shards"                   # the folder of a version that holds its chain's shards
OFFSETS = ".offsets"                # suffix of a shard's item offsets (int64)
SCRATCH = ".tmp-shards-"            # versions/.tmp-shards-<pid>-<run>: a run's shard while it tokenizes
_TOKENS = re.compile(r"^shards/(?P<version>[^/]+)\.(?P<dtype>uint16|uint32)$")


def token_dtype(max_id: int) -> np.dtype:
    """uint16 while every id fits (vocabularies up to 65,536), uint32 beyond."""
    return np.dtype(np.uint16) if max_id < 1 << 16 else np.dtype(np.uint32)


def ids_of(lm, texts: list[str]) -> list[Sequence[int]]:
    """Each text's ids, wrapped in the family's boundary tokens, as ``encode`` trains on them:
    the family's ``encode_ids`` where it has one, else read back from its rows (a row's inputs,
    then its last target: windows overlap by one token, so the rows give the ids exactly)."""
    encode_ids = getattr(lm, "encode_ids", None)
    if callable(encode_ids):
        return encode_ids(texts)
    rows = lm.encode(texts, 1 << 30)
    out: list[Sequence[int]] = [array("i") for _ in texts]
    for r, owner in enumerate(rows.owner.tolist()):
        n = int((rows.y[r] != IGNORE_INDEX).sum())
        out[owner] = array("i", rows.x[r, :n].tolist() + rows.y[r, n - 1:n].tolist())
    return out


class ShardWriter:
    """Appends items' ids to a shard in ``folder``: tokens and offsets, chunk by chunk."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.dtype = np.dtype(np.uint16)
        self.count, self.items = 0, 0
        self._tokens = open(self.path(self.dtype), "wb")
        self._offsets = open(folder / f"{name}{OFFSETS}", "wb")
        self._offsets.write(np.zeros(1, np.int64).tobytes())

    def path(self, dtype: np.dtype) -> Path:
        return self.folder / f"{self.name}.{dtype.name}"

    def add(self, ids: list[Sequence[int]]) -> None:
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        if ids and all(isinstance(i, array) and i.typecode == "i" for i in ids):  # a family's encode_ids:
            flat = np.frombuffer(b"".join(ids), dtype=np.int32)  # one copy, not one array per item
        else:
            parts = [np.asarray(i, dtype=np.int64) for i in ids]
            flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if flat.size and int(flat.max()) >= 1 << 16 and self.dtype == np.uint16:
            self._widen()
        self._tokens.write(flat.astype(self.dtype).tobytes())
        self._offsets.write((self.count + np.cumsum(lengths)).tobytes())
        self.count += int(flat.size)
        self.items += len(ids)
        fault_point("shard-chunk")  # test-only: killed mid-shard

    def _widen(self) -> None:
        """An id past 65,535: what was written as uint16 is rewritten as uint32 (once)."""
        self._tokens.close()
        old = self.path(self.dtype)
        self.dtype = np.dtype(np.uint32)
        np.fromfile(old, np.uint16).astype(np.uint32).tofile(self.path(self.dtype))
        old.unlink()
        self._tokens = open(self.path(self.dtype), "ab")

    def close(self) -> "Shard":
        for f in (self._tokens, self._offsets):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        return Shard(self.path(self.dtype), self.folder / f"{self.name}{OFFSETS}")


class Shard:
    """One shard, memory-mapped: ``ids(i)`` is item i's ids, ``lengths`` every item's."""

    def __init__(self, tokens: Path, offsets: Path):
        self.tokens_path, self.offsets_path = Path(tokens), Path(offsets)
        dtype = np.dtype(self.tokens_path.suffix.lstrip("."))
        self.offsets = _map(self.offsets_path, np.int64)
        self.tokens = _map(self.tokens_path, dtype)

    def __len__(self) -> int:
        return max(0, len(self.offsets) - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def ids(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def _map(path: Path, dtype) -> np.ndarray:
    """A read-only map of ``path`` (an empty file maps to an empty array: mmap refuses it)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def spans(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item, start within the item, ids in the row) of every row, in ``rows_from_ids``'s order:
    an item of L ids gives ceil((L - 1) / max_len) windows overlapping by one token (none if L < 2)."""
    per_item = np.where(lengths >= 2, -(-(lengths - 1) // max_len), 0)
    item = np.repeat(np.arange(len(lengths), dtype=np.int64), per_item)
    first = np.repeat(np.cumsum(per_item) - per_item, per_item)
    start = (np.arange(len(item), dtype=np.int64) - first) * max_len
    n = np.minimum(lengths[item] - start, max_len + 1)
    return item, start, n


class ShardRows:
    """A shard's training rows of at most ``max_len`` positions: what ``Rows`` is in memory, with
    only each row's place kept (16 bytes a row); the ids are read from the map per batch."""

    def __init__(self, shard: Shard, max_len: int, pad_id: int, folder: Path | None = None):
        self.shard, self.max_len, self.pad_id = shard, max_len, pad_id
        item, start, n = spans(shard.lengths, max_len)
        self.start = shard.offsets[:-1][item] + start if len(item) else np.zeros(0, np.int64)
        self.n = n.astype(np.int32)
        self.owner_index = item.astype(np.int32)
        self.folder: Path | None = None  # the scratch folder it lives in, removed with it (unless kept)
        if folder is not None:
            self._own(folder)

    def _own(self, folder: Path) -> None:
        """The scratch folder goes with these rows: when they are dropped, at the process's end, or
        on an interrupt (which ends it with ``os._exit``: no finalizer runs then)."""
        self.folder = folder
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(folder), True)
        self._interrupt = interrupts.on_interrupt(self._cleanup)

    def release(self) -> None:
        """Remove the scratch folder now (the shard moved into a version, or the run is dropped)."""
        if self.folder is not None:
            self._cleanup()
            interrupts.release(self._interrupt)
            self.folder = None

    def __len__(self) -> int:
        return len(self.n)

    @property
    def tokens(self) -> int:
        """Real (non-padding) target tokens, as ``Rows.tokens``."""
        return int((self.n - 1).sum())

    def lengths(self) -> torch.Tensor:
        return torch.from_numpy((self.n - 1).astype(np.int64))

    @property
    def owner(self) -> torch.Tensor:
        return torch.from_numpy(self.owner_index.astype(np.int64))

    def row(self, r: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``r`` as (inputs, targets), padded to ``width``."""
        n, start = int(self.n[r]), int(self.start[r])
        ids = torch.from_numpy(self.shard.tokens[start:start + n].astype(np.int64))
        x = torch.full((width,), self.pad_id, dtype=torch.long)
        y = torch.full((width,), IGNORE_INDEX, dtype=torch.long)
        keep = min(n - 1, width)
        x[:keep], y[:keep] = ids[:keep], ids[1:keep + 1]
        return x, y

    def take(self, index: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index`` stacked, cut to the longest of them."""
        index = [int(i) for i in index]
        width = max([int(self.n[i]) - 1 for i in index] or [1])
        pairs = [self.row(i, width) for i in index]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def in_memory(self) -> Rows:
        """Every row as ``Rows`` (tests, and what a family's ``encode`` gives)."""
        x, y = self.take(range(len(self))) if len(self) else (torch.zeros(0, 1, dtype=torch.long),) * 2
        return Rows(x, y, self.owner)

    def item_tokens(self) -> list[int]:
        """Each item's tokens as ``workload.tokens_per_item`` counts them (targets less the end)."""
        lengths = self.shard.lengths
        return np.where(lengths >= 2, lengths - 2, -1).tolist()

    def without(self, items: set[int]) -> "ShardRows":
        """These rows less the rows of ``items`` (over the cap), the shard rewritten without their
        ids: what is kept with the version is what was trained on."""
        keep = np.ones(len(self.shard), dtype=bool)
        keep[sorted(items)] = False
        writer = ShardWriter(self.shard.tokens_path.parent, f"{self.shard.tokens_path.stem}-{uuid.uuid4().hex[:6]}")
        for start in range(0, len(keep), ENCODE_CHUNK):
            writer.add([self.shard.ids(i) for i in range(start, min(len(keep), start + ENCODE_CHUNK)) if keep[i]])
        old, kept = self.shard, writer.close()
        old.tokens_path.unlink()
        old.offsets_path.unlink()
        rows = ShardRows(kept, self.max_len, self.pad_id)
        if self.folder is not None:  # the scratch folder goes with the rows that now hold it
            self._cleanup.detach()
            interrupts.release(self._interrupt)
            rows._own(self.folder)
            self.folder = None
        return rows

    def select(self, index: Sequence[int]) -> "ShardRows":
        """These rows ``index`` only (a benchmark's sample), read from the same shard."""
        rows = object.__new__(ShardRows)
        rows.shard, rows.max_len, rows.pad_id, rows.folder = self.shard, self.max_len, self.pad_id, None
        rows.start, rows.n, rows.owner_index = self.start[index], self.n[index], self.owner_index[index]
        return rows

    def dataset(self, width: int) -> "RowsDataset":
        return RowsDataset(self, range(len(self)), width)


class RowsDataset(torch.utils.data.Dataset):
    """(inputs, targets, task 0) of some rows, each padded to ``width`` as it is read."""

    def __init__(self, rows: ShardRows, index: Sequence[int], width: int):
        self.rows, self.index, self.width = rows, index, width

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        x, y = self.rows.row(self.index[i], self.width)
        return x, y, 0


def encode_to_shard(lm, texts: Iterable[str], max_len: int, folder: Path) -> ShardRows:
    """Tokenize ``texts`` chunk by chunk into a new shard in ``folder`` (which it then owns)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = interrupts.on_interrupt(functools.partial(shutil.rmtree, str(folder), True))
    try:
        writer = ShardWriter(folder, "run")
        chunk: list[str] = []
        for text in texts:
            chunk.append(text)
            if len(chunk) == ENCODE_CHUNK:
                writer.add(ids_of(lm, chunk))
                chunk = []
        if chunk:
            writer.add(ids_of(lm, chunk))
        return ShardRows(writer.close(), max_len, lm.pad_id, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        interrupts.release(token)


def scratch_folder(model_dir: Path, writes: bool, run_id: str) -> Path:
    """Where a run's shard is written while it tokenizes: in the model directory when the run
    saves (the move into the version is a rename), a system temp folder otherwise."""
    versions = Path(model_dir) / "versions"
    if writes and os.access(Path(model_dir) if Path(model_dir).exists() else Path(model_dir).parent, os.W_OK):
        versions.mkdir(parents=True, exist_ok=True)
        return versions / f"{SCRATCH}{os.getpid()}-{run_id}-{uuid.uuid4().hex[:6]}"
    return Path(tempfile.mkdtemp(prefix=f"retain-shards-{os.getpid()}-"))  # whose it is, by its name


def scratch_owner(name: str) -> int | None:
    """The process id in a scratch folder's name (``.tmp-shards-<pid>-...``), else None."""
    if not name.startswith(SCRATCH):
        return None
    pid = name[len(SCRATCH):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


# --- shards in versions -----------------------------------------------------------------------

def keep_in_version(rows, writer) -> None:
    """The save: the run's shard moves into the version being written as
    ``shards/<version>.*``, beside hard links to its parent's shards (its chain's)."""
    folder = writer.tmp / SHARDS
    if writer.parent is not None:
        for rel in chain_files(writer.store, writer.parent):
            folder.mkdir(exist_ok=True)
            source = writer.store.versions_dir / writer.parent / rel
            try:
                os.link(source, writer.tmp / rel)
            except OSError:  # a filesystem without hard links: a copy
                shutil.copyfile(source, writer.tmp / rel)
    if not isinstance(rows, ShardRows):
        return
    folder.mkdir(exist_ok=True)
    shard = rows.shard
    shutil.move(shard.tokens_path, folder / f"{writer.name}{shard.tokens_path.suffix}")
    shutil.move(shard.offsets_path, folder / f"{writer.name}{OFFSETS}")
    fault_point("shard-moved")  # test-only
    rows.release()  # the scratch folder, now empty


def shard_bytes(rows) -> int:
    """What the run's shard adds to the disk when it moves in: nothing when it is already on
    the model directory's disk (a rename), its size otherwise (a copy from a temp folder)."""
    if not isinstance(rows, ShardRows) or rows.folder is None or rows.folder.parent.name == "versions":
        return 0
    return rows.shard.tokens_path.stat().st_size + rows.shard.offsets_path.stat().st_size


def chain_files(store, version: str) -> list[str]:
    """The shard files ``version`` holds (its own and its chain's), from its manifest."""
    files = store.manifest(version).get("files", {})
    return sorted(rel for rel in files if rel.startswith(SHARDS + "/"))


@dataclass
class History:
    """The shards of a version's chain, each checked against its checksum: what replay draws from."""

    shards: list[tuple[str, Shard]]

    @classmethod
    def of(cls, store, version: str) -> "History":
        manifest = store.manifest(version)
        found = []
        for rel in chain_files(store, version):
            m = _TOKENS.match(rel)
            if m is None:
                continue
            tokens = store.verified_path(version, rel, manifest)
            offsets = store.verified_path(version, f"{SHARDS}/{m['version']}{OFFSETS}", manifest)
            found.append((m["version"], Shard(tokens, offsets)))
        return cls(found)

    @property
    def items(self) -> int:
        return sum(len(s) for _, s in self.shards)

    def draw(self, tokens: float, max_len: int, pad_id: int, generator: torch.Generator,
             base: str | None = None, base_share: float | None = None) -> "DrawnRows":
        """Past items in a seeded random order until their rows hold ``tokens`` target tokens (or
        every item is drawn): each drawn item with all its rows.

        Uniform over the whole history's items by default: each version's part of the tokens is its
        part of the history's. With ``base_share``, version ``base``'s shard (the lineage's full
        training: the old domain) gives at most that share of the tokens: the other versions' (the
        updates since) are drawn first for the rest, and the base's items fill what they leave."""
        everything = list(range(len(self.shards)))
        base_shards = [s for s in everything if self.shards[s][0] == base]
        updates = [s for s in everything if s not in base_shards]
        if base_share is None or not base_shards or not updates or self._part(base_shards) <= base_share:
            return DrawnRows(self, self._draw(everything, tokens, generator), max_len, pad_id)
        picked = self._draw(updates, tokens * (1 - base_share), generator)
        got = sum(len(self.shards[s][1].ids(i)) - 1 for s, i in picked)
        return DrawnRows(self, picked + self._draw(base_shards, tokens - got, generator), max_len, pad_id)

    def _part(self, which: list[int]) -> float:
        """The share of the history's tokens held by the shards ``which``."""
        sizes = [int(shard.lengths.sum()) for _, shard in self.shards]
        return sum(sizes[s] for s in which) / max(sum(sizes), 1)

    def _draw(self, which: list[int], tokens: float, generator: torch.Generator) -> list[tuple[int, int]]:
        """(shard, item) pairs from the shards ``which``, uniform over their items in a seeded random
        order, until their targets reach ``tokens`` (or every item is drawn)."""
        sizes = np.array([len(self.shards[s][1]) for s in which], dtype=np.int64)
        total = int(sizes.sum())
        bounds = np.cumsum(sizes)
        picked: list[tuple[int, int]] = []
        seen: set[int] = set()
        got = 0
        order = torch.randperm(total, generator=generator) if total <= 1 << 20 else None
        drawn = 0
        while got < tokens and drawn < total:
            k = int(order[drawn]) if order is not None else int(torch.randint(total, (1,), generator=generator))
            if k in seen:
                continue
            seen.add(k)
            drawn += 1
            j = int(np.searchsorted(bounds, k, side="right"))
            i = k - (int(bounds[j - 1]) if j else 0)
            n = len(self.shards[which[j]][1].ids(i))
            if n >= 2:
                picked.append((which[j], i))
                got += n - 1
        return picked


class DrawnRows(torch.utils.data.Dataset):
    """The rows of drawn past items, padded to ``width`` as they are read; ``version`` of each row."""

    def __init__(self, history: History, picked: list[tuple[int, int]], max_len: int, pad_id: int):
        self.history, self.pad_id, self.width = history, pad_id, max_len
        places = []
        for s, i in picked:
            shard = history.shards[s][1]
            length = np.array([len(shard.ids(i))], dtype=np.int64)
            _, start, n = spans(length, max_len)
            places += [(s, int(shard.offsets[i]) + int(a), int(b)) for a, b in zip(start, n)]
        self.places = places

    def __len__(self) -> int:
        return len(self.places)

    def lengths(self) -> torch.Tensor:
        return torch.tensor([n - 1 for _, _, n in self.places], dtype=torch.long)

    def dataset(self, width: int) -> "DrawnRows":
        return self

    def versions(self) -> list[str]:
        return [self.history.shards[s][0] for s, _, _ in self.places]

    def __getitem__(self, r: int):
        s, start, n = self.places[r]
        ids = torch.from_numpy(self.history.shards[s][1].tokens[start:start + n].astype(np.int64))
        x = torch.full((self.width,), self.pad_id, dtype=torch.long)
        y = torch.full((self.width,), IGNORE_INDEX, dtype=torch.long)
        x[:n - 1], y[:n - 1] = ids[:-1], ids[1:]
        return x, y, 0
