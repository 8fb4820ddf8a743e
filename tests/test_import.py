"""retain import of a user's own files: a .pth state dict of the built-in model or of a model
class of their own (the python family), a .safetensors file; pickles that would run code are
refused; a model too big for memory is exit 11 with the remedy."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl, lr


def logits(lm, text="An item to compare the logits of two models on."):
    rows = lm.encode([text], lm.context)
    lm.module.eval()
    with torch.no_grad():
        return lm.module(rows.x)


@pytest.fixture
def exported_files(base_model, tmp_path):
    """What a user of the design document has: torch.save(model.state_dict()) and a tokenizer."""
    lm = load_version(ModelStore(base_model)).lm
    pth = tmp_path / "dinesh_ai_model.pth"
    torch.save(lm.module.state_dict(), pth)
    tok = tmp_path / "tokenizer.json"
    tok.write_text(lm.tokenizer_json, encoding="utf-8")
    return lm, pth, tok


def test_a_pth_state_dict_of_the_builtin_model_imports_and_updates(exported_files, tmp_path, new_texts):
    lm, pth, tok = exported_files
    out = CliRunner().invoke(app, ["import", str(pth), "--model", str(tmp_path / "m"), "--tokenizer", str(tok),
                                   "--set", "model.n_head=2", "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    store = ModelStore(tmp_path / "m")
    m = store.manifest("0001")
    assert report["version"] == "0001" and m["kind"] == "import" and m["source"]["format"] == "state_dict"
    assert m["source"]["path"] == str(pth.resolve())
    # the config records what was imported: a retrain or an update needs no flags
    assert (m["config"]["model"]["n_layer"], m["config"]["model"]["d_model"],
            m["config"]["full_training"]["max_seq_length"]) == (1, 32, 64)
    imported = load_version(store).lm
    assert torch.equal(logits(imported), logits(lm))
    # no --data: status says retention is not measured against the base domain yet
    status = CliRunner().invoke(app, ["status", "--model", str(tmp_path / "m")])
    assert status.exit_code == 0, status.output
    assert "not yet measured against the base domain" in " ".join(status.output.split())
    update = Engine(load_config(None, [*TINY, "validators=[finite]"])).update(
        [str(write_jsonl(tmp_path / "n.jsonl", new_texts[:20]))], tmp_path / "m")
    assert update["version"] == "0002" and update["status"] == "accepted"
    assert update["metrics"]["new_loss_after"] < update["metrics"]["new_loss_before"]


def test_a_safetensors_file_imports(exported_files, tmp_path):
    from retain.plugins.gpt import TransformerModel
    from safetensors.torch import save_file

    lm, _, tok = exported_files
    path = tmp_path / "weights.safetensors"
    save_file(TransformerModel.state_dict_for_save(lm.module), str(path))
    report = Engine(load_config(None, ["model.n_head=2", f"model.tokenizer={tok}"])).import_model(path, tmp_path / "m")
    assert report["source"]["format"] == "safetensors"
    assert torch.equal(logits(load_version(ModelStore(tmp_path / "m")).lm), logits(lm))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_pth_whose_pickle_would_run_code_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pth"
    payload = {"tok_emb.weight": torch.zeros(2, 2), "surprise": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    proc = subprocess.run([sys.executable, "-m", "retain", "import", str(evil), "--model", str(tmp_path / "m"),
                           "--tokenizer", "unused.json"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "arbitrary unpickling" in proc.stderr and "nothing in it was run" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "m" / "CURRENT").exists()


FACTORY = textwrap.dedent('''
    import torch

    class TransformerModel(torch.nn.Module):
        """A user's own model class: an embedding, a GRU, a head; ids -> logits."""

        def __init__(self, vocab_size=300, d_model=24):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab_size, d_model)
            self.rnn = torch.nn.GRU(d_model, d_model, batch_first=True)
            self.head = torch.nn.Linear(d_model, vocab_size, bias=False)
            self.head.weight = self.embed.weight  # tied, as many are

        def forward(self, ids):
            out, _ = self.rnn(self.embed(ids))
            return self.head(out)

    def build(vocab_size=300, d_model=24):
        return TransformerModel(vocab_size, d_model)
