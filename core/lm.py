"""What every causal language model family shares: training rows, token loss, samples.

A family (``register_models``) turns texts into token ids its own way; the rows
built from those ids, the loss over them and the scoring of held-out texts are
the same for all of them, so they live here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # target of a padding position: no loss, no gradient


@dataclass
class Rows:
    """Training or scoring rows for next-token prediction.

    ``x[i]`` are input ids, ``y[i]`` the ids to predict at each position
    (``IGNORE_INDEX`` where the row is padding), ``owner[i]`` the index of the
    text row ``i`` came from (a long text splits into several rows).
    """

    x: torch.Tensor       # long [rows, width]
    y: torch.Tensor       # long [rows, width]
    owner: torch.Tensor   # long [rows]

    def __len__(self) -> int:
        return len(self.x)

    @property
    def tokens(self) -> int:
        """Real (non-padding) target tokens."""
        return int((self.y != IGNORE_INDEX).sum())

    def lengths(self) -> list[int]:
        return (self.y != IGNORE_INDEX).sum(1).tolist()


def rows_from_ids(ids_per_text: Sequence[Sequence[int]], max_len: int, pad_id: int) -> Rows:
    """Rows of at most ``max_len`` positions from each text's ids (already wrapped in the
    family's boundary tokens). A text longer than that is split into windows that
    overlap by one token, so every token is a target exactly once and nothing is cut."""
    rows: list[Sequence[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(ids_per_text):
        for start in range(0, max(1, len(ids) - 1), max_len):
            chunk = ids[start:start + max_len + 1]
            if len(chunk) >= 2:
                rows.append(chunk)
                owner.append(i)
    width = max((len(r) - 1 for r in rows), default=1)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, ids in enumerate(rows):
        n = len(ids) - 1
        x[r, :n] = torch.as_tensor(ids[:-1])
        y[r, :n] = torch.as_tensor(ids[1:])
    return Rows(x, y, torch.tensor(owner, dtype=torch.long))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over the non-padding positions (the training criterion)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position ``[batch, time]``, 0 at padding."""
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")


@dataclass
class Sample:
    """Text a model generated from a prompt: what the ``generation`` validator judges."""

    prompt: str
    text: str                                        # the continuation alone, decoded
    tokens: list[int] = field(default_factory=list)  # its token ids, up to the first stop token


def autocast(device, precision: str):
    """bf16 autocast on ``device`` when ``precision`` is "bf16"; a no-op context for "fp32"."""
    device_type = getattr(device, "type", None) or str(device).split(":")[0]
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
