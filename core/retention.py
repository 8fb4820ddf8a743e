"""The retention set, kept with each version: what an update reads instead of the whole chain.

The retention set of an update is a uniform, seeded sample (at most
``validation.eval_max_items``) of every item held out by the parent and its
ancestors: old items the model never trained on, to measure forgetting. Each
version writes the set its own updates will use, ``retention.jsonl``: the
parent's set with the version's own held-out items drawn in (reservoir
sampling, so the sample stays uniform over the whole chain), each with the
version's loss on it. So an update reads one file whatever the length of the
chain, and the parent's "before" losses cost nothing when they were scored the
way this run scores (same ``max_len`` and precision): the gate compares like
with like.

Versions written before this file existed (or a cap raised above what a sample
kept) fall back to reading every ``holdout.jsonl`` of the chain.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from .store import HOLDOUT, ModelStore

RETENTION = "retention.jsonl"


@dataclass
class RetentionSet:
    """Held-out items of a chain (``text``, ``hash``, ``origin``; ``loss`` when scored)."""

    items: list[dict]
    seen: int                       # held-out items of the whole chain the sample is drawn from
    cap: int                        # the most items it keeps
    scored: dict[str, Any] | None = None  # how ``loss`` was scored: max_len, precision, device
    from_chain: bool = field(default=False)  # read from every holdout file (no stored set)

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.items]

    def losses(self, scoring: dict[str, Any]) -> list[float] | None:
        """The stored losses if they were scored as ``scoring`` says (max_len, precision,
        device), else None: score them again."""
        if not self.items or self.scored != scoring:
            return None
        losses = [r.get("loss") for r in self.items]
        return None if any(x is None for x in losses) else [float(x) for x in losses]

    def manifest_entry(self) -> dict[str, Any]:
        return {"seen": self.seen, "cap": self.cap, "items": len(self.items), "scored": self.scored}

    def to_jsonl(self) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.items)


def _row(item: dict) -> dict:
    return {k: item[k] for k in ("text", "hash", "origin") if k in item}


def load(store: ModelStore, version: str, cap: int, seed: int) -> RetentionSet:
    """The retention set an update of ``version`` measures forgetting on (at most ``cap`` items)."""
    manifest = store.manifest(version)
    meta = manifest.get("retention")
    if RETENTION in manifest.get("files", {}) and isinstance(meta, dict):
        kept_all = meta.get("seen", 0) <= meta.get("cap", 0)
        if cap <= meta.get("cap", 0) or kept_all:
            rows = store.read_jsonl(version, RETENTION, manifest)
            scored = meta.get("scored")
            if len(rows) > cap:  # a smaller cap than the stored sample: a uniform subsample is uniform
                rows = random.Random(f"{seed}:{version}:{cap}").sample(rows, cap)
            return RetentionSet(rows, int(meta.get("seen", len(rows))), cap, scored)
    everything = store.holdout(store.chain(version))
    rows = everything if len(everything) <= cap else random.Random(seed).sample(everything, cap)
    return RetentionSet([_row(r) for r in rows], len(everything), cap, None, from_chain=True)


def extend(parent: RetentionSet | None, holdout: list[dict], version: str, cap: int, seed: int,
           losses: dict[str, float] | None = None, scored: dict[str, Any] | None = None) -> RetentionSet:
    """The set the version ``version`` keeps: ``parent``'s (None for a full training) with
    ``holdout`` (the version's own held-out items) drawn in by reservoir sampling, so every
    held-out item of the chain is in it with the same probability. ``losses`` (by text):
    the version's losses on the items, stored when every item has one."""
    rng = random.Random(f"{seed}:{version}")
    items = [dict(r) for r in parent.items] if parent is not None else []
    seen = parent.seen if parent is not None else 0
    if len(items) > cap:
        items = rng.sample(items, cap)
    for item in holdout:
        seen += 1
        if len(items) < cap:
            items.append(_row(item))
        else:
            slot = rng.randrange(seen)
            if slot < cap:
                items[slot] = _row(item)
    if losses is not None and all(r["text"] in losses for r in items):
        for r in items:
            r["loss"] = float(losses[r["text"]])
    else:
        for r in items:
            r.pop("loss", None)
        scored = None
    return RetentionSet(items, seen, cap, scored)


def base_holdout(store: ModelStore, version: str) -> tuple[str | None, list[str]]:
    """(the last full training in ``version``'s chain, its held-out texts): what the retrain
    advice's drift is measured on. (None, []) when there is none or it kept no held-out items."""
    for name in store.chain(version):
        manifest = store.manifest(name)
        if manifest.get("kind") == "full_training":
            if HOLDOUT not in manifest.get("files", {}):
                return name, []
            return name, [r["text"] for r in store.read_jsonl(name, HOLDOUT, manifest)]
    return None, []
