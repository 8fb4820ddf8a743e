"""The built-in model family ``gpt``, registered like any ``register_models`` plugin.

This module stays light (no torch): ``retain plugins`` and ``retain status``
load it; the model code in ``retain.plugins.gpt`` is imported on first use.
"""

from __future__ import annotations

from typing import Any

from retain.core.config import Config
from retain.core.hookspecs import hookimpl
from retain.core.store import TOKENIZER, WEIGHTS


class GptFamily:
    """The built-in GPT-style decoder (model.n_layer, n_head, d_model, vocab_size) with a
    byte-level BPE tokenizer trained on the base data."""

    def create(self, config: Config, texts: list[str], context: int):
        from retain.plugins.gpt import Architecture, GptModel, TransformerModel, train_tokenizer

        tokenizer = train_tokenizer(texts, config.model.vocab_size)
        arch = Architecture.from_config(config.model, tokenizer.get_vocab_size(), context)
        return GptModel(TransformerModel(arch), tokenizer)

    def renew(self, config: Config, keep, context: int):
        """Random weights, ``keep``'s tokenizer (``full_training.tokenizer: keep``)."""
        from retain.plugins.gpt import Architecture, GptModel, TransformerModel

        arch = Architecture.from_config(config.model, keep.tokenizer.get_vocab_size(), context)
        return GptModel(TransformerModel(arch), keep.tokenizer, keep.tokenizer_json)

    def load(self, files, entry: dict[str, Any]):
        from retain.core.errors import ModelError
        from retain.plugins.gpt import Architecture, GptModel, TransformerModel, load_tokenizer

        where = f"version {files.version}"
        try:
            arch = Architecture(**entry["architecture"])
            module = TransformerModel(arch)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ModelError(f"{where}: manifest has no valid architecture ({exc})") from None
        tensors = files.tensors(WEIGHTS)
        tokenizer_json = files.text(TOKENIZER)
        try:
            module.load_saved_state(tensors)
        except (RuntimeError, KeyError) as exc:
            raise ModelError(f"{where}: weights do not fit the architecture "
                             f"({str(exc).splitlines()[0]})") from None
        try:
            tokenizer = load_tokenizer(tokenizer_json)
        except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
            raise ModelError(f"{where}: {TOKENIZER} is not a valid tokenizer ({exc})") from None
        return GptModel(module, tokenizer, tokenizer_json)

    def architecture_from_config(self, config: Config) -> dict[str, Any]:
        m = config.model
        # vocab_size is what was asked of the tokenizer trainer: a small corpus can end below it.
        return {"n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model,
                "context": config.full_training.max_seq_length, "vocab_size": m.vocab_size}


@hookimpl
def register_models(register):
    register("gpt", lambda options: GptFamily(), description=GptFamily.__doc__.splitlines()[0])
