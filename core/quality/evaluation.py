"""Scoring held-out texts and the evidence validators judge: one place for both.

The loss of a text is its mean token cross-entropy under the model (nats per
token). Retention is scored on old items the model held out (never trained
on), learning on this run's held-out new items; ``before`` is the model the
run starts from (the random init for a full training), ``after`` the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retain.core.quality import drift
from retain.core.storage import retention
from retain.core.data.ingest import sample
from retain.core.storage.store import ModelStore
from retain.core.quality.validation import Evidence

if TYPE_CHECKING:
    import torch

    from retain.core.contracts import LanguageModel


# Rows per scoring batch are bounded by tokens (rows x width), not by a row count: long texts
# go in small batches, short ones in large ones. An accelerator wants few large batches (the
# logits of one, tokens x vocabulary floats, bound it; out of memory halves it). A CPU does
# not: at 88M parameters on 2 cores, 16 held-out texts scored in batches of 8,192 tokens took
# 5.0 s, of 1,024 tokens 2.5 s (padding to the batch's longest row, attention over its width);
# BENCHMARKS.md, the "Scoring batches" table at every size.
SCORE_TOKENS_CPU = 1024
SCORE_TOKENS_ACCELERATOR = 8192
# The fewest retention items early stopping scores after an epoch but the last, whatever the budget.
EPOCH_MIN_ITEMS = 8


def score_tokens(device) -> int:
    """Tokens per scoring batch on ``device``."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return SCORE_TOKENS_CPU if kind == "cpu" else SCORE_TOKENS_ACCELERATOR


def score_texts(lm: "LanguageModel", texts: list[str], max_len: int, device=None,
                batch_tokens: int | None = None, precision: str = "fp32") -> "torch.Tensor | None":
    """Mean token loss of each text (shape ``[len(texts)]``, float64), in eval mode, under
    ``inference_mode``; ``precision`` "bf16" runs the forward under bf16 autocast.
    ``batch_tokens``: the most tokens per batch (default: ``score_tokens(device)``)."""
    from retain.core.learning.retry import is_out_of_memory

    if not texts:
        return None
    rows = lm.encode(texts, max_len)
    model = lm.module
    device = device or next(model.parameters()).device
    batch_tokens = batch_tokens or score_tokens(device)
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

    from retain.core.learning.lm import IGNORE_INDEX, autocast

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
    drift: "torch.Tensor | None" = None  # the last full training's held-out items (updates)
    reference: "drift.Baseline | None" = None  # what ``drift`` was scored on, when a part of the run's
    recent: "torch.Tensor | None" = None  # updates: earlier updates' held-out new items (the learning pool)

    @staticmethod
    def mean(t) -> float | None:
        return None if t is None else float(t.mean())


def measure(lm: "LanguageModel", retention: list[str], new: list[str], max_len: int, device=None,
            precision: str = "fp32", known: list[float | None] | None = None, also: list[str] = ()) -> Scores:
    """Losses on ``retention`` and ``new`` (and ``also``), every distinct text scored once, in
    one pass. ``known``: retention losses already scored (stored with the version; None where
    not), only the others are scored."""
    import torch

    known = list(known) if known is not None else [None] * len(retention)
    todo = [t for t, k in zip(retention, known) if k is None]
    scores = score_unique(lm, [*todo, *new, *also], max_len, device, precision)

    def pick(texts: list[str]):
        return torch.tensor([scores[t] for t in texts], dtype=torch.float64) if texts else None

    kept = [k if k is not None else scores[t] for t, k in zip(retention, known)]
    return Scores(torch.tensor(kept, dtype=torch.float64) if retention else None, pick(new),
                  {t: scores[t] for t in also}, stored=bool(retention) and not todo)


def token_counts(lm: "LanguageModel", texts: list[str], max_len: int) -> list[int]:
    """How many tokens scoring each text costs (its rows' real positions)."""
    if not texts:
        return []
    rows = lm.encode(texts, max_len)
    counts = [0] * len(texts)
    for owner, n in zip(rows.owner.tolist(), rows.lengths()):
        counts[owner] += n
    return counts


