"""Typed configuration, loaded from YAML and overridable from the command line.

Every block is a dataclass; ``load_config`` checks each key and type against
them, so a typo or a wrong type is one ``ConfigError`` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, UsageError


@dataclass
class ModelConfig:
    """Which model family (``retain plugins`` lists them) and what it builds: the size of the
    built-in ``gpt`` (its context length is full_training.max_seq_length), the local directory
    of an ``hf`` model, the factory of a ``python`` one.

    A model directory remembers its model: an update, ``retain status`` and a retrain take
    every key of this block the config does not set explicitly from the model's own manifest
    (``model_config`` in ``core/models.py``)."""

    family: str = "gpt"
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    vocab_size: int = 2048
    dropout: float = 0.0
    path: str = ""        # hf: a local transformers directory (config.json, tokenizer files)
    factory: str = ""     # python: "package.module:function" returning an nn.Module (ids -> logits)
    factory_args: dict[str, Any] = field(default_factory=dict)  # python: the factory's keyword arguments
    tokenizer: str = ""   # python, and .pth/.safetensors imports: a tokenizers JSON file or an HF tokenizer dir


@dataclass
class EarlyStoppingConfig:
    """An update judges its candidate after every epoch, stops when the held-out new items stop
    improving or a validator's threshold is crossed, and keeps the best epoch."""

    enabled: bool = True
    patience: int = 1          # epochs without improvement of the held-out new items
    min_delta: float = 0.001   # what counts as an improvement (relative: 0.1%)


@dataclass
class FineTuningConfig:
    """The design document's FINE_TUNING block: an update on new data only."""

    # low_lr's rate (the design document's 1e-4); rewarm's peak is options.rewarm.peak_lr, naive's
    # the full training's, lora's options.lora.learning_rate. --lr and ModelTrainer.fine_tune(lr=)
    # set this and each of those (core/strategy.py, UPDATE_LEARNING_RATE_KEYS).
    learning_rate: float = 0.0001
    epochs: int = 3
    batch_size: int = 8
    max_seq_length: int = 512
    # The default was chosen by measurement (BENCHMARKS.md, "Update recipes against a full
    # retrain"): re-warm to the full training's peak, re-decay, and replay old tokens.
    strategy: list[str] = field(default_factory=lambda: ["rewarm", "replay"])
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    max_seconds: float = 0.0   # stop training after this many seconds, keeping the best epoch (0: no limit)
    max_item_tokens: int = 1_000_000  # an item with more tokens is rejected, not trained on (0: no cap)


@dataclass
class FullTrainingConfig:
    """Training from scratch on all data (``retain train``)."""

    learning_rate: float = 0.001
    epochs: int = 10
    batch_size: int = 8
    max_seq_length: int = 512
    init: Literal["random"] = "random"
    # new: train a tokenizer on the data (families that have one); keep: the current model's
    tokenizer: Literal["new", "keep"] = "new"
    # strategies whose state the full training records for later updates, beside
    # fine_tuning.strategy (replay: a buffer of base items, so replay works from the first update)
    record: list[str] = field(default_factory=lambda: ["replay"])
    max_seconds: float = 0.0   # stop training after this many seconds, keeping that state (0: no limit)
    max_item_tokens: int = 1_000_000  # an item with more tokens is rejected, not trained on (0: no cap)


@dataclass
class ValidationConfig:
    """What is kept aside to measure retention (old items) and learning (new items)."""

    retention_fraction: float = 0.05
    retention_max: int = 200
    holdout_fraction: float = 0.1
    holdout_max: int = 100
    eval_max_items: int = 256   # the retention pool kept with each version: a uniform sample of every held-out item
    eval_min_items: int = 32    # an update scores at least this many of the pool (all, if fewer) ...
    eval_budget: float = 0.1    # ... then more while scoring costs at most this share of training


@dataclass
class RetrainConfig:
    """When ``retain status`` recommends a full retrain over another fine-tune (the design document's
    "Full retrain when": major data changes, architecture changes, quality degradation)."""

    max_new_items: int = 1000          # items learned since the last full training (+ pending)
    max_retention_drift: float = 0.04  # held-out base loss up >4% since the last full training
    max_rejected_in_row: int = 3       # the gate rejected this many updates in a row
    max_token_drift: float = 0.15      # new data needs >15% more tokens per byte than the base data


