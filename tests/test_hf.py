"""A Hugging Face causal LM through the whole cycle: import, updates with every strategy that makes
sense for it, the gate, LoRA versions, export, from_pretrained. A tiny GPT-2 built locally."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers", reason="the hf family needs the optional extra: pip install '.[hf]'")
pytest.importorskip("peft", reason="the lora strategy needs the optional extra: pip install '.[hf]'")

import torch  # noqa: E402

from retain.core.config import load_config  # noqa: E402
from retain.core.engine import Engine  # noqa: E402
from retain.core.hookspecs import hookimpl  # noqa: E402
from retain.core.storage.models import load_version  # noqa: E402
from retain.core.storage.store import ModelStore  # noqa: E402

from conftest import write_jsonl  # noqa: E402

HF = ["device=cpu", "precision=fp32", "validation.retention_fraction=0.1", "validation.holdout_fraction=0.2",
      "fine_tuning.epochs=2", "fine_tuning.max_seq_length=64", "full_training.batch_size=16",
      "validators=[finite,loss_trend,retention,learning,generation]"]
RECORDED = "replay,ewc,si,mas,agem"  # what the import records from the base data


class Steps:
    """Listens to a run: what each step reported."""

    def __init__(self):
        self.info = {}

    @hookimpl
    def step_finished(self, run, step, info, seconds):
        self.info[step] = dict(info)


def engine(*extra, listeners=()):
    return Engine(load_config(None, [*HF, *extra]), listeners=list(listeners))


@pytest.fixture(scope="module")
def _imported(gpt2_dir, old_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-import")
    base = write_jsonl(root / "base.jsonl", old_texts[:120])
    report = engine(f"fine_tuning.strategy=[{RECORDED}]").import_model(gpt2_dir, root / "model", [str(base)])
    return root / "model", report


@pytest.fixture
def imported(_imported, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(_imported[0], dst)
    return dst


def logits(lm, text="The quick brown fox jumps over the lazy dog."):
    rows = lm.encode([text], lm.context)
    lm.module.eval()
    with torch.no_grad():
        return lm.module(rows.x)


def test_import_of_an_hf_directory_records_base_data_and_where_it_came_from(_imported, gpt2_dir):
    model_dir, report = _imported
    store = ModelStore(model_dir)
    m = store.manifest("0001")
    assert store.current() == "0001" and m["kind"] == "import" and m["status"] == "accepted"
    assert m["model"]["family"] == "hf" and m["config"]["model"]["family"] == "hf"
    assert m["source"]["path"] == str(gpt2_dir.resolve()) and m["source"]["format"] == "directory"
    assert len(m["source"]["sha256"]) == 64
    # the retention set is drawn from the base data, and its loss is the drift baseline
    assert m["counts"]["holdout"] == 12 and "holdout.jsonl" in m["files"]
    assert m["metrics"]["retention_loss_after"] == m["metrics"]["retention_loss_before"] > 0
    # the strategies recorded their state from the base data, as `retain train` does
    for name in ("replay.json", "ewc.safetensors", "si.safetensors", "mas.safetensors", "agem.safetensors"):
        assert f"strategy/{name}" in m["files"], name
    assert len(json.loads((model_dir / "versions/0001/strategy/replay.json").read_text())["texts"]) == m["counts"]["trained"] > 100
    # weights are safetensors, in a folder from_pretrained reads; nothing pickled
    assert "hf/model.safetensors" in m["files"] and not [f for f in m["files"] if f.endswith((".bin", ".pt"))]
    # the import changed no weight: the loaded model's logits are the source's
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(gpt2_dir, local_files_only=True).eval()
    lm = load_version(store).lm
    rows = lm.encode(["Some text to compare the logits on."], 64)
    with torch.no_grad():
        assert torch.allclose(source(rows.x).logits, logits(lm, "Some text to compare the logits on."), atol=1e-6)


def test_an_hf_byte_level_bpe_encodes_through_tiktoken_with_the_same_ids(_imported, new_texts):
    """A GPT-2-style tokenizer takes the fast path (plugins/fast_bpe.py), with the ids the
    transformers tokenizer gives, special-token strings included."""
    lm = load_version(ModelStore(_imported[0])).lm
    texts = [*new_texts, "x<|endoftext|>y", "naïve 中文 😀\r\n\t  end"]
    fast = lm.encode_ids(texts)
    assert lm._fast is not None
    lm._fast = None
    assert [list(x) for x in fast] == [list(x) for x in lm.encode_ids(texts)]


def test_tokenizer_without_pad_token_pads_with_its_end_token(_imported, gpt2_dir):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(gpt2_dir).pad_token is None
    lm = load_version(ModelStore(_imported[0])).lm
    assert lm.pad_id == lm.eos_id is not None
    rows = lm.encode(["short", "a much longer text than the first one is"], 64)
    assert rows.x[0, -1] == lm.eos_id and rows.y[0, -1] == -100


def test_import_to_export_through_updates_lora_and_the_gate(imported, new_texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = ModelStore(imported)
    long_item = " ".join(new_texts[50:56])  # far longer than the model's 64-token context
    chunks = [new_texts[0:14] + [long_item], new_texts[14:28], new_texts[28:42], new_texts[42:50] + new_texts[56:60]]
    for strategy, chunk in zip(("low_lr", "replay", "lora", "lora,replay"), chunks):
        steps = Steps()
        report = engine(f"fine_tuning.strategy=[{strategy}]", listeners=[steps]).update(
            [str(write_jsonl(tmp_path / f"{strategy}.jsonl", chunk))], imported)
        assert report["status"] == "accepted", (strategy, report["verdicts"])
        assert {v["validator"] for v in report["verdicts"]} >= {"retention", "learning", "generation"}
        assert report["metrics"]["new_loss_after"] < report["metrics"]["new_loss_before"], strategy
        assert report["metrics"]["retention_items"] > 0
        if strategy == "low_lr":  # the long item was split by the model's context, not cut
            assert steps.info["tokenize"]["sequences"] > steps.info["tokenize"]["items"]
    entries = {v: store.manifest(v)["model"] for v in store.versions()}
    assert [v for v, e in entries.items() if "adapter" in e] == ["0004", "0005"]
    # both LoRA versions build on the last full version, 0003: adapters only, a fraction of it
    assert entries["0004"]["builds_on"] == entries["0005"]["builds_on"] == "0003"
    assert not any(f.startswith("hf/") for f in store.manifest("0005")["files"])
    lora_report = json.loads((imported / "versions/0004/report.json").read_text())
    assert lora_report["parameters"]["trainable"] < lora_report["parameters"]["total"] / 3

    out = tmp_path / "served"
    from retain.core.storage.exports import export_version
    from retain.core.pluginmanager import Registry, default_plugin_manager

    result = export_version(store, None, "hf", out, Registry.of(default_plugin_manager()))
    assert result["version"] == "0005" and result["adapter_merged"]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ours = load_version(store).lm  # adapters merged on load
    rows = ours.encode(["The quick brown fox."], 64)
    with torch.no_grad():
        assert torch.allclose(model(rows.x).logits, logits(ours, "The quick brown fox."), atol=1e-5)
    ids = tokenizer("The history of", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(generated[0]), str)


@pytest.mark.parametrize("strategy", ["ewc", "si", "mas", "lwf", "agem"])
def test_regularizers_and_memories_update_an_hf_model(imported, new_texts, tmp_path, strategy):
    report = engine(f"fine_tuning.strategy=[{strategy}]", "fine_tuning.learning_rate=0.001").update(
        [str(write_jsonl(tmp_path / "n.jsonl", new_texts[:15]))], imported)
    assert report["version"] == "0002" and report["strategies"] == [strategy]
    assert report["metrics"]["new_loss_after"] < report["metrics"]["new_loss_before"]
    files = ModelStore(imported).manifest("0002")["files"]
    if strategy != "lwf":  # lwf's teacher is the loaded version: nothing to keep
        assert any(f.startswith(f"strategy/{strategy}") for f in files)


def test_generation_goes_through_the_models_generate_with_its_cache(_imported, monkeypatch):
    lm = load_version(ModelStore(_imported[0])).lm
    calls = []
    real = lm.module.model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.module.model, "generate", spy)
    first = lm.generate(["The", "In 1990"], max_new_tokens=6, temperature=1.0, seed=3)
    again = lm.generate(["The", "In 1990"], max_new_tokens=6, temperature=1.0, seed=3)
    assert [s.tokens for s in first] == [s.tokens for s in again]  # seeded
    assert len(calls) == 4 and all(c["use_cache"] for c in calls)
    assert all(len(s.tokens) <= 6 for s in first)


def test_lora_versions_roll_back_prune_and_check_their_checksums(imported, new_texts, tmp_path):
    from retain.core.errors import ModelError
    from retain.core.storage.versions import prune, rollback

    for i, strategy in enumerate(("lora", "lora")):
        engine(f"fine_tuning.strategy=[{strategy}]", "validators=[finite]").update(
            [str(write_jsonl(tmp_path / f"{i}.jsonl", new_texts[15 * i:15 * (i + 1)]))], imported)
    store = ModelStore(imported)
    assert store.manifest("0003")["model"]["builds_on"] == "0001"
    # prune keeps the full version the adapters need, whole
    plan = prune(store, 1)
    assert "0001" in plan.keep and "model.safetensors" in " ".join(store.manifest("0001")["files"])
    assert plan.stub == ["0002"]
    assert load_version(store).version == "0003"
    with pytest.raises(ModelError, match="pruned"):
        rollback(store, "0002")
    # a modified adapter file is refused on load
    path = imported / "versions/0003/adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_version(store, "0003")


def test_an_hf_model_too_big_for_memory_exits_11_with_the_remedy(gpt2_dir, old_texts, tmp_path):
    from typer.testing import CliRunner

    from retain.cli import app

    huge = tmp_path / "huge"
    shutil.copytree(gpt2_dir, huge)
    config = json.loads((huge / "config.json").read_text())
    config.update(n_embd=262144, n_head=1)  # ~1 TB of weights: the allocator refuses at once
    (huge / "config.json").write_text(json.dumps(config))
    data = write_jsonl(tmp_path / "d.jsonl", old_texts[:20])
    out = CliRunner().invoke(app, ["train", "--data", str(data), "--model", str(tmp_path / "m"), "--quiet",
                                   "--set", "model.family=hf", "--set", f"model.path={huge}"])
    assert out.exit_code == 11, out.output
    assert "out of memory creating the 'hf' model" in out.output and "Traceback" not in out.output


def test_dedupe_history_and_compare_work_on_an_imported_hf_model(imported, old_texts, new_texts, tmp_path):
    from typer.testing import CliRunner

    from retain.cli import app

    # the import's base items are in the ledger: an update skips them
    mixed = write_jsonl(tmp_path / "mixed.jsonl", old_texts[:5] + new_texts[:12])
    report = engine("fine_tuning.strategy=[low_lr]", "validators=[finite]").update([str(mixed)], imported)
    assert report["counts"]["duplicates"] == 5 and report["counts"]["new"] == 12
    history = CliRunner().invoke(app, ["history", "--model", str(imported), "--json"])
    assert [r["kind"] for r in json.loads(history.stdout)] == ["import", "fine_tuning"]
    day = write_jsonl(tmp_path / "day.jsonl", new_texts[20:35])
    out = CliRunner().invoke(app, ["compare", "--strategies", "low_lr,lora", "--model", str(imported),
                                   "--data", str(day), "--out", str(tmp_path / "cmp"), "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    results = json.loads(out.stdout)["results"]
    for name in ("low_lr", "lora"):
        assert results[name]["supported"] and len(results[name]["R"]) == 2
        assert results[name]["R"][1][1] < results[name]["R"][0][1]  # each learned the day
    assert results["lora"]["version_mib"] < results["low_lr"]["version_mib"]
