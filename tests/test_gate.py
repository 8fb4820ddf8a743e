"""The quality gate: validators, rejected versions, remedies, exit codes, OOM retry, dry run, check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.errors import EXIT_CODES, UpdateRejected
from retain.core.hookspecs import hookimpl
from retain.core.quality.evaluation import score_texts
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.storage.store import HOLDOUT, WEIGHTS, ModelStore, sha256_file
from retain.core.learning.strategy import TrainSettings
from retain.core.quality.validation import Evidence

from conftest import TINY, write_jsonl, lr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SETS = [arg for o in TINY for arg in ("--set", o)]
runner = CliRunner(env={"COLUMNS": "200"})


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _validator(name, **options):
    cfg = load_config(None, [*TINY, *(f"options.{name}.{k}={v}" for k, v in options.items())])
    return Registry(make_plugin_manager()).build("validators", name, cfg)


def _evidence(**kw):
    base = dict(kind="fine_tuning", epoch_losses=[4.0, 3.9], retention_before=None, retention_after=None,
                new_before=None, new_after=None, settings=TrainSettings(1e-4, 3, 8, 64))
    base.update(kw)
    return Evidence(**base)


def _holdout_loss(store: ModelStore, version: str) -> float:
    """``version``'s mean loss on the base model's held-out items, scored as training did."""
    lm = load_version(store, version).lm
    texts = [r["text"] for r in store.read_jsonl("0001", HOLDOUT)]
    return float(score_texts(lm, texts, lm.context).mean())


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


# --- validators on their own -----------------------------------------------------------------

def test_retention_fails_when_an_average_gain_hides_many_items_made_worse():
    before = torch.full((10,), 4.0, dtype=torch.float64)
    after = torch.tensor([3.0] * 6 + [4.6] * 4, dtype=torch.float64)  # mean 3.64: better on average
    verdict = _validator("retention").validate(_evidence(
        retention_before=4.0, retention_after=float(after.mean()),
        retention_items_before=before, retention_items_after=after))
    assert verdict.status == "fail"
    assert "4/10 items worse" in verdict.reason and "made worse" in verdict.reason
    assert verdict.numbers["share_worse"] == pytest.approx(0.4)
    assert verdict.remedy == ("quality degrades: halve the learning rate, 1e-4 -> 5e-5 "
                              "(retain update --lr 5e-5)")
    # The same average gain spread over every item passes.
    even = torch.full((10,), 3.64, dtype=torch.float64)
    assert _validator("retention").validate(_evidence(
        retention_before=4.0, retention_after=3.64, retention_items_before=before,
        retention_items_after=even)).status == "pass"


def test_retention_fails_on_mean_increase_above_threshold():
    before = torch.full((20,), 4.0, dtype=torch.float64)
    after = torch.full((20,), 4.3, dtype=torch.float64)  # +7.5%, each item +7.5% (< 10% per item)
    ev = _evidence(retention_before=4.0, retention_after=4.3, retention_items_before=before,
                   retention_items_after=after)
    assert _validator("retention").validate(ev).status == "fail"
    assert _validator("retention", max_increase=0.1).validate(ev).status == "warn"


def test_loss_trend_fails_on_rising_losses_and_warns_on_a_bump():
    trend = _validator("loss_trend")
    assert trend.validate(_evidence(epoch_losses=[4.0, 4.2, 4.5])).status == "fail"
    bump = trend.validate(_evidence(epoch_losses=[4.0, 4.1, 3.9]))
    assert bump.status == "warn" and "epoch 2" in bump.reason
    assert trend.validate(_evidence(epoch_losses=[4.0, 3.9, 3.8])).status == "pass"


def test_learning_needs_new_loss_to_fall_and_gives_the_raise_remedy():
    learning = _validator("learning")
    flat = _evidence(new_before=4.0, new_after=3.999, extra={"new_holdout_items": 8})
    verdict = learning.validate(flat)
    assert verdict.status == "fail"
    assert verdict.remedy == ("doesn't learn new: raise the learning rate, 1e-4 -> 2e-4 (--lr 2e-4), "
                              "or add an epoch, 3 -> 4 (--epochs 4)")
    # Early stopping kept epoch 2 of 3: the third did not learn more, a fourth would not either.
    stopped = learning.validate(_evidence(new_before=4.0, new_after=3.999, extra={"new_holdout_items": 8},
                                          kept_epoch=2))
    assert stopped.remedy == ("doesn't learn new: raise the learning rate, 1e-4 -> 2e-4 (--lr 2e-4); not more "
                              "epochs: early stopping kept epoch 2 of 3, the later ones did not learn more")
    few = _evidence(new_before=4.0, new_after=3.999, extra={"new_holdout_items": 2})
    assert learning.validate(few).status == "warn"  # two items are noise, not a verdict
    assert learning.validate(_evidence(new_before=4.0, new_after=3.9,
                                       extra={"new_holdout_items": 8})).status == "pass"


def test_learning_is_judged_on_the_pool_of_recent_updates_held_out_items():
    learning = _validator("learning")
    today = {"new_before": 4.0, "new_after": 4.02, "extra": {"new_holdout_items": 4}}  # 4 noisy items rose
    # Alone, the 4 items reject the day; with the 40 of the earlier updates the pool fell: accepted.
    assert learning.validate(_evidence(**today)).status == "fail"
    pooled = learning.validate(_evidence(**today, new_pool_before=3.8, new_pool_after=3.7, new_pool_items=44))
    assert pooled.status == "pass", pooled.reason
    assert "44 items in all" in pooled.reason and pooled.numbers["pool_items"] == 44
    # Neither today's items nor the pool learned: rejected, with the raise remedy.
    flat = learning.validate(_evidence(**today, new_pool_before=3.8, new_pool_after=3.8, new_pool_items=44))
    assert flat.status == "fail" and "must fall" in flat.reason and "raise the learning rate" in flat.remedy
    # Today's items learned, the pool did not fall by 0.1% but did not rise: accepted.
    learned = {"new_before": 4.0, "new_after": 3.9, "extra": {"new_holdout_items": 4}}
    assert learning.validate(_evidence(**learned, new_pool_before=3.8, new_pool_after=3.7999,
                                       new_pool_items=44)).status == "pass"
    # ... nor when it rose by less than min_drop (0.1%): a change within it is noise, either way
    # (a rise of 0.01% on 44 items rejected days of a month, BENCHMARKS.md).
    assert learning.validate(_evidence(**learned, new_pool_before=3.8, new_pool_after=3.8030,
                                       new_pool_items=44)).status == "pass"
    assert learning.validate(_evidence(**learned, new_pool_before=3.8, new_pool_after=3.8040,
                                       new_pool_items=44)).status == "fail"
    # Today's items learned at the cost of the earlier days' (the pool rose): rejected as forgetting.
    forgot = learning.validate(_evidence(**learned, new_pool_before=3.8, new_pool_after=3.85, new_pool_items=44))
    assert forgot.status == "fail" and "earlier updates' items got worse" in forgot.reason
    assert "halve the learning rate" in forgot.remedy


def test_duration_warns_with_the_too_slow_remedy():
    slow = _validator("duration", max_train_seconds=10).validate(_evidence(timings={"train": 30.0}))
    assert slow.status == "warn"
    assert slow.remedy == "too slow: reduce the epochs, 3 -> 2 (--epochs 2), about 20s of training instead of 30s"
    assert _validator("duration").validate(_evidence(timings={"train": 30.0})).status == "pass"


def test_finite_fails_on_nan_weights(base_model):
    lm = load_version(ModelStore(base_model)).lm
    with torch.no_grad():
        lm.module.ln_f.weight[0] = float("nan")
    verdict = _validator("finite").validate(_evidence(model=lm))
    assert verdict.status == "fail" and "ln_f.weight" in verdict.reason


def _peaked(loaded, token_id: int):
    """Make the model put (almost) all probability on ``token_id`` whatever the input."""
    model = loaded.model
    with torch.no_grad():
        unit = torch.zeros(model.arch.d_model)
        unit[0] = 1.0
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(10 * unit)
        model.tok_emb.weight[token_id] = 10 * unit  # tied head: logit of token_id = 100
    return loaded.lm


def test_generation_passes_a_healthy_model_and_fails_loops_and_empty_output(base_model):
    store = ModelStore(base_model)
    gen = _validator("generation")
    healthy = load_version(store)
    ok = gen.validate(_evidence(model=healthy.lm))
    assert ok.status == "pass", ok.reason

    looping = load_version(store)
    word = looping.tokenizer.encode(" the").ids[0]
    loop = gen.validate(_evidence(model=_peaked(looping, word)))
    assert loop.status == "fail" and loop.numbers["repetition"] > 0.9
    assert loop.remedy.startswith("quality degrades: halve the learning rate")

    mute = load_version(store)
    silent = gen.validate(_evidence(model=_peaked(mute, mute.lm.eos_id)))
    assert silent.status == "fail" and silent.numbers["empty_share"] == 1.0


# --- the gate, end to end ------------------------------------------------------------------------

def test_absurd_learning_rate_is_rejected_and_current_model_is_kept(base_model, new_texts, tmp_path):
    store = ModelStore(base_model)
    weights_before = sha256_file(base_model / "versions/0001" / WEIGHTS)
    loss_at_training = store.manifest("0001")["metrics"]["retention_loss_after"]
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])

    result = _cli("update", "--model", base_model, "--data", data, "--lr", "1.0", *SETS)

    assert result.exit_code == UpdateRejected.exit_code == 10, result.output
    assert store.current() == "0001"
    assert store.versions() == ["0001", "0002"]
    manifest = store.manifest("0002")
    assert manifest["status"] == "rejected" and manifest["parent"] == "0001"
    report = json.loads((base_model / "versions/0002/report.json").read_text())
    failed = {v["validator"] for v in report["verdicts"] if v["status"] == "fail"}
    # Forgetting always shows; which other checks trip (loss trend, degenerate samples, ...)
    # depends on the batch order, so only ask that more than one did.
    assert "retention" in failed and len(failed) >= 2
    steps = [s["step"] for s in report["next_steps"]]
    assert steps[0].startswith("quality degrades: halve the learning rate, 1 -> 0.5 (retain update --lr 0.5)")
    assert not any(s.startswith("doesn't learn new") for s in steps)  # lowering comes first
    # The old model is untouched: same file, same held-out loss as right after its training.
    assert sha256_file(base_model / "versions/0001" / WEIGHTS) == weights_before
    assert _holdout_loss(store, store.current()) == pytest.approx(loss_at_training, rel=1e-6)
    out = result.output
    assert "kept as rejected" in out and "fail retention" in out
    assert "next step" in out and "--lr 0.5" in out
    assert "Full retrain or fine-tune?" in out and "rejected the last 1 update" in out


def _documented_exit_codes(path: Path) -> dict[int, str]:
    """The rows of the first ``| code | meaning ...`` table after an "Exit codes" heading."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and line.endswith("Exit codes"))
    rows: dict[int, str] = {}
    for line in lines[start + 1:]:
        if rows and not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            assert int(cells[0]) not in rows, f"{path.name}: code {cells[0]} listed twice"
            rows[int(cells[0])] = cells[1]
    return rows


