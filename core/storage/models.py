"""Models in and out of versions, through their family (a ``register_models`` plugin).

A version's manifest has a ``model`` entry: the family's name, the
architecture, and whatever the family needs to load it back. Loading verifies
every file against its checksum first; weights are safetensors, never pickle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

from retain.core.config import Config, adopt_model
from retain.core.contracts import LanguageModel, ModelFamily, RenewsModels
from retain.core.errors import ConfigError, ModelError
from retain.core.pluginmanager import Registry, default_plugin_manager
from retain.core.learning.retry import memory_for
from retain.core.storage.store import ModelStore, VersionFiles


@dataclass
class LoadedVersion:
    """A version read back: its name, manifest and model."""

    version: str
    manifest: dict
    lm: LanguageModel
    reader: VersionFiles   # its verified files (strategy state, held-out items)

    @property
    def model(self):
        return self.lm.module

    @property
    def tokenizer(self):
        return getattr(self.lm, "tokenizer", None)



def resolve_device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device(name)


def resolve_precision(name: str, device) -> str:
    """"fp32" or "bf16" for ``config.precision`` on ``device``, by rule, where nothing can be
    measured: auto is bf16 on a CUDA device with bf16 support and on a CPU with native bf16
    instructions (AVX512-BF16 or AMX), fp32 elsewhere. A run that trains decides auto on a CPU
    by measuring its own model instead (``core/runtime/precision.py``): the flags alone do not tell
    whether bf16 is faster there (issue 21: on one CPU, the 0.7M demo 2.2x slower, 88M 1.87x faster)."""
    import torch

    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Does this CPU compute in bf16 natively? (torch's own check, mkldnn's, also says yes
    for AVX512 without BF16, where bf16 is emulated: slow.) Linux flags; False elsewhere."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def family(registry: Registry, name: str) -> ModelFamily:
    return registry.build("models", name, None)


def model_entry(manifest: dict) -> dict[str, Any]:
    """The manifest's ``model`` entry (versions written before model families had only
    ``architecture``: they are the built-in ``gpt``)."""
    entry = manifest.get("model")
    if isinstance(entry, dict) and isinstance(entry.get("family"), str):
        return entry
    if isinstance(manifest.get("architecture"), dict):
        return {"family": "gpt", "architecture": manifest["architecture"]}
    raise ModelError(f"version {manifest.get('version', '?')}: manifest names no model family")


def load_version(store: ModelStore, version: str | None = None, device=None,
                 registry: Registry | None = None, ancestors: ModelStore | None = None) -> LoadedVersion:
    """Load ``version`` (default: current) with its family; checksums verified, no pickle.
    A model too big for memory is ``OutOfMemory`` (exit 11) with the remedy. The versions an
    adapter-only version builds on come from ``ancestors`` (default: ``store``): an ``--auto``
    candidate lives alone in a scratch directory, its base in the model directory."""
    registry = registry or Registry.of(default_plugin_manager())
    version = version or store.current()
    manifest = store.manifest(version)
    entry = model_entry(manifest)
    if entry["family"] not in registry.by_kind["models"]:
        known = ", ".join(sorted(registry.by_kind["models"]))
        raise ModelError(f"version {version} is a '{entry['family']}' model, and no installed plugin "
                         f"provides that family (installed: {known})")
    # A version holding only adapter weights loads the version it builds on through this.
    reader = VersionFiles(store, version, manifest,
                          loader=lambda other: load_version(ancestors or store, other, registry=registry).lm)
    with memory_for(f"loading version {version} ({_size(entry)})"):
        lm = registry.check_model(entry["family"], family(registry, entry["family"]).load(reader, entry))
        if device is not None:
            lm.module.to(device)
    return LoadedVersion(version, manifest, lm, reader)


def _size(entry: dict) -> str:
    arch = entry.get("architecture") or {}
    shape = ", ".join(f"{k} {v}" for k, v in arch.items() if isinstance(v, int) and not isinstance(v, bool))
    return f"a '{entry['family']}' model" + (f": {shape}" if shape else "")


def create_model(registry: Registry, config: Config, texts: Sequence[str], context: int) -> LanguageModel:
    """A full training's new model: random init, tokenizer fitted to ``texts`` where the family has one."""
    with memory_for(f"creating the '{config.model.family}' model"):
        lm = family(registry, config.model.family).create(config, texts, context)
    return registry.check_model(config.model.family, lm)


