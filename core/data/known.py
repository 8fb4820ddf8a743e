"""What the current model already knows, and how a deduper says an item repeats it.

``KnownItems`` is the ``known`` a deduper receives: called with hashes it
answers from the ledger (exact lookups); dedupers with an index of their own
(``minhash``) use its ``ledger`` and ``chain``. Only versions in ``chain``
(CURRENT and its ancestors) count, so rows of a crashed, rejected or rolled-back
version are invisible without any cleanup.
"""

from __future__ import annotations

from typing import Any

from retain.core.storage.store import Ledger


class KnownItems:
    """``known(hashes) -> {hash: (version, role)}`` over the ledger rows of ``chain``."""

    def __init__(self, ledger: Ledger | None, chain: list[str]):
        self.ledger = ledger
        self.chain = list(chain)

    def __call__(self, hashes: list[str]) -> dict[str, tuple[str, str]]:
        if not self.chain or self.ledger is None or not hashes:
            return {}
        return self.ledger.find(hashes, self.chain)

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