def test_rejected_and_user_error_exit_codes_differ(base_model, tmp_path):
    from retain.core import errors

    user_errors = [c for c in vars(errors).values()
                   if isinstance(c, type) and issubclass(c, errors.RetainError) and c is not errors.RetainError]
    codes = [c.exit_code for c in user_errors]
    # Every user-facing error has its own code, none of the generic ones (success, bug); a usage
    # mistake found after parsing is click's usage code.
    assert len(set(codes)) == len(codes), {c.__name__: c.exit_code for c in user_errors}
    assert not set(codes) & {0, 1} and errors.UsageError.exit_code == errors.USAGE == 2
    # The gate's rejection is exactly 10, as documented for cron jobs.
    assert UpdateRejected in user_errors and UpdateRejected.exit_code == 10
    # Documented: EXIT_CODES (what --help prints) lists exactly these codes and the generic ones,
    # and the README's and the quality-gate page's tables list the same codes.
    assert set(EXIT_CODES) == {0, 1, 2, *codes}
    assert "rejected by the quality gate" in EXIT_CODES[10]
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "README.md", root / "docs" / "quality-gate.md"):
        table = _documented_exit_codes(doc)
        assert set(table) == set(EXIT_CODES), doc.name
        assert "quality gate" in table[10] and "rejected" in table[10], doc.name
    assert f"{UpdateRejected.exit_code} update rejected by the quality gate" in _cli("--help").output
    # A user error on the same command exits with its own code, not the gate's.
    missing = _cli("update", "--model", base_model, "--data", tmp_path / "missing.jsonl", *SETS)
    assert missing.exit_code == errors.SourceError.exit_code == 4 and "not found" in missing.output


