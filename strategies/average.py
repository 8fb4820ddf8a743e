"""``average``: the candidate is a weighted average of the trained weights and its parent's.

Sequential fine-tuning with weight averaging forgets like replay does (Kleiman et
al. 2025), and averaging along the way is what lets a never-annealed run serve
good weights (Hägele et al. 2024). Here each update ends by pulling its trained
weights back toward the version it started from: ``weight`` 0.5 (the default,
measured: BENCHMARKS.md "A month of daily updates") keeps half the step. A
small day then moves the model half as far, its old-domain drift with it, while
what every day learned still adds up across days. The gate judges
the averaged weights (early stopping judges the trained ones, epoch by epoch).

Steering (``max_weight`` above ``weight``): the share kept falls with the old
domain's cumulative drift since the last full training, as the parent's update
recorded it (as replay's share rises with it): ``max_weight`` at no drift,
``weight`` at ``steer_at`` and beyond, linear between. Days that find the old
domain where it was keep more of their step; the averaging pulls harder as the
drift budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from retain.core.learning.strategy import Strategy


@dataclass
class AverageOptions:
    weight: Annotated[float, Field(gt=0, le=1)] = 0.5  # share of the update's step kept (1: no averaging)
    max_weight: Annotated[float, Field(ge=0, le=1)] = 0  # steering: the share kept at no drift (0: no steering)
    steer_at: Annotated[float, Field(gt=0)] = 0.02       # cumulative old-domain drift that gets ``weight``


def steered_weight(options: AverageOptions, drift: float | None) -> float:
    """The share of its step an update keeps, given the old domain's cumulative drift at its
    start (None: not known, e.g. a parent saved before drift was recorded)."""
    top = max(options.max_weight, options.weight)
    if top <= options.weight or drift is None:
        return options.weight
    return top - (top - options.weight) * min(max(drift / options.steer_at, 0.0), 1.0)


class Average(Strategy):
    """Weight averaging: the candidate is parent + weight x (trained - parent)."""

    name = "average"

    def __init__(self, options: AverageOptions):
        self.options = options

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import ParentAveraging

        from retain.strategies.replay import start_drift

        if run.new_lineage:  # a full training has no parent to average with
            return []
        weight = steered_weight(self.options, start_drift(run))
        return [] if weight >= 1 else [ParentAveraging(weight)]
