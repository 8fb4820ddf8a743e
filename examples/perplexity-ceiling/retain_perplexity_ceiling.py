"""An example third-party validator for retain: a hard ceiling on held-out perplexity.

The built-in ``retention`` validator compares the candidate with the current
model; this one checks absolute numbers, which a team may have promised to
its users ("perplexity on our reference set stays under 150").

Install it beside retain (``pip install ./examples/perplexity-ceiling``), then
in config.yaml::

    validators: [finite, loss_trend, retention, learning, generation, perplexity_ceiling]
    options:
      perplexity_ceiling: {max_retention_perplexity: 150, max_new_perplexity: 300}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from retain.plugin import Evidence, Verdict, hookimpl, lower_lr


@dataclass
class PerplexityCeilingOptions:
    max_retention_perplexity: float = 1000.0  # old held-out items
    max_new_perplexity: float = 1000.0        # new held-out items


class PerplexityCeiling:
    """Held-out perplexity (exp of the mean token loss) must stay under a ceiling."""

    def __init__(self, options: PerplexityCeilingOptions):
        self.options = options

    def validate(self, ev: Evidence) -> Verdict:
        checks = [("old items", ev.retention_after, self.options.max_retention_perplexity),
                  ("new items", ev.new_after, self.options.max_new_perplexity)]
        numbers, over = {}, []
        for label, loss, ceiling in checks:
            if loss is None:
                continue
            ppl = math.exp(min(loss, 700.0))  # exp overflows past ~709
            numbers[f"{label.replace(' ', '_')}_perplexity"] = ppl
            if ppl > ceiling:
                over.append(f"{label} {ppl:.1f} > {ceiling:g}")
        if over:
            return Verdict("fail", "perplexity above the ceiling: " + ", ".join(over), numbers,
                           remedy=lower_lr(ev.settings))
        return Verdict("pass", "perplexity under the ceiling: "
                       + ", ".join(f"{k} {v:.1f}" for k, v in numbers.items()), numbers)


@hookimpl
def register_validators(register):
    register("perplexity_ceiling", PerplexityCeiling, options=PerplexityCeilingOptions)