def metrics(before: Scores, after: Scores, retention_items: int, new_items: int) -> dict[str, Any]:
    """The report's before/after numbers (the learning pool's where earlier updates held items out)."""
    out = {"retention_loss_before": Scores.mean(before.retention),
           "retention_loss_after": Scores.mean(after.retention),
           "new_loss_before": Scores.mean(before.new), "new_loss_after": Scores.mean(after.new),
           "retention_items": retention_items, "new_holdout_items": new_items}
    pooled = [_pool(s) for s in (before, after)]
    if all(p is not None for p in pooled):
        out.update(new_pool_loss_before=float(pooled[0].mean()), new_pool_loss_after=float(pooled[1].mean()),
                   new_pool_items=len(pooled[1]))
    return out


def _pool(scores: Scores) -> "torch.Tensor | None":
    """This run's held-out new items with the earlier updates' (None: no earlier ones, or not scored)."""
    import torch

    if scores.new is None or scores.recent is None or not len(scores.recent):
        return None
    return torch.cat([scores.new, scores.recent])


def evidence(kind: str, lm: "LanguageModel", settings, before: Scores, after: Scores,
             epoch_losses: list[float], timings: dict[str, float], numbers: dict[str, Any]) -> Evidence:
    """What every validator receives about a candidate (see ``retain.Evidence``)."""
    return Evidence(kind, list(epoch_losses), numbers["retention_loss_before"], numbers["retention_loss_after"],
                    numbers["new_loss_before"], numbers["new_loss_after"], before.retention, after.retention,
                    model=lm, settings=settings, extra=dict(numbers), timings=dict(timings),
                    drift_baseline=numbers.get("drift_loss_baseline"), drift_after=numbers.get("drift_loss_after"),
                    drift_version=numbers.get("drift_since"), new_pool_before=numbers.get("new_pool_loss_before"),
                    new_pool_after=numbers.get("new_pool_loss_after"), new_pool_items=numbers.get("new_pool_items"))


# --- the steps, on a run ------------------------------------------------------------------------

def measure_before(run, store: ModelStore) -> dict:
    """The starting model's losses: on the retention set and this run's held-out new items
    (for a full training: the random init on the held-out base items).

    An update scores the first items of the parent's retention pool: at least
    ``validation.eval_min_items``, then more while scoring them (forward only) costs at
    most ``validation.eval_budget`` of training (forward and backward: 3x a forward, per
    token and epoch), so that measuring stays a small share of the update: the budget is
    shared by every pass that scores them (the candidate's, and one per epoch under early
    stopping). The parent's losses on them are read from the parent version when it scored
    them the same way."""
    if run.new_lineage:
        run.retention_texts, run.new_texts = [it.text for it in run.holdout], []
        run.before = measure(run.lm, run.retention_texts, [], run.settings.max_seq_length, run.device,
                             run.precision)
        return {"retention_items": len(run.retention_texts), "new_items": 0, "retention_stored": 0}
    v, seq_len = run.config.validation, run.settings.max_seq_length
    pool = retention.load(store, run.parent, v.eval_max_items, run.config.seed)
    missing = [r for r in pool.items if "tokens" not in r]
    for row, n in zip(missing, token_counts(run.lm, [r["text"] for r in missing], seq_len)):
        row["tokens"] = n
    run.new_texts = [it.text for it in run.holdout]
    passes = run.settings.epochs if run.config.fine_tuning.early_stopping.enabled else 1
    budget = (v.eval_budget * 3 * run.settings.epochs * run.rows.tokens / passes
              - sum(token_counts(run.lm, run.new_texts, seq_len)))
    tokens = [r["tokens"] for r in pool.items]
    k = retention.budgeted(tokens, budget, v.eval_min_items)
    # After an epoch but the last, early stopping scores what fits the budget (at least
    # EPOCH_MIN_ITEMS); the last epoch, which the gate's scores come from, scores all k.
    run.judged_items = retention.budgeted(tokens[:k], budget, min(k, EPOCH_MIN_ITEMS))
    run.retention = pool
    run.retention_texts = pool.texts[:k]
    run.drift = drift.baseline(store, run.parent, v.eval_min_items, run.config.seed, run.retention_texts)
    known = pool.losses(scoring(run))[:k]
    run.recent_texts = retention.recent_new(store, run.parent, v.learning_pool, set(run.new_texts))
    run.before = measure(run.lm, run.retention_texts, run.new_texts, seq_len, run.device, run.precision, known,
                         also=run.recent_texts)
    run.before.recent = _picked(run.before.also, run.recent_texts)
    return {"retention_items": k, "retention_pool": len(pool.items), "new_items": len(run.new_texts),
            "retention_stored": sum(x is not None for x in known), "learning_pool": len(run.recent_texts)}


