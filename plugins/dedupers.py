"""Built-in dedupers: exact (normalized-text hash) and minhash (near-duplicates, MinHash LSH).

Both check the batch itself and everything the current model learned or
holds out. A run calls them once per batch of its items, in order, with the same
``known`` (``core/data/known.py``): exact asks ``known.in_run`` for what earlier
batches kept, minhash keeps the bands of what the run kept in a temporary SQLite
file across the batches of one ``known`` (``RunIndex``). A match with a held-out
(validation/retention) item is reported as kind ``holdout``: such an item is never
trained on, so the gate's numbers stay clean.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Annotated, Literal, Sequence

from pydantic import Field

from retain.core.hookspecs import hookimpl
from retain.core.data.items import Item
from retain.core.data.known import BATCH, HOLDOUT, LEARNED, Duplicate, describe_match
from retain.core.wording import plural


def _origins(known, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    return known.origins(pairs) if hasattr(known, "origins") else {}


class ExactDeduper:
    """Same text after Unicode, case and whitespace normalization, in the ledger or this batch
    (the run's items: an earlier batch of the same run counts as this one)."""

    def find_duplicates(self, items: list[Item], known) -> dict[int, str]:
        hashes = [it.hash for it in items]
        learned = known(sorted(set(hashes)))
        earlier = known.in_run(sorted(set(hashes) - set(learned))) if hasattr(known, "in_run") else {}
        origins = _origins(known, [(h, v) for h, (v, _) in learned.items()])
        dupes: dict[int, str] = {}
        first_seen: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h in learned:
                version, role = learned[h]
                kind = HOLDOUT if role == "holdout" else LEARNED
                origin = origins.get((h, version), "")
                dupes[i] = Duplicate(describe_match(kind, version, origin), kind=kind, matched=origin,
                                     matched_hash=h, version=version)
            elif h in earlier:
                dupes[i] = Duplicate(f"same as {earlier[h]} in this batch", kind=BATCH, matched=earlier[h],
                                     matched_hash=h)
            elif h in first_seen:
                first = items[first_seen[h]]
                dupes[i] = Duplicate(f"same as {first.origin} in this batch", kind=BATCH,
                                     matched=first.origin, matched_hash=h)
            else:
                first_seen[h] = i
        return dupes


@dataclass
class MinhashOptions:
    # Estimated Jaccard similarity (of the shingle sets) from which two items count as one.
    # Every LSH candidate is checked against it; the estimate from num_perm values has a
    # standard deviation of sqrt(J(1-J)/num_perm) (0.035 at 0.8 with 128), so a pair exactly
    # at the threshold is caught about half the time, one 0.05 above it ~94% of the time.
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.8
    num_perm: Annotated[int, Field(ge=16, le=512)] = 128  # MinHash permutations: more is sharper, and slower
    # Character 5-grams: robust to small edits in paragraph-sized items, where
    # one changed word already removes ~3 of ~25 word 3-grams.
    shingle: Literal["char", "word"] = "char"
    shingle_size: Annotated[int, Field(ge=1)] = 5  # characters (or words) per shingle
    seed: int = 1


class MinhashDeduper:
    """Near-duplicates (MinHash LSH, datasketch) of learned/held-out items or of this batch.

    One rule for both: an LSH candidate (sharing a band; the layout makes a pair at
    the threshold a candidate with probability >= 0.99) is a duplicate only if its
    estimated Jaccard similarity reaches ``threshold``. Learned items are found
    through the band index in ledger.sqlite and checked with their stored
    signatures (items indexed before signatures were stored count unverified,
    see ``retain.core.data.nearindex``); items of the batch with each other's.
    """

    def __init__(self, options: MinhashOptions):
        self.options = options
        self._spec = None
        self.stats: dict[str, float] = {}  # of the last check against learned items (see NearDuplicateIndex)
        self.warnings: list[str] = []      # of the last check: what it could not see (the run prints them)
        self._run = None  # the ``known`` (a weak reference) of the run whose batches it has seen
        self._index = None  # ... and the items they kept (``core/data/nearindex.py``: ``RunIndex``)

    @property
    def spec(self):
        from retain.core.data.nearindex import Spec

        if self._spec is None:
            o = self.options
            self._spec = Spec.for_threshold(o.threshold, o.num_perm, o.shingle, o.shingle_size, o.seed)
        return self._spec

    def find_duplicates(self, items: list[Item], known) -> dict[int, str]:
        from retain.core.data.nearindex import signatures

        if not items:
            return {}
        sigs = signatures(self.spec, (it.text for it in items))
        dupes = self._learned(items, sigs, known)
        self._within_batch(items, sigs, dupes, known)
        return dupes

    def _learned(self, items: list[Item], sigs: list, known) -> dict[int, str]:
        from retain.core.data.nearindex import NearDuplicateIndex

        self.stats, self.warnings = {}, []
        ledger, chain = getattr(known, "ledger", None), getattr(known, "chain", None)
        if ledger is None or not chain or not ledger.path.exists():
            return {}
        index = NearDuplicateIndex(ledger, self.spec)
        self.warnings = unindexed_warning(index.unindexed(chain))
        dupes: dict[int, str] = {}
        matches = index.matches([it.text for it in items], chain, sigs, threshold=self.options.threshold)
        self.stats = index.stats
        for i, hits in matches.items():
            rows = [(row, version, sim) for (item, version), sim in hits.items()
                    if (row := index.resolve(item, version)) is not None]
            if not rows:
                continue
            # A held-out match wins: that item must never be trained on. Then the most similar
            # (an unverified match from an old index last), then the oldest version.
            (h, role, origin), version, sim = min(
                rows, key=lambda r: (r[0][1] != "holdout", -(r[2] if r[2] is not None else -1.0), r[1], r[0][0]))
            kind = HOLDOUT if role == "holdout" else LEARNED
            how = "near-duplicate: " if sim is None else f"near-duplicate ({sim:.2f}): "
            dupes[i] = Duplicate(describe_match(kind, version, origin, how), kind=kind,
                                 matched=origin, matched_hash=h, version=version, similarity=sim)
        return dupes

    def _within_batch(self, items: list[Item], sigs: list, dupes: dict[int, str], known) -> None:
        """Each item against the earlier items of the run (this batch's and the earlier batches'
        of the same ``known``) that are not duplicates themselves: the same bands and the same
        check as against learned items. The earlier batches' kept items are in the run's
        ``RunIndex`` (on disk: memory stays that of a batch); this batch's are added after it."""
        from collections import defaultdict

        from retain.core.data.nearindex import RunIndex, band_keys, signature_bytes, similarity

        if self._run is None or self._run() is not known:  # a new run: the batches before were another's
            self._close_run()
            self._index = RunIndex()
            self._run = weakref.ref(known, lambda _: self._close_run())
        spec, threshold, index = self.spec, self.options.threshold, self._index
        kept: list[tuple] = []  # this batch's kept items: (band keys, signature bytes, origin, hash)
        keys = {i: band_keys(0, spec, m) for i, m in enumerate(sigs) if i not in dupes}
        earlier = index.owners(key for ks in keys.values() for key in ks)
        known_items = index.signatures(j for js in earlier.values() for j in js)  # j: (signature, origin, hash)
        owners: dict[int, list[int]] = defaultdict(list)  # this batch's kept items, by band key
        for i, item_keys in keys.items():
            candidates = dict.fromkeys(j for key in item_keys for j in (*earlier.get(key, ()), *owners.get(key, ())))
            best = max(((similarity(sigs[i].hashvalues, known_items[j][0]), -j) for j in candidates), default=None)
            if best is not None and best[0] >= threshold:
                similar, j = best[0], -best[1]  # the most similar, the earliest of equals
                _, origin, h = known_items[j]
                dupes[i] = Duplicate(f"near-duplicate ({similar:.2f}) of {origin} in this batch",
                                     kind=BATCH, matched=origin, matched_hash=h, similarity=similar)
            else:
                j = index.size + len(kept)
                for key in item_keys:
                    owners[key].append(j)
                known_items[j] = (signature_bytes(sigs[i]), items[i].origin, items[i].hash)
                kept.append((item_keys, *known_items[j]))
        index.add(kept)

    def _close_run(self) -> None:
        """The run's index goes (its temp file with it): its ``known`` is gone, or a new run began."""
        if self._index is not None:
            self._index.close()
            self._index = None

    def remember(self, items: Sequence[Item], version: str, writer) -> None:
        """Index the new version's items; they count once the version is in CURRENT's chain.
        A batch at a time (``core/data/spool.py``): the items, their signatures and band rows
        of one batch in memory, not the version's."""
        from retain.core.data.nearindex import NearDuplicateIndex
        from retain.core.data.spool import batched

        index = NearDuplicateIndex(writer.store.ledger, self.spec)
        for batch in batched(items):
            index.remember(version, [(it.hash, it.text) for it in batch])


def unindexed_warning(unindexed: dict[str, int]) -> list[str]:
    """What minhash cannot see when it was turned on after some versions learned their items."""
    if not unindexed:
        return []
    versions = sorted(unindexed)
    return [f"{plural(sum(unindexed.values()), 'item')} learned or held out by version"
            f"{'s' if len(versions) > 1 else ''} {', '.join(versions)}, before minhash was on, are not in its "
            "index: only exact copies of them are caught, not near-duplicates (their texts are not kept, so "
            "they cannot be indexed now). To catch near-copies of everything learned, retrain with minhash "
            "on from the start: retain train --set 'dedupers=[exact,minhash]' --data ALL ..."]


@hookimpl
def register_dedupers(register):
    register("exact", lambda options: ExactDeduper(),
             description="exact duplicates after Unicode/case/whitespace normalization")
    register("minhash", MinhashDeduper, options=MinhashOptions,
             description="near-duplicates: MinHash LSH over word/char shingles, each candidate checked "
                         "against the threshold; index kept in ledger.sqlite")
