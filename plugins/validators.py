"""Built-in validators: the quality gate's checks on a candidate model.

Each returns pass / warn / fail with a reason, the numbers behind it and, when
it is not a pass, the design document's remedy with this run's numbers (``core.advice``).
Thresholds are options (``options.<name>`` in config.yaml). Losses are mean
per-item token cross-entropy on items never trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from retain.core.quality import advice
from retain.core.hookspecs import hookimpl
from retain.core.quality.validation import Evidence, Verdict
from retain.core.wording import percent, plural


class Finite:
    """No NaN or infinity in the epoch losses, the held-out losses or the weights."""

    def validate(self, ev: Evidence) -> Verdict:
        import torch

        losses = [*ev.epoch_losses, ev.retention_after, ev.new_after]
        bad_loss = [x for x in losses if x is not None and not math.isfinite(x)]
        bad_weights = [n for n, p in ev.model.module.named_parameters() if not torch.isfinite(p).all()]
        if bad_loss or bad_weights:
            what = f"{len(bad_loss)} non-finite losses" if bad_loss else ""
            if bad_weights:
                what += (", " if what else "") + f"non-finite weights in {', '.join(bad_weights[:3])}"
            return Verdict("fail", what, {"non_finite_losses": len(bad_loss),
                                          "non_finite_tensors": len(bad_weights)},
                           remedy=advice.lower_lr(ev.settings))
        return Verdict("pass", "losses and weights are finite")


@dataclass
class LossTrendOptions:
    # Epoch means depend on how items fall into shuffled batches: at a low learning rate
    # they move by ~0.2% with no learning at all. A rise below 1% is noise, not a trend.
    tolerance: float = 0.01


class LossTrend:
    """Epoch losses must go down (the design document's "Bad: loss increases (lr too high)")."""

    def __init__(self, options: LossTrendOptions):
        self.options = options

    def validate(self, ev: Evidence) -> Verdict:
        losses = [x for x in ev.epoch_losses if x is not None]
        if len(losses) < 2:
            return Verdict("pass", "1 epoch: no trend to judge", {"epochs": len(losses)})
        tol = self.options.tolerance
        first, last = losses[0], losses[-1]
        rises = [i + 2 for i, (a, b) in enumerate(zip(losses, losses[1:])) if b > a * (1 + tol)]
        numbers = {"first_epoch_loss": first, "last_epoch_loss": last, "rising_epochs": len(rises)}
        trail = " -> ".join(f"{x:.3f}" for x in losses)
        if not (math.isfinite(first) and math.isfinite(last)) or last > first * (1 + tol):
            return Verdict("fail", f"epoch losses rose overall ({trail}): the learning rate is too high",
                           numbers, remedy=advice.lower_lr(ev.settings))
        if rises:
            return Verdict("warn", f"loss rose in epoch {', '.join(map(str, rises))} ({trail})",
                           numbers, remedy=advice.lower_lr(ev.settings))
        if last > first:  # within the tolerance: not "fell", which the numbers would contradict
            return Verdict("pass", f"epoch losses flat, within {percent(tol, signed=False)} ({trail})", numbers)
        return Verdict("pass", f"epoch losses fell ({trail})", numbers)


@dataclass
class RetentionOptions:
    max_increase: float = 0.05     # fail: mean held-out loss of old items rose by more than 5% in this step
    warn_increase: float = 0.02    # warn above 2%
    item_increase: float = 0.10    # an old item counts as "made worse" when its own loss rose >10%
    max_items_worse: float = 0.25  # fail: more than 25% of old items made worse
    max_drift: float = 0.05        # fail: the last full training's held-out loss rose >5% since it was trained


class Retention:
    """Held-out loss on previously learned items: candidate vs current model (this step), and
    vs the last full training (cumulative drift: small steps must not add up to forgetting)."""

    def __init__(self, options: RetentionOptions):
        self.options = options

    def validate(self, ev: Evidence) -> Verdict:
        if ev.kind == "full_training":
            return Verdict("pass", "full training: nothing learned before to forget")
        before, after = ev.retention_before, ev.retention_after
        if before is None or after is None or ev.retention_items_before is None:
            return Verdict("warn", "no retention items: the model holds nothing out to measure forgetting",
                           remedy="")
        o = self.options
        per_before, per_after = ev.retention_items_before, ev.retention_items_after
        n = len(per_before)
        rel = (per_after - per_before) / per_before.clamp(min=1e-9)
        worse = int((rel > o.item_increase).sum())
        change = (after - before) / before if before else float("inf")
        share = worse / n if n else 0.0
        numbers = {"loss_before": before, "loss_after": after, "relative_change": change,
                   "items": n, "items_worse": worse, "share_worse": share,
                   # the thresholds the changes are compared with (the report prints them alike)
                   "max_increase": o.max_increase, "warn_increase": o.warn_increase, "max_drift": o.max_drift}
        if ev.retrain_drift is not None:
            numbers["retrain_drift"] = ev.retrain_drift
        summary = (f"old items' loss {before:.4f} -> {after:.4f} "
                   f"({percent(change, o.max_increase, o.warn_increase)}), "
                   f"{worse}/{n} items worse by >{percent(o.item_increase, signed=False)}")
        drift = self._drift(ev, numbers, o.max_drift)
        if drift is not None:
            summary += f"; {drift}"
        if not math.isfinite(after) or change > o.max_increase:
            return Verdict("fail", f"{summary}: forgetting above {percent(o.max_increase, signed=False)} in this "
                           "step", numbers, remedy=advice.lower_lr(ev.settings))
        if numbers.get("drift", -math.inf) > o.max_drift:  # (the retrain advice's threshold is below: warn)
            return Verdict("fail", f"{summary}: forgetting above {percent(o.max_drift, signed=False)} since the "
                           "full training, however small each step", numbers,
                           remedy=advice.drift_budget_spent(o.max_drift))
        if share > o.max_items_worse:
            return Verdict("fail", f"{summary}: more than {percent(o.max_items_worse, signed=False)} of old "
                           "items made worse (an average gain must not hide them)", numbers,
                           remedy=advice.lower_lr(ev.settings))
        retrain = ev.retrain_drift
        if retrain is not None and numbers.get("drift", -math.inf) > retrain:
            # Accepted, but past the drift at which `retain status` recommends a full retrain:
            # the report says so here, not only in the advice that follows it.
            return Verdict("warn", f"{summary}: accepted (the gate rejects above {percent(o.max_drift, signed=False)}), "
                           f"but above retrain.max_retention_drift {percent(retrain, signed=False)}: "
                           "`retain status` now recommends a full retrain", numbers,
                           remedy=advice.full_retrain())
        if change > o.warn_increase:
            return Verdict("warn", summary, numbers, remedy=advice.lower_lr(ev.settings))
        return Verdict("pass", summary, numbers)

    @staticmethod
    def _drift(ev: Evidence, numbers: dict, limit: float) -> str | None:
        """The cumulative part of the summary; fills ``numbers`` (None: not measured)."""
        base, now = ev.drift_baseline, ev.drift_after
        if base is None or now is None or not base:
            return None
        drift = (now - base) / base if math.isfinite(now) else math.inf
        numbers.update(drift_baseline=base, drift_loss=now, drift=drift, drift_since=ev.drift_version)
        limits = [x for x in (limit, ev.retrain_drift) if x is not None]  # digits enough to tell them apart
        return f"since full training {ev.drift_version}: {base:.4f} -> {now:.4f} ({percent(drift, *limits)})"


@dataclass
class LearningOptions:
    min_drop: float = 0.001  # fail: held-out new items' loss fell by less than 0.1%
    min_items: int = 3       # fewer held-out new items than this: too noisy to gate on (warn)


class Learning:
    """Held-out loss on the new items must fall (the design document's "doesn't learn new").

    An update with earlier updates since the last full training is judged on its pool
    (``validation.learning_pool``): its own held-out items with those of the earlier
    updates. A day holds out a few items (10% of 45: 4), and their mean moves by more than
    a day's learning once the new domain is well learned, so the gate would reject by
    noise. It passes when the pool's loss falls by ``min_drop``, or when this update's own
    items' loss falls by ``min_drop`` and the pool's does not rise by ``min_drop`` (what earlier days
    taught must not be forgotten for today's)."""

    def __init__(self, options: LearningOptions):
        self.options = options

    def validate(self, ev: Evidence) -> Verdict:
        if ev.kind == "full_training":
            # From scratch, the held-out base items are the new items.
            before, after, n, what = ev.retention_before, ev.retention_after, _count(ev.retention_items_before), \
                "held-out base items"
        else:
            before, after, what = ev.new_before, ev.new_after, "held-out new items"
            n = int(ev.extra.get("new_holdout_items", 0)) if before is not None else 0
        if before is None or after is None:
            return Verdict("warn", f"no {what}: learning not measured (too few new items to hold any out)")
        drop = (before - after) / before if before else 0.0
        numbers = {"loss_before": before, "loss_after": after, "relative_drop": drop, "items": n,
                   "min_drop": self.options.min_drop}
        summary = f"{what}' loss {before:.4f} -> {after:.4f} ({percent(-drop, -self.options.min_drop)})"
        learned = math.isfinite(after) and drop >= self.options.min_drop
        if ev.kind != "full_training" and ev.new_pool_before is not None and ev.new_pool_after is not None:
            return self._pooled(ev, numbers, summary, learned)
        if learned:
            return Verdict("pass", summary, numbers)
        remedy = advice.raise_lr(ev.settings, ev.kept_epoch)
        if n and n < self.options.min_items:
            return Verdict("warn", f"{summary}; only {plural(n, 'held-out item')}, too few to gate on", numbers,
                           remedy=remedy)
        return Verdict("fail", f"{summary}: must fall by at least {percent(self.options.min_drop, signed=False)}",
                       numbers, remedy=remedy)

    def _pooled(self, ev: Evidence, numbers: dict, summary: str, learned: bool) -> Verdict:
        """The verdict on the learning pool: this update's held-out items with the earlier updates'."""
        before, after, n = ev.new_pool_before, ev.new_pool_after, int(ev.new_pool_items or 0)
        drop = (before - after) / before if before else 0.0
        numbers.update(pool_loss_before=before, pool_loss_after=after, pool_relative_drop=drop, pool_items=n)
        min_drop = self.options.min_drop
        summary += (f"; with the earlier updates' ({plural(n, 'item')} in all): {before:.4f} -> {after:.4f} "
                    f"({percent(-drop, -min_drop)})")
        # A change of the pool within min_drop is no change, either way: today's items learned and
        # the earlier days' held (a rise of 0.01% on 44 items rejected days before, by noise).
        if math.isfinite(after) and (drop >= min_drop or (learned and drop > -min_drop)):
            return Verdict("pass", summary, numbers)
        if learned:  # today's items learned at the cost of earlier days' (forgetting, not too little learning)
            return Verdict("fail", f"{summary}: the earlier updates' items got worse for this one's", numbers,
                           remedy=advice.lower_lr(ev.settings))
        return Verdict("fail", f"{summary}: must fall by at least {percent(min_drop, signed=False)}", numbers,
                       remedy=advice.raise_lr(ev.settings, ev.kept_epoch))


def _count(items) -> int:
    return 0 if items is None else len(items)


@dataclass
class GenerationOptions:
    prompts: list[str] = field(default_factory=lambda: ["The", "In this", "A", "It is"])
    max_new_tokens: int = 32
    temperature: float = 0.8
    ngram: int = 3                 # repetition = share of repeated token n-grams in a sample
    max_repetition: float = 0.5    # fail above (mean over prompts)
    warn_repetition: float = 0.3
    max_empty: float = 0.5         # fail when more than this share of samples is empty
    seed: int = 0


class Generation:
    """Text sampled from fixed prompts must not be degenerate (repetition loops, empty output)."""

    # Sampling costs seconds at the design document's size (1.5-2 s at 88M on 2 cores, as much
    # as scoring every held-out item): the gate samples the kept epoch, early stopping does not.
    each_epoch = False

    def __init__(self, options: GenerationOptions):
        self.options = options

    def validate(self, ev: Evidence) -> Verdict:
        import torch

        o = self.options
        if ev.model is None or not o.prompts:
            return Verdict("warn", "no model or no prompts: generation not checked")
        if not all(torch.isfinite(p).all() for p in ev.model.module.parameters()):
            return Verdict("fail", "non-finite weights: the model cannot sample text",
                           remedy=advice.lower_lr(ev.settings))
        generated = ev.model.generate(list(o.prompts), max_new_tokens=o.max_new_tokens,
                                      temperature=o.temperature, seed=o.seed)
        samples = [g.prompt + g.text for g in generated]
        reps = [repetition(g.tokens, o.ngram) if g.text.strip() else None for g in generated]
        empty = sum(r is None for r in reps) / len(reps)
        filled = [r for r in reps if r is not None]
        rep = sum(filled) / len(filled) if filled else 0.0
        numbers = {"repetition": rep, "empty_share": empty, "samples": len(samples)}
        summary = f"repetition {100 * rep:.0f}%, {100 * empty:.0f}% empty over {plural(len(samples), 'sample')}"
        first = samples[0].replace("\n", " ")[:60]
        if empty > o.max_empty or rep > o.max_repetition:
            return Verdict("fail", f"degenerate samples: {summary} (e.g. {first!r})", numbers,
                           remedy=advice.lower_lr(ev.settings))
        if rep > o.warn_repetition:
            return Verdict("warn", f"repetitive samples: {summary}", numbers, remedy=advice.lower_lr(ev.settings))
        return Verdict("pass", summary, numbers)


def repetition(tokens: list[int], n: int) -> float:
    """Share of the n-grams of ``tokens`` that repeat an earlier one (0: none, ->1: a loop)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class DurationOptions:
    max_train_seconds: float = 1800.0  # the design document: a fine-tune takes 20-30 minutes


class Duration:
    """Warns (never fails) when a fine-tune trained longer than planned (the design document's "too slow")."""

    def __init__(self, options: DurationOptions):
        self.options = options

    def validate(self, ev: Evidence) -> Verdict:
        seconds = ev.timings.get("train")
        if ev.kind == "full_training" or seconds is None:
            return Verdict("pass", "not a fine-tune: duration not checked")
        numbers = {"train_seconds": seconds, "max_train_seconds": self.options.max_train_seconds}
        if seconds > self.options.max_train_seconds:
            return Verdict("warn", f"training took {seconds:.0f}s, over {self.options.max_train_seconds:.0f}s",
                           numbers, remedy=advice.fewer_epochs(ev.settings, seconds))
        return Verdict("pass", f"training took {seconds:.1f}s", numbers)


@hookimpl
def register_validators(register):
    register("finite", lambda options: Finite())
    register("loss_trend", LossTrend, options=LossTrendOptions)
    register("retention", Retention, options=RetentionOptions)
    register("learning", Learning, options=LearningOptions)
    register("generation", Generation, options=GenerationOptions)
    register("duration", Duration, options=DurationOptions)
