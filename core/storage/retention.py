"""The retention set, kept with each version: what an update reads instead of the whole chain.

The retention pool of an update is a uniform, seeded sample (at most
``validation.eval_max_items``) of every item held out by the parent and its
ancestors: old items the model never trained on, to measure forgetting. Each
version writes the pool its own updates will use, ``retention.jsonl``: the
parent's pool with the version's own held-out items drawn in (reservoir
sampling: replaced items keep their place, so the sample stays uniform over the
whole chain and its order stable), each item with its token count and, for the
items the version scored, its loss. An update scores the first items of the
pool (``budgeted``), so an update reads one file whatever the length of the
chain, and the parent's "before" losses cost nothing when they were scored the
way this run scores (same ``max_len``, precision, device).

Versions written before this file existed (or a cap raised above what a pool
kept) fall back to reading every ``holdout.jsonl`` of the chain.

The learning pool (``recent_new``) is the other direction: the held-out new
items of the latest accepted updates since the last full training, newest
first, at most ``validation.learning_pool``. The ``learning`` check judges an
update on them with its own held-out items (a few items a day are too noisy to
gate on alone), and earlier days' new data forgotten by a later day shows there.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from retain.core.storage.store import HOLDOUT, ROOT_KINDS, ModelStore

RETENTION = "retention.jsonl"
LEARNING_POOL = "learning_pool.jsonl"  # an update's pool as the next update reads it: its own held-out new items first


@dataclass
class RetentionSet:
    """Held-out items of a chain: ``text``, ``hash``, ``origin``, ``tokens``; ``loss`` where scored."""

    items: list[dict]
    seen: int                       # held-out items of the whole chain the sample is drawn from
    cap: int                        # the most items it keeps
    scored: dict[str, Any] | None = None  # how the losses were scored: max_len, precision, device

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.items]

    def losses(self, scoring: dict[str, Any]) -> list[float | None]:
        """Each item's stored loss if it was scored as ``scoring`` says, else None (score it)."""
        if self.scored != scoring:
            return [None] * len(self.items)
        return [None if r.get("loss") is None else float(r["loss"]) for r in self.items]

    def manifest_entry(self) -> dict[str, Any]:
        return {"seen": self.seen, "cap": self.cap, "items": len(self.items), "scored": self.scored}

    def to_jsonl(self) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.items)


def _row(item: dict) -> dict:
    return {k: item[k] for k in ("text", "hash", "origin", "tokens") if k in item}


def load(store: ModelStore, version: str, cap: int, seed: int) -> RetentionSet:
    """The retention pool of an update of ``version`` (at most ``cap`` items)."""
    manifest = store.manifest(version)
    meta = manifest.get("retention")
    if RETENTION in manifest.get("files", {}) and isinstance(meta, dict):
        kept_all = meta.get("seen", 0) <= meta.get("cap", 0)
        if cap <= meta.get("cap", 0) or kept_all:
            rows = store.read_jsonl(version, RETENTION, manifest)
            if len(rows) > cap:  # a smaller cap than the stored pool: a uniform subsample is uniform
                keep = sorted(random.Random(f"{seed}:{version}:{cap}").sample(range(len(rows)), cap))
                rows = [rows[i] for i in keep]
            return RetentionSet(rows, int(meta.get("seen", len(rows))), cap, meta.get("scored"))
    everything = store.holdout(store.chain(version))
    rows = everything if len(everything) <= cap else random.Random(seed).sample(everything, cap)
    return RetentionSet([_row(r) for r in rows], len(everything), cap, None)


def budgeted(tokens: list[int], budget: float, at_least: int) -> int:
    """How many of the pool's first items an update scores: at least ``at_least`` (all, if
    fewer), then more while their tokens fit in ``budget``."""
    n = min(at_least, len(tokens))
    spent = sum(tokens[:n])
    while n < len(tokens) and spent + tokens[n] <= budget:
        spent += tokens[n]
        n += 1
    return n


def extend(parent: RetentionSet | None, holdout: list[dict], version: str, cap: int, seed: int,
           scored: dict[str, Any] | None = None) -> RetentionSet:
    """The pool the version ``version`` keeps: ``parent``'s (None for a full training) with
    ``holdout`` (the version's own held-out items) drawn in by reservoir sampling, so every
    held-out item of the chain is in it with the same probability. Items carry ``loss``
    (the version's, scored as ``scored`` says) where the caller put one."""
    rng = random.Random(f"{seed}:{version}")
    items = [dict(r) for r in parent.items] if parent is not None else []
    seen = parent.seen if parent is not None else 0
    if len(items) > cap:
        items = [items[i] for i in sorted(rng.sample(range(len(items)), cap))]
    for item in holdout:
        seen += 1
        if len(items) < cap:
            items.append(dict(item))
        else:
            slot = rng.randrange(seen)
            if slot < cap:
                items[slot] = dict(item)
    if not any(r.get("loss") is not None for r in items):
        scored = None
    return RetentionSet(items, seen, cap, scored)


def recent_new(store: ModelStore, version: str, cap: int, exclude: set[str] = frozenset()) -> list[str]:
    """The held-out items of ``version`` and its ancestors back to (not including) the last full
    training or import, newest first, at most ``cap`` texts (none in ``exclude``). An update
    keeps its pool (``learning_pool.jsonl``, ``pool_to_keep``), so one file is read, whatever
    the length of the chain; a chain written before that file existed is walked instead."""
    if cap <= 0 or not version or store.summary(version)["kind"] in ROOT_KINDS:
        return []
    manifest = store.manifest(version)
    if LEARNING_POOL in manifest.get("files", {}):
        rows = store.read_jsonl(version, LEARNING_POOL, manifest)
        return [t for t in dict.fromkeys(r["text"] for r in rows) if t not in exclude][:cap]
    texts: list[str] = []
    seen = set(exclude)
    for name in store.chain(version)[:cap]:
        if len(texts) >= cap or store.summary(name)["kind"] in ROOT_KINDS:
            break
        manifest = store.manifest(name)
        if HOLDOUT not in manifest.get("files", {}):
            continue
        for row in store.read_jsonl(name, HOLDOUT, manifest):
            if row["text"] not in seen and len(texts) < cap:
                seen.add(row["text"])
                texts.append(row["text"])
    return texts


def pool_to_keep(own: list[str], parents: list[str], cap: int) -> str:
    """The learning pool an update keeps for the next: its own held-out new items, then its
    parent's pool (what ``recent_new`` read for it), newest first, at most ``cap``; JSON lines."""
    texts = list(dict.fromkeys([*own, *parents]))[:cap]
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)


def base_holdout(store: ModelStore, version: str) -> tuple[str | None, list[dict], dict | None]:
    """(the last full training in ``version``'s chain, its held-out items with its own loss
    on each where it stored one, how those were scored): what the retrain advice's drift
    is measured on. (None, [], None) when there is none."""
    name = store.lineage_root(store.chain(version))  # its last full training or import
    if name is None:
        return None, [], None
    manifest = store.manifest(name)
    if HOLDOUT not in manifest.get("files", {}):
        return name, [], None
    return name, store.read_jsonl(name, HOLDOUT, manifest), manifest.get("holdout_scored")
