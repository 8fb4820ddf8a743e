"""``average``: the candidate is a weighted average of the trained weights and its parent's.

Sequential fine-tuning with weight averaging forgets like replay does (Kleiman et
al. 2025), and averaging along the way is what lets a never-annealed run serve
good weights (Hägele et al. 2024). Here each update ends by pulling its trained
weights back toward the version it started from: ``weight`` 0.5 keeps half the
step. A small day then moves the model half as far, its old-domain drift with
it, while what every day learned still adds up across days. The gate judges
the averaged weights (early stopping judges the trained ones, epoch by epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from retain.core.learning.strategy import Strategy


@dataclass
class AverageOptions:
    weight: Annotated[float, Field(gt=0, le=1)] = 0.5  # share of the update's step kept (1: no averaging)


class Average(Strategy):
    """Weight averaging: the candidate is parent + weight x (trained - parent)."""

    name = "average"

    def __init__(self, options: AverageOptions):
        self.options = options

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import ParentAveraging

        if self.options.weight >= 1 or run.new_lineage:  # a full training has no parent to average with
            return []
        return [ParentAveraging(self.options.weight)]
