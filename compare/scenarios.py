"""The built-in ``retain compare`` scenarios, registered like any ``register_scenarios`` plugin.

Light on purpose (no torch): ``retain plugins`` loads it; Split-Digits' module
(torch, avalanche-lib, scikit-learn) is imported when the scenario is built.
"""

from __future__ import annotations

from retain.core.hookspecs import hookimpl


def _split_digits(options):
    from retain.compare.digits import DigitsScenario

    return DigitsScenario()


def _text(options):
    from retain.compare.text import TextScenario

    return TextScenario()


@hookimpl
def register_scenarios(register):
    register("text", _text, description="a base model, then updates of new text (--data per update, "
             "or --daily N items a day)")
    register("split-digits", _split_digits, description="scikit-learn digits in 5 experiences of 2 "
             "classes (--setting class|task)")
