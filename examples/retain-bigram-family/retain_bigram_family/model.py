"""The bigram ``LanguageModel``: bytes in, next-byte logits out (imports torch)."""

from __future__ import annotations

from typing import Any

import torch

from retain.plugin import ModelError, Rows, Sample, VersionFiles, VersionWriter, rows_from_ids, token_losses

END, PAD = 256, 257  # after the 256 byte values: the boundary of every text, and padding
VOCAB = 258
WEIGHTS = "bigram.safetensors"


class Bigram(torch.nn.Module):
    """ids ``[batch, time]`` -> logits ``[batch, time, VOCAB]``: a row of the table per id."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(VOCAB, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class BigramModel:
    family = "bigram"
    pad_id = PAD

    def __init__(self, module: Bigram, context: int):
        self.module = module
        self.context = context  # a bigram reads one byte: any row length works; rows stay this short

    @classmethod
    def fresh(cls, context: int, seed: int) -> "BigramModel":
        torch.manual_seed(seed)
        return cls(Bigram(), context)

    @classmethod
    def saved(cls, files: VersionFiles, entry: dict[str, Any]) -> "BigramModel":
        if entry.get("architecture", {}).get("vocab_size") != VOCAB:
            raise ModelError(f"version {files.version}: not a bigram model of {VOCAB} tokens")
        module = Bigram()
        module.load_state_dict(files.tensors(WEIGHTS))
        return cls(module, int(entry["context"]))

    def encode(self, texts: list[str], max_len: int) -> Rows:
        return rows_from_ids([[END, *t.encode("utf-8"), END] for t in texts], max_len, PAD)

    def token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_losses(logits, targets)

    @torch.no_grad()
    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[Sample]:
        generator = torch.Generator().manual_seed(seed)
        table = self.module.table.weight.detach().float().cpu()
        samples = []
        for prompt in prompts:
            last, out = ([END, *prompt.encode("utf-8")])[-1], []
            for _ in range(max_new_tokens):
                logits = table[last]
                if temperature <= 0:
                    last = int(logits.argmax())
                else:
                    last = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
                if last >= END:
                    break
                out.append(last)
            samples.append(Sample(prompt, bytes(out).decode("utf-8", errors="replace"), out))
        return samples

    def architecture(self) -> dict[str, Any]:
        return {"vocab_size": VOCAB, "tokenizer": "bytes"}

    def save(self, writer: VersionWriter) -> dict[str, Any]:
        # Only safetensors: the writer checksums the file and hard-links it when unchanged.
        writer.write_tensors(WEIGHTS, {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()})
        return {"family": self.family, "architecture": self.architecture(), "context": self.context}