def _picked(losses: dict[str, float], texts: list[str]) -> "torch.Tensor | None":
    import torch

    return torch.tensor([losses[t] for t in texts], dtype=torch.float64) if texts else None


def measure_unchanged(run) -> None:
    """An import: the weights are the ones measured before (its pass over the base data only let
    the strategies record), so the losses after are those before: the retention baseline."""
    run.after = run.before
    run.metrics = metrics(run.before, run.after, len(run.retention_texts), len(run.new_texts))


def score_candidate(run, items: int | None = None) -> Scores:
    """The model of ``run`` as it is now, on the run's retention set, new held-out items and,
    for an update, the last full training's held-out items (the cumulative drift), every
    distinct text scored once when they are scored at the same length. ``items``: only the
    first ``items`` retention texts, and as many of the drift's (early stopping's look after
    an epoch but the last); ``part`` tells such scores apart."""
    import torch

    seq_len = run.settings.max_seq_length
    texts, ref = run.retention_texts, run.drift
    if items is not None and items < len(texts):
        texts = texts[:items]
        ref = ref.subset(items, set(texts)) if ref is not None else None
    drift_len = (ref.max_len or run.lm.context) if ref is not None else seq_len  # as the reference scored them
    same_pass = ref.texts if ref is not None and drift_len == seq_len else []
    recent = run.recent_texts if items is None else []  # the learning pool: the gate's scores, not an epoch's look
    scores = measure(run.lm, texts, run.new_texts, seq_len, run.device, run.precision, also=[*same_pass, *recent])
    scores.recent = _picked(scores.also, recent)
    if ref is not None and ref.texts:
        losses = scores.also if same_pass else score_unique(run.lm, ref.texts, drift_len, run.device, run.precision)
        scores.drift = torch.tensor([losses[t] for t in ref.texts], dtype=torch.float64)
    if ref is not run.drift:
        scores.reference = ref
    return scores


def part(run, scores: Scores) -> bool:
    """Whether ``scores`` cover only part of the run's retention set (an epoch's look)."""
    n = 0 if scores.retention is None else len(scores.retention)
    return n < len(run.retention_texts) or scores.reference is not None


def candidate_evidence(run, after: Scores) -> tuple[dict[str, Any], Evidence]:
    """(the report's numbers, the validators' evidence) for ``after``, scores of the candidate:
    compared with the starting model's on the same items (the first ones, for a part)."""
    n = 0 if after.retention is None else len(after.retention)
    before = run.before
    if before is not None and before.retention is not None and n < len(before.retention):
        before = Scores(before.retention[:n], before.new, stored=before.stored, recent=before.recent)
    numbers = metrics(before, after, n, len(run.new_texts))
    ref = after.reference or run.drift
    if ref is not None:
        numbers.update(ref.numbers(Scores.mean(after.drift)))
    ev = evidence(run.kind, run.lm, run.settings, before, after, run.epoch_losses, run.timings, numbers)
    ev.kept_epoch = (run.early_stopping or {}).get("best_epoch")  # None until training ended
    ev.retrain_drift = run.config.retrain.max_retention_drift
    return numbers, ev


