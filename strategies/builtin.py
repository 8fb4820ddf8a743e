"""Built-in strategies, registered through the ``retain`` entry-point group like any plugin.

``naive`` and ``low_lr`` only set the learning rate and schedule; the others
(modules beside this one) add avalanche-lib plugins and carry state between
updates; ``lora`` trains adapters only (peft). Compose them:
``fine_tuning.strategy: [low_lr, replay, ewc]``, ``[lora, replay]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from retain.core.hookspecs import hookimpl
from retain.core.learning.strategy import Strategy, TrainSettings
from retain.strategies.average import Average, AverageOptions
from retain.strategies.lora import Lora, LoraOptions
from retain.strategies.memory import Agem, AgemOptions, Gem, GemOptions
from retain.strategies.regularization import (Ewc, EwcOptions, Lwf, LwfOptions, Mas, MasOptions, Si,
                                              SiOptions)
from retain.strategies.replay import Replay, ReplayOptions
from retain.strategies.rewarm import Rewarm, RewarmOptions


@dataclass
class NaiveOptions:
    learning_rate: Annotated[float, Field(ge=0)] = 0.0  # 0: full_training.learning_rate (--lr sets it)


class Naive(Strategy):
    """Plain fine-tuning at the full-training learning rate (the design document's "BAD" baseline)."""

    name = "naive"

    def __init__(self, options: NaiveOptions | None = None):
        self.options = options or NaiveOptions()

    def configure(self, settings: TrainSettings, run) -> None:
        if self.options.learning_rate:
            settings.learning_rate, settings.learning_rate_from = self.options.learning_rate, \
                "options.naive.learning_rate"
        else:
            settings.learning_rate = run.config.full_training.learning_rate
            settings.learning_rate_from = "full_training.learning_rate, naive's rate"


@dataclass
class LowLrOptions:
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0


class LowLr(Strategy):
    """The design document's recipe: fine_tuning.learning_rate (1e-4) for a few epochs, optional warmup/cosine."""

    name = "low_lr"

    def __init__(self, options: LowLrOptions):
        self.options = options

    def configure(self, settings: TrainSettings, run) -> None:
        settings.schedule = self.options.schedule
        settings.warmup_steps = self.options.warmup_steps


BUILTIN = [
    ("naive", Naive, NaiveOptions), ("low_lr", LowLr, LowLrOptions), ("rewarm", Rewarm, RewarmOptions),
    ("replay", Replay, ReplayOptions), ("average", Average, AverageOptions),
    ("ewc", Ewc, EwcOptions), ("lwf", Lwf, LwfOptions), ("si", Si, SiOptions), ("mas", Mas, MasOptions),
    ("agem", Agem, AgemOptions), ("gem", Gem, GemOptions), ("lora", Lora, LoraOptions),
]


@hookimpl
def register_strategies(register):
    for name, cls, options in BUILTIN:
        register(name, cls, options=options, description=cls.__doc__.splitlines()[0])
