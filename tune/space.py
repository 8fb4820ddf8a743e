"""What ``--auto`` searches: an update's recipe, and where the search starts (its prior).

A recipe is a strategy mix (from ``tune.strategies``; ``average`` included:
the candidate averaged with its parent), a peak learning rate, a number of
epochs (a cap: early stopping may end sooner), a replay share and its steering
(``options.replay.max_share``: the share a drifted old domain gets). The search
starts from the configured recipe, exactly as a plain ``retain update`` runs it
(``configured``: its trial applies no override at all), then tries the design
document's "common issues" remedies in turn (``core/quality/advice.py``), each a
step from it that keeps its mix, replay and steering::

    Doesn't learn new: keep the whole step (no averaging with the parent)
    Quality degrades:  lower the learning rate (halve it)
    Doesn't learn new: raise it (double it) and add an epoch
    Too slow:          2 epochs

(keeping the whole step comes first: an averaged default learns half a step, and
on one large update that is what a second trial can gain most, and it costs no
training: the configured trial scores its trained weights before averaging too,
``trial.run_trial``; the search's winner keeps the old domain within ``tune.max_drift``,
``search.winner``, so it cannot spend tomorrow's drift budget today).

Each remedy is a step from the best recipe so far (the winner's rule:
accepted, the old domain kept), not always from the configured one: once the
unaveraged weights win, the next trials halve, double or shorten *that* recipe,
in the neighbourhood that wins. As many remedies run as the configured recipe
has; only then does Optuna's sampler (TPE) propose recipes of its own, from the
configured mix and steering and those of ``tune``.
Everything here is plain data, so a trial can be sent to any process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from retain.core.quality.advice import fmt_number
from retain.core.config import Config, TuneConfig
from retain.core.learning.strategy import UPDATE_LEARNING_RATE_KEYS

REPLAY = "replay"
AVERAGE = "average"  # a step after training: it goes last, as in the default [rewarm, replay, average]
PEAK_SETTERS = ("rewarm", "naive")  # strategies that set the learning rate themselves


@dataclass(frozen=True)
class Recipe:
    strategy: str            # a mix without replay, "+"-joined: "rewarm", "low_lr", "rewarm+ewc"
    learning_rate: float     # the peak
    epochs: int              # the cap
    replay_share: float      # 0: no replay
    replay_max_share: float = 0.0  # steering: the share at options.replay.steer_at's drift (0: not steered)

    def strategies(self) -> list[str]:
        names = [n for n in self.strategy.split("+") if n and n not in (REPLAY, AVERAGE)]
        return (names + [REPLAY] * (self.replay_share > 0)
                + [AVERAGE] * (AVERAGE in self.strategy.split("+")))

    def overrides(self) -> list[str]:
        """Config overrides (``--set``) that make an update run this recipe."""
        out = [f"fine_tuning.strategy=[{','.join(self.strategies())}]", f"fine_tuning.epochs={self.epochs}",
               *(f"{key}={self.learning_rate!r}" for key in UPDATE_LEARNING_RATE_KEYS)]  # every strategy's rate
        if self.replay_share > 0:
            out += [f"options.replay.share={self.replay_share!r}",
                    f"options.replay.max_share={self.replay_max_share!r}"]
        return out

    def without_averaging(self) -> "Recipe":
        """The same recipe keeping the whole step (the mix without ``average``)."""
        mix = "+".join(n for n in self.strategy.split("+") if n != AVERAGE) or "low_lr"
        return Recipe(mix, self.learning_rate, self.epochs, self.replay_share, self.replay_max_share)

    def describe(self) -> str:
        steered = f" steered to {self.replay_max_share:g}" if self.replay_max_share > self.replay_share else ""
        replay = f", replay {self.replay_share:g}{steered}" if self.replay_share > 0 else ", no replay"
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
    from retain.strategies.replay import ReplayOptions

    replay = options.get(REPLAY, {})
    share = float(replay.get("share", ReplayOptions.share)) if REPLAY in names else 0.0
    steer = float(replay.get("max_share", ReplayOptions.max_share)) if REPLAY in names else 0.0
    mix = "+".join(n for n in names if n != REPLAY) or "low_lr"
    return Recipe(mix, lr, config.fine_tuning.epochs, share, steer)


def overrides(recipe: Recipe, config: Config) -> list[str]:
    """What makes ``config`` run ``recipe``: nothing for the configured recipe (its trial is
    exactly the update ``retain update`` would run), else the recipe's own overrides."""
    return [] if recipe == configured(config) else recipe.overrides()


def prior(config: Config) -> list[Recipe]:
    """The first recipes to try, in order: the configured one, then the common-issues remedies
    (the search takes each next remedy from the best recipe so far: ``remedies``)."""
    start = configured(config)
    # The configured recipe itself, unclipped: the first trial is the update a plain `retain update` runs.
    return [start, *remedies(start, config)]


def remedies(recipe: Recipe, config: Config) -> list[Recipe]:
    """The common-issues remedies, each a step from ``recipe`` within the search's bounds."""
    tune = config.tune
    lo, hi = tune.min_learning_rate, tune.max_learning_rate

    def clip(r: Recipe) -> Recipe:
        return replace(r, learning_rate=min(hi, max(lo, r.learning_rate)),
                       epochs=min(tune.max_epochs, max(1, r.epochs)))

    steps = [recipe.without_averaging(),                                                   # no learning
             replace(recipe, learning_rate=recipe.learning_rate / 2),                      # degrades
             replace(recipe, learning_rate=recipe.learning_rate * 2, epochs=recipe.epochs + 1),  # no learning
             replace(recipe, epochs=2)]                                                    # too slow
    out: list[Recipe] = []
    for r in map(clip, steps):
        if r != recipe and r not in out:
            out.append(r)
    return out


def choices(config: Config) -> tuple[list[str], list[float]]:
    """The strategy mixes and replay shares the sampler picks from (the prior's included)."""
    tune = config.tune
    start = configured(config)
    mixes = list(dict.fromkeys([*tune.strategies, start.strategy, start.without_averaging().strategy]))
    shares = sorted({*tune.replay_shares, start.replay_share})
    return mixes, shares


def shares_training(recipe: Recipe) -> Recipe | None:
    """The recipe a trial of ``recipe`` judges too, from the same training (its weights before
    averaging, ``trial.run_trial``); None if ``recipe`` does not average."""
    plain = recipe.without_averaging()
    return None if plain == recipe else plain


def suggest(trial, config: Config) -> Recipe:
    """A recipe from an Optuna trial (an enqueued prior trial gets its fixed values back)."""
    tune: TuneConfig = config.tune
    mixes, shares = choices(config)
    return Recipe(trial.suggest_categorical("strategy", mixes),
                  trial.suggest_float("learning_rate", tune.min_learning_rate, tune.max_learning_rate, log=True),
                  trial.suggest_int("epochs", 1, tune.max_epochs),
                  trial.suggest_categorical("replay_share", shares),
                  # steering is not searched: the configured one's (the default's, measured over a month)
                  trial.suggest_categorical("replay_max_share", [configured(config).replay_max_share]))
