"""What makes an update fast, checked for what it computes (never for how long it takes):
generation with a key/value cache, scoring in token-bounded batches, the parent's retention
losses reused, the training stack's import reported apart, seconds per validator."""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch

from retain.core.storage import retention
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.quality.evaluation import score_texts
from retain.core.hookspecs import hookimpl
from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore
from retain.plugins.gpt import Architecture, TransformerModel

from conftest import TINY, write_jsonl


def _naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    idx = torch.tensor([prompt])
    for _ in range(n):
        idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt):].tolist()


def test_cached_batched_generation_matches_one_prompt_at_a_time_without_a_cache():
    torch.manual_seed(0)
    model = TransformerModel(Architecture(vocab_size=60, n_layer=2, n_head=2, d_model=16, context=48)).eval()
    with torch.no_grad():  # larger weights than the init's: the next token depends on the whole context
        for p in model.parameters():
            p.mul_(15)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [30, 31, 32]]  # different lengths: left padding in one batch
    fast = model.generate(prompts, 12, temperature=0)
    assert fast == [_naive_greedy(model, p, 12) for p in prompts]
    # Stops as soon as every row has produced a stop token.
    first = {row[0] for row in fast}
    assert all(len(row) == 1 for row in model.generate(prompts, 12, temperature=0, stop=frozenset(first)))
    # Prompt and output never exceed the learned positions.
    assert all(len(row) == 47 for row in model.generate(prompts, 200, temperature=0))


def test_sampled_generation_is_seeded(base_model):
    lm = load_version(ModelStore(base_model)).lm
    a = lm.generate(["The", "In this"], max_new_tokens=8, temperature=0.8, seed=3)
    b = lm.generate(["The", "In this"], max_new_tokens=8, temperature=0.8, seed=3)
    assert [s.tokens for s in a] == [s.tokens for s in b] and all(s.tokens for s in a)


def test_scoring_in_large_batches_matches_one_text_at_a_time(base_model, old_texts):
    lm = load_version(ModelStore(base_model)).lm
    texts = old_texts[:9] + ["short", "x" * 900]  # a long text splits into several rows
    together = score_texts(lm, texts, 64, batch_tokens=4096)
    tiny_batches = score_texts(lm, texts, 64, batch_tokens=1)
    alone = torch.cat([score_texts(lm, [t], 64) for t in texts])
    assert torch.allclose(together, alone, rtol=1e-5) and torch.allclose(tiny_batches, alone, rtol=1e-5)


def test_reservoir_keeps_a_uniform_sample_of_every_held_out_item():
    # 60 versions of 10 held-out items each, a cap of 50: each of the 600 items should be kept
    # with probability 50/600, whichever version held it out.
    kept_from = [0] * 60
    for trial in range(200):
        current = None
        for v in range(60):
            held = [{"text": f"{v}-{i}", "hash": f"{v}-{i}", "origin": "", "tokens": 1} for i in range(10)]
            current = retention.extend(current, held, f"{v:04d}", 50, seed=trial)
            assert len(current.items) == min(50, 10 * (v + 1)) and current.seen == 10 * (v + 1)
        for row in current.items:
            kept_from[int(row["text"].split("-")[0])] += 1
    early, late = sum(kept_from[:20]), sum(kept_from[40:])
    expected = 200 * 50 / 3  # a third of the versions, each holding a third of the sample
    assert abs(early - expected) < 0.1 * expected and abs(late - expected) < 0.1 * expected


def test_stored_losses_are_used_only_where_scored_and_scored_the_same_way():
    held = [{"text": t, "hash": t, "origin": "", "tokens": 5} for t in "abc"]
    held[0]["loss"], held[2]["loss"] = 1.0, 3.0
    pool = retention.extend(None, held, "0001", 10, 0, {"max_len": 8})
    assert pool.losses({"max_len": 8}) == [1.0, None, 3.0]
    assert pool.losses({"max_len": 16}) == [None, None, None]
    assert retention.extend(None, [dict(held[1])], "0001", 10, 0, {"max_len": 8}).scored is None


