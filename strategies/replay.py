"""``replay``: rehearsal of past items, a reservoir sample of everything learned, kept in the model.

Replay is measured in tokens, not rows: ``share`` is the part of the tokens an
update trains on each epoch that comes from past items (0.5: as many old
tokens as new). Rows of different lengths then weigh what they hold, and the
replayed tokens are steps of the update like the new ones: they count in its
schedule, its time and its report (``counts.replay_tokens``).

The full training records a buffer of base items by default
(``full_training.record: [replay]``), so the first update already replays them.
The buffer is a reservoir over the base and every accepted update's items
(``reservoir``): however many days have passed, each item learned so far had
the same chance to be kept, so later days rehearse earlier days too.

Steering (``max_share`` above ``share``): the replayed share rises with the
old domain's cumulative drift since the last full training, as the parent's
update recorded it: ``share`` at no drift, ``max_share`` at ``steer_at`` and
beyond, linear between. A day that finds the old domain drifted rehearses it
more, so the drift does not add up day after day; with none it learns at the
usual share. ``retain update --consolidate`` replays at ``consolidate_share``
(4 old tokens to 1 new) whatever the drift: the update after a cumulative-drift
rejection brings the old domain back inside the gate's budget and still learns
the day's data.

Work budget (``horizon`` above 0; off by default): ``horizon`` updates cost at most one retrain on
the base and their data (``replay_budget``: each its share of the base's epochs and a retrain's
epochs over its own tokens). Where the day's epochs and the replay the drift asks for do not fit,
the day's epochs are cut first, down to ``min_epochs`` (2), and the replay only after
(``budget_epochs``): the replay holds the old domain, and a day's items trained one pass fewer are
rehearsed by later days. Beside a large base it never binds; where the days outweigh the base it
does, and a single large update is cut like a day (BENCHMARKS.md, "The sixth round"). From a
cumulative drift of ``budget_max_drift`` (2%) on, the budget yields and the update replays what the
steering asks: within the budget alone, Shakespeare under Wikipedia days drifted +3.0% in a month
and would have reached the gate's limit; yielding at 2% held it at +1.0% ("The seventh round").

What is replayed (``base_share``): drawn uniformly over the whole history, each past item is
as likely as any other, so the base's part of the replay is its part of the history. Beside a
base four times the size of a month of days (Wikipedia under Shakespeare days), that leaves
earlier days 2-4% of the replay (measured), and what they taught fades day after day. ``base_share``
caps the full training's part (the old domain) and gives the rest to the updates' items since,
which then learn across days as a retrain would; where the base's part is below the cap (days
outweighing the base) the draw stays uniform. A consolidation draws uniformly.

Past items are drawn from the token shards every version keeps of its chain
(``core/data/shards.py``), so replay reaches everything the model learned, not only what
a buffer holds. The reservoir of ``buffer_size`` texts is still kept with each version:
it is what a model saved before versions kept shards replays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from retain.core.errors import ModelError
from retain.core.learning.strategy import Strategy


@dataclass
class ReplayOptions:
    buffer_size: Annotated[int, Field(ge=1)] = 500       # past items kept in the model directory (texts)
    share: Annotated[float, Field(ge=0, lt=1)] = 0.5     # share of each epoch's tokens replayed from past items
                                                         # (0.5: 1 old : 1 new)
    max_share: Annotated[float, Field(ge=0, lt=1)] = 0.8  # steering: the share at steer_at's drift (0: no steering)
    steer_at: Annotated[float, Field(gt=0)] = 0.0125       # cumulative old-domain drift that gets max_share
    consolidate: bool = False                             # this update consolidates (--consolidate): it replays
    consolidate_share: Annotated[float, Field(ge=0, lt=1)] = 0.8  # this share (or max_share if above)
    horizon: Annotated[float, Field(ge=0)] = 0  # work budget: updates expected before a retrain (0: no budget)
    min_epochs: Annotated[int, Field(ge=1)] = 2  # the work budget trains the day's items this many epochs at
                                                 # least before it cuts the replay the drift asks for
    budget_max_drift: Annotated[float, Field(ge=0)] = 0.02  # the work budget binds below this cumulative drift
                        # only: from it on, the update replays what the steering asks (0: at any drift)
    base_share: Annotated[float, Field(ge=0, le=1)] | None = 0.6  # the most of the replayed tokens drawn from
                    # the full training's items, the rest from the updates' (None: uniform over the history)

    @property
    def per_new(self) -> float:
        """Replayed units per new one (tokens for text, rows for other data): share 0.5 -> 1."""
        return self.share / (1 - self.share)


def steered_share(options: ReplayOptions, drift: float | None) -> float:
    """The share an update replays, given the old domain's cumulative drift at its start
    (a relative rise of its held-out loss since the last full training; None: not known)."""
    if options.consolidate:
        return max(options.consolidate_share, options.max_share, options.share)
    top = max(options.max_share, options.share)
    if top <= options.share or drift is None:
        return options.share
    return options.share + (top - options.share) * min(max(drift / options.steer_at, 0.0), 1.0)


def replay_budget(options: ReplayOptions, base_tokens: int | None, full_epochs: int, drift: float | None = None):
    """The work budget (``horizon`` above 0): a function of an update's new tokens and epochs giving
    the most tokens it may replay per epoch, or None (no budget, the base's size not known, or the
    old domain's cumulative ``drift`` at its start at ``budget_max_drift`` or beyond).

    ``horizon`` updates, each training ``epochs`` x (new + replayed) tokens, cost at most what one
    retrain on the base and all their data costs (``full_epochs`` x (base + new)) when each replays
    at most ``full_epochs`` x (base / horizon + new) - ``epochs`` x new tokens in all: the base's
    share of a retrain, spread over the horizon, and what the retrain would spend on the update's own
    data beyond its epochs. A large base beside the days leaves the steered share as it is; a small
    one caps it."""
    if options.horizon <= 0 or not base_tokens or options.consolidate:
        return None
    if options.budget_max_drift and drift is not None and drift >= options.budget_max_drift:
        return None  # the old domain first: a budget must not let the drift run on to the gate's limit

    def most(new_tokens: float, epochs: int) -> float:
        return max(full_epochs * (base_tokens / options.horizon + new_tokens) - epochs * new_tokens, 0.0) / epochs
    return most


def budget_epochs(most, new_tokens: float, share: float, epochs: int, min_epochs: int) -> int:
    """The epochs an update trains within the work budget (``most``: ``replay_budget``'s function),
    cut before its replay is: the most epochs, from ``epochs`` down to ``min_epochs``, whose new and
    replayed tokens at ``share`` fit. What still does not fit at ``min_epochs`` is the replay's cut
    (``TokenShareReplay.pool_tokens``). The steered share is what holds the old domain; fewer
    passes over the day's items only learn them more slowly, and later days rehearse them."""
    per_new = share / (1 - share)
    fits = [e for e in range(epochs, min(min_epochs, epochs) - 1, -1) if most(new_tokens, e) >= per_new * new_tokens]
    return fits[0] if fits else min(min_epochs, epochs)


def consolidation_overrides(chain: list[str]) -> list[str]:
    """The config overrides of ``retain update --consolidate``: replay (added to the update's
    strategies if they lack it) at the consolidation share."""
    names = list(chain) if "replay" in chain else [*chain, "replay"]
    return [f"fine_tuning.strategy=[{','.join(names)}]", "options.replay.consolidate=true"]


def start_drift(run) -> float | None:
    """The parent's cumulative drift since the last full training, as its update recorded it."""
    reference = getattr(run, "drift", None)
    if reference is None or reference.before is None or not reference.loss:
        return None
    return reference.before / reference.loss - 1


def reservoir(options: ReplayOptions, texts: list[str], keys, new_texts, encode):
    """The replay buffer: a reservoir sample of the base and every accepted update's items, saved with
    each version as texts and reservoir keys (the one place that says where replayed items live)."""
    from retain.strategies.adapters import TextReservoir

    return TextReservoir(options.buffer_size, new_texts, encode, texts, keys)


class Replay(Strategy):
    """Rehearsal: a share of each update's tokens replays past items, a reservoir sample kept in the model."""

    name = "replay"

    def __init__(self, options: ReplayOptions):
        self.options = options
        self.texts: list[str] = []
        self.keys = None
        self.storage = None
        self.replayed: int | None = None  # tokens replayed by this run's training (None: it replayed nothing)
        self.share: float | None = None     # the share this run replayed (steered), once it trains
        self.capped = False                 # the work budget (``horizon``) lowered the steered share
        self.budget_epochs: int | None = None  # the epochs the work budget left the update (when it cut them)
        self.plugin = None                    # the run's HistoryReplay, where it replays from the shards

    def load_state_dict(self, state: dict[str, Any]) -> None:
        texts, keys = state.get("texts", []), state.get("keys")
        if texts and (keys is None or len(keys) != len(texts)):
            raise ModelError("the saved replay buffer is inconsistent: its texts and reservoir keys "
                             "differ in number")
        self.texts, self.keys = list(texts), keys

    def configure(self, settings, run) -> None:
        """The work budget cuts the day's epochs first, down to ``min_epochs``, and the replay only
        beyond: measured on a month of code days (per-update budget), this kept 30 of 30 and the docs
        1.5% below the base, where 3 epochs with the replay trimmed kept 29, the docs 0.8% below, and
        learned less (BENCHMARKS.md, "The sixth round")."""
        from retain.core.quality.drift import recorded_rise

        lineage = self.lineage(run) if self.options.horizon > 0 and settings.epochs > 1 else None
        if lineage is None:
            return
        # The run's drift reference is scored after it is configured: the parent's recorded drift, the same number.
        store, root, _ = lineage
        drift = recorded_rise(store, run.base.version, root) if root is not None else None
        most = self.budget(run, lineage, drift)
        new_tokens = (getattr(run, "counts", None) or {}).get("tokens") if most is not None else None
        if not new_tokens:
            return
        epochs = budget_epochs(most, new_tokens, steered_share(self.options, drift), settings.epochs,
                               self.options.min_epochs)
        if epochs < settings.epochs:
            settings.epochs_from = (f"{settings.epochs} asked: the replay's work budget, "
                                    f"options.replay.horizon {self.options.horizon:g}")
            settings.epochs = self.budget_epochs = epochs

    def avalanche_plugins(self, run) -> list:
        from retain.core.learning.training import make_dataset, pad_to
        from retain.strategies.adapters import HistoryReplay, TokenShareReplay

        # Same width as the experience's rows (fit pads them to max_seq_length), so they mix.
        width, pad_id = run.settings.max_seq_length, run.lm.pad_id

        def encode(texts: list[str]):
            rows = run.lm.encode(texts, width)
            return make_dataset(*pad_to(rows.x, rows.y, width, pad_id))

        def replayed(tokens: int) -> None:
            self.replayed = (self.replayed or 0) + tokens

        self.storage = reservoir(self.options, self.texts, self.keys, lambda: (it.text for it in run.items), encode)
        def shared(share: float) -> None:  # the share replayed once the budget capped it
            self.share, self.capped = share, True

        self.share = steered_share(self.options, start_drift(run))
        self.plugin = None
        lineage = self.lineage(run)
        root, root_tokens = lineage[1:] if lineage is not None else (None, None)
        cap = self.budget(run, lineage, start_drift(run))
        history = self.history(run, lineage)
        if history is not None and history.items:  # the chain's token shards: the whole history
            # A consolidation pulls the old domain back: no cap on its part of the replay.
            base_share = None if self.options.consolidate else self.options.base_share
            self.plugin = HistoryReplay(self.storage, self.share, replayed, history, width, pad_id, cap, shared,
                                        base=root, base_share=base_share)
            return [self.plugin]
        return [TokenShareReplay(self.storage, self.share, replayed, cap, shared)]

    def budget(self, run, lineage: tuple | None = None, drift: float | None = None):
        """``replay_budget`` for this update (None: no budget)."""
        lineage = lineage or self.lineage(run)
        return replay_budget(self.options, lineage[2] if lineage else None, run.config.full_training.epochs, drift)

    @staticmethod
    def lineage(run) -> tuple | None:
        """(store, the version of the lineage's full training or import, its tokens), read once per
        update; None: a full training (no parent). The root is where the old domain's items are."""
        base = getattr(run, "base", None)
        if base is None or getattr(base, "reader", None) is None:
            return None
        store = base.reader.store
        root = store.lineage_root(store.chain(base.version))
        return store, root, (store.summary(root)["counts"].get("tokens") if root is not None else None)

    @classmethod
    def history(cls, run, lineage: tuple | None = None):
        """The shards of the parent's chain (``core/data/shards.py``), or None: a full training, or a
        lineage whose full training (or import) was saved before versions kept shards: its shards
        would hold only the latest updates, and the reservoir's texts reach back to the base."""
        from retain.core.data.shards import History

        lineage = lineage or cls.lineage(run)
        if lineage is None:
            return None
        store, root, root_tokens = lineage
        history = History.of(store, run.base.version)
        covered = not (root_tokens or 0) > 0 or root in {version for version, _ in history.shards}
        return history if covered else None

    def counts(self) -> dict[str, int]:
        if self.replayed is None:
            return {}
        return {"replay_tokens": self.replayed, "replay_share_percent": round(100 * (self.share or 0.0)),
                **({"replay_budget_capped": 1} if self.capped else {}),
                **({"replay_budget_epochs": self.budget_epochs} if self.budget_epochs else {}),
                **({"replay_base_percent": round(100 * part)} if (part := self.base_part()) is not None else {})}

    def base_part(self) -> float | None:
        """The share of the drawn past tokens that came from the full training's items (None: not drawn)."""
        drawn = getattr(self.plugin, "drawn", None)
        if drawn is None or len(drawn) == 0:
            return None
        lengths, base = drawn.lengths().tolist(), self.plugin.base
        return sum(n for n, v in zip(lengths, drawn.versions()) if v == base) / max(sum(lengths), 1)

    def state_dict(self) -> dict[str, Any]:
        if self.storage is not None:
            self.texts, self.keys = self.storage.texts, self.storage.keys.clone()
        return {"texts": self.texts, "keys": self.keys} if self.texts else {}
