"""The ``python`` family's model: your own torch module and tokenizer.

``model.factory`` (``package.module:function``, called with ``model.factory_args``)
builds an ``nn.Module`` that maps token ids ``[batch, time]`` to logits ``[batch,
time, vocab]`` (an output with ``.logits``, or a tuple whose first item they are, is
read too). ``model.tokenizer`` is a ``tokenizers`` JSON file or a Hugging Face
tokenizer directory (its ``tokenizer.json`` and the special tokens its
``tokenizer_config.json`` names). This is how a ``TransformerModel`` class of your
own and its ``torch.save(model.state_dict(), ...)`` file come in::

    retain import model.pth --model DIR --family python --factory mypkg.model:build --tokenizer tok.json

The factory is your code and runs when a version loads; the weights are only ever
read as tensors (safetensors in the model directory, ``torch.load(weights_only=True)``
for the imported file). Imports torch: loaded by ``retain.plugins.models`` on first use.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from retain.core.errors import ConfigError, ModelError
from retain.core.learning.lm import Rows, Sample, rows_from_ids, token_losses
from retain.core.storage.store import TOKENIZER, WEIGHTS

# Names a tokenizer's end-of-text and padding tokens go by, when no tokenizer_config.json says.
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]")


def load_factory(spec: str) -> Callable[..., torch.nn.Module]:
    """``package.module:function``, imported as Python imports it (the current directory too)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"config key 'model.factory': expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise ConfigError(f"config key 'model.factory': cannot import {module_name} ({exc}); the module must be "
                              "importable wherever retain runs, every time a version loads: installed (pip install "
                              "-e .), on PYTHONPATH, or in the current directory") from None
        sys.path.append(os.getcwd())  # a console script's sys.path lacks the directory it runs in
        return load_factory(spec)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"config key 'model.factory': {module_name} has no callable {attr!r}")
    return factory


