"""The config and every plugin's options are typed models: a wrong key, type or value is one
ConfigError naming the dotted key (and the bound broken, or the key meant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
from pydantic import Field

from retain.core.config import Config, build, load_config, plugin_options
from retain.core.errors import ConfigError
from retain.core.pluginmanager import Registry, make_plugin_manager


@pytest.fixture(scope="module")
def registry():
    return Registry(make_plugin_manager())


def _error(overrides: list[str], registry=None) -> str:
    with pytest.raises(ConfigError) as err:
        config = load_config(None, overrides)
        registry.check_config(config)
    return str(err.value)


@pytest.mark.parametrize("override, message", [
    # a constraint names the field and its bound, as written beside the field
    ("options.replay.share=1.5", "config key 'options.replay.share': must be in [0, 1), got 1.5"),
    ("options.minhash.num_perm=8", "config key 'options.minhash.num_perm': must be in [16, 512], got 8"),
    ("options.ewc.decay=2", "config key 'options.ewc.decay': must be in [0, 1], got 2"),
    ("options.si.eps=0", "config key 'options.si.eps': must be > 0, got 0"),
    ("options.lora.rank=0", "config key 'options.lora.rank': must be >= 1, got 0"),
    ("fine_tuning.early_stopping.patience=0", "config key 'fine_tuning.early_stopping.patience': must be > 0, got 0"),
    # a wrong type names the type expected; bools, numeric strings and fractions are not ints
    ("options.replay.buffer_size=ten", "config key 'options.replay.buffer_size': expected int, got str 'ten'"),
    ("options.agem.sample_size=true", "config key 'options.agem.sample_size': expected int, got bool True"),
    ("options.gem.max_memories='4'", "config key 'options.gem.max_memories': expected int, got str '4'"),
    ("model.n_layer=2.5", "config key 'model.n_layer': expected int, got float 2.5"),
    ("options.minhash.shingle=line", "config key 'options.minhash.shingle': expected 'char' | 'word', got str 'line'"),
    ("options.replay.share=.inf", "config key 'options.replay.share': must be a finite number, got inf"),
    # an unknown key suggests the one meant, or lists the known ones
    ("options.replay.bufer_size=5", "unknown config key 'options.replay.bufer_size' (did you mean 'buffer_size'?)"),
    ("prune.zzz=1", "unknown config key 'prune.zzz' (known keys: keep_full_trainings, keep_last)"),
    # checks across fields name the field they are about
    ("options.agem.max_memories=32", "config key 'options.agem.max_memories': must be <= sample_size (16)"),
    ("options.csv.delimiter=';;'", "config key 'options.csv.delimiter': must be one character or 'auto', got ';;'"),
    ("tune.max_learning_rate=0.00001", "config key 'tune.min_learning_rate': 3e-05 is above max_learning_rate 1e-05"),
])
def test_a_bad_key_type_or_value_is_one_error_naming_the_key(registry, override, message):
    assert message in _error([override], registry)


def test_the_first_problem_in_the_file_is_the_one_reported(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("validation: {holdout_max: -1}\nfine_tuning: {epochs: 0, strateg: [low_lr]}\n")
    with pytest.raises(ConfigError, match="'validation.holdout_max': must be >= 0"):
        load_config(path)
    path.write_text("fine_tuning: {strateg: [low_lr], epochs: 0}\nvalidation: {holdout_max: -1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'fine_tuning.strateg' \(did you mean 'strategy'\?\)"):
        load_config(path)


def test_numbers_and_lists_read_as_the_command_line_writes_them():
    config = load_config(None, ["fine_tuning.learning_rate=1e-4", "fine_tuning.max_seconds=5",
                                "fine_tuning.strategy=low_lr,replay", "options.replay.share=0.25"])
    assert config.fine_tuning.learning_rate == 1e-4 and type(config.fine_tuning.max_seconds) is float
    assert config.fine_tuning.strategy == ["low_lr", "replay"]


def test_every_default_passes_its_own_checks(registry):
    shipped = load_config(None)
    assert build(Config, shipped.to_dict()) == shipped
    for table in registry.by_kind.values():
        for name, reg in table.items():
            if reg.options is not None:
                assert plugin_options(shipped, name, reg.options) == reg.options(), name


@dataclass
class _ThirdPartyOptions:  # a plugin author's options: constraints beside the fields
    table: str = "items"
    limit: Annotated[int, Field(gt=0, le=10_000)] = 1000
    weights: list[float] = None  # type: ignore[assignment]


def test_a_third_party_options_dataclass_is_checked_the_same_way():
    config = load_config(None, ["options.sqlite.limit=20000"])
    with pytest.raises(ConfigError, match=r"'options.sqlite.limit': must be in \(0, 10000\], got 20000"):
        plugin_options(config, "sqlite", _ThirdPartyOptions)
    config = load_config(None, ["options.sqlite.tabel=notes"])
    with pytest.raises(ConfigError, match=r"'options.sqlite.tabel' \(did you mean 'table'\?\)"):
        plugin_options(config, "sqlite", _ThirdPartyOptions)
    options = plugin_options(load_config(None, ["options.sqlite.weights=[1, 0.5]"]), "sqlite", _ThirdPartyOptions)
    assert options == _ThirdPartyOptions(weights=[1.0, 0.5]) and type(options.weights[0]) is float


def test_a_plugin_without_options_refuses_them():
    with pytest.raises(ConfigError, match="plugin 'exact' takes no options"):
        plugin_options(load_config(None, ["options.exact.x=1"]), "exact", None)


def test_a_number_as_a_key_is_named_as_written(tmp_path, registry):
    path = tmp_path / "config.yaml"
    path.write_text("model: {2: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.2' \(known keys: d_model, "):
        load_config(path)
    path.write_text("options: {jsonl: {3: x}}\nmodel: {factory_args: {layers: {1: 64}}}\n")
    config = load_config(path)
    assert config.model.factory_args == {"layers": {1: 64}}  # a factory's arguments stay as written
    with pytest.raises(ConfigError, match=r"unknown config key 'options.jsonl.3' \(known keys: field, "):
        registry.check_config(config)
