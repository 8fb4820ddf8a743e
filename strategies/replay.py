"""``replay``: rehearsal of past items, a reservoir sample of everything learned, kept in the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retain.core.errors import ConfigError, ModelError
from retain.core.strategy import Strategy


@dataclass
class ReplayOptions:
    buffer_size: int = 500   # past items kept in the model directory (texts)
    ratio: float = 0.5       # replayed sequences per new sequence in each batch

    def __post_init__(self):
        if self.buffer_size < 1:
            raise ConfigError(f"config key 'options.replay.buffer_size': must be >= 1, got {self.buffer_size}")
        if self.ratio <= 0:
            raise ConfigError(f"config key 'options.replay.ratio': must be > 0, got {self.ratio}")


class Replay(Strategy):
    """Rehearsal: each batch mixes in past items, a reservoir sample of all learned items kept in the model."""

    name = "replay"

    def __init__(self, options: ReplayOptions):
        self.options = options
        self.texts: list[str] = []
        self.keys = None
        self.storage = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        texts, keys = state.get("texts", []), state.get("keys")
        if texts and (keys is None or len(keys) != len(texts)):
            raise ModelError("the saved replay buffer is inconsistent: its texts and reservoir keys "
                             "differ in number")
        self.texts, self.keys = list(texts), keys

    def avalanche_plugins(self, run) -> list:
        from retain.core.training import make_dataset, pad_to
        from retain.strategies.adapters import ItemReplay, TextReservoir

        # Same width as the experience's rows (fit pads them to max_seq_length), so they mix.
        width, pad_id = run.settings.max_seq_length, run.lm.pad_id

        def encode(texts: list[str]):
            rows = run.lm.encode(texts, width)
            return make_dataset(*pad_to(rows.x, rows.y, width, pad_id))

        self.storage = TextReservoir(self.options.buffer_size, lambda: [it.text for it in run.items],
                                     encode, self.texts, self.keys)
        per_batch = max(1, round(self.options.ratio * run.settings.batch_size))
        return [ItemReplay(mem_size=self.options.buffer_size, batch_size_mem=per_batch,
                           storage_policy=self.storage)]

    def state_dict(self) -> dict[str, Any]:
        if self.storage is not None:
            self.texts, self.keys = self.storage.texts, self.storage.keys.clone()
        return {"texts": self.texts, "keys": self.keys} if self.texts else {}