def test_an_update_scores_the_pool_within_its_budget():
    tokens = [10, 10, 50, 10, 10]
    assert retention.budgeted(tokens, budget=0, at_least=2) == 2       # the floor, whatever the budget
    assert retention.budgeted(tokens, budget=70, at_least=2) == 3      # then while they fit, in order
    assert retention.budgeted(tokens, budget=1000, at_least=2) == 5
    assert retention.budgeted(tokens[:1], budget=0, at_least=2) == 1


def test_budget_bounds_the_retention_items_an_update_scores(base_model, new_texts, tmp_path):
    small = Engine(load_config(None, [*TINY, "validation.eval_min_items=5", "validation.eval_budget=0"])).update(
        [str(write_jsonl(tmp_path / "a.jsonl", new_texts[:15]))], base_model, check=True)
    assert small["metrics"]["retention_items"] == 5
    large = Engine(load_config(None, [*TINY, "validation.eval_min_items=5", "validation.eval_budget=100"])).update(
        [str(write_jsonl(tmp_path / "a.jsonl", new_texts[:15]))], base_model, check=True)
    assert large["metrics"]["retention_items"] == 24  # the whole pool: the base's held-out items


def test_the_budget_is_shared_by_every_scoring_pass(base_model, new_texts, tmp_path):
    """Early stopping scores the retention items after each epoch: with it on, a budget buys
    a third of the items over 3 epochs that it buys with one scoring pass."""
    data = str(write_jsonl(tmp_path / "a.jsonl", new_texts[:15]))
    scored = {}
    for stopping in ("true", "false"):
        report = Engine(load_config(None, [*TINY, "validation.eval_min_items=1", "validation.eval_budget=0.05",
                                           "fine_tuning.epochs=3",
                                           f"fine_tuning.early_stopping.enabled={stopping}"])).update(
            [data], base_model, check=True)
        scored[stopping] = report["metrics"]["retention_items"]
    assert 1 <= scored["true"] < scored["false"] < 24, scored
    assert scored["true"] <= scored["false"] / 3 + 1, scored


def test_scoring_batches_are_small_on_a_cpu_and_large_on_an_accelerator(base_model, old_texts):
    from retain.core.quality.evaluation import score_tokens

    assert score_tokens(torch.device("cpu")) == score_tokens("cpu") == 1024
    assert score_tokens(torch.device("cuda", 0)) == score_tokens("cuda:0") == 8192
    # By default a CPU scores in batches of at most 1,024 tokens: the same losses as one large
    # batch, in more forward passes, none wider than the bound.
    lm = load_version(ModelStore(base_model)).lm
    texts = old_texts[:20]  # about 4,000 tokens: more than one CPU batch, less than one large batch
    seen = []
    hook = lm.module.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    try:
        default = score_texts(lm, texts, 64)
        by_default = list(seen)
        seen.clear()
        large = score_texts(lm, texts, 64, batch_tokens=8192)
    finally:
        hook.remove()
    assert sum(by_default) > 1024 and len(seen) == 1 and len(by_default) > 1
    assert max(by_default) <= 1024
    assert torch.allclose(default, large, rtol=1e-5)


