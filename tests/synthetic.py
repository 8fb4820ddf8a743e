"""A model directory's versions written through the store's own writers, without training:
a year's worth in a second, for what reads versions (``retain history --plot``, reports)."""

from __future__ import annotations

import math
from pathlib import Path

from retain.core.storage.store import ModelStore

CONFIG = {"retrain": {"max_new_items": 1000, "max_retention_drift": 0.04, "max_rejected_in_row": 3}}


def _verdicts(drift: float | None, rejected: bool) -> list[dict]:
    retention = {"validator": "retention", "status": "fail" if rejected else "pass",
                 "reason": "old items' loss", "remedy": "", "seconds": 0.01,
                 "numbers": {"max_drift": 0.05, "retrain_drift": 0.04, **({"drift": drift} if drift is not None else {})}}
    return [{"validator": "finite", "status": "pass", "reason": "finite", "numbers": {}, "remedy": "",
             "seconds": 0.0}, retention]


def write_versions(root: Path, n: int = 60, full_at: tuple[int, ...] = (1, 31), rejected: tuple[int, ...] = (
        9, 17, 22, 23, 24, 45), rollback_before: dict[int, int] | None = None, current: int | None = None) -> ModelStore:
    """``n`` versions: full trainings at ``full_at``, the others updates of 20 items each (16
    learned, 4 held out) whose old-domain loss drifts up slowly; ``rejected`` ones fail the
    gate; ``rollback_before``: {version: the parent it was trained from after a rollback};
    ``current``: where CURRENT ends (default the newest accepted)."""
    rollback_before = {27: 25} if rollback_before is None else rollback_before
    store = ModelStore(root)
    head = base = None
    for number in range(1, n + 1):
        full = number in full_at
        failed = number in rejected
        parent = None if full and head is None else rollback_before.get(number, head)
        parent = f"{parent:04d}" if isinstance(parent, int) else parent
        if full:
            base, loss = number, 3.2 + 0.1 * math.sin(number)
            metrics = {"retention_loss_after": loss, "new_loss_after": None}
            drift = None
        else:
            age = number - base
            drift = 0.0013 * age + (0.03 if failed else 0.0) + 0.004 * math.sin(number)
            loss = 3.2 * (1 + drift)
            metrics = {"retention_loss_before": 3.2, "retention_loss_after": loss,
                       "new_loss_before": 4.5, "new_loss_after": 3.9 + 0.2 * math.cos(number),
                       "drift_since": f"{base:04d}", "drift_after": drift}
        counts = {"trained": 16, "holdout": 4, "collected": 22, "duplicates": 2}
        writer = store.begin_version(parent=parent)
        writer.write_json("report.json", {"counts": counts, "metrics": metrics})
        writer.finish({"parent": parent, "kind": "full_training" if full else "fine_tuning",
                       "status": "rejected" if failed else "accepted", "created_at": f"2026-{number:03d}",
                       "counts": counts, "metrics": metrics, "config": CONFIG,
                       "verdicts": _verdicts(drift, failed)})
        if not failed:
            head = writer.name
            store.set_current(writer.name)
    if current is not None:
        store.set_current(f"{current:04d}")
    return store
