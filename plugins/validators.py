"""Built-in validators."""

from __future__ import annotations

import math

from retain.core.hookspecs import hookimpl
from retain.core.validation import Evidence, Verdict


class Finite:
    """No NaN or infinity in the epoch losses, the held-out losses or the weights."""

    def validate(self, ev: Evidence) -> Verdict:
        import torch

        losses = [*ev.epoch_losses, ev.retention_after, ev.new_after]
        bad_loss = [x for x in losses if x is not None and not math.isfinite(x)]
        bad_weights = [n for n, p in ev.model.named_parameters() if not torch.isfinite(p).all()]
        if bad_loss or bad_weights:
            what = f"{len(bad_loss)} non-finite losses" if bad_loss else ""
            if bad_weights:
                what += (", " if what else "") + f"non-finite weights in {', '.join(bad_weights[:3])}"
            return Verdict("fail", what, {"non_finite_losses": len(bad_loss),
                                          "non_finite_tensors": len(bad_weights)},
                           remedy="halve the learning rate")
        return Verdict("pass", "losses and weights are finite")


@hookimpl
def register_validators(register):
    register("finite", lambda options: Finite())
