"""Built-in dedupers."""

from __future__ import annotations

from retain.core.hookspecs import hookimpl
from retain.core.items import Item


class ExactDeduper:
    """Same text after Unicode, case and whitespace normalization, in the ledger or this batch."""

    def find_duplicates(self, items: list[Item], known) -> dict[int, str]:
        hashes = [it.hash for it in items]
        learned = known(sorted(set(hashes)))
        dupes: dict[int, str] = {}
        first_seen: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h in learned:
                version, role = learned[h]
                what = "learned" if role == "train" else "held out"
                dupes[i] = f"already {what} by version {version}"
            elif h in first_seen:
                dupes[i] = f"same as {items[first_seen[h]].origin} in this batch"
            else:
                first_seen[h] = i
        return dupes


@hookimpl
def register_dedupers(register):
    register("exact", lambda options: ExactDeduper(),
             description="exact duplicates after Unicode/case/whitespace normalization")
