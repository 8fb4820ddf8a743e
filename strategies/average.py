"""``average``: the candidate is a weighted average of the trained weights and its parent's.

Sequential fine-tuning with weight averaging forgets like replay does (Kleiman et
al. 2025), and averaging along the way is what lets a never-annealed run serve
good weights (Hägele et al. 2024). Here each update ends by pulling its trained
weights back toward the version it started from, keeping a share of the step. A
small day then moves the model that much less far, its old-domain drift with it,
while what every day learned still adds up across days. The gate judges
the averaged weights (early stopping judges the trained ones, epoch by epoch).

Steering (``max_weight`` above ``weight``): the share kept falls with the old
domain's cumulative drift since the last full training, as the parent's update
recorded it (as replay's share rises with it): ``max_weight`` at no drift,
``weight`` at ``steer_at`` and beyond, linear between. Days that find the old
domain where it was keep more of their step; the averaging pulls harder as the
drift budget is spent. The default, measured (BENCHMARKS.md "A month of daily
updates", "The fifth round"): 0.6 of the step at no drift, 0.35 from +1.25% on, beside replay that
rehearses the earlier days (``options.replay.base_share``).

A never-annealed branch (``branch: true``, the default; Hägele et al. 2024, Kleiman et al.
2025): each update trains on from the previous update's weights *before* averaging (its
branch, kept with the version as ``strategy/average.safetensors``), not from the
served ones, and the served candidate is still ``parent + weight x (trained -
parent)``, the parent being the served version. What every day learns then stays in
the branch at the full rate, and the served model is a running average of the
branch (it lags it by about ``1/weight - 1`` days). Nothing pulls a branch back by
itself, so with steering (``max_weight`` above ``weight``) training starts part of the
way from the served weights to the branch: all of it at no drift, none from
``steer_at`` on (``steered_branch``): where the old domain drifts, the update trains
from the served weights as without the option. After an update rejected for what it did
(drift, forgetting) the next one trains from the served weights too: the branch led that
candidate astray; after one rejected only for learning too little it keeps the branch
(``after_rejection``). Measured
(BENCHMARKS.md, "The fourth round"): the new domain learned within 3.6% and 2.5% of a
retrain on the two Shakespeare pairs (8.1% and 3.8% without), at the same old-domain
drift; it costs one more set of weights per version on disk (``prune.keep_last``
bounds it). The branch is used only beside the served weights it was saved with (a
digest of them is kept with it): after an update without ``average``, or from an import
or a full training (they keep none), the update trains from the served weights, as without
the option; after a rollback, from the branch of the version rolled back to.

Tied weights (the GPT's token embedding and its output head are one tensor under two
names) keep ``tied_weight`` of their step; 0, the default, keeps the steered weight
squared (a quarter at 0.5), which is what the measured defaults did: until this option
the tensor was averaged once under each name. Keeping half of it too (``tied_weight:
0.5``) learns the new domain faster but moved the old domain more and stalled the
code days (BENCHMARKS.md, "A month of daily updates", "Explored on the way").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from retain.core.learning.strategy import Strategy


@dataclass
class AverageOptions:
    weight: Annotated[float, Field(gt=0, le=1)] = 0.35  # share of the update's step kept (1: no averaging)
    max_weight: Annotated[float, Field(ge=0, le=1)] = 0.6  # steering: the share kept at no drift (0: no steering)
    steer_at: Annotated[float, Field(gt=0)] = 0.0125      # cumulative old-domain drift that gets ``weight``
    branch: bool = True  # train on from the parent's unaveraged weights (its branch), serve the average
    tied_weight: Annotated[float, Field(ge=0, le=1)] = 0  # the share kept of tied weights (0: weight squared)


def steered_weight(options: AverageOptions, drift: float | None) -> float:
    """The share of its step an update keeps, given the old domain's cumulative drift at its
    start (None: not known, e.g. a parent saved before drift was recorded)."""
    top = max(options.max_weight, options.weight)
    if top <= options.weight or drift is None:
        return options.weight
    return top - (top - options.weight) * min(max(drift / options.steer_at, 0.0), 1.0)


def steered_branch(options: AverageOptions, drift: float | None) -> float:
    """How far toward its branch an update starts: the whole branch at no drift, the served weights
    from ``steer_at`` on (no steering: the whole branch)."""
    if options.max_weight <= options.weight or drift is None:
        return 1.0
    return 1 - min(max(drift / options.steer_at, 0.0), 1.0)


def too_little_learning(verdict: dict) -> bool:
    """A failed verdict that says only that the update learned too little: ``learning``, its own
    held-out items' loss did not fall by ``min_drop`` (one whose own items did fall failed for
    making the earlier days' worse: forgetting)."""
    numbers = verdict.get("numbers", {})
    return verdict.get("validator") == "learning" and numbers.get("relative_drop", 0.0) < numbers.get("min_drop", 0.0)


