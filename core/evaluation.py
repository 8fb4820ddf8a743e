"""Scoring held-out texts and the evidence validators judge: one place for both.

The loss of a text is its mean token cross-entropy under the model (nats per
token). Retention is scored on old items the model held out (never trained
on), learning on this run's held-out new items; ``before`` is the model the
run starts from (the random init for a full training), ``after`` the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import retention
from .ingest import sample
from .store import ModelStore
from .validation import Evidence

if TYPE_CHECKING:
    import torch

    from .contracts import LanguageModel


# Rows per scoring batch are bounded by tokens (rows x width), not by a row count: long texts
# go in small batches, short ones in large ones. Few large batches keep the cores busy; the
# logits of one batch (tokens x vocabulary floats) bound it, and out of memory halves it.
SCORE_TOKENS = 8192


def score_texts(lm: "LanguageModel", texts: list[str], max_len: int, device=None,
                batch_tokens: int = SCORE_TOKENS, precision: str = "fp32") -> "torch.Tensor | None":
    """Mean token loss of each text (shape ``[len(texts)]``, float64), in eval mode, under
    ``inference_mode``; ``precision`` "bf16" runs the forward under bf16 autocast."""
    from .retry import is_out_of_memory

    if not texts:
        return None
    rows = lm.encode(texts, max_len)
    model = lm.module
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        while True:
            try:
                return _score_rows(lm, rows, len(texts), device, batch_tokens, precision)
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or batch_tokens <= max_len:
                    raise
            batch_tokens //= 2  # outside the except block: the failed batch's tensors are freed
    finally:
        model.train(was_training)


def _score_rows(lm, rows, n_texts: int, device, batch_tokens: int, precision: str):
    import torch

    from .lm import IGNORE_INDEX, autocast

    total = torch.zeros(n_texts, dtype=torch.float64)
    count = torch.zeros(n_texts, dtype=torch.float64)
    lengths = (rows.y != IGNORE_INDEX).sum(1)
    order = torch.argsort(lengths, descending=True)  # similar lengths together: little padding
    with torch.inference_mode(), autocast(device, precision):
        start = 0
        while start < len(order):
            width = max(1, int(lengths[order[start]]))
            idx = order[start:start + max(1, batch_tokens // width)]
            start += len(idx)
            xb, yb = rows.x[idx, :width].to(device), rows.y[idx, :width].to(device)
            losses = lm.token_losses(lm.module(xb).float(), yb)
            total.index_add_(0, rows.owner[idx], losses.sum(1).double().cpu())
            count.index_add_(0, rows.owner[idx], (yb != IGNORE_INDEX).sum(1).double().cpu())
    return total / count.clamp(min=1)


def score_unique(lm: "LanguageModel", texts: list[str], max_len: int, device=None,
                 precision: str = "fp32") -> dict[str, float]:
    """``{text: loss}`` for every distinct text: several sets scored in one pass."""
    unique = list(dict.fromkeys(texts))
    losses = score_texts(lm, unique, max_len, device, precision=precision)
    return {} if losses is None else dict(zip(unique, losses.tolist()))


def retention_texts(store: ModelStore, chain: list[str], cap: int, seed: int) -> list[str]:
    """The retention set: held-out items of every version in ``chain``, a seeded sample of ``cap``."""
    return [r["text"] for r in sample(store.holdout(chain), cap, seed)]


@dataclass
class Scores:
    """Per-item losses of one model on the retention and the new held-out texts."""

    retention: "torch.Tensor | None"
    new: "torch.Tensor | None"
    also: dict[str, float] = field(default_factory=dict)  # other texts scored in the same pass
    stored: bool = False  # the retention losses were read from the version, not scored

    @staticmethod
    def mean(t) -> float | None:
        return None if t is None else float(t.mean())


def measure(lm: "LanguageModel", retention: list[str], new: list[str], max_len: int, device=None,
            precision: str = "fp32", known: list[float] | None = None, also: list[str] = ()) -> Scores:
    """Losses on ``retention`` and ``new`` (and ``also``), every distinct text scored once, in
    one pass; ``known``: the retention losses already scored (stored with the version)."""
    import torch

    scores = score_unique(lm, [*(retention if known is None else []), *new, *also], max_len, device, precision)

    def pick(texts: list[str]):
        return torch.tensor([scores[t] for t in texts], dtype=torch.float64) if texts else None

    kept = torch.tensor(known, dtype=torch.float64) if known is not None and retention else pick(retention)
    return Scores(kept, pick(new), {t: scores[t] for t in also}, stored=known is not None)


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
                    model=lm, settings=settings, extra=dict(numbers), timings=dict(timings))


# --- the steps, on a run ------------------------------------------------------------------------

def measure_before(run, store: ModelStore) -> dict:
    """The starting model's losses: on the retention set and this run's held-out new items
    (for a full training: the random init on the held-out base items). The parent's losses
    on its retention set are read from the parent version when it scored them the same way."""
    cfg = run.config
    known = None
    if run.full:
        run.retention_texts, run.new_texts = [it.text for it in run.holdout], []
    else:
        run.retention = retention.load(store, run.parent, cfg.validation.eval_max_items, cfg.seed)
        run.retention_texts = run.retention.texts
        run.new_texts = [it.text for it in run.holdout]
        known = run.retention.losses(scoring(run))
    run.before = measure(run.lm, run.retention_texts, run.new_texts, run.settings.max_seq_length, run.device,
                         run.precision, known)
    return {"retention_items": len(run.retention_texts), "new_items": len(run.new_texts),
            "retention_stored": run.before.stored}


def measure_after(run, store: ModelStore) -> Evidence:
    """The candidate's losses on the same texts, and the evidence for the validators. Also
    its loss on the last full training's held-out items (``base_holdout_loss``): the retrain
    advice's drift, measured here once so that ``retain status`` needs no model."""
    seq_len = run.settings.max_seq_length
    base_texts = [] if run.full else retention.base_holdout(store, run.parent)[1]
    same_pass = base_texts if seq_len == run.lm.context else []  # the drift scores at full context
    run.after = measure(run.lm, run.retention_texts, run.new_texts, seq_len, run.device, run.precision,
                        also=same_pass)
    run.metrics = metrics(run.before, run.after, len(run.retention_texts), len(run.new_texts))
    if base_texts:
        losses = run.after.also or score_unique(run.lm, base_texts, run.lm.context, run.device, run.precision)
        run.metrics["base_holdout_loss"] = sum(losses[t] for t in base_texts) / len(base_texts)
    return evidence(run.kind, run.lm, run.settings, run.before, run.after, run.epoch_losses, run.timings,
                    run.metrics)


def scoring_key(max_len: int, precision: str, device) -> dict[str, Any]:
    """How texts are scored: stored losses are reused only when scored the same way."""
    return {"max_len": max_len, "precision": precision, "device": getattr(device, "type", str(device))}


def scoring(run) -> dict[str, Any]:
    return scoring_key(run.settings.max_seq_length, run.precision, run.device)


def kept_retention(run, version: str) -> "retention.RetentionSet":
    """The retention set the candidate, saved as ``version``, keeps for its own updates,
    with its losses on every item."""
    v, cfg = run.config.validation, run.config
    losses: dict[str, float] = {}
    for texts, scores in ((run.retention_texts, run.after.retention), (run.new_texts, run.after.new)):
        if scores is not None:
            losses.update(zip(texts, scores.tolist()))
    held = [{"text": it.text, "hash": it.hash, "origin": it.origin} for it in run.holdout]
    return retention.extend(None if run.full else run.retention, held, version, v.eval_max_items,
                            cfg.seed, losses, scoring(run))
