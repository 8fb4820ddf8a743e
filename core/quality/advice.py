"""The design document's "Common issues" remedies, as next steps with this run's numbers.

    Quality degrades:  lower the learning rate (1e-4 -> 5e-5)
    Doesn't learn new: raise it (-> 2e-4), more epochs
    Too slow:          reduce epochs to 2
    Out of memory:     reduce batch_size (the engine retries with half by itself)

Validators put one of these in ``Verdict.remedy``; ``next_steps`` turns the
verdicts of a run into the report's list of what to do next. Each remedy
starts with the design document's name of the problem, so steps can be grouped.
"""

from __future__ import annotations

from typing import Any

QUALITY_DEGRADES = "quality degrades"
DOES_NOT_LEARN = "doesn't learn new"
TOO_SLOW = "too slow"
OUT_OF_MEMORY = "out of memory"

DOCUMENT_FINE_TUNING_LR = 1e-4  # the design document's fine-tuning rate, 10x below full training


def fmt_number(x: float) -> str:
    """1e-4, 5e-5, 0.003, 2: the way people write learning rates."""
    if x == 0 or abs(x) >= 1e-3:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def lower_lr(settings: Any) -> str:
    if settings is None:
        return f"{QUALITY_DEGRADES}: halve the learning rate (retain update --lr ...)"
    lr = settings.learning_rate
    step = (f"{QUALITY_DEGRADES}: halve the learning rate, {fmt_number(lr)} -> {fmt_number(lr / 2)} "
            f"(retain update --lr {fmt_number(lr / 2)})")
    if lr > 10 * DOCUMENT_FINE_TUNING_LR:
        step += (f"; this run used {fmt_number(lr)}, far above the design document's fine-tuning rate "
                 f"{fmt_number(DOCUMENT_FINE_TUNING_LR)}")
    return step


def full_retrain() -> str:
    return (f"{QUALITY_DEGRADES}: the old domain drifted since the last full training; retrain from scratch "
            "on all data (retain train --model DIR --data ...)")


def drift_budget_spent(max_drift: float) -> str:
    """After a rejection for cumulative drift: every later update starts from the same drifted
    model, so it will be rejected alike until something brings the old domain back."""
    return (f"{QUALITY_DEGRADES}: the old domain drifted more than {max_drift:.0%} since the last full "
            "training, so every next update will be rejected for it too, until a consolidation or a full "
            "retrain: run the next update as `retain update --consolidate --data ...` (it replays past "
            "items 4:1 to bring the old domain back inside the budget, and learns the new data too), "
            "or retrain from scratch on all data (retain train --model DIR --data ...)")


def raise_lr(settings: Any, kept_epoch: int | None = None) -> str:
    """``kept_epoch``: the epoch early stopping kept; before the last, more epochs would not help."""
    if settings is None:
        return f"{DOES_NOT_LEARN}: raise the learning rate or add an epoch"
    lr, epochs = settings.learning_rate, settings.epochs
    step = (f"{DOES_NOT_LEARN}: raise the learning rate, {fmt_number(lr)} -> {fmt_number(2 * lr)} "
            f"(--lr {fmt_number(2 * lr)})")
    if kept_epoch is not None and kept_epoch < epochs:
        return step + (f"; not more epochs: early stopping kept epoch {kept_epoch} of {epochs}, "
                       "the later ones did not learn more")
    return step + f", or add an epoch, {epochs} -> {epochs + 1} (--epochs {epochs + 1})"


def fewer_epochs(settings: Any, train_seconds: float | None = None) -> str:
    if settings is None:
        return f"{TOO_SLOW}: reduce the epochs to 2"
    epochs = settings.epochs
    target = 2 if epochs > 2 else max(1, epochs - 1)
    step = f"{TOO_SLOW}: reduce the epochs, {epochs} -> {target} (--epochs {target})"
    if train_seconds and epochs > target:
        step += f", about {train_seconds * target / epochs:.0f}s of training instead of {train_seconds:.0f}s"
    return step


def smaller_batch(failed: int, used: int | None) -> str:
    if used is None:
        return f"{OUT_OF_MEMORY}: even batch_size 1 did not fit; use a smaller model or max_seq_length"
    return (f"{OUT_OF_MEMORY}: batch_size {failed} did not fit, the update retried with {used}; "
            f"set fine_tuning.batch_size: {used} (--batch-size {used}) to skip the failed attempt")


def next_steps(verdicts: list, oom_retries: list[dict] | None = None) -> list[dict]:
    """What to do next, from the verdicts that failed or warned (and any OOM retries).

    Identical remedies are merged. When the model got worse, "raise the
    learning rate" is left out: lowering it comes first.
    """
    steps: dict[str, dict] = {}
    for v in verdicts:
        if v.status == "pass" or not v.remedy:
            continue
        entry = steps.setdefault(v.remedy, {"step": v.remedy, "validators": [], "status": v.status})
        entry["validators"].append(v.validator)
        if v.status == "fail":
            entry["status"] = "fail"
    degraded = any(s["status"] == "fail" and s["step"].startswith(QUALITY_DEGRADES) for s in steps.values())
    out = [s for s in steps.values() if not (degraded and s["step"].startswith(DOES_NOT_LEARN))]
    out.sort(key=lambda s: s["status"] != "fail")
    if oom_retries:
        last = oom_retries[-1]
        out.append({"step": smaller_batch(oom_retries[0]["batch_size"], last["retry_batch_size"]),
                    "validators": [], "status": "warn"})
    return out


def epoch_phase(epoch: int, epochs: int) -> str:
    """The design document's monitoring words: learning, refining, converging."""
    return "learning" if epoch == 1 else ("converging" if epoch == epochs else "refining")


def epoch_line(epoch: int, epochs: int, loss: float, previous: float | None) -> str:
    """``Epoch 2/3: Loss=1.9000 (refining)``; a rising loss gets the document's diagnosis."""
    line = f"Epoch {epoch}/{epochs}: Loss={loss:.4f} ({epoch_phase(epoch, epochs)})"
    if previous is not None and loss > previous:
        line += "  loss rose: the learning rate is probably too high"
    return line