def measure_after(run, store: ModelStore | None = None) -> Evidence:
    """The candidate's losses on the same texts, and the evidence for the validators
    (scores early stopping already took of the kept epoch are reused). The drift since the
    last full training is among the numbers, stored with the version: ``retain status``
    needs no model."""
    if run.after is None:
        run.after = score_candidate(run)
    run.metrics, ev = candidate_evidence(run, run.after)
    return ev


# --- what the model says: the gate's prompts sampled before and after (retain report) ------------

SAMPLES_KEPT = 20    # prompts recorded at most
SAMPLE_CHARS = 500   # of each continuation


def sample_generation(run, registry, when: str) -> None:
    """The ``generation`` validator's prompts, sampled with its settings from the model as it
    is now, into ``run.samples[when]``: "before" (the starting model), "after" (the candidate:
    the samples the gate judged, same seed). Nothing when the gate does not sample. A failure
    is recorded, never raised: the samples only inform (non-finite weights fail the gate)."""
    if "generation" not in run.config.validators or run.lm is None:
        return
    options = getattr(registry.build("validators", "generation", run.config), "options", None)
    prompts = [p for p in getattr(options, "prompts", None) or [] if isinstance(p, str)][:SAMPLES_KEPT]
    if not prompts:
        return
    settings = {"max_new_tokens": getattr(options, "max_new_tokens", 32),
                "temperature": getattr(options, "temperature", 0.8), "seed": getattr(options, "seed", 0)}
    run.samples = run.samples or {"prompts": prompts, **settings}
    try:
        generated = run.lm.generate(prompts, **settings)
    except Exception as exc:  # e.g. sampling from non-finite weights
        run.samples[when] = None
        run.samples[f"{when}_error"] = f"{type(exc).__name__}: {exc}"[:SAMPLE_CHARS]
        return
    run.samples[when] = [g.text[:SAMPLE_CHARS] for g in generated]


def scoring_key(max_len: int, precision: str, device) -> dict[str, Any]:
    """How texts are scored: stored losses are reused only when scored the same way."""
    return {"max_len": max_len, "precision": precision, "device": getattr(device, "type", str(device))}


def scoring(run) -> dict[str, Any]:
    max_len = run.settings.max_seq_length if run.settings is not None else run.lm.context  # nothing trained
    return scoring_key(max_len, run.precision, run.device)


def held_out_rows(run) -> list[dict]:
    """The run's held-out items as its version keeps them, each with the candidate's loss."""
    if not run.holdout:  # e.g. an import without base data
        return []
    scores = run.after.retention if run.new_lineage else run.after.new
    losses = scores.tolist() if scores is not None else [None] * len(run.holdout)
    counts = token_counts(run.lm, [it.text for it in run.holdout], run.settings.max_seq_length)
    return [{"text": it.text, "hash": it.hash, "origin": it.origin, "tokens": n, "loss": loss}
            for it, n, loss in zip(run.holdout, counts, losses)]


def kept_retention(run, version: str, held: list[dict]) -> "retention.RetentionSet":
    """The retention pool the candidate, saved as ``version``, keeps for its own updates:
    the parent's with ``held`` drawn in, the candidate's loss on every item it scored."""
    parent = None
    if not run.new_lineage and run.retention is not None:
        scored = dict(zip(run.retention_texts, run.after.retention.tolist() if run.after.retention is not None
                          else []))
        items = [{**{k: v for k, v in r.items() if k != "loss"},
                  **({"loss": scored[r["text"]]} if r["text"] in scored else {})} for r in run.retention.items]
        parent = retention.RetentionSet(items, run.retention.seen, run.retention.cap)
    return retention.extend(parent, held, version, run.config.validation.eval_max_items, run.config.seed,
                            scoring(run))
