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
        self.rows: dict[str, Any] = {}  # classification variant: the buffer's rows and their keys
        self.row_storage = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {k: v for k, v in state.items() if k.startswith("rows/")}
        texts, keys = state.get("texts", []), state.get("keys")
        if texts and (keys is None or len(keys) != len(texts)):
            raise ModelError("the saved replay buffer is inconsistent: its texts and reservoir keys "
                             "differ in number")
        self.texts, self.keys = list(texts), keys

    def avalanche_plugins(self, run) -> list:
        from retain.core.model import PAD, encode_texts
        from retain.core.training import make_dataset, pad_to
        from retain.strategies.adapters import ItemReplay, TextReservoir

        # Same width as the experience's rows (fit pads them to max_seq_length), so they mix.
        width, pad_id = run.settings.max_seq_length, run.tokenizer.token_to_id(PAD)

        def encode(texts: list[str]):
            x, y, _ = encode_texts(run.tokenizer, texts, width)
            return make_dataset(*pad_to(x, y, width, pad_id))

        self.storage = TextReservoir(self.options.buffer_size, lambda: [it.text for it in run.items],
                                     encode, self.texts, self.keys)
        per_batch = max(1, round(self.options.ratio * run.settings.batch_size))
        return [ItemReplay(mem_size=self.options.buffer_size, batch_size_mem=per_batch,
                           storage_policy=self.storage)]

    def classification_plugins(self, run) -> list:
        # A classification stream (retain compare --scenario split-digits) has rows, not item
        # texts: the same reservoir sampling, over the rows (features, class, task) themselves.
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        from retain.core.training import make_dataset
        from retain.strategies.adapters import ItemReplay

        self.row_storage = ReservoirSamplingBuffer(self.options.buffer_size)
        if self.rows:
            r = self.rows
            self.row_storage.buffer = make_dataset(r["rows/x"], r["rows/y"], r["rows/t"])
            self.row_storage._buffer_weights = r["rows/keys"].float()
        per_batch = max(1, round(self.options.ratio * run.settings.batch_size))
        return [ItemReplay(mem_size=self.options.buffer_size, batch_size_mem=per_batch,
                           storage_policy=self.row_storage)]

    def state_dict(self) -> dict[str, Any]:
        if self.row_storage is not None:
            import torch

            buf = self.row_storage.buffer
            if len(buf) == 0:
                return {}
            x, y, t = (torch.stack([torch.as_tensor(buf[i][k]) for i in range(len(buf))]) for k in range(3))
            return {"rows/x": x, "rows/y": y, "rows/t": t, "rows/keys": self.row_storage._buffer_weights.clone()}
        if self.storage is not None:
            self.texts, self.keys = self.storage.texts, self.storage.keys.clone()
        return {"texts": self.texts, "keys": self.keys} if self.texts else {}