def test_update_reuses_the_parents_stored_retention_losses(base_model, new_texts, tmp_path):
    cfg = load_config(None, TINY)
    store = ModelStore(base_model)
    first = Engine(cfg).update([str(write_jsonl(tmp_path / "a.jsonl", new_texts[:15]))], base_model)
    kept = retention.load(store, first["version"], cfg.validation.eval_max_items, cfg.seed)
    assert kept.scored is not None and len(kept.items) == first["metrics"]["retention_items"] + 3

    events = []

    class Listener:
        @hookimpl
        def step_finished(self, run, step, info, seconds):
            events.append((step, dict(info)))

    second = Engine(cfg, listeners=[Listener()]).update(
        [str(write_jsonl(tmp_path / "b.jsonl", new_texts[15:30]))], base_model)
    before = dict(events)["evaluate_before"]
    assert before["retention_stored"] == before["retention_items"] == 27
    # The stored losses are what scoring the parent again gives, item by item.
    parent = load_version(store, first["version"]).lm
    precision = store.manifest(first["version"])["precision"]  # scored as the update scores
    again = score_texts(parent, kept.texts, cfg.fine_tuning.max_seq_length, precision=precision)
    assert torch.allclose(torch.tensor([r["loss"] for r in kept.items], dtype=torch.float64), again, rtol=1e-5)
    assert second["metrics"]["retention_loss_before"] == pytest.approx(float(again.mean()), rel=1e-6)
    # Scored another way (here a shorter max_len), they are scored again.
    events.clear()
    Engine(load_config(None, [*TINY, "fine_tuning.max_seq_length=32"]), listeners=[Listener()]).update(
        [str(write_jsonl(tmp_path / "c.jsonl", new_texts[30:45]))], base_model)
    assert dict(events)["evaluate_before"]["retention_stored"] == 0


def test_import_is_a_step_of_its_own_and_validators_are_timed(base_model, new_texts, tmp_path):
    report = Engine(load_config(None, TINY)).update([str(write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))],
                                                    base_model)
    steps = list(report["timings"])
    assert steps.index("evaluate_before") < steps.index("import") < steps.index("train")
    # Early stopping's judgment after each epoch is measuring inside "train": reported apart.
    assert 0 < report["timings"]["judge_epochs"] < report["timings"]["train"]
    assert all(v["seconds"] is not None and v["seconds"] >= 0 for v in report["verdicts"])
    saved = json.loads((base_model / "versions" / report["version"] / "report.json").read_text())
    assert [v["validator"] for v in saved["verdicts"]] == load_config(None, TINY).validators
    assert all("seconds" in v for v in saved["verdicts"])


def test_preload_hands_back_the_import_error():
    from retain.core.runtime.preload import Preload

    with pytest.raises(ModuleNotFoundError):
        Preload("retain.no_such_module_%d" % random.randrange(10**6)).wait()


def test_a_preload_waits_for_an_import_another_thread_has_not_finished(tmp_path, monkeypatch):
    """An earlier run's background import still going (the Python API after a run that failed
    early; seen in the test suite): a new run must get the whole module, not the half-initialized
    one already in sys.modules."""
    import time

    from retain.core.runtime.preload import Preload

    name = "retain_slow_import_%d" % random.randrange(10**6)
    (tmp_path / f"{name}.py").write_text("import time\ntime.sleep(1.0)\ndef train():\n    return 'trained'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = Preload(name)
    deadline = time.monotonic() + 10
    while name not in sys.modules and time.monotonic() < deadline:  # the first import has begun
        time.sleep(0.01)
    second = Preload(name)
    assert second.wait().train() == "trained" and first.wait().train() == "trained"
    sys.modules.pop(name, None)


def test_status_reads_the_drift_the_update_measured(base_model, new_texts, tmp_path):
    from retain.core.quality.retrain import assess
    from retain.core.storage.store import HOLDOUT

    cfg = load_config(None, TINY)
    report = Engine(cfg).update([str(write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))], base_model)
    store = ModelStore(base_model)
    stored = store.manifest(report["version"])["metrics"]["base_holdout_loss"]
    lm = load_version(store).lm
    texts = [r["text"] for r in store.read_jsonl("0001", HOLDOUT)]
    assert stored == pytest.approx(float(score_texts(lm, texts, lm.context).mean()), rel=1e-6)
    drift = next(c for c in assess(store, cfg).checks if c.name == "retention_drift")
    assert drift.numbers["loss_now"] == stored