def build_module(spec: str, args: dict[str, Any]) -> torch.nn.Module:
    factory = load_factory(spec)
    try:
        module = factory(**args)
    except Exception as exc:
        from retain.core.learning.retry import is_out_of_memory

        if is_out_of_memory(exc):
            raise
        raise ModelError(f"model.factory {spec}({', '.join(f'{k}={v!r}' for k, v in args.items())}) failed: "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"model.factory {spec} returned {type(module).__name__}, not a torch.nn.Module")
    return module


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` and the ids of its end and padding tokens."""

    def __init__(self, json_text: str, eos: str | None, pad: str | None):
        from tokenizers import Tokenizer

        self.json_text = json_text
        self.tokenizer = Tokenizer.from_str(json_text)
        self.eos, self.pad = eos, pad
        self.eos_id = self.tokenizer.token_to_id(eos) if eos else None
        self.explicit_pad_id = self.tokenizer.token_to_id(pad) if pad else None
        # No pad token: pad with the end token, or any id (padded targets are ignored, and
        # padding only ever follows the real tokens of a row).
        fallback = self.eos_id if self.eos_id is not None else 0
        self.pad_id = self.explicit_pad_id if self.explicit_pad_id is not None else fallback

    @classmethod
    def from_path(cls, path: str) -> "TextTokenizer":
        if not path:
            raise ConfigError("config key 'model.tokenizer': the python family needs a tokenizer: a tokenizers "
                              "JSON file or a Hugging Face tokenizer directory")
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config key 'model.tokenizer': cannot read {file} ({exc})") from None
        named = _named_specials(p) if p.is_dir() else {}
        vocab = _vocab(text, file)
        eos = named.get("eos_token") or next((t for t in EOS_NAMES if t in vocab), None)
        pad = named.get("pad_token") or next((t for t in PAD_NAMES if t in vocab), None)
        return cls(text, eos, pad)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def _vocab(text: str, where: Path) -> set[str]:
    from tokenizers import Tokenizer

    try:
        return set(Tokenizer.from_str(text).get_vocab(with_added_tokens=True))
    except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
        raise ConfigError(f"config key 'model.tokenizer': {where} is not a tokenizers JSON file ({exc})") from None


def _named_specials(folder: Path) -> dict[str, str]:
    """eos_token / pad_token as a Hugging Face tokenizer directory names them."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("eos_token", "pad_token"):
            value = data.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and key not in out:
                out[key] = value
    return out


class Logits(torch.nn.Module):
    """Your module as the engine trains it: ids in, the logits tensor out."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.inner(ids)
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to save, {alias: saved name}): safetensors refuses two names for one storage
    (a tied output head); the alias is restored on load."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().cpu().contiguous()
    return tensors, aliases


class PythonModel:
    """The ``LanguageModel`` of the ``python`` family."""

    family = "python"

    def __init__(self, inner: torch.nn.Module, tokenizer: TextTokenizer, factory: str,
                 factory_args: dict[str, Any], context: int):
        self.module = Logits(inner)
        self.tokenizer = tokenizer
        self.factory, self.factory_args = factory, dict(factory_args)
        self.context = context
        self.pad_id = tokenizer.pad_id

    def _wrap(self, ids: list[int]) -> list[int]:
        eos = self.tokenizer.eos_id
        return [eos, *ids, eos] if eos is not None else ids

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        return [self._wrap(self.tokenizer.encode(t)) for t in texts]

    def encode(self, texts: list[str], max_len: int) -> Rows:
        return rows_from_ids(self.encode_ids(texts), max_len, self.pad_id)

    def token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_losses(logits, targets)

    @torch.no_grad()
    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[Sample]:
        """Sampling one token at a time over the whole window (your module has no KV cache)."""
        model = self.module
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        eos = self.tokenizer.eos_id
        stop = {eos, self.tokenizer.explicit_pad_id} - {None}
        was_training = model.training
        model.eval()
        samples = []
        try:
            for prompt in prompts:
                ids = ([eos] if eos is not None else []) + self.tokenizer.encode(prompt)
                out: list[int] = []
                for _ in range(max_new_tokens):
                    window = torch.tensor([(ids + out)[-self.context:]], device=device)
                    logits = model(window)[0, -1]
                    if temperature <= 0:
                        nxt = int(logits.argmax())
                    else:
                        nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
                    if nxt in stop:
                        break
                    out.append(nxt)
                samples.append(Sample(prompt, self.tokenizer.decode(out), out))
        finally:
            model.train(was_training)
        return samples

    def architecture(self) -> dict[str, Any]:
        return {"factory": self.factory, "factory_args": self.factory_args, "context": self.context,
                "vocab_size": self.tokenizer.tokenizer.get_vocab_size()}

    def save(self, writer) -> dict[str, Any]:
        tensors, aliases = unique_tensors(self.module.inner.state_dict())
        writer.write_tensors(WEIGHTS, tensors)
        writer.write_text(TOKENIZER, self.tokenizer.json_text)
        return {"family": self.family, "architecture": self.architecture(), "factory": self.factory,
                "factory_args": self.factory_args, "context": self.context, "aliases": aliases,
                "eos_token": self.tokenizer.eos, "pad_token": self.tokenizer.pad}


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        from retain.core.learning.retry import is_out_of_memory

        if is_out_of_memory(exc):
            raise
        raise ModelError(f"{where}: the weights do not fit the module model.factory builds "
                         f"({str(exc).splitlines()[0]}: {' '.join(str(exc).split())[:300]})") from None


def create(config) -> PythonModel:
    m = config.model
    if not m.factory:
        raise ConfigError("config key 'model.factory': the python family needs 'package.module:function' "
                          "returning your nn.Module")
    inner = build_module(m.factory, m.factory_args)
    return PythonModel(inner, TextTokenizer.from_path(m.tokenizer), m.factory, m.factory_args,
                       config.full_training.max_seq_length)


def imported(tensors: dict[str, torch.Tensor], config, where: str) -> PythonModel:
    lm = create(config)
    load_weights(lm.module.inner, tensors, where)
    return lm


def load(files, entry: dict[str, Any]) -> PythonModel:
    where = f"version {files.version}"
    try:
        factory, args, context = entry["factory"], dict(entry["factory_args"]), int(entry["context"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: manifest has no valid python model entry ({exc})") from None
    inner = build_module(factory, args)
    tensors = dict(files.tensors(WEIGHTS))
    for alias, name in (entry.get("aliases") or {}).items():
        if name in tensors:
            tensors[alias] = tensors[name]
    load_weights(inner, tensors, where)
    tokenizer = TextTokenizer(files.text(TOKENIZER), entry.get("eos_token"), entry.get("pad_token"))
    return PythonModel(inner, tokenizer, factory, args, context)
