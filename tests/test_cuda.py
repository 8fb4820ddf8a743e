"""The engine on a CUDA device (``--device cuda``): these run only where CUDA exists.

On a machine without one they are skipped, with the reason; BENCHMARKS.md says where the
speed benchmark ran on a GPU and where none was available.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from retain.cli import app
from retain.core.storage import retention
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.quality.evaluation import score_texts
from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the --device cuda tests run only where one exists")

CUDA = [o for o in TINY if not o.startswith("device=")]
SETS = [arg for o in CUDA for arg in ("--set", o)]


def test_train_and_update_on_cuda_from_the_command_line(tmp_path, old_texts, new_texts):
    base = write_jsonl(tmp_path / "old.jsonl", old_texts)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(base), "--model", str(tmp_path / "m"), "--device", "cuda",
                                  "--json", *SETS])
    assert trained.exit_code == 0, trained.output
    new = write_jsonl(tmp_path / "new.jsonl", new_texts[:20])
    updated = runner.invoke(app, ["update", "--data", str(new), "--model", str(tmp_path / "m"), "--device", "cuda",
                                  "--json", "--set", "validators=[finite,loss_trend,generation]", *SETS])
    assert updated.exit_code == 0, updated.output
    report = json.loads(updated.stdout.strip().splitlines()[-1])
    assert report["status"] == "accepted" and len(report["epoch_losses"]) == 2
    # Saved from the GPU, loaded on the CPU: the same weights, finite.
    store = ModelStore(tmp_path / "m")
    assert store.manifest(report["version"])["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    lm = load_version(store).lm
    assert all(torch.isfinite(p).all() for p in lm.module.parameters())


def test_cuda_scores_match_cpu_scores(base_model, old_texts):
    store = ModelStore(base_model)
    cpu = load_version(store).lm
    gpu = load_version(store, device=torch.device("cuda")).lm
    texts = old_texts[:20]
    on_cpu = score_texts(cpu, texts, 64)
    assert torch.allclose(score_texts(gpu, texts, 64), on_cpu, rtol=1e-3)
    if torch.cuda.is_bf16_supported():  # bf16 autocast: close, not equal
        assert torch.allclose(score_texts(gpu, texts, 64, precision="bf16"), on_cpu, rtol=2e-2)


def test_cuda_generation_is_seeded(base_model):
    gpu = load_version(ModelStore(base_model), device=torch.device("cuda")).lm
    prompts = ["The", "In this", "A"]
    a = gpu.generate(prompts, max_new_tokens=12, temperature=0.8, seed=1)
    b = gpu.generate(prompts, max_new_tokens=12, temperature=0.8, seed=1)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    vocab = gpu.tokenizer.get_vocab_size()
    assert all(0 <= t < vocab for s in a for t in s.tokens) and len(a) == 3


def test_engine_update_on_cuda_reuses_stored_losses(base_model, new_texts, tmp_path):
    cfg = load_config(None, [*CUDA, "device=cuda", "validators=[finite]"])
    first = Engine(cfg).update([str(write_jsonl(tmp_path / "a.jsonl", new_texts[:15]))], base_model)
    second = Engine(cfg).update([str(write_jsonl(tmp_path / "b.jsonl", new_texts[15:30]))], base_model)
    assert first["status"] == second["status"] == "accepted"
    pool = retention.load(ModelStore(base_model), first["version"], cfg.validation.eval_max_items, cfg.seed)
    k = second["metrics"]["retention_items"]
    assert pool.scored["device"] == "cuda"
    stored = [r["loss"] for r in pool.items[:k]]
    assert second["metrics"]["retention_loss_before"] == pytest.approx(sum(stored) / k, rel=1e-9)
