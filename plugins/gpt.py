"""The built-in ``gpt`` family's model: a small GPT-style causal LM and its byte-level BPE tokenizer.

Imports torch: ``retain.plugins.models`` (the registration) imports it only when a
model is created or loaded.

Tokenizer choice: byte-level BPE trained with `tokenizers` on the base corpus.
Byte-level means any new text, in any script or domain, still encodes (no
unknown tokens), and BPE merges make sequences ~3-4x shorter than raw bytes,
which is most of the training time on a CPU.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from retain.core.config import ModelConfig
from retain.core.learning.lm import ENCODE_CHUNK, Rows, Sample, rows_from_ids, token_losses
from retain.core.storage.store import TOKENIZER, WEIGHTS
from retain.plugins.fast_bpe import FastEncoder, fast_encoder

EOS = "<|endoftext|>"
PAD = "<|pad|>"


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

    def forward(self, x: torch.Tensor, cache: list | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``cache`` (generation): this block's keys and values so far, extended in place;
        ``mask`` (bool, True = may attend) replaces the causal mask where rows are padded."""
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        if mask is None:
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None, caches: list | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, time, vocab]`` of ``idx``. Training and scoring pass ``idx`` alone;
        generation passes each row's ``positions``, the blocks' key/value ``caches`` and a ``mask``."""
        if positions is None:
            positions = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None, mask)
        return self.head(self.ln_f(x))

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        # safetensors refuses shared storage: drop the tied head, rebuilt on load.
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k != "head.weight"}

    def load_saved_state(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        tensors["head.weight"] = tensors["tok_emb.weight"]
        self.load_state_dict(tensors, strict=True)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, stop: frozenset[int] = frozenset(),
                 pad_id: int = 0) -> list[list[int]]:
        """Continue every prompt (token ids) at once, with a key/value cache: the prompts,
        left-padded to one length, run through the model once, then one position per new
        token. Stops early when every row has produced a ``stop`` token; returns each
        row's new tokens (up to ``max_new_tokens``, stop tokens included)."""
        device = self.tok_emb.weight.device
        max_new_tokens = max(0, min(max_new_tokens, self.arch.context - 1))
        keep = self.arch.context - max_new_tokens  # positions are learned: prompt + output must fit
        prompts = [list(p[-keep:]) or [pad_id] for p in prompts]
        width = max(len(p) for p in prompts)
        idx = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        real = torch.zeros((len(prompts), width), dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            idx[i, width - len(p):] = torch.tensor(p, device=device)
            real[i, width - len(p):] = True
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # A padding position attends to itself only (a row of nothing is NaN); real ones skip padding.
        mask = causal & (real[:, None, :] | torch.eye(width, dtype=torch.bool, device=device))
        caches: list[list] = [[] for _ in self.blocks]
        logits = self(idx, positions, caches, mask[:, None])[:, -1, :]
        out: list[torch.Tensor] = []
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        stop_ids = torch.tensor(sorted(stop), dtype=torch.long, device=device)
        for _ in range(max_new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            out.append(nxt)
            done |= torch.isin(nxt, stop_ids)
            if bool(done.all()) or len(out) == max_new_tokens:
                break
            real = torch.cat([real, torch.ones(len(prompts), 1, dtype=torch.bool, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            logits = self(nxt[:, None], positions, caches, real[:, None, None, :])[:, -1, :]
        tokens = torch.stack(out, dim=1).tolist() if out else [[] for _ in prompts]
        return tokens


# --- the family: what the engine sees -------------------------------------------------------


class GptModel:
    """The ``LanguageModel`` of the ``gpt`` family: a TransformerModel and its tokenizer."""

    family = "gpt"

    def __init__(self, module: TransformerModel, tokenizer, tokenizer_json: str | None = None):
        self.module = module
        self.tokenizer = tokenizer
        self.tokenizer_json = tokenizer_json or tokenizer.to_str()
        self.context = module.arch.context
        self.eos_id = tokenizer.token_to_id(EOS)
        self.pad_id = tokenizer.token_to_id(PAD)
        self._fast: FastEncoder | None | bool = False  # built on the first encode (``plugins/fast_bpe.py``)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids: tiktoken where it gives exactly this tokenizer's ids, else ``tokenizers``."""
        if self._fast is False:
            self._fast = fast_encoder(self.tokenizer, self.tokenizer_json)
        if self._fast is not None:
            return self._fast.encode(texts)
        return [enc.ids for enc in self.tokenizer.encode_batch(texts)]

    def encode_ids(self, texts: list[str]) -> list[array]:
        # Each text is EOS + tokens + EOS: the model learns where texts start and end. In chunks,
        # kept as 4-byte ids (``ENCODE_CHUNK``).
        texts, ids = list(texts), []
        for start in range(0, len(texts), ENCODE_CHUNK):
            ids += [array("i", [self.eos_id, *x, self.eos_id]) for x in self._ids(texts[start:start + ENCODE_CHUNK])]
        return ids

    def encode(self, texts: list[str], max_len: int) -> Rows:
        return rows_from_ids(self.encode_ids(texts), max_len, self.pad_id)

    def token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_losses(logits, targets)

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[Sample]:
        """All prompts in one batch, with a key/value cache, under ``inference_mode``."""
        model = self.module
        device = next(model.parameters()).device
        stop = frozenset({self.eos_id, self.pad_id})
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            ids = [[self.eos_id, *x] for x in self._ids(list(prompts))]
            outs = model.generate(ids, max_new_tokens, temperature=temperature, generator=generator, stop=stop,
                                  pad_id=self.pad_id)
        finally:
            model.train(was_training)
        samples = []
        for prompt, out in zip(prompts, outs):
            tokens = out[:next((i for i, t in enumerate(out) if t in stop), len(out))]
            samples.append(Sample(prompt, self.tokenizer.decode(tokens), tokens))
        return samples

    def architecture(self) -> dict[str, Any]:
        return asdict(self.module.arch)

    def save(self, writer) -> dict[str, Any]:
        writer.write_tensors(WEIGHTS, {k: v.cpu() for k, v in self.module.state_dict_for_save().items()})
        writer.write_text(TOKENIZER, self.tokenizer_json)
        return {"family": self.family, "architecture": self.architecture()}


# --- retain import: a state dict of this model, from torch.save(model.state_dict()) ----------


def tokenizer_from(path: str):
    """``model.tokenizer``: a tokenizers JSON file, or a directory holding ``tokenizer.json``."""
    from pathlib import Path

    from retain.core.errors import ConfigError

    if not path:
        raise ConfigError("config key 'model.tokenizer': a state dict holds weights only; name the tokenizer "
                          "the model was trained with (its tokenizer.json), e.g. --tokenizer tokenizer.json")
    p = Path(path)
    file = p / TOKENIZER if p.is_dir() else p
    try:
        text = file.read_text(encoding="utf-8")
        tokenizer = load_tokenizer(text)
    except Exception as exc:  # OSError, or the tokenizers library's bare Exception
        raise ConfigError(f"config key 'model.tokenizer': {file} is not a tokenizers JSON file ({exc})") from None
    missing = [t for t in (EOS, PAD) if tokenizer.token_to_id(t) is None]
    if missing:
        raise ConfigError(f"config key 'model.tokenizer': {file} lacks {', '.join(missing)}, which the built-in "
                          "gpt family needs (is it the tokenizer this model was trained with?)")
    return tokenizer, text


def import_state_dict(tensors: dict[str, torch.Tensor], config, where: str) -> GptModel:
    """The built-in model from its state dict; the config records what it turned out to be."""
    from retain.core.errors import ModelError

    try:
        vocab, d_model = tensors["tok_emb.weight"].shape
        context = tensors["pos_emb.weight"].shape[0]
        n_layer = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelError(f"{where} is not a state dict of the built-in gpt model (no {exc}); a model of your "
                         "own is the python family: --family python --factory package.module:function") from None
    n_head = config.model.n_head
    if d_model % n_head:
        raise ModelError(f"{where}: d_model {d_model} is not divisible by model.n_head {n_head}; "
                         "set the n_head the model was trained with (--set model.n_head=...)")
    arch = Architecture(int(vocab), n_layer, n_head, int(d_model), int(context), config.model.dropout)
    module = TransformerModel(arch)
    try:
        module.load_saved_state({k: v for k, v in tensors.items() if k != "head.weight"})
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{where}: the weights do not fit a gpt of {n_layer} layers, d_model {d_model} "
                         f"({str(exc).splitlines()[0]})") from None
    tokenizer, text = tokenizer_from(config.model.tokenizer)
    if tokenizer.get_vocab_size() != vocab:
        raise ModelError(f"{where}: the weights have a vocabulary of {vocab} tokens, model.tokenizer "
                         f"{tokenizer.get_vocab_size()}: not the tokenizer this model was trained with")
    m = config.model  # what a retrain without flags rebuilds (the version's config records it)
    m.n_layer, m.d_model, m.vocab_size = n_layer, int(d_model), int(vocab)
    config.full_training.max_seq_length = int(context)
    return GptModel(module, tokenizer, text)
