"""A third-party retain strategy: ``l2_anchor``, an L2 pull towards the weights an update starts from.

Installed beside retain, it appears in ``retain strategies`` and composes with
the built-ins: ``retain update --strategy low_lr,l2_anchor``. Options go in the
config under ``options.l2_anchor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from retain.plugin import Strategy, hookimpl


@dataclass
class L2AnchorOptions:
    strength: float = 1.0  # penalty = strength * sum of squared weight changes since the update began


class L2Anchor(Strategy):
    """L2 pull towards the previous weights (uniform importance: EWC without the Fisher)."""

    name = "l2_anchor"

    def __init__(self, options: L2AnchorOptions):
        self.options = options
        self.anchor = None

    @hookimpl
    def update_started(self, run):
        # The anchor is the model the update starts from, i.e. the previous version:
        # nothing to store between updates. A full training (no parent) has no anchor.
        if run.parent is None:
            self.anchor = None
        else:
            self.anchor = {n: p.detach().clone() for n, p in run.model.named_parameters()}

    @hookimpl
    def training_penalty(self, run, model, inputs, targets, logits):
        if self.anchor is None:
            return None
        moved = sum(((p - self.anchor[n]) ** 2).sum() for n, p in model.named_parameters())
        return self.options.strength * moved


@hookimpl
def register_strategies(register):
    register("l2_anchor", L2Anchor, options=L2AnchorOptions, description=L2Anchor.__doc__)
