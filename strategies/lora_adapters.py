"""LoRA adapters on any family's model, with peft: attach, save, load merged.

peft injects its LoRA layers into the torch module in place (``LoraModel``), so
the family's own ``encode``, ``generate`` and ``save`` keep working around them;
``AdapterModel`` only changes what a version saves: the adapter weights and the
name of the version whose full weights they apply to.

Imports torch and peft: ``retain.strategies.lora`` and the families import it
when a LoRA update runs or an adapter version loads.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer, LoraModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from retain.core.errors import ConfigError, ModelError

ADAPTER = "adapter.safetensors"
METHOD = "lora"


def default_targets(module: torch.nn.Module) -> list[str]:
    """Every linear layer (``nn.Linear``, transformers' ``Conv1D``) but the output head: one
    that shares its weight with an embedding, or whose output is the vocabulary."""
    embeddings = [m for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    tied = {id(m.weight) for m in embeddings}
    vocab = max((m.num_embeddings for m in embeddings), default=None)
    names = []
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear):
            out = m.out_features
        elif type(m).__name__ == "Conv1D":  # transformers' GPT-2 layers: weight [in, out]
            out = m.weight.shape[1]
        else:
            continue
        if id(m.weight) not in tied and out != vocab:
            names.append(name)
    return names


def lora_config(adapter: dict[str, Any]) -> LoraConfig:
    return LoraConfig(r=adapter["rank"], lora_alpha=adapter["alpha"], lora_dropout=adapter["dropout"],
                      target_modules=list(adapter["targets"]), fan_in_fan_out=adapter["fan_in_fan_out"],
                      bias="none")


def inject(module: torch.nn.Module, adapter: dict[str, Any]) -> LoraModel:
    """LoRA layers into ``module``, in place; only they train (peft freezes the rest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft on a non-transformers module, fan_in_fan_out notes
        return LoraModel(module, lora_config(adapter), "default")


def lora_layers(tuner: LoraModel) -> list[LoraLayer]:
    return [m for m in tuner.model.modules() if isinstance(m, LoraLayer)]


def load_weights(tuner: LoraModel, tensors: dict[str, torch.Tensor], where: str) -> None:
    result = set_peft_model_state_dict(tuner, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ModelError(f"{where}: adapter weights that fit no adapter layer ({', '.join(unexpected[:3])})")


class AdapterModel:
    """A family's ``LanguageModel`` with LoRA adapters in its module: a version of it stores only
    the adapter weights and names ``builds_on``, the version holding the full weights."""

    def __init__(self, base, tuner: LoraModel, builds_on: str, adapter: dict[str, Any]):
        self.base, self.tuner, self.builds_on, self.adapter = base, tuner, builds_on, adapter
        self.family = base.family
        self.module = base.module  # the same module: peft injected its layers into it
        self.context, self.pad_id = base.context, base.pad_id

    def __getattr__(self, name: str) -> Any:  # tokenizer, eos_id, ...: the family's model's
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def encode(self, texts, max_len):
        return self.base.encode(texts, max_len)

    def token_losses(self, logits, targets):
        return self.base.token_losses(logits, targets)

    def generate(self, prompts, **kwargs):
        return self.base.generate(prompts, **kwargs)

    def architecture(self) -> dict[str, Any]:
        return self.base.architecture()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def save(self, writer) -> dict[str, Any]:
        state = get_peft_model_state_dict(self.tuner)
        writer.write_tensors(ADAPTER, {k: v.detach().cpu().contiguous() for k, v in state.items()})
        return {"family": self.family, "architecture": self.architecture(), "builds_on": self.builds_on,
                "adapter": {**self.adapter, "weights": ADAPTER}}


def attach(lm, base, options) -> AdapterModel:
    """Adapters on ``lm``, the model loaded from ``base`` (a ``LoadedVersion``): the parent's own
    adapters when it is a LoRA version (its loaded weights hold them merged: they are taken
    back out, and train on from where they were), fresh ones (B = 0: the same function) on a
    full version."""
    from retain.core.storage.models import model_entry

    entry = model_entry(base.manifest)
    previous = entry.get("adapter")
    if previous and previous.get("method") == METHOD:
        adapter = {k: v for k, v in previous.items() if k != "weights"}
        _check_same(adapter, options, base.version)
        tuner = inject(lm.module, adapter)
        load_weights(tuner, base.reader.tensors(previous["weights"]), f"version {base.version}")
        for layer in lora_layers(tuner):  # W' = W + delta was loaded: back to W, the adapters apart
            weight = layer.get_base_layer().weight
            weight.data -= layer.get_delta_weight("default").to(weight.dtype)
        return AdapterModel(lm, tuner, entry["builds_on"], adapter)
    targets = list(options.targets) or default_targets(lm.module)
    if not targets:
        raise ConfigError("options.lora.targets: the model has no linear layer to adapt; name its modules")
    kinds = {type(m).__name__ for n, m in lm.module.named_modules() if n in set(targets)}
    adapter = {"method": METHOD, "rank": options.rank, "alpha": options.alpha, "dropout": options.dropout,
               "targets": targets, "fan_in_fan_out": kinds == {"Conv1D"}}
    return AdapterModel(lm, inject(lm.module, adapter), base.version, adapter)


def _check_same(adapter: dict[str, Any], options, version: str) -> None:
    asked = {"rank": options.rank, "alpha": options.alpha}
    if options.targets:
        asked["targets"] = list(options.targets)
    differ = {k: (adapter[k], v) for k, v in asked.items() if adapter[k] != v}
    if differ:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
        raise ConfigError(f"options.lora: version {version}'s adapters cannot change shape ({what}); keep its "
                          "settings, or update once without lora (a full version) and start new adapters on it")


def load_adapted(files, entry: dict[str, Any]):
    """An adapter version: the version it builds on, through that version's family, with the
    adapters merged into its weights (plain layers again: every strategy and export sees an
    ordinary model of the family)."""
    adapter = entry.get("adapter") or {}
    if adapter.get("method") != METHOD or not isinstance(entry.get("builds_on"), str):
        raise ModelError(f"version {files.version}: its model entry names adapters retain cannot load "
                         f"({adapter.get('method')!r})")
    lm = files.model(entry["builds_on"])
    trainable = {n for n, p in lm.module.named_parameters() if p.requires_grad}
    tuner = inject(lm.module, adapter)
    load_weights(tuner, files.tensors(adapter["weights"]), f"version {files.version}")
    tuner.merge_and_unload()
    for name, p in lm.module.named_parameters():  # peft froze the base: as the family loaded it again
        p.requires_grad_(name in trainable)
    return lm
