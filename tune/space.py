"""What ``--auto`` searches: an update's recipe, and where the search starts (its prior).

A recipe is a strategy mix (from ``tune.strategies``), a peak learning rate, a
number of epochs (a cap: early stopping may end sooner) and a replay share.
The search starts from the configured recipe, then tries the design
document's "common issues" remedies in turn (``core/quality/advice.py``)::

    Quality degrades:  lower the learning rate (halve it)
    Doesn't learn new: raise it (double it) and add an epoch
    Too slow:          2 epochs

and only then lets Optuna's sampler (TPE) propose recipes of its own.
Everything here is plain data, so a trial can be sent to any process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from retain.core.quality.advice import fmt_number
from retain.core.config import Config, TuneConfig
from retain.core.learning.strategy import UPDATE_LEARNING_RATE_KEYS

REPLAY = "replay"
PEAK_SETTERS = ("rewarm", "naive")  # strategies that set the learning rate themselves


@dataclass(frozen=True)
class Recipe:
    strategy: str            # a mix without replay, "+"-joined: "rewarm", "low_lr", "rewarm+ewc"
    learning_rate: float     # the peak
    epochs: int              # the cap
    replay_share: float      # 0: no replay

    def strategies(self) -> list[str]:
        names = [n for n in self.strategy.split("+") if n and n != REPLAY]
        return names + [REPLAY] if self.replay_share > 0 else names

    def overrides(self) -> list[str]:
        """Config overrides (``--set``) that make an update run this recipe."""
        out = [f"fine_tuning.strategy=[{','.join(self.strategies())}]", f"fine_tuning.epochs={self.epochs}",
               *(f"{key}={self.learning_rate!r}" for key in UPDATE_LEARNING_RATE_KEYS)]  # every strategy's rate
        if self.replay_share > 0:
            out.append(f"options.replay.share={self.replay_share!r}")
        return out

    def describe(self) -> str:
        replay = f", replay {self.replay_share:g}" if self.replay_share > 0 else ", no replay"
        return (f"{'+'.join(self.strategies())}, lr {fmt_number(self.learning_rate)}, "
                f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}{replay}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def configured(config: Config) -> Recipe:
    """The recipe ``config`` runs as it is (what a plain ``retain update`` would do)."""
    names = list(config.fine_tuning.strategy)
    options = config.options
    if "rewarm" in names:
        lr = float(options.get("rewarm", {}).get("peak_lr") or 0) or config.full_training.learning_rate
    elif "naive" in names:
        lr = float(options.get("naive", {}).get("learning_rate") or 0) or config.full_training.learning_rate
    elif "lora" in names:
        from retain.strategies.lora import LoraOptions

        lr = float(options.get("lora", {}).get("learning_rate", LoraOptions.learning_rate) or 0) or \
            config.fine_tuning.learning_rate
    else:
        lr = config.fine_tuning.learning_rate
    share = float(options.get(REPLAY, {}).get("share", 0.5)) if REPLAY in names else 0.0
    mix = "+".join(n for n in names if n != REPLAY) or "low_lr"
    return Recipe(mix, lr, config.fine_tuning.epochs, share)


def prior(config: Config) -> list[Recipe]:
    """The first recipes to try, in order: the configured one, then the common-issues remedies."""
    tune = config.tune
    start = configured(config)
    lo, hi = tune.min_learning_rate, tune.max_learning_rate

    def clip(r: Recipe) -> Recipe:
        return Recipe(r.strategy, min(hi, max(lo, r.learning_rate)), min(tune.max_epochs, max(1, r.epochs)),
                      r.replay_share)

    first = clip(start)
    candidates = [first,
                  Recipe(first.strategy, first.learning_rate / 2, first.epochs, first.replay_share),       # degrades
                  Recipe(first.strategy, first.learning_rate * 2, first.epochs + 1, first.replay_share),   # no learning
                  Recipe(first.strategy, first.learning_rate, 2, first.replay_share)]                      # too slow
    out: list[Recipe] = []
    for r in map(clip, candidates):
        if r not in out:
            out.append(r)
    return out


def choices(config: Config) -> tuple[list[str], list[float]]:
    """The strategy mixes and replay shares the sampler picks from (the prior's included)."""
    tune = config.tune
    start = configured(config)
    mixes = list(dict.fromkeys([*tune.strategies, start.strategy]))
    shares = sorted({*tune.replay_shares, start.replay_share})
    return mixes, shares


def suggest(trial, config: Config) -> Recipe:
    """A recipe from an Optuna trial (an enqueued prior trial gets its fixed values back)."""
    tune: TuneConfig = config.tune
    mixes, shares = choices(config)
    return Recipe(trial.suggest_categorical("strategy", mixes),
                  trial.suggest_float("learning_rate", tune.min_learning_rate, tune.max_learning_rate, log=True),
                  trial.suggest_int("epochs", 1, tune.max_epochs),
                  trial.suggest_categorical("replay_share", shares))