def model_config(store: ModelStore, config: Config, version: str | None = None) -> Config:
    """The config a run on ``store`` uses: ``config``, with every model key it does not set
    explicitly (family, architecture, tokenizer, context) from the config that made the model,
    the last full training or import of ``version``'s chain (default: current). A model
    directory remembers its model; flags are needed only to ask for another one."""
    if not store.exists():
        return config
    root = store.lineage_root(store.chain(version))
    return adopt_model(config, store.manifest(root).get("config") if root else None)


def renew_model(registry: Registry, config: Config, keep: LanguageModel, context: int) -> LanguageModel:
    """A full training's new model with random weights and ``keep``'s tokenizer
    (``full_training.tokenizer: keep``), through the family's optional ``renew``."""
    fam = family(registry, config.model.family)
    if config.model.family != keep.family:
        raise ConfigError(f"config key 'full_training.tokenizer' is 'keep', but the current model is a "
                          f"'{keep.family}' model and the config asks for '{config.model.family}'")
    if not isinstance(fam, RenewsModels):
        raise ConfigError(f"config key 'full_training.tokenizer': the '{config.model.family}' family cannot "
                          "keep a tokenizer (it has no renew method); use 'new'")
    return registry.check_model(config.model.family, fam.renew(config, keep, context))


def content_tokens(rows, texts: int) -> int:
    """Tokens of ``texts`` texts encoded as ``rows``, without the boundary tokens: each text
    predicts its tokens and one end token (``Rows.tokens`` counts both)."""
    return max(0, rows.tokens - texts)


def count_parameters(lm: LanguageModel) -> int:
    return sum(p.numel() for p in lm.module.parameters())


def trainable_parameters(lm: LanguageModel) -> int:
    return sum(p.numel() for p in lm.module.parameters() if p.requires_grad)


def configure_strategies(run, warn) -> None:
    """An update's strategies set its rate and schedule, and say what they cannot do this time;
    the settings name where the rate came from."""
    from retain.core.run import RunView

    view = RunView(run)  # read-only: what a strategy changes, it returns
    for strategy in run.strategies:
        lm = strategy.configure(run.settings, view)
        if lm is not None:  # it wraps the model (lora's adapters): the run trains that one
            run.lm = lm
        for message in strategy.warnings(view):
            warn(f"{strategy.name}: {message}")
    names = [s.name for s in run.strategies]
    if run.settings.learning_rate_from == "fine_tuning.learning_rate" and not {"rewarm", "low_lr"} & set(names):
        # e.g. --strategy replay,ewc: the default recipe's re-warm is gone with rewarm
        run.settings.learning_rate_from += (f": no strategy of {', '.join(names) or 'this recipe'} sets a rate of "
                                            f"its own; rewarm, the default recipe's, would peak at "
                                            f"{run.config.full_training.learning_rate:g}")


def _say_context(run, max_seq_length: int, warn) -> None:
    """A max_seq_length above the model's context is clamped to it. Said where the user can act:
    a model trained here (a full retrain changes its context), or once at an import (whose
    context is the model's own: its updates clamp quietly; the import said so)."""
    from retain.core.run import FINE_TUNING, IMPORT

    context = run.lm.context
    if run.kind == IMPORT or max_seq_length <= context:  # an import says it once (cycle.load)
        return
    if run.kind == FINE_TUNING and run.base is not None:
        store = run.base.reader.store
        root = store.lineage_root(store.chain(run.base.version))
        if root is not None and store.summary(root)["kind"] == "import":
            return
    warn(f"max_seq_length {max_seq_length} exceeds the model's context {context}; "
         f"using {context} (a full retrain changes the context)")