@dataclass
class TuneConfig:
    """``retain update --auto``: a budgeted search over the update's recipe (``retain.tune``)."""

    budget: float = 0.1        # share of the last full training's measured training time
    max_trials: int = 12
    jobs: int = 1              # trials at once, each in its own process
    # the strategy mixes tried ("+" composes); replay is added by the replay share searched
    strategies: list[str] = field(default_factory=lambda: ["rewarm", "low_lr", "rewarm+ewc"])
    min_learning_rate: float = 0.00003
    max_learning_rate: float = 0.003
    max_epochs: int = 4
    replay_shares: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])


@dataclass
class PruneConfig:
    """The keep policy, applied after every saved version (``retain prune`` applies it by hand):
    the last ``keep_last`` accepted versions stay whole, older ones become stubs (no weights)
    or go. 0 keeps everything."""

    keep_last: int = 0
    keep_full_trainings: bool = True   # every accepted full training stays whole too


@dataclass
class Config:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast for training and scoring. auto: bf16 on a CUDA device that supports it and
    # on a CPU with native bf16 (AVX512-BF16, AMX), fp32 on other CPUs, where bf16 is emulated
    # and several times slower (BENCHMARKS.md).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    fine_tuning: FineTuningConfig = field(default_factory=FineTuningConfig)
    full_training: FullTrainingConfig = field(default_factory=FullTrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    dedupers: list[str] = field(default_factory=lambda: ["exact"])
    preprocessors: list[str] = field(default_factory=lambda: ["clean"])
    validators: list[str] = field(default_factory=lambda: [
        "finite", "loss_trend", "retention", "learning", "generation", "duration"])
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    # Options of each plugin, by the name it registered (sources, strategies, ...).
    # Checked against that plugin's own options dataclass when it is built.
    options: dict[str, dict] = field(default_factory=dict)
    # Not a config key: the dotted keys the user's config file and --set gave ("model.n_layer"),
    # set by ``load_config`` and never saved. None (a Config built in code): every key counts.
    asked: frozenset[str] | None = field(default=None, repr=False, compare=False,
                                         metadata={"internal": True})

    def asks(self, key: str) -> bool:
        """Did the user set ``key`` (or a block holding it) explicitly, rather than take the default?"""
        if self.asked is None:
            return True
        parts = key.split(".")
        return any(".".join(parts[:i]) in self.asked for i in range(1, len(parts) + 1))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("asked")
        return out


_POSITIVE = {
    "model.n_layer", "model.n_head", "model.d_model", "model.vocab_size",
    "fine_tuning.learning_rate", "fine_tuning.epochs", "fine_tuning.batch_size",
    "fine_tuning.max_seq_length", "full_training.learning_rate", "full_training.epochs",
    "full_training.batch_size", "full_training.max_seq_length", "validation.eval_max_items",
    "validation.eval_min_items",
    "retrain.max_new_items", "retrain.max_retention_drift", "retrain.max_rejected_in_row",
    "retrain.max_token_drift", "fine_tuning.early_stopping.patience", "tune.budget", "tune.max_trials",
    "tune.jobs", "tune.min_learning_rate", "tune.max_learning_rate", "tune.max_epochs",
}
_NOT_NEGATIVE = {"validation.retention_max", "validation.holdout_max", "validation.eval_budget", "prune.keep_last",
                 "fine_tuning.max_seconds", "full_training.max_seconds", "fine_tuning.max_item_tokens",
                 "full_training.max_item_tokens"}
_FRACTIONS = {"validation.retention_fraction", "validation.holdout_fraction", "model.dropout",
              "fine_tuning.early_stopping.min_delta"}


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return build_dataclass(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            # "replay,ewc" on the command line means ["replay", "ewc"].
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def build_dataclass(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build ``cls`` from ``data``, refusing unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1, cutoff=0.75)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(names))})"
            raise ConfigError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
        if full in _POSITIVE and kwargs[key] <= 0:
            raise ConfigError(f"config key '{full}': must be > 0, got {value!r}")
        if full in _FRACTIONS and not 0 <= kwargs[key] < 1:
            raise ConfigError(f"config key '{full}': must be in [0, 1), got {value!r}")
        if full in _NOT_NEGATIVE and kwargs[key] < 0:
            raise ConfigError(f"config key '{full}': must be >= 0, got {value!r}")
    obj = cls(**kwargs)
    if cls is FineTuningConfig:
        repeated = sorted({n for n in obj.strategy if obj.strategy.count(n) > 1})
        if repeated:
            raise ConfigError(f"config key '{prefix}.strategy': names {', '.join(repeated)} more than once "
                              f"({','.join(obj.strategy)}); list each strategy once")
    if cls is TuneConfig:
        _check_tune(obj, prefix)
    if cls is ModelConfig and obj.d_model % obj.n_head:
        raise ConfigError(
            f"config key '{prefix}.d_model': {obj.d_model} must be divisible by n_head={obj.n_head}"
        )
    return obj


