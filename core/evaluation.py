"""Scoring held-out texts and the evidence validators judge: one place for both.

The loss of a text is its mean token cross-entropy under the model (nats per
token). Retention is scored on old items the model held out (never trained
on), learning on this run's held-out new items; ``before`` is the model the
run starts from (the random init for a full training), ``after`` the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import drift
from .ingest import sample
from .store import ModelStore
from .validation import Evidence

if TYPE_CHECKING:
    import torch

    from .contracts import LanguageModel


def score_texts(lm: "LanguageModel", texts: list[str], max_len: int, device=None,
                batch_size: int = 32) -> "torch.Tensor | None":
    """Mean token loss of each text (shape ``[len(texts)]``, float64), in eval mode."""
    import torch

    from .lm import IGNORE_INDEX

    if not texts:
        return None
    rows = lm.encode(texts, max_len)
    model = lm.module
    device = device or next(model.parameters()).device
    total = torch.zeros(len(texts), dtype=torch.float64)
    count = torch.zeros(len(texts), dtype=torch.float64)
    order = torch.argsort((rows.y != IGNORE_INDEX).sum(1))  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                yb = rows.y[idx]
                width = int((yb != IGNORE_INDEX).sum(1).max())
                xb, yb = rows.x[idx, :width].to(device), yb[:, :width].to(device)
                losses = lm.token_losses(model(xb), yb)
                total.index_add_(0, rows.owner[idx], losses.sum(1).double().cpu())
                count.index_add_(0, rows.owner[idx], (yb != IGNORE_INDEX).sum(1).double().cpu())
    finally:
        model.train(was_training)
    return total / count.clamp(min=1)


def retention_texts(store: ModelStore, chain: list[str], cap: int, seed: int) -> list[str]:
    """The retention set: held-out items of every version in ``chain``, a seeded sample of ``cap``."""
    return [r["text"] for r in sample(store.holdout(chain), cap, seed)]


@dataclass
class Scores:
    """Per-item losses of one model on the retention and the new held-out texts."""

    retention: "torch.Tensor | None"
    new: "torch.Tensor | None"
    drift: "torch.Tensor | None" = None  # the last full training's held-out items (updates)

    @staticmethod
    def mean(t) -> float | None:
        return None if t is None else float(t.mean())


def measure(lm: "LanguageModel", retention: list[str], new: list[str], max_len: int, device=None) -> Scores:
    return Scores(score_texts(lm, retention, max_len, device), score_texts(lm, new, max_len, device))


def metrics(before: Scores, after: Scores, retention_items: int, new_items: int) -> dict[str, Any]:
    """The report's before/after numbers."""
    return {"retention_loss_before": Scores.mean(before.retention),
            "retention_loss_after": Scores.mean(after.retention),
            "new_loss_before": Scores.mean(before.new), "new_loss_after": Scores.mean(after.new),
            "retention_items": retention_items, "new_holdout_items": new_items}


def evidence(kind: str, lm: "LanguageModel", settings, before: Scores, after: Scores,
             epoch_losses: list[float], timings: dict[str, float], numbers: dict[str, Any]) -> Evidence:
    """What every validator receives about a candidate (see ``retain.Evidence``)."""
    return Evidence(kind, list(epoch_losses), numbers["retention_loss_before"], numbers["retention_loss_after"],
                    numbers["new_loss_before"], numbers["new_loss_after"], before.retention, after.retention,
                    model=lm, settings=settings, extra=dict(numbers), timings=dict(timings),
                    drift_baseline=numbers.get("drift_loss_baseline"), drift_after=numbers.get("drift_loss_after"),
                    drift_version=numbers.get("drift_since"))


# --- the steps, on a run ------------------------------------------------------------------------

def measure_before(run, store: ModelStore) -> dict:
    """The starting model's losses: on the retention set and this run's held-out new items
    (for a full training: the random init on the held-out base items). For an update, also
    what the cumulative drift is measured against (``drift.baseline``)."""
    cfg = run.config
    if run.full:
        run.retention_texts, run.new_texts = [it.text for it in run.holdout], []
    else:
        run.retention_texts = retention_texts(store, store.chain(run.parent), cfg.validation.eval_max_items,
                                              cfg.seed)
        run.new_texts = [it.text for it in run.holdout]
        run.drift = drift.baseline(store, run.parent)
    run.before = measure(run.lm, run.retention_texts, run.new_texts, run.settings.max_seq_length, run.device)
    return {"retention_items": len(run.retention_texts), "new_items": len(run.new_texts)}


def score_candidate(run) -> Scores:
    """The model of ``run`` as it is now, on the run's retention set, new held-out items and,
    for an update, the last full training's held-out items (the cumulative drift). The drift
    items are mostly in the retention set too (it samples every held-out set of the chain):
    when both are scored at the same length, each text is scored once."""
    if run.drift is None:
        return measure(run.lm, run.retention_texts, run.new_texts, run.settings.max_seq_length, run.device)
    if run.settings.max_seq_length != run.lm.context:
        scores = measure(run.lm, run.retention_texts, run.new_texts, run.settings.max_seq_length, run.device)
        scores.drift = score_texts(run.lm, run.drift.texts, run.lm.context, run.device)
        return scores
    old = list(dict.fromkeys([*run.retention_texts, *run.drift.texts]))
    losses = score_texts(run.lm, old, run.lm.context, run.device)
    at = {text: i for i, text in enumerate(old)}

    def pick(texts):
        return losses[[at[t] for t in texts]] if texts else None
    return Scores(pick(run.retention_texts), score_texts(run.lm, run.new_texts, run.lm.context, run.device),
                  pick(run.drift.texts))


def candidate_evidence(run, after: Scores) -> tuple[dict[str, Any], Evidence]:
    """(the report's numbers, the validators' evidence) for ``after``, scores of the candidate."""
    numbers = metrics(run.before, after, len(run.retention_texts), len(run.new_texts))
    if run.drift is not None:
        numbers.update(run.drift.numbers(Scores.mean(after.drift)))
    return numbers, evidence(run.kind, run.lm, run.settings, run.before, after, run.epoch_losses, run.timings,
                             numbers)


def measure_after(run) -> Evidence:
    """The candidate's losses on the same texts, and the evidence for the validators
    (scores early stopping already took of the kept epoch are reused)."""
    if run.after is None:
        run.after = score_candidate(run)
    run.metrics, ev = candidate_evidence(run, run.after)
    return ev
