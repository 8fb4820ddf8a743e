"""``retain generate``: samples from a version, reproducible by seed, greedy at temperature 0,
for every family, reading only (no lock, nothing written)."""

import hashlib
import json
import os

import pytest
from typer.testing import CliRunner

from conftest import TINY, write_jsonl
from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore

PROMPTS = ["The function returns", "import os\n"]


def generate(model, *args):
    """``retain generate --json``: its exit code and, on success, the parsed object."""
    r = CliRunner().invoke(app, ["generate", "--model", str(model), "--json", "--device", "cpu", *map(str, args)])
    return r.exit_code, (json.loads(r.stdout) if r.stdout.strip() else None), r


def greedy(store, version, prompts, max_new_tokens):
    lm = load_version(store, version).lm
    return [s.text for s in lm.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, seed=0)]


def snapshot(root):
    """Every file under ``root``: its bytes' digest and mtime (what a reading command must not touch)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


def test_generate_continues_each_prompt_reproducibly_and_reads_only(base_model):
    (base_model / ".lock").unlink(missing_ok=True)  # the training's; a reading command makes none
    before = snapshot(base_model)
    r = CliRunner().invoke(app, ["generate", "--model", str(base_model), "--device", "cpu", "--seed", "3",
                                 "--max-new-tokens", "16", *PROMPTS])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(PROMPTS[0]) and "\n\n" + PROMPTS[1] in r.stdout  # each sample: prompt + text
    code, out, _ = generate(base_model, "--seed", "3", "--max-new-tokens", "16", *PROMPTS)
    assert code == 0
    assert set(out) >= {"version", "status", "family", "seed", "temperature", "max_new_tokens", "samples"}
    assert (out["version"], out["status"], out["family"], out["seed"]) == ("0001", "accepted", "gpt", 3)
    assert (out["temperature"], out["max_new_tokens"]) == (0.8, 16)
    assert [s["prompt"] for s in out["samples"]] == PROMPTS
    assert any(s["text"].strip() for s in out["samples"])
    assert r.stdout == "\n\n".join(s["prompt"] + s["text"] for s in out["samples"]) + "\n"
    # the same seed, the same text; the model and the directory untouched, no lock taken
    assert generate(base_model, "--seed", "3", "--max-new-tokens", "16", *PROMPTS)[1] == out
    assert not (base_model / ".lock").exists()
    assert snapshot(base_model) == before


def test_temperature_zero_is_greedy_whatever_the_seed(base_model):
    texts = [generate(base_model, "--temperature", "0", "--seed", seed, "--max-new-tokens", "12", *PROMPTS)[1]
             for seed in (1, 2)]
    assert [s["text"] for s in texts[0]["samples"]] == [s["text"] for s in texts[1]["samples"]]
    assert [s["text"] for s in texts[0]["samples"]] == greedy(ModelStore(base_model), "0001", PROMPTS, 12)
    # sampled at a high temperature, seeds differ somewhere over a few prompts
    hot = [generate(base_model, "--temperature", "2", "--seed", seed, "--max-new-tokens", "12", *PROMPTS * 2)[1]
           for seed in (1, 2)]
    assert hot[0]["samples"] != hot[1]["samples"]


def test_version_picks_the_version_and_refuses_unknown_and_pruned_ones(base_model, new_texts, tmp_path):
    from retain.core.storage.versions import prune

    cfg = load_config(None, [*TINY, "validators=[finite]", "fine_tuning.learning_rate=0.01"])
    Engine(cfg).update([str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20]))], base_model)
    store = ModelStore(base_model)
    assert store.current() == "0002"
    outs = {v: generate(base_model, *(["--version", v] if v else []), "--temperature", "0",
                        "--max-new-tokens", "12", *PROMPTS)[1] for v in (None, "1", "0002")}
    assert [outs[v]["version"] for v in outs] == ["0002", "0001", "0002"]
    for v in ("0001", "0002"):  # the text is the one that version's own weights give
        assert [s["text"] for s in outs[v if v == "0002" else "1"]["samples"]] == greedy(store, v, PROMPTS, 12)

    code, out, r = generate(base_model, "--version", "7", "x")
    assert code == 5 and out["error"]["kind"] == "model"
    assert "no version 0007" in out["error"]["message"] and "versions: 0001, 0002" in out["error"]["message"]

    prune(store, 1)
    assert "pruned" in store.manifest("0001")
    code, out, _ = generate(base_model, "--version", "1", "x")
    assert code == 5 and "pruned" in out["error"]["message"]


def test_a_rejected_version_is_sampled_with_a_note(base_model, new_texts, tmp_path):
    from retain.core.errors import UpdateRejected

    # a gate no update passes: the new items' loss must fall by 99%
    cfg = load_config(None, [*TINY, "validators=[learning]", "options.learning.min_drop=0.99"])
    with pytest.raises(UpdateRejected):
        Engine(cfg).update([str(write_jsonl(tmp_path / "new.jsonl", new_texts[:20]))], base_model)
    assert ModelStore(base_model).manifest("0002")["status"] == "rejected"
    code, out, r = generate(base_model, "--version", "2", "--max-new-tokens", "4", "x")
    assert code == 0 and out["status"] == "rejected" and "rejected by the quality gate" in out["note"]
    assert "rejected by the quality gate" in r.stderr


def test_the_hf_family_and_its_lora_versions_generate(gpt2_dir, old_texts, new_texts, tmp_path):
    pytest.importorskip("peft", reason="the lora strategy needs the optional extra: pip install '.[hf]'")
    hf = ["device=cpu", "precision=fp32", "fine_tuning.epochs=1", "validators=[finite]"]
    model = tmp_path / "model"
    Engine(load_config(None, hf)).import_model(gpt2_dir, model, [str(write_jsonl(tmp_path / "b.jsonl", old_texts[:40]))])
    Engine(load_config(None, [*hf, "fine_tuning.strategy=[lora]"])).update(
        [str(write_jsonl(tmp_path / "n.jsonl", new_texts[:12]))], model)
    store = ModelStore(model)
    assert store.manifest("0002")["model"]["builds_on"] == "0001"  # adapter weights only
    for version in ("0001", "0002"):
        code, out, r = generate(model, "--version", version, "--temperature", "0", "--max-new-tokens", "8", *PROMPTS)
        assert code == 0, r.output
        assert out["family"] == "hf" and out["version"] == version
        assert [s["text"] for s in out["samples"]] == greedy(store, version, PROMPTS, 8)


FACTORY = '''
import torch

class Tiny(torch.nn.Module):
    """A user's own model class (no KV cache): an embedding, a GRU, a head; ids -> logits."""

    def __init__(self, vocab_size, d_model=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, d_model)
        self.rnn = torch.nn.GRU(d_model, d_model, batch_first=True)
        self.head = torch.nn.Linear(d_model, vocab_size)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0])
