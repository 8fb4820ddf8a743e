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
ENCODE_CHUNK = 1024  # texts a family tokenizes at once: a tokenizer's output per text holds far more
                     # than its ids (offsets, tokens as strings); 100,000 at once took 0.7 GB


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
    overlap by one token, so every token is a target exactly once and nothing is cut.
    Each row is copied from its text's ids straight into the tensors: no list of rows beside
    them (100,000 texts: 0.7 GB less at the peak). Compact ids (``array("i")``) cost least."""
    spans: list[tuple[int, int, int]] = []  # (text, start, ids in the row, its last target included)
    for i, ids in enumerate(ids_per_text):
        for start in range(0, max(1, len(ids) - 1), max_len):
            n = min(len(ids) - start, max_len + 1)
            if n >= 2:
                spans.append((i, start, n))
    width = max((n - 1 for _, _, n in spans), default=1)
    x = torch.full((len(spans), width), pad_id, dtype=torch.long)
    y = torch.full((len(spans), width), IGNORE_INDEX, dtype=torch.long)
    for r, (i, start, n) in enumerate(spans):
        ids = torch.as_tensor(ids_per_text[i][start:start + n])
        x[r, :n - 1] = ids[:-1]
        y[r, :n - 1] = ids[1:]
    return Rows(x, y, torch.tensor([i for i, _, _ in spans], dtype=torch.long))


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
