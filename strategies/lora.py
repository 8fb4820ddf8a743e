"""``lora``: low-rank adapters (peft) are all an update trains; its version stores only them.

The base weights stay frozen and on disk once: an adapter version names the
version holding them (``builds_on`` in its manifest's model entry) and keeps a
few megabytes of adapter weights where a full version of an 88M-parameter model
keeps 350 MB. The next LoRA update continues the same adapters (the model it
loads has them merged; they are taken back out and trained on), so every version
of a LoRA lineage is one full version plus one adapter file: loading resolves it
in one step, and rollback, prune and the checksums see ordinary versions.

This module stays light (no torch, no peft): ``retain strategies`` lists it.
The model code is ``retain.strategies.lora_adapters``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from retain.core.errors import ConfigError
from retain.core.learning.strategy import Strategy, TrainSettings


@dataclass
class LoraOptions:
    rank: Annotated[int, Field(ge=1)] = 8                 # r: the adapters' inner dimension
    alpha: Annotated[float, Field(gt=0)] = 16.0           # scaling numerator: the update is (alpha / rank) * B @ A
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0    # on the adapters' input
    targets: list[str] = field(default_factory=list)  # module names; empty: every linear layer but the output head
    learning_rate: Annotated[float, Field(ge=0)] = 0.001  # adapters start at zero and are few: LoRA's usual rate is
                                                          # above full fine-tuning's (0 keeps fine_tuning.learning_rate;
                                                          # --lr sets it)


class Lora(Strategy):
    """LoRA (peft): trains low-rank adapters only; a version stores just them and names its base version."""

    name = "lora"

    def __init__(self, options: LoraOptions):
        if importlib.util.find_spec("peft") is None:
            raise ConfigError("the lora strategy needs peft: pip install 'retain[hf]'")
        self.options = options

    def configure(self, settings: TrainSettings, run):
        # Updates only: a full training (or an import) trains, or keeps, every weight.
        from retain.strategies.lora_adapters import attach

        lm = attach(run.lm, run.base, self.options)
        if self.options.learning_rate:
            settings.learning_rate = self.options.learning_rate
            settings.learning_rate_from = "options.lora.learning_rate"
        return lm  # the model the update trains: the base with its adapters
