"""``retain import``: a model made elsewhere becomes the first version of a model directory.

The source is one of:

    DIR               a transformers causal-LM directory (config.json, weights, tokenizer): hf
    FILE.pth / .pt    a state dict (``torch.save(model.state_dict(), ...)``), read with
                      ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling
                      is refused (exit 5) and nothing in it runs
    FILE.safetensors  a state dict as safetensors

A file's family is ``model.family`` (the built-in ``gpt``, or ``python`` with
``model.factory``). The family builds the model (its optional ``import_model``);
``Engine.import_model`` then runs the cycle's own steps on it (the base data's
retention set, the strategies' record of it) and saves it through ``commit``.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

from retain.core.config import Config
from retain.core.contracts import ImportsModels, LanguageModel
from retain.core.errors import ConfigError, ModelError
from retain.core.pluginmanager import Registry
from retain.core.learning.retry import memory_for
from retain.core.storage.store import check_safetensors_header, sha256_file

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Where a training script's checkpoint keeps the weights, when it saved more than them.
NESTED = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a PyTorch checkpoint, unpickled with ``weights_only=True``: tensors,
    numbers, strings and containers only. Anything else (a pickled class, a ``__reduce__``
    that would run code) is refused before it is built."""
    import torch

    try:
        with memory_for(f"reading {path}"):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reason if "Unsupported global" in line), reason[0] if reason else "")
        raise ModelError(f"{path} needs arbitrary unpickling to load (it holds more than tensors: {detail}); "
                         "refusing it, and nothing in it was run. Save the weights alone: "
                         "torch.save(model.state_dict(), path), or as safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if "out of memory" in str(exc).lower():
            raise
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return _tensors_of(data, path)


def _tensors_of(data: Any, path: Path) -> dict[str, Any]:
    import torch

    def all_tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if all_tensors(data):
        return dict(data)
    if isinstance(data, dict):
        for key in NESTED:
            if all_tensors(data.get(key)):
                return dict(data[key])
    raise ModelError(f"{path} holds no state dict (a mapping of names to tensors"
                     f"{', or one under ' + '/'.join(NESTED) if isinstance(data, dict) else ''})")


def read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_header(path, str(path))
    try:
        with memory_for(f"reading {path}"):
            return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a valid safetensors file ({exc})") from None


def digest(source: Path) -> str:
    """sha256 of a file, or of a directory: its files' relative paths and digests, sorted."""
    if source.is_file():
        return sha256_file(source)
    h = hashlib.sha256()
    for p in sorted(q for q in source.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(source).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def import_source(registry: Registry, config: Config, source: Path) -> tuple[LanguageModel, dict[str, Any]]:
    """The model at ``source``, built by its family, and where it came from (for the manifest).
    ``config`` is the run's own copy: the family may record in it what it imported, and
    ``model.family`` is set here."""
    if not source.exists():
        raise ModelError(f"nothing to import at {source}")
    if source.is_dir():
        name, tensors, kind = (config.model.family if config.asks("model.family") else "hf"), None, "directory"
    elif source.suffix.lower() == ".safetensors":
        name, tensors, kind = config.model.family, read_safetensors(source), "safetensors"
    elif source.suffix.lower() in STATE_DICT_SUFFIXES:
        name, tensors, kind = config.model.family, read_state_dict(source), "state_dict"
    else:
        raise ModelError(f"cannot tell what {source} is: import a transformers directory, a state dict "
                         f"({', '.join(STATE_DICT_SUFFIXES)}) or a .safetensors file")
    fam = registry.build("models", name, None)
    if not isinstance(fam, ImportsModels):
        raise ConfigError(f"the '{name}' model family cannot import models (it has no import_model)")
    config.model.family = name
    with memory_for(f"importing {source}"):
        lm = registry.check_model(name, fam.import_model(source, tensors, config))
    origin = {"path": str(source.resolve()), "sha256": digest(source), "format": kind, "family": name}
    return lm, origin
