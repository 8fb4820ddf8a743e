"""``replay``: rehearsal of past items, a reservoir sample of everything learned, kept in the model.

Replay is measured in tokens, not rows: ``share`` is the part of the tokens an
update trains on each epoch that comes from past items (0.5: as many old
tokens as new). Rows of different lengths then weigh what they hold, and the
replayed tokens are steps of the update like the new ones: they count in its
schedule, its time and its report (``counts.replay_tokens``).

Past items are drawn from the token shards every version keeps of its chain
(``core/shards.py``), so replay reaches everything the model learned, not only what
a buffer holds. The reservoir of ``buffer_size`` texts is still kept with each version:
it is what a model saved before versions kept shards replays. The full training
records it by default (``full_training.record: [replay]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from retain.core.errors import ModelError
from retain.core.strategy import Strategy


@dataclass
class ReplayOptions:
    buffer_size: Annotated[int, Field(ge=1)] = 500       # past items kept in the model directory (texts)
    share: Annotated[float, Field(ge=0, lt=1)] = 0.5     # share of each epoch's tokens replayed from past items
                                                         # (0.5: 1 old : 1 new)

    @property
    def per_new(self) -> float:
        """Replayed units per new one (tokens for text, rows for other data): share 0.5 -> 1."""
        return self.share / (1 - self.share)


class Replay(Strategy):
    """Rehearsal: a share of each update's tokens replays past items, a reservoir sample kept in the model."""

    name = "replay"

    def __init__(self, options: ReplayOptions):
        self.options = options
        self.texts: list[str] = []
        self.keys = None
        self.storage = None
        self.replayed: int | None = None  # tokens replayed by this run's training (None: it replayed nothing)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        texts, keys = state.get("texts", []), state.get("keys")
        if texts and (keys is None or len(keys) != len(texts)):
            raise ModelError("the saved replay buffer is inconsistent: its texts and reservoir keys "
                             "differ in number")
        self.texts, self.keys = list(texts), keys

    def avalanche_plugins(self, run) -> list:
        from retain.core.training import make_dataset, pad_to
        from retain.strategies.adapters import HistoryReplay, TextReservoir, TokenShareReplay

        # Same width as the experience's rows (fit pads them to max_seq_length), so they mix.
        width, pad_id = run.settings.max_seq_length, run.lm.pad_id

        def encode(texts: list[str]):
            rows = run.lm.encode(texts, width)
            return make_dataset(*pad_to(rows.x, rows.y, width, pad_id))

        def replayed(tokens: int) -> None:
            self.replayed = (self.replayed or 0) + tokens

        self.storage = TextReservoir(self.options.buffer_size, lambda: [it.text for it in run.items],
                                     encode, self.texts, self.keys)
        history = self.history(run)
        if history is not None and history.items:  # the chain's token shards: the whole history
            return [HistoryReplay(self.storage, self.options.share, replayed, history, width, pad_id)]
        return [TokenShareReplay(self.storage, self.options.share, replayed)]

    @staticmethod
    def history(run):
        """The shards of the parent's chain (``core/shards.py``), or None: a full training, or a
        lineage whose full training (or import) was saved before versions kept shards: its shards
        would hold only the latest updates, and the reservoir's texts reach back to the base."""
        from retain.core.shards import History

        base = getattr(run, "base", None)
        if base is None or getattr(base, "reader", None) is None:
            return None
        store = base.reader.store
        history = History.of(store, base.version)
        root = store.lineage_root(store.chain(base.version))
        base_data = root is not None and store.summary(root)["counts"].get("tokens", 0) > 0
        covered = not base_data or root in {version for version, _ in history.shards}
        return history if covered else None

    def counts(self) -> dict[str, int]:
        return {} if self.replayed is None else {"replay_tokens": self.replayed}

    def state_dict(self) -> dict[str, Any]:
        if self.storage is not None:
            self.texts, self.keys = self.storage.texts, self.storage.keys.clone()
        return {"texts": self.texts, "keys": self.keys} if self.texts else {}
