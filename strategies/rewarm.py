"""``rewarm``: re-warm the learning rate to the full training's peak, then re-decay it.

Continual pre-training (Ibrahim et al. 2024, "Simple and Scalable Strategies to
Continually Pre-train Large Language Models"; Gupta et al. 2023, "Continual
Pre-Training of Large Language Models: How to (re)warm your model?") matches a
full retrain when each new stretch of data gets the schedule a training would:
a linear warm-up to a peak learning rate, then cosine decay to a floor, with a
share of old data replayed (``replay``). A model whose learning rate had
decayed can only learn a new domain slowly at the design document's 1e-4
(``low_lr``); at the full training's peak it learns as much as naive
fine-tuning, and the decay at the end leaves the weights settled rather than
mid-stride. What it forgets, replay and the gate's cumulative drift check keep
in bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from retain.core.learning.strategy import Strategy, TrainSettings


@dataclass
class RewarmOptions:
    peak_lr: Annotated[float, Field(ge=0)] = 0.0        # the peak learning rate; 0: full_training.learning_rate
    warmup: Annotated[float, Field(ge=0, le=1)] = 0.1   # share of the update's steps spent warming up from 0
    floor: Annotated[float, Field(ge=0, le=1)] = 0.1    # where the cosine decay ends, as a share of the peak
    cooldown: Annotated[float, Field(gt=0, le=1)] = 1.0  # the decay's share of the steps after warm-up (peak before)


class Rewarm(Strategy):
    """Re-warm to the full training's learning rate, then cosine re-decay to a floor (with replay: a retrain's recipe)."""

    name = "rewarm"

    def __init__(self, options: RewarmOptions):
        self.options = options

    def configure(self, settings: TrainSettings, run) -> None:
        o = self.options
        settings.learning_rate = o.peak_lr or run.config.full_training.learning_rate
        settings.learning_rate_from = ("options.rewarm.peak_lr" if o.peak_lr else
                                       "full_training.learning_rate, rewarm's peak")
        settings.schedule = "cosine"
        settings.warmup_steps = 0
        settings.warmup_fraction = o.warmup
        settings.min_lr_ratio = o.floor
        settings.cooldown_fraction = o.cooldown