def test_training_import_defers_what_avalanche_imports_but_an_update_never_uses():
    # In a fresh process: the engine's background import leaves qpsolvers, wandb and gdown
    # unexecuted (jax, pulled in by qpsolvers, is not imported at all), and each still works
    # when first used: GEM's solver, a user's own `import wandb`.
    import subprocess
    import sys

    code = ("import sys\nfrom retain.core.runtime.preload import Preload\nPreload().wait()\n"
            "print(sorted(n for n in ('qpsolvers', 'wandb', 'gdown') if type(sys.modules[n]).__name__ == '_LazyModule'))\n"
            "print('jax' in sys.modules)\n"
            "import numpy as np, qpsolvers\n"
            "x = qpsolvers.solve_qp(np.eye(2), np.array([-1.0, -1.0]), solver='quadprog')\n"
            "import wandb\nprint([round(float(v), 6) for v in x], isinstance(wandb.__version__, str))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["['gdown', 'qpsolvers', 'wandb']", "False", "[1.0, 1.0] True"]


def test_a_training_command_ends_without_teardown_and_keeps_its_exit_code_and_output(base_model, new_texts,
                                                                                        tmp_path):
    # `retain update` skips the interpreter's teardown once every atexit handler has run: the
    # exit code (10: rejected) and the JSON on stdout must survive it, and the ledger is closed.
    import subprocess
    import sys

    sets = [arg for o in TINY for arg in ("--set", o)]
    data = write_jsonl(tmp_path / "a.jsonl", new_texts[:12])
    # A handler registered while the command runs (as a plugin's would be) still runs.
    code = ("import atexit, sys\nimport retain.cli as cli\ncommand = cli.app\n"
            "def app():\n    atexit.register(lambda: sys.stderr.write('handler ran\\n'))\n    command()\n"
            "cli.app = app\nsys.argv[0] = 'retain'\ncli.main()")
    proc = subprocess.run([sys.executable, "-c", code, "update", "--model", str(base_model), "--data", str(data),
                           "--lr", "1.0", "--json", "-q", *sets], capture_output=True, text=True)
    assert proc.returncode == 10, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "rejected"
    assert "handler ran" in proc.stderr
    assert sorted(p.name for p in base_model.iterdir() if p.name.startswith("ledger")) == ["ledger.sqlite"]


def test_auto_precision_is_bf16_where_the_hardware_computes_in_bf16(monkeypatch, tmp_path):
    from retain.core.storage import models

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    detect = models.cpu_has_native_bf16.__wrapped__  # uncached, a cpuinfo file of our own
    for name in ("fp32", "bf16"):  # asked for explicitly: as asked, anywhere
        assert models.resolve_precision(name, cpu) == name
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.resolve_precision("auto", cpu) == "fp32"
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert models.resolve_precision("auto", cuda) == ("bf16" if supported else "fp32")
    # The CPU's flags: AVX512 alone emulates bf16 (torch's mkldnn check says yes to it too).
    flags = {"avx512": "fpu sse2 avx2 avx512f avx512bw avx512vl", "avx512_bf16": "avx2 avx512f avx512_bf16",
             "amx": "avx2 amx_bf16 amx_tile"}
    for name, line in flags.items():
        (tmp_path / name).write_text(f"processor\t: 0\nflags\t\t: {line}\n\nprocessor\t: 1\nflags\t\t: {line}\n")
    assert [detect(str(tmp_path / n)) for n in flags] == [False, True, True]
    assert detect(str(tmp_path / "absent")) is False


def test_an_update_on_a_cpu_with_native_bf16_trains_and_scores_in_bf16(base_model, new_texts, tmp_path,
                                                                       monkeypatch):
    from retain.core.storage import models
    from retain.core.runtime import precision

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "MEASURED_FROM", 0)  # the tiny model measured as a large one
    # auto measures both on such a CPU (tests/test_precision.py): here bf16 measures faster
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_timed_step", lambda module, batch, device: {"fp32": 2.0, "bf16": 1.0}.get)
    report = Engine(load_config(None, [*TINY, "precision=auto"])).update(
        [str(write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))], base_model)
    manifest = ModelStore(base_model).manifest(report["version"])
    assert manifest["precision"] == "bf16" and manifest["retention"]["scored"]["precision"] == "bf16"
    assert all(loss > 0 for loss in report["epoch_losses"])
