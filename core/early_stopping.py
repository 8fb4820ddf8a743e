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
decision alone (no torch); ``EarlyStopping`` the avalanche-lib plugin around it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from avalanche.core import SupervisedPlugin

from .wording import plural


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


class EarlyStopping(SupervisedPlugin):
    """Judges the candidate after each epoch; stops and restores the best epoch's weights.

    ``judge(last)`` scores the model as it is now and returns ``(scores, verdicts)``;
    ``last``: no epoch follows (the schedule's last, or out of time), whose scores the gate
    reuses: the whole retention set. After the others it may score a part (the budget).
    Placed after the engine's loop in the plugin list, so the epoch's training
    loss is recorded when it judges; it restores weights at the end of the last
    epoch, so the strategies' ``after_training_exp`` sees the kept weights.
    """

    def __init__(self, tracker: Tracker, judge: Callable[[], tuple[Any, list]], loop, epochs: int,
                 on_best: Callable[[Any], None]):
        super().__init__()
        self.tracker, self.judge, self.loop, self.epochs, self.on_best = tracker, judge, loop, epochs, on_best
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.seconds: list[float] = []  # each epoch's judgment: measuring, inside training's time

    def after_training_epoch(self, strategy, **kw):
        started = time.perf_counter()
        number = len(self.loop.epoch_losses)
        scores, verdicts = self.judge(number >= self.epochs or self.loop.out_of_time)
        failed = [v.validator for v in verdicts if v.status == "fail"]
        epoch = Epoch(number, _mean(scores.new), _mean(scores.retention), not failed, failed,
                      self.loop.epoch_losses[-1], None if scores.retention is None else len(scores.retention))
        if self.tracker.see(epoch):
            self.snapshot = {k: v.detach().to("cpu", copy=True) for k, v in strategy.model.state_dict().items()}
            self.on_best(scores)
        self.seconds.append(time.perf_counter() - started)
        self.loop.epoch_end_seconds = max(self.loop.epoch_end_seconds if number > 1 else 0.0, self.seconds[-1])
        last = bool(self.tracker.stopped) or number >= self.epochs or self.loop.out_of_time
        if last and self.tracker.best is not epoch and self.snapshot is not None:
            strategy.model.load_state_dict(self.snapshot)
        if self.tracker.stopped:
            strategy.stop_training()

    def after_training_exp(self, strategy, **kw):
        # Last in the plugin list: if a strategy changed the weights after the kept epoch was
        # judged, its scores are not the candidate's; the gate scores the candidate again.
        if self.snapshot is None:
            return
        now = strategy.model.state_dict()
        if any(not torch.equal(now[k].detach().cpu(), v) for k, v in self.snapshot.items()):
            self.on_best(None)


def _mean(t) -> float | None:
    return None if t is None else float(t.mean())