''')


def test_the_python_family_imports_a_users_own_model_class(tmp_path, monkeypatch, old_texts, new_texts):
    from retain.plugins.gpt import train_tokenizer

    (tmp_path / "usermodel.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermodel

    tokenizer = train_tokenizer(old_texts, 300)
    (tmp_path / "tok.json").write_text(tokenizer.to_str(), encoding="utf-8")
    torch.manual_seed(1)
    theirs = usermodel.build(tokenizer.get_vocab_size(), 24)
    torch.save(theirs.state_dict(), tmp_path / "model.pth")
    overrides = [*TINY, "model.family=python", "model.factory=usermodel:build", f"model.tokenizer={tmp_path / 'tok.json'}",
                 f"model.factory_args={{vocab_size: {tokenizer.get_vocab_size()}, d_model: 24}}",
                 "fine_tuning.strategy=[replay]"]
    base = write_jsonl(tmp_path / "base.jsonl", old_texts[:60])
    report = Engine(load_config(None, overrides)).import_model(tmp_path / "model.pth", tmp_path / "m", [str(base)])
    store = ModelStore(tmp_path / "m")
    m = store.manifest("0001")
    assert report["status"] == "accepted" and m["model"]["family"] == "python"
    assert m["model"]["aliases"] == {"head.weight": "embed.weight"}  # the tied head is saved once
    assert "strategy/replay.json" in m["files"]
    lm = load_version(store).lm
    ids = torch.tensor([tokenizer.encode("Hello there").ids])
    with torch.no_grad():
        assert torch.equal(lm.module(ids), theirs(ids))
    assert lm.module.inner.head.weight is lm.module.inner.embed.weight
    update = Engine(load_config(None, [*TINY, "validators=[finite,loss_trend]", "fine_tuning.strategy=[replay]",
                                       *lr(0.003)])).update(
        [str(write_jsonl(tmp_path / "n.jsonl", new_texts[:20]))], tmp_path / "m")
    assert update["status"] == "accepted" and update["metrics"]["new_loss_after"] < update["metrics"]["new_loss_before"]
    assert len(lm.generate(["The"], max_new_tokens=5, temperature=1.0, seed=0)[0].tokens) <= 5


def test_a_model_too_big_for_memory_exits_11_with_the_remedy(tmp_path, old_texts):
    # 2^20-wide layers: terabytes, refused by the allocator at once (no swap storm).
    data = write_jsonl(tmp_path / "d.jsonl", old_texts[:20])
    out = CliRunner().invoke(app, ["train", "--data", str(data), "--model", str(tmp_path / "m"), "--quiet",
                                   "--set", "model.d_model=1048576", "--set", "model.n_head=1",
                                   "--set", "model.vocab_size=300"])
    assert out.exit_code == 11, out.output
    text = " ".join(out.output.split())
    assert "out of memory creating the 'gpt' model" in text and "a smaller model" in text
    assert "Traceback" not in out.output
    assert not (tmp_path / "m" / "CURRENT").exists()


def test_a_version_too_big_to_load_exits_11_with_the_remedy(base_model, new_texts, tmp_path):
    # The manifest is what sizes the model before its weights are read: make it enormous.
    path = base_model / "versions/0001/manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model"]["architecture"].update(d_model=1048576, n_head=1)
    path.write_text(json.dumps(manifest))
    data = write_jsonl(tmp_path / "n.jsonl", new_texts[:10])
    out = CliRunner().invoke(app, ["update", "--data", str(data), "--model", str(base_model), "--quiet"])
    assert out.exit_code == 11, out.output
    text = " ".join(out.output.split())
    assert "out of memory loading version 0001" in text and "d_model 1048576" in text
    assert "free memory" in text and "Traceback" not in out.output


def test_an_import_reads_as_an_import_in_its_output_and_history(exported_files, tmp_path, old_texts, new_texts):
    _, pth, tok = exported_files
    runner = CliRunner(env={"COLUMNS": "200"})
    common = ["--tokenizer", str(tok), "--set", "model.n_head=2", "--set", "fine_tuning.max_seq_length=512"]
    bare = runner.invoke(app, ["import", str(pth), "--model", str(tmp_path / "bare"), *common])
    assert bare.exit_code == 0, bare.output
    said = " ".join(bare.output.split())
    # Not "Nothing new to learn: the model is unchanged." then a save, skipping step 7.
    assert "Nothing new to learn" not in said and "no base data: nothing to record" in said
    assert "7. Validate: no gate for an import" in said and "8. Save: the imported model is version 0001" in said
    # The context is the model's own (64): said once, at the import ...
    assert "fine_tuning.max_seq_length 512 exceeds the imported model's context 64" in said
    with_data = runner.invoke(app, ["import", str(pth), "--model", str(tmp_path / "m"), *common,
                                    "--data", str(write_jsonl(tmp_path / "base.jsonl", old_texts[:60]))])
    assert with_data.exit_code == 0, with_data.output
    # ... and not again at each update, which uses it
    sets = [a for o in [*TINY, "fine_tuning.max_seq_length=512", "validators=[finite]"] for a in ("--set", o)]
    update = runner.invoke(app, ["update", "-m", str(tmp_path / "m"), "-d",
                                 str(write_jsonl(tmp_path / "n.jsonl", new_texts[:20])), *sets])
    assert update.exit_code == 0, update.output
    assert "exceeds" not in update.output
    # An import with --data tokenizes its base data into a shard as a training does: the update replays from it.
    assert {"shards/0001.uint16", "shards/0002.uint16"} <= set(ModelStore(tmp_path / "m").manifest("0002")["files"])
    # An import learned nothing, at no rate: its pass over the base data only recorded state.
    rows = json.loads(runner.invoke(app, ["history", "-m", str(tmp_path / "m"), "--json"]).stdout)
    assert (rows[0]["kind"], rows[0]["items_learned"], rows[0]["learning_rate"]) == ("import", 0, None)
    assert rows[0]["items_recorded"] > 0 and rows[1]["items_learned"] > 0
    table = runner.invoke(app, ["history", "-m", str(tmp_path / "m")]).output
    line = next(x for x in table.splitlines() if x.split()[:1] == ["0001"]).split()
    assert line[:7] == ["0001", "-", "import", "accepted", "-", "-", "-"], line  # lr, learned, recipe


def test_a_python_factory_that_cannot_be_imported_says_where_it_must_be(tmp_path, monkeypatch):
    from retain.core.errors import ConfigError
    from retain.plugins.pymodel import load_factory

    monkeypatch.chdir(tmp_path)  # not there either
    monkeypatch.setattr(sys, "path", list(sys.path))  # (it adds the current directory to look there)
    with pytest.raises(ConfigError) as err:
        load_factory("nosuch_usermodel_xyz:build")
    message = str(err.value)
    assert "cannot import nosuch_usermodel_xyz" in message
    assert "PYTHONPATH" in message and "current directory" in message and "pip install -e ." in message
