"""retain update --auto: a budgeted search whose trials run in processes of their own."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core import cycle
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import UpdateRejected
from retain.core.pluginmanager import make_plugin_manager
from retain.core.storage.store import ModelStore
from retain.tune import auto_update, default_executor
from retain.tune.search import trials_that_fit, winner
from retain.tune.trial import run_trial

from conftest import TINY, private_copy, write_jsonl

pytest.importorskip("optuna", reason="--auto needs Optuna, in the test extra: pip install '.[test]'")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Recording:
    """An executor that keeps every spec it was given (and is one: submit returns a future)."""

    def __init__(self, inner):
        self.inner, self.specs = inner, []

    def submit(self, fn, spec):
        self.specs.append(spec)
        return self.inner.submit(fn, spec)

    def shutdown(self, **kw):
        self.inner.shutdown(**kw)


def test_budget_without_auto_is_a_usage_error(base_model, tmp_path):
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(tmp_path / "x.jsonl"),
                                      "--budget", "0.2"])
    assert result.exit_code == 3 and "--budget is the budget of --auto's search" in result.stderr


def test_auto_shows_its_trials_and_commits_an_accepted_trial(base_model, new_texts, tmp_path):
    # What the budget buys is tested with a fake clock below: here max_trials ends the search.
    store = ModelStore(base_model)
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    sets = [f"--set={o}" for o in [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=2"]]
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(data), "--auto",
                                      "--budget", "500", "--json", *sets])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    search = report["search"]
    # The trials as they end, then their table and the winner, on the terminal (stderr under --json).
    assert "6. Search (--auto)" in result.stderr and "trial 0: rewarm+replay, lr 0.001, 2 epochs" in result.stderr
    assert "--auto: 2 trials" in result.stderr and "winner (*): trial" in result.stderr
    assert "s training, " in result.stderr and "s in all" in result.stderr  # what each trial cost
    spent = sum(t["cost_seconds"] for t in search["trials"])
    assert spent == pytest.approx(search["spent_seconds"])
    assert all(t["cost_seconds"] >= t["seconds"] > 0 for t in search["trials"])  # the process, not only training
    # The prior first: the configured recipe, then the common-issues remedies (no averaging to undo).
    first = search["trials"][0]["recipe"]
    assert first["strategy"] == "rewarm" and first["replay_share"] == 0.5
    assert search["trials"][1]["recipe"]["learning_rate"] == pytest.approx(first["learning_rate"] / 2)
    # The winner was accepted and went through the normal save: version, ledger, manifest.
    won = next(t for t in search["trials"] if t["number"] == search["winner"])
    assert won["accepted"] and report["status"] == "accepted" and store.current() == "0002"
    manifest = store.manifest("0002")
    assert manifest["search"]["describe"] == won["describe"] and manifest["search"]["trials"] == len(search["trials"])
    assert store.ledger.count(store.chain())["train"] > 0
    assert {"shards/0001.uint16", "shards/0002.uint16"} <= set(manifest["files"])  # the search's shard, kept
    history = CliRunner().invoke(app, ["history", "--model", str(base_model), "--json"])
    row = json.loads(history.stdout)[-1]
    assert row["search"]["recipe"] == won["recipe"]


class FakeClock:
    """The search's clock: each reading ``step`` seconds after the last, so each trial costs
    ``step`` (read at its start and at its end, one trial at a time), whatever the machine's load."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_budget_counts_what_a_trial_costs_in_full(base_model, new_texts, tmp_path):
    # Each trial costs 0.4 of the budget by the clock, far more than its training: before, only
    # the training seconds counted and all 12 trials fitted. Now: the first (the configured
    # recipe, run whole: no time limit), a second within what is left after the overhead the
    # first showed, then 0.2 of the budget is less than that overhead: no third.
    executor = Recording(default_executor(1))
    engine = Engine(load_config(None, [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=12"]))
    budget = 1000 * ModelStore(base_model).manifest("0001")["timings"]["train"]
    try:
        report = auto_update(engine, [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model,
                             budget=1000.0, executor=executor, clock=FakeClock(0.4 * budget))
    finally:
        executor.shutdown(wait=True)
    search = report["search"]
    assert [t["cost_seconds"] for t in search["trials"]] == pytest.approx([0.4 * budget] * 2)
    assert search["spent_seconds"] == pytest.approx(0.8 * budget)
    first, second = executor.specs
    assert first["limit_seconds"] is None and first["config"]["fine_tuning"]["max_seconds"] == 0  # whole
    overhead = 0.4 * budget - search["trials"][0]["seconds"]
    assert second["limit_seconds"] == pytest.approx(0.9 * (0.6 * budget - overhead))
    assert second["config"]["fine_tuning"]["max_seconds"] == pytest.approx(second["limit_seconds"])


def test_a_budget_that_holds_only_the_default_says_so(base_model, new_texts, tmp_path):
    # The configured recipe runs whole even when it costs more than the budget (a squeezed
    # default would be worse than no search), and the report says the search only confirmed it.
    engine = Engine(load_config(None, [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=12"]))
    report = auto_update(engine, [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model,
                         budget=0.01, clock=FakeClock(1e6))
    search = report["search"]
    assert len(search["trials"]) == 1 and search["spent_seconds"] > search["budget_seconds"]
    assert search["winner"] == 0 and search["confirmed_default"] is True
    assert "held no training beyond the configured recipe's" in search["note"]


def test_a_trial_the_work_budget_cut_says_the_epochs_it_trained(base_model, new_texts, tmp_path):
    # The recipe asks for 3 epochs; a work budget that cannot pay for them leaves 2, and the
    # trial's line says so instead of naming the 3 it asked for.
    engine = Engine(load_config(None, [*TINY, "fine_tuning.epochs=3", "options.replay.horizon=1000"]))
    report = auto_update(engine, [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model,
                         budget=0.01, clock=FakeClock(1e6))
    first = report["search"]["trials"][0]
    assert first["recipe"]["epochs"] == 3 and first["epochs_trained"] <= 2
    assert first["describe"].endswith(
        "3 epochs, replay 0.5 steered to 0.8; trained 2 epochs "
        "(3 asked: the replay's work budget, options.replay.horizon 1000)"), first["describe"]
    won = report["search"]["trials"][report["search"]["winner"]]
    assert "; trained 2 epochs (3 asked" in won["describe"] and report["search"]["describe"] == won["describe"]


def test_the_search_starts_from_the_default_exactly_and_judges_it_unaveraged_for_free(base_model, new_texts,
                                                                                       tmp_path):
    # The default recipe [rewarm, replay, average] with steered replay: trial 0 is the update a
    # plain `retain update` makes (the same candidate), and the same training, before averaging,
    # is trial 1 (rewarm+replay, steered alike), judged without training again.
    from retain.tune import space

    config = load_config(None, [*TINY, "tune.max_trials=2"])
    first = space.prior(config)[0]
    assert first.strategies() == list(config.fine_tuning.strategy) == ["rewarm", "replay", "average"]
    assert first.replay_max_share == config.options["replay"]["max_share"] == 0.8
    assert space.overrides(first, config) == []  # its trial runs the config as it is
    assert space.prior(config)[1] == space.shares_training(first) == first.without_averaging()
    data = [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))]
    by_hand = {mix: Engine(load_config(None, [*TINY, *extra])).update(data, private_copy(base_model, tmp_path / mix),
                                                                      check=True)["metrics"]
               for mix, extra in (("averaged", []), ("unaveraged", ["fine_tuning.strategy=rewarm,replay"]))}
    report = auto_update(Engine(config), data, base_model, budget=500.0, check=True)
    trials = report["search"]["trials"]
    assert [t["shares_training_of"] for t in trials] == [None, 0] and [t["number"] for t in trials] == [0, 1]
    assert trials[1]["recipe"]["strategy"] == "rewarm" and trials[1]["recipe"]["replay_max_share"] == 0.8
    assert trials[1]["seconds"] == 0.0 and trials[1]["epochs_trained"] == trials[0]["epochs_trained"]
    for trial, mix in zip(trials, ("averaged", "unaveraged")):
        assert trial["new_loss_after"] == pytest.approx(by_hand[mix]["new_loss_after"], rel=1e-5)
        assert trial["retention_loss_after"] == pytest.approx(by_hand[mix]["retention_loss_after"], rel=1e-5)
    assert trials[0]["new_loss_after"] != trials[1]["new_loss_after"]
    assert report["search"]["confirmed_default"] is (report["search"]["winner"] == 0)


def test_the_winner_is_never_a_candidate_a_validator_failed():
    accepted = {"number": 0, "accepted": True, "metrics": {"new_loss_after": 4.0}, "epoch_losses": [4.2]}
    better_but_rejected = {"number": 1, "accepted": False, "metrics": {"new_loss_after": 3.0}, "epoch_losses": [3.1]}
    broken = {"number": 2, "accepted": False, "error": "boom", "metrics": {}, "epoch_losses": []}
    assert winner([better_but_rejected, broken, accepted])["number"] == 0
    assert winner([better_but_rejected, broken])["number"] == 1  # saved as rejected, not made current
    assert winner([broken]) is None


def test_the_remedies_step_from_the_best_recipe_so_far():
    # Once the unaveraged weights (trial 1) beat the configured averaged recipe, the next
    # remedies halve, double or shorten that recipe: the search stays where it wins.
    from retain.tune import space
    from retain.tune.search import next_remedy

    config = load_config(None, TINY)
    start = space.configured(config)
    plain = start.without_averaging()

    def result(number, recipe, new):
        return {"number": number, "recipe": recipe.to_json(), "accepted": True, "epoch_losses": [new],
                "metrics": {"new_loss_after": new, "drift_after": 0.0}}

    results = [result(0, start, 4.0), result(1, plain, 3.0)]
    assert next_remedy(results, [start, plain], config) == space.replace(plain, learning_rate=plain.learning_rate / 2)
    # The averaged recipe winning instead: its own remedies (the unaveraged one already tried).
    results = [result(0, start, 3.0), result(1, plain, 4.0)]
    assert next_remedy(results, [start, plain], config) == space.replace(start, learning_rate=start.learning_rate / 2)


def test_the_winner_spends_no_more_of_the_drift_budget_than_allowed():
    # A search judged one update at a time must not spend the next days' drift budget today:
    # a trial that learns more but takes the old domain past tune.max_drift (and past the
    # default's own drift) does not win; within it, the better learner does.
    def trial(number, new, drift):
        return {"number": number, "accepted": True, "metrics": {"new_loss_after": new, "drift_after": drift},
                "epoch_losses": [new]}

    default = trial(0, 4.0, 0.002)
    assert winner([default, trial(1, 3.0, 0.03)], max_drift=0.01)["number"] == 0
    assert winner([default, trial(1, 3.0, 0.009)], max_drift=0.01)["number"] == 1
    assert winner([trial(0, 4.0, 0.02), trial(1, 3.0, 0.015)], max_drift=0.01)["number"] == 1  # the default's own
    assert winner([default, trial(1, 3.0, 0.03)], max_drift=0.05)["number"] == 1


def test_when_every_trial_fails_the_gate_nothing_becomes_current(base_model, new_texts, tmp_path, monkeypatch):
    # A validator of a plugin module given to the engine (not installed) judges in the trials too.
    monkeypatch.syspath_prepend(str(EXAMPLES / "perplexity-ceiling"))
    import retain_perplexity_ceiling as ceiling

    cfg = load_config(None, [*TINY, "validators=[finite,retention,perplexity_ceiling]",
                             "options.perplexity_ceiling.max_new_perplexity=2", "tune.max_trials=2"])
    engine = Engine(cfg, pm=make_plugin_manager(extra_plugins=[ceiling]))
    with pytest.raises(UpdateRejected) as err:
        auto_update(engine, [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model, budget=5.0)
    report = err.value.report
    trials = report["search"]["trials"]
    assert len(trials) == 2 and all(not t["accepted"] and "perplexity_ceiling" in t["failed"] for t in trials)
    store = ModelStore(base_model)
    assert store.current() == "0001" and store.manifest("0002")["status"] == "rejected"
    assert store.manifest("0002")["search"]["winner"] == report["search"]["winner"]


def test_no_state_leaks_from_one_trial_to_the_next(base_model, new_texts, tmp_path):
    executor = Recording(default_executor(1))
    engine = Engine(load_config(None, [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=3"]))
    try:
        report = auto_update(engine, [str(write_jsonl(tmp_path / "new.jsonl", new_texts[:40]))], base_model,
                             budget=50.0, executor=executor)
        trials = report["search"]["trials"]
        assert len(trials) == 3
        # Trial 0 again, after two others ran on the same pool: the same candidate, to the bit.
        again = dict(executor.specs[0], scratch=str(tmp_path / "again"))
        result = executor.submit(run_trial, again).result()
    finally:
        executor.shutdown(wait=True)
    assert result["metrics"]["new_loss_after"] == trials[0]["new_loss_after"]
    assert result["metrics"]["retention_loss_after"] == trials[0]["retention_loss_after"]
    # Each trial ran in a process of its own, from the parent's replay buffer plus its own items.
    assert len({t["pid"] for t in trials} | {result["pid"]}) == 4
    buffer = json.loads((tmp_path / "again" / "versions" / "0001" / "strategy" / "replay.json").read_text())
    parent = json.loads((base_model / "versions" / "0001" / "strategy" / "replay.json").read_text())
    learned = {d["text"] for d in executor.specs[0]["items"]}
    assert set(buffer["texts"]) <= set(parent["texts"]) | learned



def test_a_second_auto_update_builds_on_the_first(base_model, new_texts, tmp_path):
    # The winner's candidate lives alone in a scratch directory; its manifest names a parent
    # that exists only in the model directory (0002 on the second day): reading its strategy
    # state must not walk a chain there (it crashed on every --auto after the first).
    engine = Engine(load_config(None, [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=2"]))
    for day, texts in enumerate((new_texts[:20], new_texts[20:40])):
        auto_update(engine, [str(write_jsonl(tmp_path / f"day{day}.jsonl", texts))], base_model, budget=50.0)
    store = ModelStore(base_model)
    assert store.current() == "0003" and store.manifest("0003")["parent"] == "0002"
    # The second winner's replay buffer continued the first's: day 0's items are still in it.
    buffer = json.loads((base_model / "versions" / "0003" / "strategy" / "replay.json").read_text())
    first = json.loads((base_model / "versions" / "0002" / "strategy" / "replay.json").read_text())
    assert set(first["texts"]) - set(json.loads((base_model / "versions" / "0001" / "strategy"
                                                  / "replay.json").read_text())["texts"])
    assert set(buffer["texts"]) & (set(first["texts"]) & set(new_texts[:20]))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_auto_dry_run_trains_nothing_and_says_what_the_search_would_cover(base_model, new_texts, tmp_path,
                                                                            monkeypatch):
    # It crashed after training every trial (KeyError: 'train' in the renderer), exit 1.
    import retain.tune.search as search_module

    def no_trials(*args, **kwargs):
        raise AssertionError("--auto --dry-run started a trial")

    monkeypatch.setattr(search_module, "default_executor", no_trials)
    monkeypatch.setattr(cycle, "train_and_judge", no_trials)
    before = _files(base_model)
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    sets = [f"--set={o}" for o in [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=5"]]
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(data), "--auto",
                                      "--dry-run", "--budget", "0.5", "--json", *sets])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "dry_run" and report["version"] is None and report["epoch_losses"] == []
    search = report["search"]
    assert search["trials"] == [] and search["budget_seconds"] == pytest.approx(
        0.5 * ModelStore(base_model).manifest("0001")["timings"]["train"])
    # What the search would cover: the space, the prior's recipes in order, how many trials fit.
    space = search["space"]
    assert space["strategies"] == ["rewarm", "low_lr", "rewarm+ewc"] and space["epochs"] == [1, 4]
    assert space["replay_shares"] == [0.0, 0.25, 0.5] and space["learning_rate"] == [3e-5, 3e-3]
    first = search["prior"][0]
    assert first["recipe"]["strategy"] == "rewarm" and first["recipe"]["replay_share"] == 0.5
    assert all(p["estimated_seconds"] > 0 for p in search["prior"])
    assert 1 <= search["estimated_trials"] <= 5
    assert "would run about" in result.stderr and "trial 0 (prior): rewarm+replay" in result.stderr
    assert "Dry run" in result.stderr and "nothing was trained or written" in result.stderr
    assert _files(base_model) == before


def test_the_dry_runs_trial_count_follows_the_searchs_own_rules():
    # 2.5s of budget, trials of 1s (2 epochs): two whole ones, a third cut at its time limit
    # (0.9 of the 0.5s left), then less than an epoch (0.5s) is left: no fourth.
    assert trials_that_fit([(1.0, 2), (1.0, 2)], (1.0, 2), budget=2.5, max_trials=12) == 3
    assert trials_that_fit([(1.0, 2)], (1.0, 2), budget=100.0, max_trials=4) == 4  # tune.max_trials
    assert trials_that_fit([(50.0, 2)], (1.0, 2), budget=2.0, max_trials=12) == 1  # the first always starts


def _scratch_folders(pid: int) -> set[str]:
    """The token shard scratch folders of process ``pid`` in the system temp folder."""
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"retain-shards-{pid}-*")}


def test_auto_check_searches_and_writes_nothing(base_model, new_texts, tmp_path):
    # It crashed after the search (KeyError: 'train' in the renderer), exit 1.
    before = _files(base_model)
    ours_before = _scratch_folders(os.getpid())
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20])
    sets = [f"--set={o}" for o in [*TINY, "fine_tuning.strategy=rewarm,replay", "tune.max_trials=1"]]
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(data), "--auto",
                                      "--check", "--budget", "5", "--json", *sets])
    assert result.exit_code in (0, 10), result.output
    report = json.loads(result.stdout)
    assert report["status"] == "check" and report["version"] is None
    assert len(report["search"]["trials"]) == 1 and report["search"]["winner"] == 0
    # Its one trial was the configured recipe: the search only confirmed the default, and says so.
    assert report["search"]["confirmed_default"] is True
    assert "the search only confirmed the default" in result.stderr
    gate = "accepted" if report["search"]["trials"][0]["accepted"] else "rejected"
    assert report["gate"] == gate and result.exit_code == (0 if gate == "accepted" else 10)
    assert "skipped (--check)" in result.stderr and "trial 0: rewarm+replay" in result.stderr
    assert _files(base_model) == before
    # Nor anywhere else: the check's token shard and its trial's (a pool process, which ends with
    # os._exit: no finalizer) are gone from the system temp folder; one was left per trial.
    assert _scratch_folders(os.getpid()) == ours_before
    assert _scratch_folders(report["search"]["trials"][0]["pid"]) == set()


def test_the_dry_run_shows_the_unaveraged_trial_as_free(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    sets = [f"--set={o}" for o in [*TINY, "tune.max_trials=5"]]  # the default recipe: [rewarm, replay, average]
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(data), "--auto",
                                      "--dry-run", "--budget", "0.5", "--json", *sets])
    assert result.exit_code == 0, result.output
    prior = json.loads(result.stdout)["search"]["prior"]
    assert prior[0]["recipe"]["strategy"] == "rewarm+average" and prior[0]["shares_training_of"] is None
    assert prior[1]["recipe"]["strategy"] == "rewarm" and prior[1]["shares_training_of"] == 0
    assert prior[1]["estimated_seconds"] == 0.0 and prior[0]["estimated_seconds"] > 0
    assert "trial 1 (prior): rewarm+replay, lr 0.001, 2 epochs, replay 0.5 steered to 0.8: trial 0's training " \
           "before averaging" in result.stderr
