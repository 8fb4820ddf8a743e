"""The lora strategy on the built-in family: adapter-only versions, a few percent of a full one;
the next LoRA update continues the same adapters; export merges them."""

from __future__ import annotations

import pytest

pytest.importorskip("peft", reason="the lora strategy needs the optional extra: pip install '.[hf]'")

import torch  # noqa: E402

from retain.core.config import load_config  # noqa: E402
from retain.core.engine import Engine  # noqa: E402
from retain.core.errors import ConfigError, PluginError  # noqa: E402
from retain.core.storage.models import load_version  # noqa: E402
from retain.core.storage.store import ModelStore  # noqa: E402

from conftest import TINY, write_jsonl  # noqa: E402

# Wide enough for LoRA to be low-rank: at d_model 32 a rank-4 adapter is an eighth of a layer.
WIDE = [*TINY, "model.d_model=256", "model.n_head=4", "model.n_layer=2", "full_training.epochs=1",
        "validators=[finite]"]


def version_bytes(model_dir, version) -> int:
    return sum(p.stat().st_size for p in (model_dir / "versions" / version).rglob("*") if p.is_file())


def update(model_dir, texts, tmp_path, name, *extra):
    data = write_jsonl(tmp_path / f"{name}.jsonl", texts)
    return Engine(load_config(None, [*WIDE, *extra])).update([str(data)], model_dir)


@pytest.fixture(scope="module")
def _wide(tmp_path_factory, old_texts):
    root = tmp_path_factory.mktemp("wide")
    Engine(load_config(None, WIDE)).train([str(write_jsonl(root / "old.jsonl", old_texts[:100]))], root / "model")
    return root / "model"


@pytest.fixture
def wide(_wide, tmp_path):
    import shutil

    shutil.copytree(_wide, tmp_path / "model")
    return tmp_path / "model"


def test_a_lora_version_is_at_most_5_percent_of_a_full_version(wide, new_texts, tmp_path):
    full = update(wide, new_texts[:20], tmp_path, "full", "fine_tuning.strategy=[low_lr]")
    lora = update(wide, new_texts[20:40], tmp_path, "lora", "fine_tuning.strategy=[lora]", "options.lora.rank=4")
    store = ModelStore(wide)
    assert store.manifest(lora["version"])["model"]["builds_on"] == full["version"]
    full_size, lora_size = version_bytes(wide, full["version"]), version_bytes(wide, lora["version"])
    assert lora_size <= 0.05 * full_size, (lora_size, full_size)
    assert lora["parameters"]["trainable"] < 0.05 * full["parameters"]["trainable"]
    # and what it stores is what it learned: the loaded model is base + adapters
    assert lora["metrics"]["new_loss_after"] < lora["metrics"]["new_loss_before"]


def test_the_next_lora_update_continues_the_same_adapters(wide, new_texts, tmp_path):
    from retain.strategies.lora import LoraOptions
    from retain.strategies.lora_adapters import attach

    update(wide, new_texts[:20], tmp_path, "a", "fine_tuning.strategy=[lora]")
    store = ModelStore(wide)
    loaded = load_version(store)  # 0002: 0001's weights with 0002's adapters merged in
    x = loaded.lm.encode(["A text to compare outputs on, long enough for a few tokens."], 64).x
    with torch.no_grad():
        merged = loaded.lm.module(x)
    lm = attach(loaded.lm, loaded, LoraOptions())  # the adapters taken back out, to train on
    with torch.no_grad():
        assert torch.allclose(lm.module(x), merged, atol=1e-5)
    assert lm.builds_on == "0001"
    saved = store.manifest("0002")["model"]
    assert {k for k, v in lm.tuner.named_parameters() if v.requires_grad} == {
        k for k, v in lm.tuner.named_parameters() if "lora_" in k}
    second = update(wide, new_texts[20:40], tmp_path, "b", "fine_tuning.strategy=[lora]")
    assert store.manifest(second["version"])["model"]["builds_on"] == saved["builds_on"] == "0001"
    # changing the adapters' shape cannot continue them: a clear error, not a silent restart
    with pytest.raises((ConfigError, PluginError), match="cannot change shape"):
        update(wide, new_texts[40:60], tmp_path, "c", "fine_tuning.strategy=[lora]", "options.lora.rank=16")


def test_a_full_update_after_lora_saves_full_weights(wide, new_texts, tmp_path):
    update(wide, new_texts[:20], tmp_path, "a", "fine_tuning.strategy=[lora]")
    full = update(wide, new_texts[20:40], tmp_path, "b", "fine_tuning.strategy=[low_lr,ewc]")
    m = ModelStore(wide).manifest(full["version"])
    assert "builds_on" not in m["model"] and "model.safetensors" in m["files"]
    # ewc saved importances for every weight it trained (names of a plain model, no adapters)
    from safetensors.torch import load_file

    names = set(load_file(str(wide / "versions" / full["version"] / "strategy/ewc.safetensors")))
    assert "importance/blocks.0.qkv.weight" in names and not any("lora" in n for n in names)


def test_regularizers_with_lora_keep_importances_of_the_adapters_only(wide, new_texts, tmp_path):
    from safetensors.torch import load_file

    report = update(wide, new_texts[:20], tmp_path, "a", "fine_tuning.strategy=[lora,ewc]")
    state = load_file(str(wide / "versions" / report["version"] / "strategy/ewc.safetensors"))
    assert state and all("lora_" in name for name in state)
    assert sum(t.numel() for t in state.values()) == report["parameters"]["trainable"]


def test_compare_runs_one_strategy_at_two_settings_and_reports_its_costs(base_model, new_texts, tmp_path):
    import json

    from typer.testing import CliRunner

    from retain.cli import app

    day = write_jsonl(tmp_path / "day1.jsonl", new_texts[:15])
    result = CliRunner().invoke(app, [
        "compare", "--strategies", "low_lr,lora:rank=2,lora:rank=8+replay", "--model", str(base_model),
        "--data", str(day), "--out", str(tmp_path / "out"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)["results"]
    full, r2, r8 = res["low_lr"], res["lora:rank=2"], res["lora:rank=8+replay"]
    # rank 8 trains 4x the adapter weights of rank 2 (same layers), both far fewer than a full update
    assert r8["trainable_parameters"] == 4 * r2["trainable_parameters"] < full["trainable_parameters"]
    assert r2["version_mib"] < r8["version_mib"] and r2["version_mib"] < full["version_mib"] / 3
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"trainable_parameters", "version_mib"} <= set(header)
