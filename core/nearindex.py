"""Near-duplicate index: MinHash LSH bands of every learned item, in SQLite beside the ledger.

datasketch computes each item's MinHash and the band layout its MinHashLSH
picks for a threshold (b bands of r hash values). Its own index lives in
memory and persists by pickling, which we never load, so the bands live in
``ledger.sqlite`` instead:

    minhash_specs(id, spec)             one row per option set ever used
    minhash_bands(key, item, version)   b rows per learned (or held-out) item

``key`` hashes (spec, band number, band values); ``item`` is the first 64 bits
of the item's ledger hash, so a hit resolves to its ledger row (origin, role).
Checking n new items costs n*b indexed lookups whatever the ledger's size, and
nothing is held in memory between runs. Rows carry their version, so the
chain rule applies as in the ledger, and recover() drops rows of versions that
were never finished. Items indexed under an earlier option set stay findable:
new items are hashed once per set found in ``minhash_specs``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from .errors import ConfigError
from .items import normalize_text
from .store import Ledger, fault_point

_SCHEME = "affine32"  # datasketch's MinHash scheme, pinned: band keys are persisted
# How each shingle becomes 32 bits before datasketch's permutations. crc32 is a
# C call, ~10x faster than datasketch's default (sha1 wrapped in Python), and the
# affine32 scheme pre-mixes inputs (murmur fmix), so a plain checksum is enough.
_HASHES = {"crc32": zlib.crc32}
_CHUNK = 900          # keys per SQL IN (...) query, under SQLite's variable limit


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
        """The band layout datasketch's MinHashLSH chooses for ``threshold``."""
        from datasketch import MinHashLSH

        try:
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError as exc:
            raise ConfigError(f"options.minhash: threshold {threshold} with num_perm {num_perm} "
                              f"gives no usable LSH bands ({exc})") from None
        return cls(num_perm, lsh.b, lsh.r, shingle, shingle_size, seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


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

    def _create_tables(self) -> None:  # on first write only: a read changes nothing
        db = self.ledger.db
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS minhash_specs (id INTEGER PRIMARY KEY, spec TEXT NOT NULL UNIQUE)")
            db.execute("CREATE TABLE IF NOT EXISTS minhash_bands (key INTEGER NOT NULL, item INTEGER NOT NULL,"
                       " version TEXT NOT NULL, PRIMARY KEY (key, item, version)) WITHOUT ROWID")

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
        return self.add_keys(version, ((h, band_keys(sid, self.spec, m)) for (h, _), m in zip(items, sigs)))

    def add_keys(self, version: str, entries: Iterable[tuple[str, Sequence[int]]]) -> int:
        """Store precomputed (ledger hash, band keys) rows in one transaction."""
        self._create_tables()
        db = self.ledger.db
        with db:
            self.ledger.mark_version(version)
            cur = db.executemany("INSERT OR IGNORE INTO minhash_bands (key, item, version) VALUES (?, ?, ?)",
                                 ((k, item_id(h), version) for h, keys in entries for k in keys))
            fault_point("minhash")  # test-only: killed mid-transaction
            return cur.rowcount

    # --- reading ------------------------------------------------------------
    def matches(self, texts: list[str], chain: list[str], own_signatures: list | None = None
                ) -> dict[int, set[tuple[int, str]]]:
        """``{index in texts: {(item, version), ...}}``: learned items of ``chain`` sharing a band."""
        live = set(chain)
        found: dict[int, set[tuple[int, str]]] = defaultdict(set)
        for sid, spec in self.specs().items():
            sigs = own_signatures if (spec == self.spec and own_signatures is not None) \
                else signatures(spec, texts)
            owners: dict[int, list[int]] = defaultdict(list)
            for i, m in enumerate(sigs):
                for key in band_keys(sid, spec, m):
                    owners[key].append(i)
            keys = list(owners)
            for start in range(0, len(keys), _CHUNK):
                part = keys[start:start + _CHUNK]
                q = f"SELECT key, item, version FROM minhash_bands WHERE key IN ({','.join('?' * len(part))})"
                for key, item, version in self.ledger.db.execute(q, part):
                    if version in live:
                        for i in owners[key]:
                            found[i].add((item, version))
        return dict(found)

    def resolve(self, item: int, version: str) -> tuple[str, str, str] | None:
        """(ledger hash, role, origin) of an indexed item, from its ledger row."""
        prefix = _hash_prefix(item)
        row = self.ledger.db.execute(
            "SELECT hash, role, origin FROM items WHERE hash >= ? AND hash < ? AND version = ? LIMIT 1",
            (prefix, prefix + "g", version)).fetchone()
        return None if row is None else (row[0], row[1], row[2] or "")

    def count(self, version: str) -> int:
        """Band rows of ``version`` (a full scan: for tests and diagnostics)."""
        if not self.specs():
            return 0
        return self.ledger.db.execute("SELECT COUNT(*) FROM minhash_bands WHERE version = ?",
                                      (version,)).fetchone()[0]
