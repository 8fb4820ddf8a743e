"""Typed configuration, loaded from YAML and overridable from the command line.

Every block is a pydantic model whose fields carry their own constraints (``Field(gt=0)``
beside the field). Unknown keys are forbidden and types strict (a bool is not an int, "3" is
not a number); ``load_config`` turns pydantic's errors into one ``ConfigError`` naming the
dotted key, with "did you mean" for a typo. Plugin options (dataclasses, constraints in
``Annotated[..., Field(...)]``) are checked the same way by ``plugin_options``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError,
                      field_validator, model_validator)
from typing_extensions import NotRequired, TypedDict

from retain.core.errors import ConfigError, UsageError

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> Any:
    """A float from an int too, and from YAML 1.1's ``1e-4`` (no dot: read as a string); an int
    beyond float range becomes inf, which the finite check refuses."""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return value


def _names(value: Any) -> Any:
    """"replay,ewc" on the command line means ["replay", "ewc"]."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


Number = Annotated[float, BeforeValidator(_number)]
Names = Annotated[list[str], BeforeValidator(_names)]

# Strict types, no unknown keys, no NaN or infinity.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Invalid(ValueError):
    """Raised by a check across fields: ``key`` (a field of the block checked) is the one named."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Block(BaseModel):
    model_config = _STRICT


class ModelConfig(Block):
    """Which model family (``retain plugins`` lists them) and what it builds: the size of the
    built-in ``gpt`` (its context length is full_training.max_seq_length), the local directory
    of an ``hf`` model, the factory of a ``python`` one.

    A model directory remembers its model: an update, ``retain status`` and a retrain take
    every key of this block the config does not set explicitly from the model's own manifest
    (``model_config`` in ``core/storage/models.py``)."""

    family: str = "gpt"
    n_layer: int = Field(2, gt=0)
    n_head: int = Field(4, gt=0)
    d_model: int = Field(128, gt=0)
    vocab_size: int = Field(2048, gt=0)
    dropout: Number = Field(0.0, ge=0, lt=1)
    path: str = ""        # hf: a local transformers directory (config.json, tokenizer files)
    factory: str = ""     # python: "package.module:function" returning an nn.Module (ids -> logits)
    factory_args: dict[str, Any] = {}  # python: the factory's keyword arguments
    tokenizer: str = ""   # python, and .pth/.safetensors imports: a tokenizers JSON file or an HF tokenizer dir

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise Invalid("d_model", f"{self.d_model} must be divisible by n_head={self.n_head}")
        return self


class EarlyStoppingConfig(Block):
    """An update judges its candidate after every epoch, stops when the held-out new items stop
    improving or a validator's threshold is crossed, and keeps the best epoch."""

    enabled: bool = True
    patience: int = Field(1, gt=0)            # epochs without improvement of the held-out new items
    min_delta: Number = Field(0.001, ge=0, lt=1)  # what counts as an improvement (relative: 0.1%)