class Average(Strategy):
    """Weight averaging: the candidate is parent + weight x (trained - parent)."""

    name = "average"

    def __init__(self, options: AverageOptions):
        self.options = options
        self.branch: dict | None = None   # the parent's branch, as loaded: weights by name
        self.served: str | None = None    # the digest of the served weights it was saved beside
        self.plugin = None
        self.branch_share = 0.0           # how far toward the parent's branch training started (0: not at all)

    def load_state_dict(self, state) -> None:
        prefix = "branch."
        branch = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.branch, self.served = (branch, state.get("served")) if branch else (None, None)

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import ParentAveraging, fingerprint

        from retain.strategies.replay import start_drift

        self.plugin, self.branch_share = None, 0.0
        if run.new_lineage:  # a full training has no parent to average with
            return []
        drift = start_drift(run)
        weight = steered_weight(self.options, drift)
        if weight >= 1 and not self.options.branch:
            return []
        share = steered_branch(self.options, drift) if self.options.branch and self.branch else 0.0
        if share > 0 and self.served is not None and not self.after_rejection(run):
            # Only beside the served weights it was saved with (hashing them is the costly check: last).
            state = run.model.state_dict()
            fits = all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in self.branch.items())
            if fits and fingerprint(state) == self.served:
                self.branch_share = share
        tied = self.options.tied_weight or weight * weight
        branch = self.branch if self.branch_share > 0 else None
        self.plugin = ParentAveraging(weight, branch, tied, self.branch_share)
        return [self.plugin]

    @staticmethod
    def after_rejection(run) -> bool:
        """The last update from this parent was rejected for what it did to the model (it forgot,
        drifted, degenerated): the branch it trained on from led it astray. Not when it only learned
        too little: starting further back from the branch would learn less still (a month of code
        days lost four in a row so)."""
        base = getattr(run, "base", None)
        if base is None or getattr(base, "reader", None) is None:
            return False
        store = base.reader.store
        versions = store.versions()
        newest = store.summary(versions[-1]) if versions else None
        if newest is None or newest["status"] != "rejected" or newest["parent"] != base.version:
            return False
        failed = [v for v in store.manifest(versions[-1]).get("verdicts", []) if v.get("status") == "fail"]
        return not failed or any(not too_little_learning(v) for v in failed)

    def counts(self) -> dict[str, int]:
        if not (self.options.branch and self.plugin):
            return {}
        return {"average_from_branch": int(self.branch_share > 0),
                "average_branch_percent": round(100 * self.branch_share)}

    def state_dict(self) -> dict:
        """With ``branch``: the weights before averaging and the served weights' digest."""
        plugin = self.plugin
        if not self.options.branch or plugin is None or plugin.trained is None or plugin.served is None:
            return {}
        return {**{f"branch.{k}": v for k, v in plugin.trained.items()}, "served": plugin.served}
