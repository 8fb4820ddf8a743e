"""Cumulative drift: how far an update's candidate has moved from the last full training.

Each update's gate compares the candidate with its parent, so five steps of
+1% each all pass a 5% threshold while the model ends 5% worse than the day it
was trained. The cure is a fixed reference: the last full training (or the
imported base) in the chain, its held-out items, and the loss it had on them
right after it was trained. Every update scores its candidate on a sample of
those items (``validation.eval_min_items``: first those it scores for retention
anyway, so the drift adds little scoring), paired with the loss the full
training stored on each, records the numbers in its metrics (so ``retain
status`` needs no model), and the ``retention`` validator fails a candidate
whose rise since the reference passes ``max_drift``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from retain.core.storage.retention import base_holdout
from retain.core.storage.store import ModelStore


@dataclass
class Baseline:
    """What an update's cumulative drift is measured against."""

    version: str                 # the last full training (or imported base) in the chain
    loss: float                  # its loss on ``texts`` right after it was trained
    before: float | None         # the parent's loss on them, as its rise implies (None: not recorded)
    texts: list[str] = field(default_factory=list)
    max_len: int | None = None   # the length the reference scored them at (None: the model's context)
    losses: list[float] | None = None  # its loss on each of ``texts`` (paired), when it stored them

    def subset(self, n: int, prefer: set[str]) -> "Baseline":
        """The reference on ``n`` of its texts, those in ``prefer`` first (texts scored anyway):
        what early stopping judges an epoch with under a budget. Itself when it cannot pair
        each text with its own loss, or has at most ``n``."""
        if self.losses is None or len(self.texts) <= n or n < 1:
            return self
        order = sorted(range(len(self.texts)), key=lambda i: self.texts[i] not in prefer)[:n]
        order.sort()
        loss = sum(self.losses[i] for i in order) / len(order)
        before = None if self.before is None else loss * self.before / self.loss
        return Baseline(self.version, loss, before, [self.texts[i] for i in order], self.max_len,
                        [self.losses[i] for i in order])

    def numbers(self, after: float | None) -> dict:
        """The report's cumulative numbers for a candidate whose loss on ``texts`` is ``after``."""
        def rise(x):
            return None if x is None or not self.loss else (x - self.loss) / self.loss

        return {"drift_since": self.version, "drift_items": len(self.texts), "drift_loss_baseline": self.loss,
                "drift_loss_before": self.before, "drift_loss_after": after,
                "drift_before": rise(self.before), "drift_after": rise(after),
                # the names the retrain advice (``retain status``) reads
                "base_holdout_loss": after, "base_holdout_baseline": self.loss,
                "base_holdout_items": len(self.texts)}


def baseline(store: ModelStore, parent: str, n: int, seed: int, scored_anyway: list[str] = ()) -> Baseline | None:
    """The reference of an update starting from ``parent`` (None: nothing to compare with).

    When the full training stored its own loss on each held-out item, ``n`` of them are
    drawn (first those in ``scored_anyway``, then a seeded sample) and the drift is paired
    with those losses; otherwise all of them are compared with the full training's mean."""
    root, rows, scored = base_holdout(store, parent)
    if root is None or not rows:
        return None
    paired = bool(scored) and all(r.get("loss") is not None for r in rows)
    if paired:
        if len(rows) > n:
            anyway = set(scored_anyway)
            chosen = [i for i, r in enumerate(rows) if r["text"] in anyway][:n]
            taken = set(chosen)
            rest = [i for i in range(len(rows)) if i not in taken]
            chosen += random.Random(seed).sample(rest, n - len(chosen))
            rows = [rows[i] for i in sorted(chosen)]
        loss = sum(r["loss"] for r in rows) / len(rows)
    else:
        loss = store.manifest(root).get("metrics", {}).get("retention_loss_after")
        if loss is None:
            return None
    rise = recorded_rise(store, parent, root)
    return Baseline(root, float(loss), None if rise is None else loss * (1 + rise),
                    [r["text"] for r in rows], (scored or {}).get("max_len"),
                    [float(r["loss"]) for r in rows] if paired else None)


def recorded_rise(store: ModelStore, version: str, root: str) -> float | None:
    """``version``'s drift since ``root`` as its update recorded it (0 for the root itself)."""
    if version == root:
        return 0.0
    metrics = store.manifest(version).get("metrics", {})
    if metrics.get("drift_since") != root:
        return None
    return metrics.get("drift_after")
