"""Near-duplicate index: MinHash LSH bands and signatures of every learned item, in SQLite
beside the ledger.

datasketch computes each item's MinHash (num_perm 32-bit values). The band
layout (b bands of r values) is chosen here, not by datasketch's MinHashLSH,
so that a pair at the configured threshold shares a band with probability
>= ``CANDIDATE_RECALL``: the bands only find candidates, and every candidate is
then checked against the threshold by its estimated Jaccard similarity (the
share of equal MinHash values) from the stored signature. datasketch's own
index lives in memory and persists by pickling, which we never load, so
everything lives in ``ledger.sqlite`` instead, as plain integers and bytes:

    minhash_specs(id, spec)                          one row per option set ever used
    minhash_bands(key, item, version)                b rows per learned (or held-out) item
    minhash_signatures(spec, item, version, values)  one row per item: its num_perm
                                                     values, little-endian uint32

``key`` hashes (spec, band number, band values); ``item`` is the first 64 bits
of the item's ledger hash, so a hit resolves to its ledger row (origin, role).
Checking n new items costs n*b indexed lookups whatever the ledger's size, plus
one lookup per candidate, and nothing is held in memory between runs. Rows
carry their version and are written with ``ledger.mark_version`` in the same
transaction (one per batch of items), so the chain rule applies as in the ledger,
and recover() drops rows of versions that were never finished. Items indexed
under an earlier option set stay findable: new items are hashed once per set
found in ``minhash_specs``, and verified against the current threshold with that
set's signatures.

Indexes written before signatures were stored have band rows only. Their
candidates cannot be verified and count as duplicates unverified, as they did
when they were written (the conservative side: a held-out item is never
trained on); they keep that layout's recall, since the texts needed to rebuild
them are not kept.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Sequence

from retain.core.errors import ConfigError
from retain.core.data.items import normalize_text
from retain.core.storage.store import Ledger, fault_point

_SCHEME = "affine32"  # datasketch's MinHash scheme, pinned: band keys are persisted
# How each shingle becomes 32 bits before datasketch's permutations. crc32 is a
# C call, ~10x faster than datasketch's default (sha1 wrapped in Python), and the
# affine32 scheme pre-mixes inputs (murmur fmix), so a plain checksum is enough.
_HASHES = {"crc32": zlib.crc32}
_CHUNK = 900          # keys per SQL IN (...) query, under SQLite's variable limit
# A pair at exactly the threshold must share a band with at least this probability.
# With verification the bands only have to find candidates; a layout with fewer,
# longer bands would miss pairs at the threshold that verification would accept.
CANDIDATE_RECALL = 0.99


@dataclass(frozen=True)
class Spec:
    """Everything that fixes an item's band keys."""

    num_perm: int
    bands: int
    rows: int
    shingle: str
    shingle_size: int
    seed: int
    scheme: str = _SCHEME
    hash: str = "crc32"

    @classmethod
    def for_threshold(cls, threshold: float, num_perm: int, shingle: str, shingle_size: int,
                      seed: int) -> "Spec":
        """The layout for ``threshold``: the longest bands (fewest chance candidates, least
        verification) under which a pair at exactly ``threshold`` becomes a candidate with
        probability >= CANDIDATE_RECALL, i.e. 1 - (1 - t**r)**b >= 0.99 with b = num_perm // r.
        (0.8 and 128 permutations: 21 bands of 6, 0.998 at 0.8. datasketch's MinHashLSH
        weighs misses and chance candidates alike and picks 9 bands of 13: 0.40 at 0.8.)
        If no layout reaches it (a very low threshold with few permutations), bands of one
        value: the most candidates the permutations can give."""
        if not 0.0 < threshold < 1.0 or num_perm < 1:
            raise ConfigError(f"options.minhash: no LSH bands for threshold {threshold} "
                              f"with num_perm {num_perm}")
        rows = next((r for r in range(num_perm, 0, -1)
                     if candidate_probability(threshold, num_perm // r, r) >= CANDIDATE_RECALL), 1)
        return cls(num_perm, num_perm // rows, rows, shingle, shingle_size, seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that two items of this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - similarity ** rows) ** bands


def shingles(text: str, unit: str, size: int) -> list[bytes]:
    """Overlapping word (or character) n-grams of the normalized text."""
    norm = normalize_text(text)
    if unit == "word":
        words = norm.split(" ")
        grams = {" ".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))}
    else:
        grams = {norm[i:i + size] for i in range(max(1, len(norm) - size + 1))}
    return [g.encode("utf-8", "surrogatepass") for g in grams]


def signatures(spec: Spec, texts: Iterable[str]) -> list:
    """One datasketch MinHash per text."""
    from datasketch import MinHash

    return list(MinHash.generator((shingles(t, spec.shingle, spec.shingle_size) for t in texts),
                                  num_perm=spec.num_perm, seed=spec.seed, scheme=spec.scheme,
                                  hashfunc=_HASHES[spec.hash]))


def signature_bytes(minhash) -> bytes:
    """The stored form of a MinHash: its values as little-endian uint32 (fixed: persisted)."""
    import numpy as np

    return np.asarray(minhash.hashvalues, dtype="<u4").tobytes()


def similarity(values, stored: bytes) -> float:
    """Estimated Jaccard similarity: the share of equal MinHash values."""
    import numpy as np

    other = np.frombuffer(stored, dtype="<u4")
    if len(other) != len(values):
        raise ValueError(f"signature of {len(other)} values, expected {len(values)}")
    return float(np.count_nonzero(np.asarray(values, dtype="<u4") == other)) / len(other)


def band_keys(spec_id: int, spec: Spec, minhash) -> list[int]:
    """The b signed 64-bit keys of one MinHash (fixed byte order: they are persisted)."""
    import numpy as np

    values = np.asarray(minhash.hashvalues, dtype="<u4")
    keys = []
    for band in range(spec.bands):
        chunk = values[band * spec.rows:(band + 1) * spec.rows].tobytes()
        digest = hashlib.blake2b(chunk, digest_size=8, person=struct.pack("<II", spec_id, band)).digest()
        keys.append(int.from_bytes(digest, "little", signed=True))
    return keys


def item_id(ledger_hash: str) -> int:
    """The first 64 bits of a ledger hash, as SQLite's signed integer."""
    return int.from_bytes(bytes.fromhex(ledger_hash[:16]), "big", signed=True)


def _hash_prefix(item: int) -> str:
    return (item & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big").hex()


class NearDuplicateIndex:
    def __init__(self, ledger: Ledger, spec: Spec):
        self.ledger = ledger
        self.spec = spec
        self.stats: dict[str, float] = {}  # of the last matches(): candidates, verified, unverifiable, verify_s

    def _create_tables(self) -> None:  # on first write only: a read changes nothing
        db = self.ledger.db
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS minhash_specs (id INTEGER PRIMARY KEY, spec TEXT NOT NULL UNIQUE)")
            db.execute("CREATE TABLE IF NOT EXISTS minhash_bands (key INTEGER NOT NULL, item INTEGER NOT NULL,"
                       " version TEXT NOT NULL, PRIMARY KEY (key, item, version)) WITHOUT ROWID")
            db.execute("CREATE TABLE IF NOT EXISTS minhash_signatures (spec INTEGER NOT NULL,"
                       " item INTEGER NOT NULL, version TEXT NOT NULL, hashvalues BLOB NOT NULL,"
                       " PRIMARY KEY (spec, item, version)) WITHOUT ROWID")

    def specs(self) -> dict[int, Spec]:
        db = self.ledger.db
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'minhash_specs'").fetchone() is None:
            return {}
        return {sid: Spec(**json.loads(text)) for sid, text in db.execute("SELECT id, spec FROM minhash_specs")}

    def spec_id(self) -> int:
        """The id of this index's own spec, added on first use."""
        self._create_tables()
        db = self.ledger.db
        with db:
            db.execute("INSERT OR IGNORE INTO minhash_specs (spec) VALUES (?)", (self.spec.to_json(),))
        return db.execute("SELECT id FROM minhash_specs WHERE spec = ?", (self.spec.to_json(),)).fetchone()[0]

    # --- writing ------------------------------------------------------------
    def remember(self, version: str, items: list[tuple[str, str]]) -> int:
        """Index (ledger hash, text) pairs under ``version``; returns the band rows added."""
        sid = self.spec_id()
        sigs = signatures(self.spec, (text for _, text in items))
        return self.add_keys(version, ((h, band_keys(sid, self.spec, m), signature_bytes(m))
                                       for (h, _), m in zip(items, sigs)))

    def add_keys(self, version: str, entries: Iterable[tuple[str, Sequence[int], bytes]]) -> int:
        """Store precomputed (ledger hash, band keys, signature bytes) rows, under this index's
        spec, in one transaction; returns the band rows added."""
        sid = self.spec_id()
        size = 4 * self.spec.num_perm
        db = self.ledger.db
        bands, sigs = [], []
        for h, keys, values in entries:
            if len(values) != size:
                raise ValueError(f"signature of {len(values)} bytes, expected {size}")
            item = item_id(h)
            bands.extend((k, item, version) for k in keys)
            sigs.append((sid, item, version, values))
        with db:
            self.ledger.mark_version(version)
            cur = db.executemany("INSERT OR IGNORE INTO minhash_bands (key, item, version) VALUES (?, ?, ?)",
                                 bands)
            added = cur.rowcount
            db.executemany("INSERT OR IGNORE INTO minhash_signatures (spec, item, version, hashvalues)"
                           " VALUES (?, ?, ?, ?)", sigs)
            fault_point("minhash")  # test-only: killed mid-transaction
            return added

    # --- reading ------------------------------------------------------------
    def matches(self, texts: list[str], chain: list[str], own_signatures: list | None = None,
                threshold: float | None = None) -> dict[int, dict[tuple[int, str], float | None]]:
        """``{index in texts: {(item, version): similarity}}``: learned items of ``chain`` that
        share a band with the text and, if ``threshold`` is given, whose estimated Jaccard
        similarity reaches it. ``similarity`` is None for an item indexed without a stored
        signature (an index from before signatures were kept): it cannot be verified and is
        kept, as it counted when it was written."""
        live = set(chain)
        found: dict[int, dict[tuple[int, str], float | None]] = defaultdict(dict)
        self.stats = {"candidates": 0, "verified": 0, "unverifiable": 0, "verify_s": 0.0}
        has_signatures = self._has_table("minhash_signatures")
        for sid, spec in self.specs().items():
            # Specs differing only in their band layout (another threshold) hash texts alike.
            same_hashing = replace(spec, bands=self.spec.bands, rows=self.spec.rows) == self.spec
            sigs = own_signatures if (same_hashing and own_signatures is not None) \
                else signatures(spec, texts)
            owners: dict[int, list[int]] = defaultdict(list)
            for i, m in enumerate(sigs):
                for key in band_keys(sid, spec, m):
                    owners[key].append(i)
            candidates: dict[int, set[tuple[int, str]]] = defaultdict(set)
            for key, item, version in self._select("SELECT key, item, version FROM minhash_bands WHERE key IN",
                                                   list(owners)):
                if version in live:
                    for i in owners[key]:
                        candidates[i].add((item, version))
            t0 = time.perf_counter()
            stored: dict[tuple[int, str], bytes] = {}
            if has_signatures and candidates:
                items = sorted({item for hits in candidates.values() for item, _ in hits})
                q = "SELECT item, version, hashvalues FROM minhash_signatures WHERE spec = ? AND item IN"
                for item, version, values in self._select(q, items, (sid,)):
                    if version in live:
                        stored[(item, version)] = values
            for i, hits in candidates.items():
                for hit in hits:
                    self.stats["candidates"] += 1
                    values = stored.get(hit)
                    sim = None if values is None else similarity(sigs[i].hashvalues, values)
                    self.stats["verified" if sim is not None else "unverifiable"] += 1
                    old = found[i].get(hit, None)
                    if hit not in found[i] or (sim is not None and (old is None or sim > old)):
                        found[i][hit] = sim  # one estimate per item: the best over option sets
            self.stats["verify_s"] += time.perf_counter() - t0
        if threshold is not None:
            for i in list(found):
                found[i] = {hit: sim for hit, sim in found[i].items() if sim is None or sim >= threshold}
        return {i: hits for i, hits in found.items() if hits}

    def _has_table(self, name: str) -> bool:
        return self.ledger.db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None

    def _select(self, query: str, values: list, params: tuple = ()) -> Iterable[tuple]:
        """``query`` + `` (?, ?, ...)`` over ``values`` in chunks under SQLite's variable limit."""
        for start in range(0, len(values), _CHUNK):
            part = values[start:start + _CHUNK]
            yield from self.ledger.db.execute(f"{query} ({','.join('?' * len(part))})", (*params, *part))

    def resolve(self, item: int, version: str) -> tuple[str, str, str] | None:
        """(ledger hash, role, origin) of an indexed item, from its ledger row."""
        prefix = _hash_prefix(item)
        row = self.ledger.db.execute(
            "SELECT hash, role, origin FROM items WHERE hash >= ? AND hash < ? AND version = ? LIMIT 1",
            (prefix, prefix + "g", version)).fetchone()
        return None if row is None else (row[0], row[1], row[2] or "")

    def unindexed(self, chain: list[str]) -> dict[str, int]:
        """``{version: ledger items}`` of the versions of ``chain`` whose items are in the ledger
        but not in this index (learned before minhash was on): near-copies of them go unseen."""
        if not chain:
            return {}
        db, marks = self.ledger.db, ",".join("?" * len(chain))
        counts = dict(db.execute(f"SELECT version, COUNT(*) FROM items WHERE version IN ({marks}) "
                                 "GROUP BY version", chain).fetchall())
        indexed: set[str] = set()
        for table in ("minhash_signatures", "minhash_bands"):  # bands alone: an index of before signatures
            rest = [v for v in counts if v not in indexed]
            if rest and self._has_table(table):
                q = f"SELECT DISTINCT version FROM {table} WHERE version IN ({','.join('?' * len(rest))})"
                indexed |= {v for (v,) in db.execute(q, rest)}
        return {v: n for v, n in counts.items() if v not in indexed}

    def count(self, version: str, table: str = "minhash_bands") -> int:
        """Band (or signature) rows of ``version`` (a full scan: for tests and diagnostics)."""
        if table not in ("minhash_bands", "minhash_signatures") or not self._has_table(table):
            return 0
        return self.ledger.db.execute(f"SELECT COUNT(*) FROM {table} WHERE version = ?",
                                      (version,)).fetchone()[0]


class RunIndex:
    """The bands and signatures of the items a run kept so far, for ``MinhashDeduper``'s check
    of each item against the run's earlier ones: numbered in the order they were kept, in a
    private temporary SQLite database (an empty file name: SQLite's own unnamed file, gone when
    it is closed or the process ends). In Python dicts they took 5.4 KB an item for the whole run
    (10 GB at 2 million items); here memory is the page cache (``CACHE_KB``) whatever the run's
    size, the rest is on disk. The price is CPU: about a third more for minhash's check within
    the run (BENCHMARKS.md, "Bounded beyond training").

        bands(key, item)                        b rows per kept item
        kept(item, hashvalues, origin, hash)    its signature (little-endian uint32), where it came from
    """

    CACHE_KB = 32 << 10  # SQLite's page cache: fewer reads of the temp file, a fixed bound

    def __init__(self):
        import sqlite3

        self.db = sqlite3.connect("", check_same_thread=False)  # closed wherever its run ends
        self.db.execute(f"PRAGMA cache_size = -{self.CACHE_KB}")
        self.db.execute("PRAGMA journal_mode = OFF")  # scratch: nothing to roll back to
        self.db.execute("CREATE TABLE bands (key INTEGER NOT NULL, item INTEGER NOT NULL,"
                        " PRIMARY KEY (key, item)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE kept (item INTEGER PRIMARY KEY, hashvalues BLOB NOT NULL,"
                        " origin TEXT NOT NULL, hash TEXT NOT NULL)")
        self.size = 0  # items kept so far: the next one's number

    def owners(self, keys: Iterable[int]) -> dict[int, list[int]]:
        """``{band key: [item, ...]}``: the kept items with each of ``keys``."""
        found: dict[int, list[int]] = defaultdict(list)
        for key, item in self._select("SELECT key, item FROM bands WHERE key IN", sorted(set(keys))):
            found[key].append(item)
        return found

    def signatures(self, items: Iterable[int]) -> dict[int, tuple[bytes, str, str]]:
        """``{item: (signature bytes, origin, hash)}`` of these kept items."""
        q = "SELECT item, hashvalues, origin, hash FROM kept WHERE item IN"
        return {item: (values, origin, h) for item, values, origin, h in self._select(q, sorted(set(items)))}

    def add(self, entries: Sequence[tuple[Sequence[int], bytes, str, str]]) -> None:
        """Keep (band keys, signature bytes, origin, hash) items, numbered from ``size`` on."""
        first = self.size
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO bands (key, item) VALUES (?, ?)",
                                ((key, first + n) for n, (keys, _, _, _) in enumerate(entries) for key in keys))
            self.db.executemany("INSERT INTO kept (item, hashvalues, origin, hash) VALUES (?, ?, ?, ?)",
                                ((first + n, values, origin, h) for n, (_, values, origin, h) in enumerate(entries)))
        self.size += len(entries)

    def _select(self, query: str, values: list) -> Iterable[tuple]:
        for start in range(0, len(values), _CHUNK):
            part = values[start:start + _CHUNK]
            yield from self.db.execute(f"{query} ({','.join('?' * len(part))})", part)

    def close(self) -> None:
        self.db.close()
