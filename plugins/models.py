"""The built-in model families, registered like any ``register_models`` plugin:

    gpt     retain's own GPT-style decoder and a byte-level BPE tokenizer trained on the base data
    hf      a local Hugging Face transformers causal LM (``pip install 'retain[hf]'``)
    python  your own nn.Module (``model.factory``) and tokenizer (``model.tokenizer``)

This module stays light (no torch, no transformers): ``retain plugins`` and
``retain status`` load it; each family's model code (``retain.plugins.gpt``,
``.hf``, ``.pymodel``) is imported on first use.

Every family here loads adapter versions (the ``lora`` strategy's) with
``loads_adapters``: a third-party family can use it the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

from retain.core.config import Config
from retain.core.errors import ConfigError, ModelError
from retain.core.hookspecs import hookimpl
from retain.core.storage.store import TOKENIZER, WEIGHTS


def loads_adapters(load: Callable) -> Callable:
    """Decorator for ``ModelFamily.load``: a version whose entry names ``adapter`` weights (the
    ``lora`` strategy's) is loaded from the version it ``builds_on``, with them merged in."""

    @functools.wraps(load)
    def wrapper(self, files, entry: dict[str, Any]):
        if entry.get("adapter"):
            from retain.strategies.lora_adapters import load_adapted

            return load_adapted(files, entry)
        return load(self, files, entry)

    return wrapper


def _needs_tensors(family: str, source: Path, tensors) -> dict:
    if tensors is None:
        raise ConfigError(f"{source} is a directory: the {family} family imports a state dict file (.pth, .pt, "
                          ".safetensors); a transformers directory is an hf model (model.family hf)")
    return tensors


class GptFamily:
    """The built-in GPT-style decoder (model.n_layer, n_head, d_model, vocab_size) with a
    byte-level BPE tokenizer trained on the base data."""

    def create(self, config: Config, texts: Sequence[str], context: int):
        from retain.plugins.gpt import Architecture, GptModel, TransformerModel, train_tokenizer

        tokenizer = train_tokenizer(texts, config.model.vocab_size)
        arch = Architecture.from_config(config.model, tokenizer.get_vocab_size(), context)
        return GptModel(TransformerModel(arch), tokenizer)

    def renew(self, config: Config, keep, context: int):
        """Random weights, ``keep``'s tokenizer (``full_training.tokenizer: keep``)."""
        from retain.plugins.gpt import Architecture, GptModel, TransformerModel

        arch = Architecture.from_config(config.model, keep.tokenizer.get_vocab_size(), context)
        return GptModel(TransformerModel(arch), keep.tokenizer, keep.tokenizer_json)

    @loads_adapters
    def load(self, files, entry: dict[str, Any]):
        from retain.plugins.gpt import Architecture, GptModel, TransformerModel, load_tokenizer

        where = f"version {files.version}"
        try:
            arch = Architecture(**entry["architecture"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: manifest has no valid architecture ({exc})") from None
        module = TransformerModel(arch)
        tensors = files.tensors(WEIGHTS)
        tokenizer_json = files.text(TOKENIZER)
        try:
            module.load_saved_state(tensors)
        except (RuntimeError, KeyError) as exc:
            from retain.core.learning.retry import is_out_of_memory

            if is_out_of_memory(exc):
                raise
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
        keys = {"n_layer": ("model.n_layer", m.n_layer), "n_head": ("model.n_head", m.n_head),
                "d_model": ("model.d_model", m.d_model), "vocab_size": ("model.vocab_size", m.vocab_size),
                "context": ("full_training.max_seq_length", config.full_training.max_seq_length)}
        return {k: value for k, (key, value) in keys.items() if config.asks(key)}

    def import_model(self, source: Path, tensors: dict | None, config: Config):
        """A state dict of the built-in model (``torch.save(model.state_dict())``) and its
        tokenizer (``model.tokenizer``). The shapes give the architecture, except n_head
        (a state dict does not record it: ``model.n_head``)."""
        from retain.plugins.gpt import import_state_dict

        return import_state_dict(_needs_tensors("gpt", source, tensors), config, str(source))

    def export(self, lm, out: Path, fmt: str) -> None:
        """``hf``: transformers' GPT-2 with the same weights (logits equal to 1e-5)."""
        from retain.plugins.hf import export_builtin

        export_builtin(lm, out)


class HfFamily:
    """A local Hugging Face transformers causal LM: config, safetensors weights, tokenizer (retain[hf])."""

    def create(self, config: Config, texts: Sequence[str], context: int):
        from retain.plugins.hf import create

        return create(config.model.path)

    @loads_adapters
    def load(self, files, entry: dict[str, Any]):
        from retain.plugins.hf import load_pretrained

        folder = files.folder(entry.get("folder", "hf"))
        return load_pretrained(folder, f"version {files.version}")

    def architecture_from_config(self, config: Config) -> dict[str, Any]:
        if not (config.asks("model.path") and config.model.path):
            return {}
        from retain.plugins.hf import architecture_of  # plain JSON: no transformers import

        return architecture_of(config.model.path)

    def import_model(self, source: Path, tensors: dict | None, config: Config):
        if tensors is not None:
            raise ConfigError(f"{source}: the hf family imports a transformers directory (config.json, weights, "
                              "tokenizer files), not a single weights file")
        from retain.plugins.hf import import_dir

        config.model.path = str(source.resolve())
        return import_dir(source)

    def export(self, lm, out: Path, fmt: str) -> None:
        from retain.plugins.hf import save_pretrained

        save_pretrained(lm, out)


class PythonFamily:
    """Your own nn.Module (model.factory: package.module:function) and tokenizer (model.tokenizer)."""

    def create(self, config: Config, texts: Sequence[str], context: int):
        from retain.plugins.pymodel import create

        return create(config)

    @loads_adapters
    def load(self, files, entry: dict[str, Any]):
        from retain.plugins.pymodel import load

        return load(files, entry)

    def architecture_from_config(self, config: Config) -> dict[str, Any]:
        keys = {"factory": ("model.factory", config.model.factory),
                "factory_args": ("model.factory_args", config.model.factory_args)}
        return {k: value for k, (key, value) in keys.items() if config.asks(key) and value}

    def import_model(self, source: Path, tensors: dict | None, config: Config):
        from retain.plugins.pymodel import imported

        return imported(_needs_tensors("python", source, tensors), config, str(source))


FAMILIES = [("gpt", GptFamily), ("hf", HfFamily), ("python", PythonFamily)]


@hookimpl
def register_models(register):
    for name, cls in FAMILIES:
        register(name, lambda options, cls=cls: cls(), description=cls.__doc__.splitlines()[0])
