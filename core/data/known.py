"""What the current model already knows, and how a deduper says an item repeats it.

``KnownItems`` is the ``known`` a deduper receives: called with hashes it
answers from the ledger (exact lookups); dedupers with an index of their own
(``minhash``) use its ``ledger`` and ``chain``. Only versions in ``chain``
(CURRENT and its ancestors) count, so rows of a crashed, rejected or rolled-back
version are invisible without any cleanup.

A run deduplicates its items in batches (``core/data/ingest.py``), each deduper with the
same ``known`` for every batch of the run: ``known.in_run(hashes)`` says which of them an
item kept by an earlier batch has (``EarlierBatches``), so a copy two batches apart is
a duplicate "in this batch" as one within a batch is.
"""

from __future__ import annotations

from typing import Any, Sequence

from retain.core.storage.store import Ledger

class EarlierBatches:
    """The items earlier batches of a run kept, by hash, in 12 bytes an item: the hash's first
    8 bytes (sorted runs of them, merged now and then) and the item's position in ``items``
    (the run's spool: where its origin is read back, and its full hash checked)."""

    def __init__(self, items: Sequence):
        self.items = items
        self.runs: list = []  # (prefixes sorted, their positions): numpy arrays  # (prefixes sorted, their positions)

    def add(self, hashes: list[str], positions: Sequence[int]) -> None:
        import numpy as np

        if not hashes:
            return
        prefixes = _prefixes(hashes)
        order = np.argsort(prefixes, kind="stable")
        self.runs.append((prefixes[order], np.asarray(positions, dtype=np.uint32)[order]))
        # Runs merged as a binary counter's bits: about log2(batches) of them, each item moved
        # log2 times. A merge places both sorted runs by binary search (20 bytes an item beside
        # them; a concatenate-and-argsort took 32, which at 2 million items was dedupe's peak).
        while len(self.runs) > 1 and len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            (k1, p1), (k2, p2) = self.runs.pop(-2), self.runs.pop()
            at1 = np.searchsorted(k2, k1, "left") + np.arange(len(k1))
            at2 = np.searchsorted(k1, k2, "right") + np.arange(len(k2))
            keys, where = np.empty(len(k1) + len(k2), k1.dtype), np.empty(len(k1) + len(k2), p1.dtype)
            keys[at1], keys[at2], where[at1], where[at2] = k1, k2, p1, p2
            del k1, k2, p1, p2, at1, at2
            self.runs.append((keys, where))

    def find(self, hashes: list[str]) -> dict[str, Any]:
        """``{hash: item}``: the earliest kept item with each of ``hashes`` (read back and checked)."""
        import numpy as np

        if not self.runs or not hashes:
            return {}
        prefixes = _prefixes(hashes)
        candidates: dict[str, list[int]] = {}
        for keys, where in self.runs:
            lo, hi = np.searchsorted(keys, prefixes, "left"), np.searchsorted(keys, prefixes, "right")
            for j in np.nonzero(hi > lo)[0].tolist():
                candidates.setdefault(hashes[j], []).extend(where[lo[j]:hi[j]].tolist())
        found = {}
        for h, positions in candidates.items():
            for position in sorted(positions):
                item = self.items[position]
                if item.hash == h:  # not just the same first 8 bytes
                    found[h] = item
                    break
        return found


def _prefixes(hashes: list[str]):
    import numpy as np

    return np.array([int(h[:16], 16) for h in hashes], dtype=np.uint64)


class KnownItems:
    """``known(hashes) -> {hash: (version, role)}`` over the ledger rows of ``chain``;
    ``known.in_run(hashes) -> {hash: origin}`` over the items earlier batches of the run kept."""

    def __init__(self, ledger: Ledger | None, chain: list[str], earlier: EarlierBatches | None = None):
        self.ledger = ledger
        self.chain = list(chain)
        self.earlier = earlier

    def __call__(self, hashes: list[str]) -> dict[str, tuple[str, str]]:
        if not self.chain or self.ledger is None or not hashes:
            return {}
        return self.ledger.find(hashes, self.chain)

    def in_run(self, hashes: list[str]) -> dict[str, str]:
        """``{hash: origin}`` of the items with these hashes that earlier batches of this run kept."""
        if self.earlier is None:
            return {}
        return {h: item.origin for h, item in self.earlier.find(hashes).items()}

    def origins(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """``{(hash, version): origin}``: where each learned item came from (file:line)."""
        out: dict[tuple[str, str], str] = {}
        if self.ledger is None:
            return out
        q = "SELECT origin FROM items WHERE hash = ? AND version = ?"
        for h, version in dict.fromkeys(pairs):
            row = self.ledger.db.execute(q, (h, version)).fetchone()
            if row is not None:
                out[(h, version)] = row[0] or ""
        return out


# What a duplicate repeats: an item of this batch, an item a version trained on,
# or a held-out item (validation/retention) that must never be trained on.
BATCH, LEARNED, HOLDOUT = "batch", "learned", "holdout"


class Duplicate(str):
    """A deduper's reason (a plain string to the engine) that also says what was matched.

    The engine copies ``details`` into the report's ``skipped`` entries and
    counts kind ``holdout`` as ``contaminating``: training on it would inflate
    the gate's retention/learning numbers.
    """

    details: dict[str, Any]

    def __new__(cls, reason: str, *, kind: str, matched: str = "", matched_hash: str = "",
                version: str | None = None, similarity: float | None = None) -> "Duplicate":
        obj = super().__new__(cls, reason)
        obj.details = {"kind": kind, "matched": matched, "matched_hash": matched_hash}
        if version is not None:
            obj.details["version"] = version
        if similarity is not None:
            obj.details["similarity"] = round(float(similarity), 4)
        return obj


def describe_match(kind: str, version: str, origin: str, how: str = "") -> str:
    """One line for the report: what the skipped item repeats and where that came from."""
    what = "held out" if kind == HOLDOUT else "learned"
    line = f"{how}already {what} by version {version}" + (f" ({origin})" if origin else "")
    if kind == HOLDOUT:
        line += ": a held-out item is never trained on (it would contaminate evaluation)"
    return line