def _check_tune(tune: TuneConfig, prefix: str) -> None:
    if tune.min_learning_rate > tune.max_learning_rate:
        raise ConfigError(f"config key '{prefix}.min_learning_rate': {tune.min_learning_rate} is above "
                          f"max_learning_rate {tune.max_learning_rate}")
    if not tune.strategies:
        raise ConfigError(f"config key '{prefix}.strategies': name at least one strategy mix to try")
    bad = [x for x in tune.replay_shares if not 0 <= x < 1]
    if bad or not tune.replay_shares:
        raise ConfigError(f"config key '{prefix}.replay_shares': each share must be in [0, 1), "
                          f"got {tune.replay_shares}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"fine_tuning.epochs=2"`` -> (["fine_tuning", "epochs"], 2); values are YAML."""
    if "=" not in text:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value`` in a raw (YAML-loaded) config mapping."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def default_config_text() -> str:
    """The embedded default ``config.yaml`` that ships inside the package."""
    return resources.files("retain").joinpath("config.yaml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (or the embedded default), apply ``KEY=VALUE`` overrides, validate."""
    if path is None:
        text, where = default_config_text(), "<embedded config.yaml>"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text, where = p.read_text(encoding="utf-8"), str(p)
        except (UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of config keys")
    return config_from_dict(data, overrides, asked=set(dotted_keys(data)) if path is not None else set())


def config_from_dict(data: dict, overrides: list[str] | None = None, asked: set[str] | None = None) -> Config:
    """A checked ``Config`` from a raw mapping (a YAML file's, a model's stored one) and overrides.
    ``asked``: the dotted keys the user gave explicitly (default: every key of ``data``)."""
    data = copy.deepcopy(data)
    asked = set(dotted_keys(data)) if asked is None else set(asked)
    for item in overrides or []:
        key, value = parse_override(item)
        apply_override(data, key, value)
        asked.add(".".join(key))
    config = build_dataclass(Config, data)
    config.asked = frozenset(asked)
    return config


def dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """Every key of a nested mapping, dotted: {"model": {"n_layer": 1}} -> ["model", "model.n_layer"]."""
    out = []
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        out.append(full)
        if isinstance(value, dict):
            out += dotted_keys(value, full)
    return out


# What fixes the model: every model.* key, and the context the built-in gpt is created with.
MODEL_KEYS = tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)) + ("full_training.max_seq_length",)


def adopt_model(config: Config, stored: dict | None) -> Config:
    """``config`` with every model key (``MODEL_KEYS``) it does not ask for explicitly taken from
    ``stored``, the config a model was made with (a manifest's ``config``). Unchanged when
    ``stored`` is missing or unreadable (a manifest of an older retain)."""
    if not isinstance(stored, dict):
        return config
    try:
        made = build_dataclass(Config, stored)
    except ConfigError:
        return config
    out = copy.deepcopy(config)
    for key in MODEL_KEYS:
        if not config.asks(key):
            block, name = key.split(".")
            setattr(getattr(out, block), name, copy.deepcopy(getattr(getattr(made, block), name)))
    out.model = build_dataclass(ModelConfig, dataclasses.asdict(out.model), "model")  # checks the mix
    return out


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """A new, checked ``Config``: ``config`` with ``{"fine_tuning.epochs": 2, ...}`` set
    (None values are skipped); ``config`` itself is not changed."""
    data = config.to_dict()
    for key, value in values.items():
        if value is not None:
            apply_override(data, key.split("."), value)
    out = build_dataclass(Config, data)
    if config.asked is not None:  # what the user asked for stays asked, plus these keys
        out.asked = config.asked | {k for k, v in values.items() if v is not None}
    return out


def plugin_options(config: Config, name: str, options_cls: type | None) -> Any:
    """The typed options of plugin ``name`` from ``config.options[name]``."""
    raw = config.options.get(name, {})
    if options_cls is None:
        if raw:
            raise ConfigError(f"config key 'options.{name}': plugin '{name}' takes no options")
        return None
    return build_dataclass(options_cls, raw, f"options.{name}")
