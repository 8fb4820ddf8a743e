"""What validators see and what they answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail"]


@dataclass
class Verdict:
    status: Status
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)
    remedy: str = ""
    validator: str = ""

    def to_json(self) -> dict:
        return {"validator": self.validator, "status": self.status, "reason": self.reason,
                "numbers": self.numbers, "remedy": self.remedy}


@dataclass
class Evidence:
    """Everything measured about a candidate, handed to each validator.

    Losses are mean per-item token cross-entropy; ``*_items`` are per-item
    tensors aligned with the retention / new held-out sets. ``before`` is the
    current model (or the random init for a full training), ``after`` the candidate.
    """

    kind: str                         # "full_training" | "fine_tuning"
    epoch_losses: list[float]
    retention_before: float | None
    retention_after: float | None
    new_before: float | None
    new_after: float | None
    retention_items_before: Any = None
    retention_items_after: Any = None
    model: Any = None
    settings: Any = None                # TrainSettings of the run (lr, epochs, batch size)
    extra: dict[str, Any] = field(default_factory=dict)  # the run's metrics, e.g. "new_holdout_items"
    tokenizer: Any = None               # the candidate's tokenizer, to sample text from it
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step ("train", ...)