class FineTuningConfig(Block):
    """The design document's FINE_TUNING block: an update on new data only."""

    # low_lr's rate (the design document's 1e-4); rewarm's peak is options.rewarm.peak_lr, naive's
    # the full training's, lora's options.lora.learning_rate. --lr and ModelTrainer.fine_tune(lr=)
    # set this and each of those (core/learning/strategy.py, UPDATE_LEARNING_RATE_KEYS).
    learning_rate: Number = Field(0.0001, gt=0)
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(8, gt=0)
    max_seq_length: int = Field(512, gt=0)
    # The default was chosen by measurement: re-warm to the full training's peak, re-decay and
    # replay old tokens (BENCHMARKS.md, "Update recipes against a full retrain"), steered by the
    # drift and averaged with the parent (BENCHMARKS.md, "A month of daily updates").
    strategy: Names = ["rewarm", "replay", "average"]
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    max_seconds: Number = Field(0.0, ge=0)  # stop training after this many seconds, keeping the best epoch (0: none)
    max_item_tokens: int = Field(1_000_000, ge=0)  # an item with more tokens is rejected, not trained on (0: no cap)

    @field_validator("strategy")
    @classmethod
    def _each_strategy_once(cls, strategy: list[str]) -> list[str]:
        repeated = sorted({n for n in strategy if strategy.count(n) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once ({','.join(strategy)}); "
                             "list each strategy once")
        return strategy


class FullTrainingConfig(Block):
    """Training from scratch on all data (``retain train``)."""

    learning_rate: Number = Field(0.001, gt=0)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(8, gt=0)
    max_seq_length: int = Field(512, gt=0)
    init: Literal["random"] = "random"
    # new: train a tokenizer on the data (families that have one); keep: the current model's
    tokenizer: Literal["new", "keep"] = "new"
    # a new tokenizer learns from at most this many MB of the items' text, taken evenly across
    # them (all of it below: the same tokenizer as from every item); the memory it needs is this
    tokenizer_sample_mb: Number = Field(64, gt=0)
    # strategies whose state the full training records for later updates, beside
    # fine_tuning.strategy (replay: a buffer of base items, so replay works from the first update)
    record: Names = ["replay"]
    max_seconds: Number = Field(0.0, ge=0)   # stop training after this many seconds, keeping that state (0: no limit)
    max_item_tokens: int = Field(1_000_000, ge=0)  # an item with more tokens is rejected, not trained on (0: no cap)


class ValidationConfig(Block):
    """What is kept aside to measure retention (old items) and learning (new items)."""

    retention_fraction: Number = Field(0.05, ge=0, lt=1)
    retention_max: int = Field(200, ge=0)
    holdout_fraction: Number = Field(0.1, ge=0, lt=1)
    holdout_max: int = Field(100, ge=0)
    # the retention pool kept with each version: a uniform sample of every held-out item
    eval_max_items: int = Field(256, gt=0)
    eval_min_items: int = Field(32, gt=0)   # an update scores at least this many of the pool (all, if fewer) ...
    eval_budget: Number = Field(0.1, ge=0)  # ... then more while scoring costs at most this share of training
    # the learning check's pool: held-out new items of the accepted updates since the last full
    # training (newest first), judged with the update's own (0: the update's own only)
    learning_pool: int = Field(64, ge=0)


class RetrainConfig(Block):
    """When ``retain status`` recommends a full retrain over another fine-tune (the design document's
    "Full retrain when": major data changes, architecture changes, quality degradation)."""

    max_new_items: int = Field(1000, gt=0)             # items learned since the last full training (+ pending)
    max_retention_drift: Number = Field(0.04, gt=0)    # held-out base loss up >4% since the last full training
    max_rejected_in_row: int = Field(3, gt=0)          # the gate rejected this many updates in a row
    max_token_drift: Number = Field(0.15, gt=0)        # new data needs >15% more tokens per byte than the base data
    max_update_work: Number = Field(1.0, ge=0)         # the updates since it cost more than this many retrains (0: off)


class TuneConfig(Block):
    """``retain update --auto``: a budgeted search over the update's recipe (``retain.tune``)."""

    budget: Number = Field(0.1, gt=0)   # share of the last full training's measured training time
    max_trials: int = Field(12, gt=0)
    jobs: int = Field(1, gt=0)          # trials at once, each in its own process
    # the strategy mixes tried ("+" composes); replay is added by the replay share searched
    strategies: Names = ["rewarm", "low_lr", "rewarm+ewc"]
    min_learning_rate: Number = Field(0.00003, gt=0)
    max_learning_rate: Number = Field(0.003, gt=0)
    max_epochs: int = Field(4, gt=0)
    replay_shares: list[Number] = [0.0, 0.25, 0.5]
    # the search's winner keeps the old domain's drift since the last full training at most this
    # (or at the configured recipe's own): what a search spends today, the next days cannot
    max_drift: Number = Field(0.01, ge=0)

    @field_validator("strategies")
    @classmethod
    def _some_strategy(cls, strategies: list[str]) -> list[str]:
        if not strategies:
            raise ValueError("name at least one strategy mix to try")
        return strategies

    @field_validator("replay_shares")
    @classmethod
    def _shares_are_fractions(cls, shares: list[float]) -> list[float]:
        if not shares or any(not 0 <= x < 1 for x in shares):
            raise ValueError(f"each share must be in [0, 1), got {shares}")
        return shares

    @model_validator(mode="after")
    def _learning_rates_in_order(self) -> TuneConfig:
        if self.min_learning_rate > self.max_learning_rate:
            raise Invalid("min_learning_rate", f"{self.min_learning_rate} is above "
                          f"max_learning_rate {self.max_learning_rate}")
        return self


class PruneConfig(Block):
    """The keep policy, applied after every saved version (``retain prune`` applies it by hand):
    the last ``keep_last`` accepted versions stay whole, older ones become stubs (no weights)
    or go. 0 keeps everything."""

    keep_last: int = Field(0, ge=0)
    keep_full_trainings: bool = True   # every accepted full training stays whole too


class Config(Block):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast for training and scoring. auto: bf16 on a CUDA device that supports it and
    # on a CPU with native bf16 (AVX512-BF16, AMX), fp32 on other CPUs, where bf16 is emulated
    # and several times slower (BENCHMARKS.md).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    model: ModelConfig = Field(default_factory=ModelConfig)
    fine_tuning: FineTuningConfig = Field(default_factory=FineTuningConfig)
    full_training: FullTrainingConfig = Field(default_factory=FullTrainingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    dedupers: Names = ["exact"]
    preprocessors: Names = ["clean"]
    validators: Names = ["finite", "loss_trend", "retention", "learning", "generation", "duration"]
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    # Trackers every writing run reports to (``register_loggers``: mlflow, tensorboard; --log-to).
    # The names are checked against the installed loggers with the other plugin names.
    loggers: Names = []
    # Options of each plugin, by the name it registered (sources, strategies, ...).
    # Checked against that plugin's own options dataclass when it is built.
    options: dict[str, dict] = {}
    # Not a config key: the dotted keys the user's config file and --set gave ("model.n_layer"),
    # set by ``load_config`` and never saved. None (a Config built in code): every key counts.
    _asked: frozenset[str] | None = PrivateAttr(default=None)

    @property
    def asked(self) -> frozenset[str] | None:
        return self._asked

    @asked.setter
    def asked(self, keys: frozenset[str] | None) -> None:
        self._asked = keys

    @field_validator("loggers")
    @classmethod
    def _each_logger_once(cls, loggers: list[str]) -> list[str]:
        repeated = sorted({n for n in loggers if loggers.count(n) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once; list each logger once")
        return loggers

    def asks(self, key: str) -> bool:
        """Did the user set ``key`` (or a block holding it) explicitly, rather than take the default?"""
        if self.asked is None:
            return True
        parts = key.split(".")
        return any(".".join(parts[:i]) in self.asked for i in range(1, len(parts) + 1))

    def to_dict(self) -> dict:
        return self.model_dump()

    def __eq__(self, other: object) -> bool:  # the same settings, whoever asked for them
        return isinstance(other, Config) and self.to_dict() == other.to_dict()


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """``cls`` (a config block, or a plugin's options dataclass) from the mapping ``data``, checked:
    the first problem, in the order of ``data``'s keys, is one ``ConfigError`` naming its key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {data!r}")
    data = _string_keys(data, cls)
    try:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls.model_validate(data)
        return cls(**_options_adapter(cls).validate_python(data))
    except ValidationError as exc:
        order = {key: i for i, key in enumerate(dotted_keys(data))}
        first = min(exc.errors(), key=lambda e: order.get(".".join(str(p) for p in e["loc"] if isinstance(p, str)),
                                                          len(order)))
        raise ConfigError(_message(first, cls, prefix)) from None


def _string_keys(value: Any, tp: Any) -> Any:
    """YAML's ``1: x`` is the key "1" of a block (unknown, named as written) or of a ``dict[str, ...]``;
    the values of an ``Any`` (a factory's arguments) stay as written."""
    if not isinstance(value, dict):
        return value
    fields = _fields(tp)
    if fields:
        return {str(k): _string_keys(v, fields.get(str(k), (None,))[0]) for k, v in value.items()}
    if typing.get_origin(tp) is dict:
        return {str(k): _string_keys(v, typing.get_args(tp)[1]) for k, v in value.items()}
    return value


@functools.cache
def _options_adapter(cls: type) -> TypeAdapter:
    """A validator of the keyword arguments of the dataclass ``cls``: its fields' annotations,
    floats and string lists read as config blocks read them, no other key."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: NotRequired[_as_config_reads(hints[f.name])]
              if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
              else _as_config_reads(hints[f.name])
              for f in dataclasses.fields(cls) if f.init}
    arguments = TypedDict(cls.__name__, fields)  # type: ignore[operator]
    arguments.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return TypeAdapter(arguments)


def _as_config_reads(tp: Any) -> Any:
    """``float`` -> ``Number``, ``list[str]`` -> ``Names`` (inside ``Annotated`` and lists too)."""
    if typing.get_origin(tp) is Annotated:
        inner, *meta = typing.get_args(tp)
        return Annotated[(_as_config_reads(inner), *meta)]
    if tp is float:
        return Number
    if tp == list[str]:
        return Names
    if typing.get_origin(tp) is list:
        return list[_as_config_reads(typing.get_args(tp)[0])]  # type: ignore[misc]
    return tp


def _message(error: dict, root: type, prefix: str) -> str:
    loc, kind, value = error["loc"], error["type"], error["input"]
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    if kind == "extra_forbidden":
        names = sorted(_fields(_annotation_at(root, loc[:-1])))
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
        return f"unknown config key '{key}'{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        field = _fields(_annotation_at(root, loc[:-1])).get(loc[-1])
        bounds = _bounds(field[1] if field else [], error.get("ctx", {}))
        return f"config key '{key}': must be {bounds}, got {value!r}"
    if kind == "finite_number":
        return f"config key '{key}': must be a finite number, got {value!r}"
    if kind == "value_error":
        cause = error["ctx"]["error"]
        if isinstance(cause, Invalid):
            key = f"{key}.{cause.key}" if key else cause.key
        return f"config key '{key}': {cause}"
    if kind == "missing":
        return f"config key '{key}' is required"
    expected = _annotation_at(root, loc)
    what = _type_name(expected) if expected is not None else kind
    return f"config key '{key}': expected {what}, got {type(value).__name__} {value!r}"


def _fields(tp: Any) -> dict[str, tuple[Any, list]]:
    """The fields of a config block or dataclass: name -> (annotation, constraints)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: (f.annotation, f.metadata) for name, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        out = {}
        for name, hint in typing.get_type_hints(tp, include_extras=True).items():
            inner, *meta = typing.get_args(hint) if typing.get_origin(hint) is Annotated else (hint,)
            out[name] = (inner, [m for item in meta for m in getattr(item, "metadata", [item])])
        return out
    return {}


def _annotation_at(root: type, loc: tuple) -> Any:
    """The annotation of the value at ``loc`` (a path of keys and indexes) below ``root``."""
    tp = root
    for part in loc:
        origin = typing.get_origin(tp)
        if origin is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif part in _fields(tp):
            tp = _fields(tp)[part][0]
        else:
            return None
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
    return tp


def _bounds(constraints: list, ctx: dict) -> str:
    """"> 0", ">= 1", "in [0, 1)": every bound of a field, as the user reads it."""
    limits = dict(ctx)
    for item in constraints:
        limits.update({k: getattr(item, k) for k in ("gt", "ge", "lt", "le") if getattr(item, k, None) is not None})
    low = ("(", limits["gt"]) if "gt" in limits else ("[", limits["ge"]) if "ge" in limits else None
    high = (limits["lt"], ")") if "lt" in limits else (limits["le"], "]") if "le" in limits else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[0]:g}{high[1]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
    return f"{'<' if high[1] == ')' else '<='} {high[0]:g}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


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
    config = build(Config, data)
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
MODEL_KEYS = tuple(f"model.{name}" for name in ModelConfig.model_fields) + ("full_training.max_seq_length",)


def adopt_model(config: Config, stored: dict | None) -> Config:
    """``config`` with every model key (``MODEL_KEYS``) it does not ask for explicitly taken from
    ``stored``, the config a model was made with (a manifest's ``config``). Unchanged when
    ``stored`` is missing or unreadable (a manifest of an older retain)."""
    if not isinstance(stored, dict):
        return config
    try:
        made = build(Config, stored)
    except ConfigError:
        return config
    out = copy.deepcopy(config)
    for key in MODEL_KEYS:
        if not config.asks(key):
            block, name = key.split(".")
            setattr(getattr(out, block), name, copy.deepcopy(getattr(getattr(made, block), name)))
    out.model = build(ModelConfig, out.model.model_dump(), "model")  # checks the mix
    return out


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """A new, checked ``Config``: ``config`` with ``{"fine_tuning.epochs": 2, ...}`` set
    (None values are skipped); ``config`` itself is not changed."""
    data = config.to_dict()
    for key, value in values.items():
        if value is not None:
            apply_override(data, key.split("."), value)
    out = build(Config, data)
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
    return build(options_cls, raw, f"options.{name}")