def test_learning_rate_too_low_is_rejected_with_raise_remedy(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    with pytest.raises(UpdateRejected) as err:
        Engine(load_config(None, [*TINY, *lr(1e-9)])).update([str(data)], base_model)
    report = err.value.report
    failed = [v["validator"] for v in report["verdicts"] if v["status"] == "fail"]
    assert failed == ["learning"]
    step = report["next_steps"][0]["step"]
    assert step.startswith("doesn't learn new: raise the learning rate, 1e-9 -> 2e-9 (--lr 2e-9)")
    # Another epoch is advised only when early stopping kept the last one.
    kept = report["early_stopping"]["best_epoch"]
    assert step.endswith(", or add an epoch, 2 -> 3 (--epochs 3)" if kept == 2 else
                         f"; not more epochs: early stopping kept epoch {kept} of 2, the later ones did not learn more")
    assert ModelStore(base_model).current() == "0001"


class OutOfMemoryAboveFour:
    """Acts like a GPU that holds at most 4 sequences: a batch of more runs out of memory,
    after two optimizer steps have already changed the weights."""

    def __init__(self, original: dict):
        self.original = original
        self.big_batches = 0
        self.weights_at_retry = None

    @hookimpl
    def training_penalty(self, run, model, inputs, targets, logits):
        if inputs.shape[0] > 4:
            self.big_batches += 1
            if self.big_batches == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        elif self.big_batches >= 3 and self.weights_at_retry is None:  # the retry's first step
            self.weights_at_retry = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return None


def test_out_of_memory_retries_with_half_the_batch_size_from_the_original_weights(base_model, new_texts, tmp_path):
    store = ModelStore(base_model)
    original = {k: v.clone() for k, v in load_version(store).model.state_dict().items()}
    oom = OutOfMemoryAboveFour(original)
    engine = Engine(load_config(None, [*TINY, "fine_tuning.batch_size=8", *lr(0.003)]),
                    pm=make_plugin_manager(extra_plugins=[oom]))
    report = engine.update([str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model)

    assert oom.big_batches == 3  # two steps at batch 8, then out of memory
    assert [(r["batch_size"], r["retry_batch_size"]) for r in report["oom_retries"]] == [(8, 4)]
    assert report["settings"]["batch_size"] == 4
    assert all(torch.equal(oom.weights_at_retry[k], original[k]) for k in original)
    assert report["status"] == "accepted" and store.current() == "0002"
    assert any(s["step"].startswith("out of memory: batch_size 8 did not fit, the update retried with 4")
               for s in report["next_steps"])


def test_custom_validator_from_examples_can_reject(base_model, new_texts, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES / "perplexity-ceiling"))
    import retain_perplexity_ceiling as plugin

    pm = make_plugin_manager(extra_plugins=[plugin])
    assert "perplexity_ceiling" in Registry(pm).by_kind["validators"]
    cfg = load_config(None, [*TINY, "validators=[finite,retention,perplexity_ceiling]",
                             "options.perplexity_ceiling.max_retention_perplexity=5"])
    with pytest.raises(UpdateRejected, match=r"failed: perplexity_ceiling\)") as err:
        Engine(cfg, pm=pm).update([str(write_jsonl(tmp_path / "n.jsonl", new_texts[:12]))], base_model)
    verdict = next(v for v in err.value.report["verdicts"] if v["validator"] == "perplexity_ceiling")
    assert verdict["reason"].startswith("perplexity above the ceiling: old items ")
    assert ModelStore(base_model).manifest("0002")["status"] == "rejected"
    # A reachable ceiling passes, on the evidence alone.
    good = Registry(pm).build("validators", "perplexity_ceiling", load_config(None, TINY))
    assert good.validate(_evidence(retention_after=4.2, new_after=4.0)).status == "pass"


# --- dry run -----------------------------------------------------------------------------------------

def test_dry_run_says_what_an_update_would_learn_and_trains_nothing(base_model, new_texts, tmp_path):
    path = tmp_path / "new.jsonl"
    lines = [json.dumps({"text": t}) for t in new_texts[:20]] + ['{"text": "unterminated']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = _snapshot(base_model)

    ok = _cli("update", "--model", base_model, "--data", path, "--dry-run", "--json", *SETS)
    assert ok.exit_code == 0, ok.output
    assert "not written: dry run" in ok.output and "would fine-tune on 16 items (4 held out)" in ok.output
    assert "20 new items learned" not in ok.output and "20 more pending" in ok.output
    report = json.loads(ok.stdout.strip().splitlines()[-1])
    assert report["status"] == "dry_run" and report["version"] is None
    assert report["counts"] == {"collected": 20, "rejected": 1, "preprocessed": 20, "duplicates": 0,
                                "contaminating": 0, "new": 20, "trained": 16, "holdout": 4}
    assert report["epoch_losses"] == [] and report["verdicts"] == []
    assert {"tokenize", "train", "validate"}.isdisjoint(report["timings"])
    assert _snapshot(base_model) == before


def test_check_trains_and_validates_and_writes_nothing(base_model, new_texts, tmp_path):
    path = tmp_path / "new.jsonl"
    lines = [json.dumps({"text": t}) for t in new_texts[:20]] + ['{"text": "unterminated']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = _snapshot(base_model)

    ok = _cli("update", "--model", base_model, "--data", path, "--check", *SETS)
    assert ok.exit_code == 0, ok.output
    assert "not written: dry run" in ok.output and "skipped (--check)" in ok.output
    assert "20 new items learned" not in ok.output and "20 more pending" in ok.output
    assert _snapshot(base_model) == before

    bad = _cli("update", "--model", base_model, "--data", path, "--check", "--lr", "1.0", "--json", *SETS)
    assert bad.exit_code == 10
    report = json.loads(bad.stdout.strip().splitlines()[-1])
    assert report["status"] == "check" and report["gate"] == "rejected" and report["version"] is None
    assert len(report["epoch_losses"]) == 2
    assert _snapshot(base_model) == before

    both = _cli("update", "--model", base_model, "--data", path, "--check", "--dry-run", *SETS)
    assert both.exit_code == 2 and "pick one" in both.output


def test_remedy_learning_rates_are_accepted_as_written():
    # `--lr 5e-5` reaches the config as "5e-05", which YAML 1.1 alone would read as a string.
    for text, value in (("5e-5", 5e-5), ("5e-05", 5e-5), ("2E-4", 2e-4)):
        assert load_config(None, [f"fine_tuning.learning_rate={text}"]).fine_tuning.learning_rate == value
