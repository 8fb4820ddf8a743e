"""retain export --format hf: the built-in gpt as transformers' GPT-2, logits equal within 1e-4,
loadable and generating with from_pretrained; LoRA adapters merged; OUT never half written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="export --format hf needs the optional extra: pip install '.[hf]'")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from retain.cli import app  # noqa: E402
from retain.core.config import load_config  # noqa: E402
from retain.core.engine import Engine  # noqa: E402
from retain.core.storage.models import load_version  # noqa: E402
from retain.core.storage.store import ModelStore  # noqa: E402

from conftest import TINY, write_jsonl  # noqa: E402

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return a new list containing all items",
         "x" * 200]  # the last one longer than the 64-token context: several rows


def export(model_dir, out, *extra):
    result = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--out", str(out), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_same_logits(lm, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    rows = lm.encode(TEXTS, lm.context)
    lm.module.eval()
    with torch.no_grad():
        ours, theirs = lm.module(rows.x), model(rows.x).logits
    assert (ours - theirs).abs().max() < 1e-4
    # the exported tokenizer is the model's own
    assert tokenizer(TEXTS[0])["input_ids"] == lm.tokenizer.encode(TEXTS[0]).ids
    return model, tokenizer


def test_the_builtin_gpt_exports_as_gpt2_with_the_same_logits(base_model, tmp_path):
    out = tmp_path / "served"
    result = export(base_model, out)
    assert result["family"] == "gpt" and not result["adapter_merged"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "retain_export.json"} <= set(result["files"])
    assert not [f for f in result["files"] if f.endswith((".bin", ".pt", ".pth"))]
    model, tokenizer = assert_same_logits(load_version(ModelStore(base_model)).lm, out)
    assert model.config.model_type == "gpt2"
    ids = tokenizer("The history of", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=10, do_sample=True, top_k=0, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(generated[0, ids["input_ids"].shape[1]:]), str)


def test_export_merges_lora_adapters(base_model, new_texts, tmp_path):
    pytest.importorskip("peft", reason="the lora strategy needs the optional extra: pip install '.[hf]'")
    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:20])
    report = Engine(load_config(None, [*TINY, "fine_tuning.strategy=[lora]", "validators=[finite]",
                                       "options.lora.learning_rate=0.01"])).update([str(data)], base_model)
    result = export(base_model, tmp_path / "served")
    assert result["version"] == report["version"] and result["adapter_merged"]
    merged = load_version(ModelStore(base_model)).lm
    base = load_version(ModelStore(base_model), "0001").lm
    x = merged.encode(TEXTS[:1], 64).x
    with torch.no_grad():
        assert (merged.module(x) - base.module(x)).abs().max() > 1e-3  # the adapters changed something
    assert_same_logits(merged, tmp_path / "served")


def test_export_refuses_a_nonempty_out_and_leaves_it_alone(base_model, tmp_path):
    out = tmp_path / "served"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export", "--model", str(base_model), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output  # a usage error, not the config's
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
