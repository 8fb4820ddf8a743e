"""How numbers read in messages: right plurals, and percentages that never contradict a threshold."""

from __future__ import annotations

import math


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 item``, ``2 items``, ``1,000 items``; ``many`` for irregular plurals."""
    return f"{n:,} {noun if n == 1 else (many or noun + 's')}"


def percent(fraction: float, *thresholds: float, signed: bool = True) -> str:
    """``fraction`` as a percentage (0.0123 -> ``+1.2%``), with as many decimals as it takes
    to tell it apart from each threshold it is compared with: a fall of 0.09% against a
    threshold of 0.1% reads ``-0.09%``, never ``-0.1%`` (which would contradict the verdict),
    and a change that is not zero never reads ``+0.0%``."""
    sign = "+" if signed else ""
    if not math.isfinite(fraction):
        return f"{fraction * 100:{sign}}%"
    for decimals in range(1, 7):
        text = f"{100 * fraction:{sign}.{decimals}f}"
        shown = float(text) / 100
        # Shown on the same side of (and not equal to) every threshold the value is on, and
        # not as 0 when it is not.
        if all((shown > t) == (fraction > t) and (shown < t) == (fraction < t) for t in (*thresholds, 0.0)):
            return text + "%"
    return f"{100 * fraction:{sign}g}%"