def _texts_counted(items, counted: dict):
    """The items' texts, in order (one read of a spool), their UTF-8 bytes added up on the way."""
    for it in items:
        counted["bytes"] += len(it.text.encode("utf-8"))
        yield it.text


def _items_at(items, positions: list[int]):
    """The items at ``positions`` (ascending): read in order from a spool's view."""
    take = getattr(items, "take", None)
    if take is not None:
        return take(positions)
    return [items[i] for i in positions]


def prepare_model(run, registry: Registry, warn, saves: bool = True) -> dict:
    """5. Tokenize: the model to train (a new one for a full training, the imported one for an
    import), its settings and the training rows of ``run.items``. ``warn(message)`` reports
    what the user should know. ``saves``: this process saves the run (rank 0 of several), so
    its token shard is written in the model directory, where the save moves it; anywhere else
    it goes to a system temp folder (a rank killed mid-run leaves nothing in the model's)."""
    from retain.core.errors import SourceError
    from retain.core.run import FINE_TUNING, FULL_TRAINING, IMPORT
    from retain.core.data.shards import encode_to_shard, scratch_folder
    from retain.core.data.spool import Texts, even_sample
    from retain.core.learning.strategy import TrainSettings

    cfg = run.config
    block = cfg.fine_tuning if run.kind == FINE_TUNING else cfg.full_training
    if run.kind == FULL_TRAINING:
        if len(run.items) < 2:
            raise SourceError("full training needs at least 2 usable items")
        if run.tokenizer_from is not None:
            run.lm = renew_model(registry, cfg, run.tokenizer_from, block.max_seq_length)
        else:  # the tokenizer learns from a bounded, even sample of the items (all, when they fit)
            sample = even_sample(run.items, int(block.tokenizer_sample_mb * 1_000_000))
            run.lm = create_model(registry, cfg, Texts(_items_at(run.items, sample)), block.max_seq_length)
    elif run.kind == FINE_TUNING:
        run.lm = run.base.lm
    seq_len = min(block.max_seq_length, run.lm.context)
    _say_context(run, block.max_seq_length, warn)
    # Into a token shard, chunk by chunk: the padded rows are never in memory at once (core/data/shards.py).
    counted = {"bytes": 0}
    run.rows = encode_to_shard(run.lm, _texts_counted(run.items, counted), seq_len,
                               scratch_folder(run.model_dir, run.writes and saves, run.id))
    # Tokens per byte of what is learned, under this tokenizer: the vocabulary-drift check's input.
    run.counts.update(tokens=content_tokens(run.rows, len(run.items)), bytes=counted["bytes"])
    with memory_for(f"moving the model to {run.device}"):
        run.lm.module.to(run.device)
    # An import's pass over the base data changes no weight: the strategies only record it.
    epochs = 0 if run.kind == IMPORT else block.epochs
    block_name = "fine_tuning" if run.kind == FINE_TUNING else "full_training"
    run.settings = TrainSettings(block.learning_rate, epochs, block.batch_size, seq_len,
                                 max_seconds=getattr(block, "max_seconds", 0.0),
                                 learning_rate_from=f"{block_name}.learning_rate")
    if run.kind == FINE_TUNING:  # a full training (or import) is the strategies' first experience:
        configure_strategies(run, warn)  # they record, not steer
    run.parameters = {"total": count_parameters(run.lm), "trainable": trainable_parameters(run.lm)}
    return {"items": len(run.items), "sequences": len(run.rows), "tokens": run.rows.tokens,
            "held_out": len(run.holdout), "trainable_parameters": run.parameters["trainable"]}
