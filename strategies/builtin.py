"""Built-in strategies: naive and low_lr (the seed's recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from retain.core.hookspecs import hookimpl
from retain.core.strategy import Strategy, TrainSettings


class Naive(Strategy):
    """Plain fine-tuning at the full-training learning rate (the seed's "BAD" baseline)."""

    name = "naive"

    def configure(self, settings: TrainSettings, run) -> None:
        settings.learning_rate = run.config.full_training.learning_rate


@dataclass
class LowLrOptions:
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0


class LowLr(Strategy):
    """The seed's recipe: fine_tuning.learning_rate (1e-4) for a few epochs, optional warmup/cosine."""

    name = "low_lr"

    def __init__(self, options: LowLrOptions):
        self.options = options

    def configure(self, settings: TrainSettings, run) -> None:
        settings.schedule = self.options.schedule
        settings.warmup_steps = self.options.warmup_steps


@hookimpl
def register_strategies(register):
    register("naive", lambda options: Naive(), description=Naive.__doc__)
    register("low_lr", LowLr, options=LowLrOptions, description=LowLr.__doc__)
