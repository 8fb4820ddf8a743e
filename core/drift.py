"""Cumulative drift: how far an update's candidate has moved from the last full training.

Each update's gate compares the candidate with its parent, so five steps of
+1% each all pass a 5% threshold while the model ends 5% worse than the day it
was trained. The cure is a fixed reference: the last full training (or the
imported base) in the chain, its held-out items, and the loss it had on them
right after it was trained (its manifest's ``retention_loss_after``). Every
update scores its candidate on those items the same way (the model's whole
context), records the number in its metrics, and the ``retention`` validator
fails a candidate whose rise since the reference passes ``max_drift``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import HOLDOUT, ModelStore


@dataclass
class Baseline:
    """What an update's cumulative drift is measured against."""

    version: str                 # the last full training (or imported base) in the chain
    loss: float                  # its loss on its held-out items right after it was trained
    before: float | None         # the parent's loss on them (None: the parent did not record it)
    texts: list[str] = field(default_factory=list)

    def numbers(self, after: float | None) -> dict:
        """The report's cumulative numbers for a candidate whose loss on ``texts`` is ``after``."""
        def rise(x):
            return None if x is None or not self.loss else (x - self.loss) / self.loss

        return {"drift_since": self.version, "drift_items": len(self.texts), "drift_loss_baseline": self.loss,
                "drift_loss_before": self.before, "drift_loss_after": after,
                "drift_before": rise(self.before), "drift_after": rise(after)}


def reference(store: ModelStore, chain: list[str]) -> tuple[str | None, float | None]:
    """(the last full training in ``chain``, its held-out loss right after training), or Nones
    when it kept no held-out items."""
    from .retrain import last_full_training

    root, _ = last_full_training(store, chain)
    if root is None:
        return None, None
    manifest = store.manifest(root)
    loss = manifest.get("metrics", {}).get("retention_loss_after")
    if loss is None or HOLDOUT not in manifest.get("files", {}):
        return root, None
    return root, float(loss)


def recorded(store: ModelStore, version: str, root: str) -> float | None:
    """``version``'s loss on ``root``'s held-out items, as its update recorded it (None if not)."""
    if version == root:
        return reference(store, [root])[1]
    metrics = store.manifest(version).get("metrics", {})
    if metrics.get("drift_since") != root:
        return None
    return metrics.get("drift_loss_after")


def baseline(store: ModelStore, parent: str) -> Baseline | None:
    """The reference of an update starting from ``parent`` (None: nothing to compare with)."""
    root, loss = reference(store, store.chain(parent))
    if root is None or loss is None:
        return None
    texts = [r["text"] for r in store.read_jsonl(root, HOLDOUT)]
    return Baseline(root, loss, recorded(store, parent, root), texts) if texts else None
