"""The built-in model: a small GPT-style causal LM and its byte-level BPE tokenizer.

Tokenizer choice: byte-level BPE trained with `tokenizers` on the base corpus.
Byte-level means any new text, in any script or domain, still encodes (no
unknown tokens), and BPE merges make sequences ~3-4x shorter than raw bytes,
which is most of the training time on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IGNORE_INDEX = -100


def train_tokenizer(texts, vocab_size: int):
    """Train a byte-level BPE tokenizer on ``texts`` (an iterable of strings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(json_text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json_text)


@dataclass(frozen=True)
class Architecture:
    """Everything that fixes the shape of the weights; stored in the manifest."""

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    context: int
    dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg: ModelConfig, vocab_size: int, context: int) -> "Architecture":
        return cls(vocab_size, cfg.n_layer, cfg.n_head, cfg.d_model, context, cfg.dropout)


class Block(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.n_head = arch.n_head
        self.ln1 = nn.LayerNorm(arch.d_model)
        self.qkv = nn.Linear(arch.d_model, 3 * arch.d_model)
        self.proj = nn.Linear(arch.d_model, arch.d_model)
        self.ln2 = nn.LayerNorm(arch.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(arch.d_model, 4 * arch.d_model),
            nn.GELU(),
            nn.Linear(4 * arch.d_model, arch.d_model),
        )
        self.dropout = arch.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class TransformerModel(nn.Module):
    """GPT-style decoder: token + position embeddings, pre-norm blocks, tied head."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.tok_emb = nn.Embedding(arch.vocab_size, arch.d_model)
        self.pos_emb = nn.Embedding(arch.context, arch.d_model)
        self.drop = nn.Dropout(arch.dropout)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.n_layer))
        self.ln_f = nn.LayerNorm(arch.d_model)
        self.head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * arch.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        # safetensors refuses shared storage: drop the tied head, rebuilt on load.
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k != "head.weight"}

    def load_saved_state(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        tensors["head.weight"] = tensors["tok_emb.weight"]
        self.load_state_dict(tensors, strict=True)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.arch.context:])[:, -1, :]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy, ignoring padding."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def encode_texts(tokenizer, texts: list[str], max_seq_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts -> (inputs, targets, owner) for next-token prediction.

    Each text becomes ``EOS + tokens + EOS``; a text longer than the context is
    split into several sequences rather than truncated, so no data is lost.
    ``owner[i]`` is the index of the text that sequence ``i`` came from. Rows are
    padded to the longest sequence; padded targets are IGNORE_INDEX.
    """
    eos = tokenizer.token_to_id(EOS)
    pad = tokenizer.token_to_id(PAD)
    rows: list[list[int]] = []
    owner: list[int] = []
    for i, enc in enumerate(tokenizer.encode_batch(list(texts))):
        ids = [eos, *enc.ids, eos]
        # windows of max_seq_length+1 tokens, overlapping by one so every token is a target once
        for start in range(0, max(1, len(ids) - 1), max_seq_length):
            chunk = ids[start:start + max_seq_length + 1]
            if len(chunk) >= 2:
                rows.append(chunk)
                owner.append(i)
    width = max((len(r) - 1 for r in rows), default=1)
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, ids in enumerate(rows):
        n = len(ids) - 1
        x[r, :n] = torch.tensor(ids[:-1])
        y[r, :n] = torch.tensor(ids[1:])
    return x, y, torch.tensor(owner, dtype=torch.long)


@torch.no_grad()
def per_text_loss(model: TransformerModel, x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor,
                  n_texts: int, device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """Mean token loss of each text (shape ``[n_texts]``), in eval mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros(n_texts, dtype=torch.float64)
    count = torch.zeros(n_texts, dtype=torch.float64)
    order = torch.argsort((y != IGNORE_INDEX).sum(1))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yb = y[idx]
        width = int((yb != IGNORE_INDEX).sum(1).max())
        xb, yb = x[idx, :width].to(device), yb[:, :width].to(device)
        logits = model(xb)
        tok = F.cross_entropy(logits.transpose(1, 2), yb, ignore_index=IGNORE_INDEX, reduction="none")
        mask = (yb != IGNORE_INDEX)
        total.index_add_(0, owner[idx], tok.sum(1).double().cpu())
        count.index_add_(0, owner[idx], mask.sum(1).double().cpu())
    model.train(was_training)
    return total / count.clamp(min=1)
