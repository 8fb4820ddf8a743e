"""Continual-learning metrics over a results matrix R, as in avalanche-lib.

``R[i][j]`` is the metric on experience ``j``'s test data after training
through experience ``i`` (rows and columns in stream order, R square). The
definitions follow avalanche-lib 0.6 (``evaluation/metrics/forgetting_bwt.py``,
``forward_transfer.py``, ``acc_matrix.py``):

- forgetting of experience j = R[j][j] - R[T-1][j] (the value right after
  training on j minus the final one); the stream value averages j < T-1, the
  experiences trained before the last one (avalanche's StreamForgetting).
- backward transfer (BWT) = -forgetting, per experience and averaged.
- forward transfer (FWT) of experience j = R[j-1][j] - b[j], where b[j] is the
  metric on j of the model before any training (avalanche: random init); the
  stream value averages j >= 1.

Where we differ:

- Losses (text: mean token loss of held-out items; perplexity = exp(loss)) are
  lower-is-better, so every difference is negated: forgetting is the *rise*
  of the loss, BWT and FWT are the *fall*. Positive forgetting is always bad,
  positive BWT/FWT always good, whichever the metric.
- avalanche computes these from evaluation callbacks during training; here
  they are pure functions of R and b, so they can be checked by hand.
- ``fwt_from`` lets the caller leave out the first experiences from FWT: in a
  text stream the base model is both experience 0 (row 0) and the reference
  b, so FWT of the first update is 0 by construction and is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class StreamMetrics:
    average_final: float            # mean of the last row: every experience after the whole stream
    forgetting: float | None        # mean over experiences trained before the last one
    bwt: float | None               # -forgetting
    fwt: float | None               # None where undefined (no reference b, or too few experiences)
    forgetting_per_experience: list[float | None]
    fwt_per_experience: list[float | None]

    def to_json(self) -> dict:
        return asdict(self)


def stream_metrics(R: Sequence[Sequence[float]], *, higher_is_better: bool,
                   initial: Sequence[float] | None = None, fwt_from: int = 1) -> StreamMetrics:
    """Average final metric, forgetting, BWT and FWT of the square matrix ``R``.

    ``initial[j]``: the metric on experience j before any training of the
    stream (random init for classification, the base model for text).
    """
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise ValueError(f"R must be a non-empty square matrix, got {T} rows of lengths "
                         f"{[len(r) for r in R]}")
    sign = 1.0 if higher_is_better else -1.0
    last = R[T - 1]
    forgetting = [sign * (R[j][j] - last[j]) if j < T - 1 else None for j in range(T)]
    fwt: list[float | None] = [None] * T
    if initial is not None:
        if len(initial) != T:
            raise ValueError(f"initial has {len(initial)} values for {T} experiences")
        for j in range(max(1, fwt_from), T):
            fwt[j] = sign * (R[j - 1][j] - initial[j])
    mean_forgetting = _mean([f for f in forgetting if f is not None])
    return StreamMetrics(
        average_final=sum(last) / T,
        forgetting=mean_forgetting,
        bwt=None if mean_forgetting is None else -mean_forgetting,
        fwt=_mean([f for f in fwt if f is not None]),
        forgetting_per_experience=forgetting,
        fwt_per_experience=fwt,
    )


def old_and_new(R: Sequence[Sequence[float]]) -> tuple[list[float | None], list[float]]:
    """Per stage i: the mean metric on the experiences before i ("old data") and on
    experience i itself ("new data", the one just learned). Stage 0 has no old data."""
    old = [_mean([R[i][j] for j in range(i)]) for i in range(len(R))]
    new = [R[i][i] for i in range(len(R))]
    return old, new