'''


def test_the_python_family_generates(tmp_path, monkeypatch, old_texts):
    import torch

    from retain.plugins.gpt import train_tokenizer

    (tmp_path / "genmodel.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import genmodel

    tokenizer = train_tokenizer(old_texts, 300)
    (tmp_path / "tok.json").write_text(tokenizer.to_str(), encoding="utf-8")
    vocab = tokenizer.get_vocab_size()
    torch.manual_seed(1)
    torch.save(genmodel.Tiny(vocab).state_dict(), tmp_path / "model.pth")
    overrides = [*TINY, "model.family=python", "model.factory=genmodel:Tiny", f"model.tokenizer={tmp_path / 'tok.json'}",
                 f"model.factory_args={{vocab_size: {vocab}}}"]
    Engine(load_config(None, overrides)).import_model(tmp_path / "model.pth", tmp_path / "m", [])
    code, out, r = generate(tmp_path / "m", "--temperature", "0", "--max-new-tokens", "6", *PROMPTS)
    assert code == 0, r.output
    assert out["family"] == "python" and len(out["samples"]) == 2
    assert [s["text"] for s in out["samples"]] == greedy(ModelStore(tmp_path / "m"), "0001", PROMPTS, 6)
    assert any(s["text"] for s in out["samples"])
    assert generate(tmp_path / "m", "--seed", "5", "--max-new-tokens", "6", *PROMPTS)[1] == \
        generate(tmp_path / "m", "--seed", "5", "--max-new-tokens", "6", *PROMPTS)[1]
