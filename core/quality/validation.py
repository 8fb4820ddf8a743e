"""What validators see (``Evidence``) and what they answer (``Verdict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail"]


@dataclass
class Verdict:
    """One validator's answer about a candidate model."""

    status: Status          # "fail" rejects the candidate; "warn" is reported; "pass"
    reason: str             # one line with the numbers behind it, shown to the user
    numbers: dict[str, float] = field(default_factory=dict)  # the measurements, for the report
    remedy: str = ""        # the next step if not a pass (``retain.core.quality.advice`` builds them)
    validator: str = ""     # filled in by the engine with the registered name if left empty
    seconds: float | None = None  # filled in by the engine: how long the validator took

    def to_json(self) -> dict:
        return {"validator": self.validator, "status": self.status, "reason": self.reason,
                "numbers": self.numbers, "remedy": self.remedy, "seconds": self.seconds}


@dataclass
class Evidence:
    """Everything measured about a candidate, handed to each validator.

    Losses are mean per-item token cross-entropy (nats per token) on items the
    model never trained on. ``*_before`` is the model the run started from (the
    random init for a full training), ``*_after`` the candidate.
    """

    kind: str                         # "full_training" | "fine_tuning"
    epoch_losses: list[float]         # mean training loss of each epoch, in order
    retention_before: float | None    # old held-out items (the retention set); None: no such items
    retention_after: float | None
    new_before: float | None          # this run's held-out new items; None: none were held out
    new_after: float | None
    retention_items_before: Any = None  # per-item losses (a float64 tensor) aligned with the set
    retention_items_after: Any = None
    model: Any = None                 # the candidate, a ``LanguageModel`` (``.module``, ``.generate``)
    settings: Any = None              # ``TrainSettings`` of the run (lr, epochs, batch size)
    extra: dict[str, Any] = field(default_factory=dict)  # the report's metrics, e.g. "new_holdout_items"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step ("train", ...)
    # Cumulative drift (updates): the last full training's (or imported base's) loss on its own
    # held-out items right after it was trained, and the candidate's loss on them now.
    drift_baseline: float | None = None
    drift_after: float | None = None
    drift_version: str | None = None  # which version the drift is measured from
    kept_epoch: int | None = None     # updates with early stopping: the epoch kept, of settings.epochs
    # The cumulative drift above which ``retain status`` recommends a full retrain (the config's
    # retrain.max_retention_drift): a candidate the gate accepts past it says so.
    retrain_drift: float | None = None
    # The learning pool: this run's held-out new items with those of the accepted updates since
    # the last full training (``validation.learning_pool``); None: no earlier update held any out.
    new_pool_before: float | None = None
    new_pool_after: float | None = None
    new_pool_items: int | None = None
