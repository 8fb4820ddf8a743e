"""``precision: auto`` decided by measuring (core/runtime/precision.py): the decision follows the
measurement, the cache is keyed by machine and model shape, the probe changes nothing.

Every timing here is injected: no test asserts how fast anything really ran.
"""

from __future__ import annotations

import json

import pytest
import torch

from retain.core.storage import models
from retain.core.runtime import precision
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.learning.lm import Rows
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

CPU = torch.device("cpu")


class TinyLM(torch.nn.Module):
    """ids -> logits, with what a forward and backward pass may touch: dropout (the RNG) and
    batch norm's running statistics (a buffer)."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.norm = torch.nn.BatchNorm1d(dim)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        return self.head(self.drop(h))


def batch(rows: int = 4, width: int = 20):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 50, (rows, width), generator=g)
    return x, torch.roll(x, -1, dims=1)


class FakeSteps:
    """Injected step timings: ``seconds[precision]`` per step, and the order they were asked in."""

    def __init__(self, fp32: float, bf16: float):
        self.seconds, self.calls = {"fp32": fp32, "bf16": bf16}, []

    def __call__(self, which: str) -> float:
        self.calls.append(which)
        return self.seconds[which]


def never(which: str) -> float:
    raise AssertionError("measured, though the answer was known")


@pytest.mark.parametrize("fp32, bf16, chose, says", [
    (1.0, 0.5, "bf16", "measured 2.00x faster than fp32"),
    (1.0, 2.2, "fp32", "measured 2.20x slower than fp32"),
    (1.0, 0.99, "fp32", "bf16 is kept only from 1.05x"),  # within the noise: fp32's exact numbers
])
def test_the_choice_follows_the_measurement(tmp_path, fp32, bf16, chose, says):
    steps = FakeSteps(fp32, bf16)
    choice = precision.measured_choice(TinyLM(), batch(), CPU, time_steps=steps, cache=tmp_path / "p.json")
    assert choice.chose == chose and says in choice.why and "training steps of 4x20 tokens" in choice.why
    assert choice.speedup == round(fp32 / bf16, 3) and choice.cached is None
    # One untimed step of each, then alternating rounds: load on the machine hits both alike.
    assert steps.calls == ["fp32", "bf16"] * (1 + precision.ROUNDS)


def test_short_steps_are_measured_more_often_long_ones_just_enough():
    cheap, costly = FakeSteps(0.01, 0.02), FakeSteps(30.0, 20.0)
    precision.measure(TinyLM(), batch(), CPU, cheap)
    precision.measure(TinyLM(), batch(), CPU, costly)
    assert len(cheap.calls) == 2 * (1 + precision.MAX_ROUNDS) and len(costly.calls) == 2 * (1 + precision.ROUNDS)


def test_the_cache_answers_for_the_same_machine_and_shape_and_only_for_it(tmp_path):
    cache = tmp_path / "retain" / "precision.json"
    module = TinyLM()
    first = precision.measured_choice(module, batch(), CPU, time_steps=FakeSteps(1.0, 0.5), cache=cache)
    again = precision.measured_choice(module, batch(), CPU, time_steps=never, cache=cache)
    assert (first.chose, again.chose) == ("bf16", "bf16") and again.cached and f"cached {again.cached}" in again.why
    assert again.seconds == 0.0
    # Rows of another width in the same power-of-two bucket: the same answer, not measured.
    near = precision.measured_choice(module, batch(4, 30), CPU, time_steps=never, cache=cache)
    assert near.cached and near.batch == [4, 20] and "training steps of 4x20 tokens" in near.why  # as measured
    # Another architecture, another batch bucket, another thread count: each measured anew.
    other = FakeSteps(1.0, 2.0)
    assert precision.measured_choice(TinyLM(dim=32), batch(), CPU, time_steps=other, cache=cache).chose == "fp32"
    assert precision.measured_choice(module, batch(4, 100), CPU, time_steps=other, cache=cache).cached is None
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert precision.measured_choice(module, batch(), CPU, time_steps=other, cache=cache).cached is None
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache.read_text())["entries"]) == 4
    assert not [p for p in cache.parent.iterdir() if p.name != "precision.json"]  # no temporary file left


def test_the_key_names_the_cpu_its_flags_torch_threads_and_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512f amx_bf16 sse\n")
    assert precision.cpu_identity(str(info)) == ("Some CPU 9000", ["avx2", "avx512f", "amx_bf16"])
    key = precision.cache_key(TinyLM(), batch(8, 300))
    cpu, flags = precision.cpu_identity()
    assert key.startswith(f"{cpu}|{','.join(flags)}|torch {torch.__version__}|threads {torch.get_num_threads()}|")
    assert key.endswith("|TinyLM|params 1682/1682|batch 8x512")


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"version": 1, "entries": '
                                    b'{"k": {"fp32": "fast"}}}', b""])
def test_an_unreadable_cache_is_measured_again_and_rewritten(tmp_path, damage):
    cache = tmp_path / "precision.json"
    cache.write_bytes(damage)
    steps = FakeSteps(1.0, 0.5)
    assert precision.measured_choice(TinyLM(), batch(), CPU, time_steps=steps, cache=cache).chose == "bf16"
    assert steps.calls
    entries = json.loads(cache.read_text())["entries"]
    assert list(entries) == [precision.cache_key(TinyLM(), batch())]
    assert precision.measured_choice(TinyLM(), batch(), CPU, time_steps=never, cache=cache).cached


def test_a_cache_that_cannot_be_written_costs_a_measurement_not_the_run(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache's folder should be
    choice = precision.measured_choice(TinyLM(), batch(), CPU, time_steps=FakeSteps(1.0, 0.5),
                                       cache=blocked / "retain" / "precision.json")
    assert choice.chose == "bf16"


def test_the_probe_leaves_weights_gradients_buffers_and_the_random_stream_as_they_were():
    torch.manual_seed(3)
    module = TinyLM()
    module.eval()
    module.head.bias.grad = torch.full_like(module.head.bias, 7.0)  # a gradient left by someone else
    weights = {k: v.clone() for k, v in module.state_dict().items()}  # buffers too: running stats
    state = torch.get_rng_state()
    expected = torch.rand(5)
    torch.set_rng_state(state)
    times = precision.measure(module, batch(), CPU)  # the real steps: dropout draws, batch norm updates
    assert all(precision.ROUNDS <= len(t) <= precision.MAX_ROUNDS and all(s > 0 for s in t) for t in times.values())
    assert torch.equal(torch.rand(5), expected)
    after = module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert not module.training and torch.equal(module.head.bias.grad, torch.full_like(module.head.bias, 7.0))
    assert module.head.weight.grad is None


def test_the_probe_batch_is_a_training_batch_of_median_length_rows():
    lengths = [5, 50, 9, 30, 12, 7, 40, 20]
    x = torch.zeros(len(lengths), 64, dtype=torch.long)
    y = torch.full((len(lengths), 64), -100, dtype=torch.long)
    for i, n in enumerate(lengths):
        y[i, :n] = 1
    px, py = precision.probe_batch(Rows(x, y, torch.arange(len(lengths))), 4)
    assert px.shape == py.shape == (4, 30)  # rows of 9, 12, 20 and 30 tokens, cut to the longest
    assert precision.probe_batch(Rows(x, y, torch.arange(8)), 16)[0].shape == (8, 50)


def test_explicit_cuda_and_emulated_choices_are_not_measured(monkeypatch):
    from types import SimpleNamespace

    run = SimpleNamespace(config=SimpleNamespace(precision="bf16"), device=CPU)
    assert precision.choose_for_run(run, time_steps=never).to_json() == {
        "asked": "bf16", "chose": "bf16", "why": "asked for bf16", "seconds": 0.0}
    run.config.precision = "auto"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    choice = precision.choose_for_run(run, time_steps=never)
    assert choice.chose == "fp32" and "no native bf16" in choice.why
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    run.device = torch.device("cuda")
    assert precision.choose_for_run(run, time_steps=never).chose == "bf16"


def test_a_small_model_on_a_cpu_with_native_bf16_is_fp32_unmeasured(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    small = SimpleNamespace(config=SimpleNamespace(precision="auto"), device=CPU, model=torch.nn.Linear(1000, 720))
    choice = precision.choose_for_run(small, time_steps=never)
    assert choice.chose == "fp32" and choice.speedup is None and "0.72M parameters" in choice.why


@pytest.mark.parametrize("fp32, bf16, chose", [(1.0, 0.4, "bf16"), (1.0, 3.0, "fp32")])
def test_an_update_trains_in_what_was_measured_faster_and_says_why(base_model, new_texts, tmp_path, monkeypatch,
                                                                    fp32, bf16, chose):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "MEASURED_FROM", 0)  # the tiny model measured as a large one
    steps = FakeSteps(fp32, bf16)
    monkeypatch.setattr(precision, "_timed_step", lambda module, batch, device: steps)
    report = Engine(load_config(None, [*TINY, "precision=auto"])).update(
        [str(write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))], base_model)
    assert steps.calls
    assert report["precision"]["asked"] == "auto" and report["precision"]["chose"] == chose
    assert report["precision"]["why"].startswith(f"bf16 autocast measured {max(fp32, bf16) / min(fp32, bf16):.2f}x")
    manifest = ModelStore(base_model).manifest(report["version"])
    assert manifest["precision"] == chose and manifest["precision_choice"] == report["precision"]
    assert manifest["retention"]["scored"]["precision"] == chose  # scored as it trained
    assert (tmp_path / "cache" / "retain" / "precision.json").exists()
    assert "precision" in report["timings"]


def test_the_cli_prints_the_choice_and_why(base_model, new_texts, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from retain.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "MEASURED_FROM", 0)  # the tiny model measured as a large one
    monkeypatch.setattr(precision, "_timed_step", lambda module, batch, device: FakeSteps(1.0, 0.5))
    sets = [a for o in [*TINY, "precision=auto"] for a in ("--set", o)]
    data = write_jsonl(tmp_path / "a.jsonl", new_texts[:12])
    r = CliRunner().invoke(app, ["update", "-d", str(data), "-m", str(base_model), *sets])
    assert r.exit_code in (0, 10), r.output
    assert "  precision: bf16 (bf16 autocast measured 2.00x faster than fp32 on this CPU and model" in r.output
    # asked explicitly: used as asked, no line
    r = CliRunner().invoke(app, ["update", "-d", str(data), "-m", str(base_model), *sets, "--set", "precision=fp32"])
    assert "precision:" not in r.output


def test_validate_scores_a_version_in_the_precision_its_update_chose(base_model, new_texts, tmp_path, monkeypatch):
    from retain.core.quality import evaluation
    from retain.core.storage.versions import validate_version

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "MEASURED_FROM", 0)  # the tiny model measured as a large one
    monkeypatch.setattr(precision, "_timed_step", lambda module, batch, device: FakeSteps(3.0, 1.0))
    engine = Engine(load_config(None, [*TINY, "precision=auto"]))
    data = [str(write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))]
    version = engine.update(data, base_model)["version"]
    # The rule alone would now say fp32; the update measured bf16 faster and scored in it.
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    used, measure = [], evaluation.measure
    monkeypatch.setattr(evaluation, "measure", lambda *a, **k: used.append(a[5]) or measure(*a, **k))
    validate_version(engine, ModelStore(base_model), version, [str(write_jsonl(tmp_path / "b.jsonl", new_texts[20:30]))])
    assert used == ["bf16", "bf16"]


def test_a_search_measures_once_and_its_trials_train_in_its_choice(base_model, new_texts, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("optuna")
    from retain.tune import auto_update

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "MEASURED_FROM", 0)  # the tiny model measured as a large one
    monkeypatch.setattr(precision, "write_cache", lambda *a: None)  # nothing cached: a trial could only measure
    steps = FakeSteps(2.0, 1.0)
    monkeypatch.setattr(precision, "_timed_step", lambda module, batch, device: steps)
    specs = []

    class InProcess(ThreadPoolExecutor):  # trials in this process, where the injected timing holds
        def submit(self, fn, spec):
            specs.append(spec)
            return super().submit(fn, spec)

    engine = Engine(load_config(None, [*TINY, "precision=auto", "fine_tuning.strategy=rewarm,replay",
                                       "tune.max_trials=2"]))
    report = auto_update(engine, [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model,
                         budget=50.0, executor=InProcess(1))
    assert len(steps.calls) == 2 * (1 + precision.ROUNDS)  # the search's own run, once
    assert specs and all(s["precision"] == report["precision"] for s in specs)
    assert report["precision"]["chose"] == "bf16"


def test_a_probe_out_of_memory_keeps_fp32_uncached_and_other_errors_are_raised(tmp_path):
    def oom(which):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    cache = tmp_path / "precision.json"
    choice = precision.measured_choice(TinyLM(), batch(), CPU, time_steps=oom, cache=cache)
    assert choice.chose == "fp32" and "ran out of memory at 4x20 tokens" in choice.why and not cache.exists()

    def broken(which):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        precision.measured_choice(TinyLM(), batch(), CPU, time_steps=broken, cache=cache)


def test_the_probe_runs_the_real_model_on_a_real_batch_and_leaves_it_as_it_was(base_model, new_texts):
    from retain.core.storage.models import load_version

    lm = load_version(ModelStore(base_model)).lm
    rows = lm.encode(new_texts[:12], 64)
    weights = {k: v.clone() for k, v in lm.module.state_dict().items()}
    x, y = precision.probe_batch(rows, 8)
    assert x.shape[0] == 8 and x.shape[1] == int((y != -100).sum(1).max())
    times = precision.measure(lm.module, (x, y), CPU)
    assert len(times["fp32"]) == len(times["bf16"]) >= precision.ROUNDS
    assert all(torch.equal(lm.module.state_dict()[k], v) for k, v in weights.items())
    assert all(p.grad is None for p in lm.module.parameters())
