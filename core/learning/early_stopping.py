"""Early stopping that looks both ways: an update ends when the held-out new items stop
improving, or when it crosses one of the gate's thresholds, and keeps its best epoch.

After every epoch the candidate is scored on the retention set and the new
held-out items and judged by the configured validators, exactly as the gate
will judge it. The best epoch is the one with the lowest new-item loss among
those the gate accepts (among all epochs when none is accepted). Training stops

- when an epoch fails a validator after an earlier one passed: a threshold
  (retention, cumulative drift, ...) was crossed, and more training on the new
  data would only move further past it;
- when the new items' loss has not improved by ``min_delta`` for ``patience``
  epochs.

Its weights are put back before the strategies' end-of-training work (EWC's
importances, ...), so what is saved is what was judged best; the gate reuses its
scores unless a strategy changed the weights after that. ``Tracker`` is the
decision alone (no torch); the epoch loop that asks it is ``core/learning/training.py``'s ``epochs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from retain.core.wording import plural


@dataclass
class Epoch:
    """What one epoch's candidate scored and what the gate said about it."""

    epoch: int
    new_loss: float | None
    retention_loss: float | None
    passed: bool
    failed: list[str] = field(default_factory=list)
    train_loss: float | None = None
    retention_items: int | None = None  # how many retention items it was judged on


class Tracker:
    """Which epoch is best so far, and whether to stop."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.epochs: list[Epoch] = []
        self.best: Epoch | None = None
        self.stopped = ""  # why training stopped early ("" while it has not)

    def see(self, epoch: Epoch) -> bool:
        """Record ``epoch``; True when it is the best so far."""
        earlier = list(self.epochs)
        self.epochs.append(epoch)
        is_best = self.best is None or self._key(epoch) < self._key(self.best)
        if is_best:
            self.best = epoch
        if not epoch.passed and any(e.passed for e in earlier):
            self.stopped = (f"epoch {epoch.epoch} failed {', '.join(epoch.failed)} after epoch "
                            f"{max(e.epoch for e in earlier if e.passed)} passed: a threshold was crossed")
        elif self._stalled():
            self.stopped = (f"held-out new items did not improve for {plural(self.patience, 'epoch')} after "
                            f"epoch {self._best_new().epoch}")
        return is_best

    @staticmethod
    def _key(e: Epoch) -> tuple:
        # Accepted epochs first; then the lowest new-item loss (without one: the latest).
        return (not e.passed, e.new_loss if e.new_loss is not None else -e.epoch)

    def _best_new(self) -> Epoch:
        scored = [e for e in self.epochs if e.new_loss is not None]
        best = scored[0]
        for e in scored[1:]:
            if e.new_loss < best.new_loss * (1 - self.min_delta):
                best = e
        return best

    def _stalled(self) -> bool:
        if self.epochs[-1].new_loss is None:
            return False
        return self.epochs[-1].epoch - self._best_new().epoch >= self.patience

    def to_json(self) -> dict[str, Any]:
        return {"epochs": [asdict(e) for e in self.epochs], "best_epoch": self.best.epoch if self.best else None,
                "stopped": self.stopped}
