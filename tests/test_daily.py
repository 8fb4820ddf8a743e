"""The daily recipe (issue 25): a replay buffer grown over every accepted update, the share it
replays steered by the old domain's drift, weight averaging with the parent, and the way on
after a rejection for cumulative drift (``retain update --consolidate``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import UpdateRejected
from retain.core.storage.store import ModelStore, VersionFiles
from retain.core.learning.strategy import read_state
from retain.demo import docstring_paragraphs
from retain.strategies.replay import ReplayOptions, consolidation_overrides, steered_share

from conftest import TINY, write_jsonl

REPO = Path(__file__).resolve().parent.parent
GATE_OFF = "validators=[finite]"


def _update(model: Path, texts: list[str], path: Path, *overrides: str) -> dict:
    data = write_jsonl(path, texts)
    try:
        return Engine(load_config(None, [*TINY, *overrides])).update([str(data)], model)
    except UpdateRejected as exc:
        return exc.report


def _clean(texts: list[str]) -> set[str]:
    """The texts as the model learns them (after the built-in ``clean`` preprocessor)."""
    from retain.core.data.items import Item
    from retain.plugins.preprocessors import Clean, CleanOptions

    return {Clean(CleanOptions())(Item(t)).text for t in texts}


def _buffer(model: Path, version: str) -> set[str]:
    return set(read_state(VersionFiles(ModelStore(model), version), "replay").get("texts", []))


def test_the_replay_buffer_keeps_items_of_every_accepted_update_and_none_of_a_rejected_one(base_model, new_texts,
                                                                                             tmp_path):
    small = ["options.replay.buffer_size=60", "fine_tuning.epochs=1"]
    days = [new_texts[20 * i:20 * i + 20] for i in range(3)]
    for i, day in enumerate(days[:2]):
        assert _update(base_model, day, tmp_path / f"day{i}.jsonl", GATE_OFF, *small)["status"] == "accepted"
    # A day the gate rejects (it demands an impossible drop of the new items' loss).
    rejected = _update(base_model, days[2], tmp_path / "day2.jsonl", "validators=[learning]",
                       "options.learning.min_drop=0.99", *small)
    assert rejected["status"] == "rejected"
    after = _update(base_model, [t + " (again)" for t in new_texts[:5]], tmp_path / "day3.jsonl",
                    GATE_OFF, *small)
    assert after["status"] == "accepted"
    buffer = _buffer(base_model, after["version"])
    assert len(buffer) == 60  # a reservoir: its size stays, its content follows everything learned
    base_buffer = _buffer(base_model, "0001")
    assert buffer & base_buffer  # the base's items are still rehearsed
    for day in days[:2]:  # and items of each earlier accepted update
        assert buffer & _clean(day), "an earlier accepted day left no item in the buffer"
    assert not buffer & _clean(days[2]), "a rejected update's items entered the buffer"


def test_the_steered_share_rises_with_the_drift_and_a_consolidation_replays_most():
    steered = ReplayOptions(share=0.5, max_share=0.8, steer_at=0.02)
    assert steered_share(steered, None) == 0.5
    assert steered_share(steered, -0.03) == 0.5  # an old domain that improved: the usual share
    assert steered_share(steered, 0.01) == pytest.approx(0.65)
    assert steered_share(steered, 0.05) == pytest.approx(0.8)
    assert steered_share(ReplayOptions(share=0.5, max_share=0), 0.05) == 0.5  # max_share 0: no steering
    assert steered_share(ReplayOptions(share=0.5, max_share=0, consolidate=True), None) == 0.8
    assert steered_share(ReplayOptions(share=0.5, max_share=0.9, consolidate=True), None) == 0.9  # max_share if higher
    assert consolidation_overrides(["rewarm"]) == ["fine_tuning.strategy=[rewarm,replay]",
                                                   "options.replay.consolidate=true"]


def test_the_averaging_weight_falls_with_the_drift_when_steered():
    from retain.strategies.average import AverageOptions, steered_weight

    steered = AverageOptions(weight=0.5, max_weight=1.0, steer_at=0.01)
    assert steered_weight(steered, None) == 0.5       # drift not known: the plain weight
    assert steered_weight(steered, -0.02) == 1.0      # an old domain that improved: the whole step
    assert steered_weight(steered, 0.005) == pytest.approx(0.75)
    assert steered_weight(steered, 0.03) == 0.5       # at steer_at and beyond: the plain weight
    assert steered_weight(AverageOptions(weight=0.5, max_weight=0), 0.0) == 0.5  # max_weight 0: no steering
    default = AverageOptions()  # 0.6 of the step at no drift, 0.35 from +2% (measured: BENCHMARKS.md)
    assert steered_weight(default, 0.0) == 0.6 and steered_weight(default, 0.02) == 0.35


def _stepped_by_four(model, averaging):
    """Train ``model`` under ``averaging`` (a ``ParentAveraging``): +4 on every weight; the template."""
    fake = type("Template", (), {"model": model})()
    averaging.before_training(fake)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    averaging.after_training(fake)
    return fake


def test_weight_averaging_keeps_the_asked_share_of_the_step():
    from retain.strategies.adapters import ParentAveraging

    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _stepped_by_four(model, ParentAveraging(0.25))
    for name, value in model.state_dict().items():
        assert torch.allclose(value, start[name] + 1.0)  # a quarter of the +4 step


def _tied_model_averaged(tied_weight):
    """A model whose second layer's weight is its embedding (tied, as the GPT's head), stepped
    +4 everywhere and averaged at weight 0.5: (model, its weights before, trained before averaging,
    the averaging)."""
    from retain.strategies.adapters import ParentAveraging

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    model[1].weight = model[0].weight
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fake = type("Template", (), {"model": model})()
    averaging = ParentAveraging(0.5, None, tied_weight)
    averaging.before_training(fake)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    averaging.after_training(fake)
    return model, start, trained, averaging


@pytest.mark.parametrize("tied_weight, kept", [(None, 2.0), (0.25, 1.0), (0.75, 3.0)])
def test_averaging_moves_tied_weights_once_by_their_own_share(tied_weight, kept):
    # The GPT's head shares its token embedding's storage, listed under both names: averaged once per
    # name it kept weight squared of the step. Now once, by tied_weight (average's default: weight squared).
    model, start, _, _ = _tied_model_averaged(tied_weight)
    assert model.state_dict()["0.weight"].data_ptr() == model.state_dict()["1.weight"].data_ptr()
    now = model.state_dict()
    assert torch.allclose(now["0.weight"], start["0.weight"] + kept)
    for name in ("1.bias", "2.weight", "2.bias"):  # untied: half the step
        assert torch.allclose(now[name], start[name] + 2.0)


@pytest.mark.parametrize("tied_weight", [0.25, 0.5])
def test_auto_judges_exactly_the_weights_training_left_before_averaging(tied_weight):
    # --auto judges the default's training before averaging for free: the averaging's own copy of
    # the trained weights goes back, bit for bit, a tied tensor (kept once) under both its names.
    model, _, trained, averaging = _tied_model_averaged(tied_weight)
    averaging.restore_trained(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_the_branch_keeps_a_tied_tensor_once_and_the_next_update_starts_from_it_under_both_names():
    from retain.strategies.adapters import ParentAveraging

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    model[1].weight = model[0].weight
    averaging = ParentAveraging(0.5)
    fake = _stepped_by_four(model, averaging)
    branch = averaging.trained
    assert set(branch) == {"0.weight", "1.bias", "2.weight", "2.bias"}  # "1.weight" is "0.weight"'s storage
    served = {k: v.clone() for k, v in model.state_dict().items()}
    ParentAveraging(0.5, branch).before_training(fake)
    now = model.state_dict()
    for name in ("0.weight", "1.weight"):
        assert torch.equal(now[name], branch["0.weight"]) and not torch.equal(now[name], served[name])


def test_the_default_keeps_a_quarter_of_the_tied_step_as_measured():
    from retain.strategies.average import AverageOptions

    assert AverageOptions().tied_weight == 0  # weight squared: what the benchmark's default did
    config = load_config(None)
    assert config.options["average"]["tied_weight"] == 0


def test_with_a_branch_training_starts_from_it_and_the_served_weights_are_the_average():
    from retain.strategies.adapters import ParentAveraging

    model = torch.nn.Linear(3, 2)
    served = {k: v.clone() for k, v in model.state_dict().items()}
    branch = {k: v + 2.0 for k, v in served.items()}
    fake = type("Template", (), {"model": model})()
    averaging = ParentAveraging(0.5, branch)
    averaging.before_training(fake)
    for name, value in model.state_dict().items():  # training begins from the branch
        assert torch.equal(value, branch[name])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    averaging.after_training(fake)
    for name, value in model.state_dict().items():
        assert torch.allclose(averaging.trained[name], served[name] + 6.0)  # the next branch: +2 +4
        assert torch.allclose(value, served[name] + 3.0)  # served: half-way from the parent to it


def test_the_drift_pulls_where_training_starts_from_the_branch_back_to_the_served_weights():
    from retain.strategies.adapters import ParentAveraging
    from retain.strategies.average import AverageOptions, steered_branch

    steered = AverageOptions(weight=0.35, max_weight=0.6, steer_at=0.02)
    assert [steered_branch(steered, d) for d in (None, -0.01, 0.0, 0.01, 0.02, 0.05)] == \
        pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0, 0.0])  # the whole branch at no drift, the served from +2%
    assert steered_branch(AverageOptions(weight=0.5, max_weight=0), 0.05) == 1.0  # no steering: the branch

    model = torch.nn.Linear(3, 2)
    served = {k: v.clone() for k, v in model.state_dict().items()}
    branch = {k: v + 2.0 for k, v in served.items()}
    fake = type("Template", (), {"model": model})()
    averaging = ParentAveraging(0.5, branch, branch_share=0.25)
    averaging.before_training(fake)
    for name, value in model.state_dict().items():  # a quarter of the way from the served weights
        assert torch.allclose(value, served[name] + 0.5)
    averaging.after_training(fake)
    for name, value in model.state_dict().items():  # the parent is still the served weights
        assert torch.allclose(value, served[name] + 0.25)


def _weights(model: Path, version: str) -> dict:
    return VersionFiles(ModelStore(model), version).tensors("model.safetensors")


def _branch(model: Path, version: str) -> dict:
    state = read_state(VersionFiles(ModelStore(model), version), "average")
    return {k[len("branch."):]: v for k, v in state.items() if k.startswith("branch.")}


def test_the_branch_is_kept_with_the_version_and_the_next_update_trains_on_from_it(base_model, new_texts,
                                                                                  tmp_path):
    branch = ["fine_tuning.strategy=[rewarm,average]", "options.average.branch=true", "fine_tuning.epochs=1",
              "fine_tuning.early_stopping.enabled=false", "options.average.tied_weight=0.5",  # every weight alike
              "options.average.weight=0.5", "options.average.max_weight=0"]  # half the step, whatever the drift
    first = _update(base_model, new_texts[:20], tmp_path / "d1.jsonl", GATE_OFF, *branch)
    assert first["status"] == "accepted" and first["counts"]["average_from_branch"] == 0  # the base has none
    parent, served, kept = _weights(base_model, "0001"), _weights(base_model, first["version"]), \
        _branch(base_model, first["version"])
    kept = {k: v for k, v in kept.items() if k in served}  # (a tied head is saved once with the weights)
    assert kept
    moved = max(float((kept[k] - parent[k]).abs().max()) for k in kept)
    assert moved > 1e-3  # the branch holds the trained step
    for k in kept:  # the served weights: half-way from the parent to the branch
        assert torch.allclose(served[k], parent[k] + 0.5 * (kept[k] - parent[k]), atol=1e-6)

    # A day that barely trains (a rate of 1e-12): it starts from the branch, so the served weights
    # move half-way again towards the first branch; from the served weights they would not move.
    second = _update(base_model, new_texts[20:40], tmp_path / "d2.jsonl", GATE_OFF, *branch,
                     "options.rewarm.peak_lr=1e-12")
    assert second["counts"]["average_from_branch"] == 1
    served2, kept2 = _weights(base_model, second["version"]), _branch(base_model, second["version"])
    for k in kept:
        assert torch.allclose(kept2[k], kept[k], atol=1e-6)
        assert torch.allclose(served2[k], served[k] + 0.5 * (kept[k] - served[k]), atol=1e-6)
    assert max(float((served2[k] - served[k]).abs().max()) for k in kept) > 1e-4

    # An update without the branch changes the served weights and keeps none: the next one finds the
    # first branch back in the chain, not beside these served weights, and trains from the served ones.
    plain = _update(base_model, new_texts[40:50], tmp_path / "d3.jsonl", GATE_OFF,
                    "fine_tuning.strategy=[rewarm,average]", "options.average.branch=false", "fine_tuning.epochs=1")
    assert plain["status"] == "accepted" and "average_from_branch" not in plain["counts"]
    third = _update(base_model, new_texts[50:60], tmp_path / "d4.jsonl", GATE_OFF, *branch)
    assert third["status"] == "accepted" and third["counts"]["average_from_branch"] == 0


def test_after_a_rejected_update_the_next_one_trains_from_the_served_weights_not_the_branch(base_model, new_texts,
                                                                                           tmp_path):
    branch = ["fine_tuning.strategy=[rewarm,average]", "options.average.branch=true", "fine_tuning.epochs=1",
              "fine_tuning.early_stopping.enabled=false"]
    first = _update(base_model, new_texts[:15], tmp_path / "d1.jsonl", GATE_OFF, *branch)
    assert first["status"] == "accepted" and _branch(base_model, first["version"])
    # A day the gate rejects for what it did to the old items (any rise fails): it trained on from
    # the branch, as the day after an accepted one does.
    rejected = _update(base_model, new_texts[15:30], tmp_path / "d2.jsonl", "validators=[finite,retention]",
                       "options.retention.max_increase=-1", *branch)
    assert rejected["status"] == "rejected" and rejected["counts"]["average_from_branch"] == 1
    # The next day starts from the served weights: the branch led the rejected candidate astray.
    after = _update(base_model, new_texts[30:45], tmp_path / "d3.jsonl", GATE_OFF, *branch)
    assert after["status"] == "accepted" and after["parent"] == first["version"]
    assert after["counts"]["average_from_branch"] == 0
    # And the day after an accepted one trains on from its branch again.
    again = _update(base_model, new_texts[45:60], tmp_path / "d4.jsonl", GATE_OFF, *branch)
    assert again["counts"]["average_from_branch"] == 1
    # A day rejected only for learning too little (it must learn 1000%) does not send the next one
    # back to the served weights, which would learn less still.
    more = docstring_paragraphs()[60:90]  # beyond new_texts
    too_little = _update(base_model, more[:15], tmp_path / "d5.jsonl", "validators=[finite,learning]",
                         "options.learning.min_drop=10", *branch)
    assert too_little["status"] == "rejected" and too_little["verdicts"][-1]["validator"] == "learning"
    next_day = _update(base_model, more[15:], tmp_path / "d6.jsonl", GATE_OFF, *branch)
    assert next_day["parent"] == again["version"] and next_day["counts"]["average_from_branch"] == 1


def test_only_a_day_that_learned_too_little_keeps_the_branch_after_its_rejection():
    from retain.strategies.average import too_little_learning

    def learning(own: float, pool: float | None = None) -> dict:
        numbers = {"relative_drop": own, "min_drop": 0.001, **({"pool_relative_drop": pool} if pool is not None else {})}
        return {"validator": "learning", "status": "fail", "numbers": numbers}

    assert too_little_learning(learning(0.0)) and too_little_learning(learning(-0.01, -0.002))
    assert not too_little_learning(learning(0.02, -0.002))  # its own items learned, the earlier days' forgotten
    assert not too_little_learning({"validator": "retention", "status": "fail", "numbers": {"drift": 0.06}})


def test_the_work_budget_caps_what_an_update_replays_by_the_base_and_the_horizon(base_model, new_texts, tmp_path):
    from retain.strategies.replay import replay_budget

    # The formula: base 1,000 tokens over 10 updates, a retrain of 4 epochs; a day of 200 tokens at 2 epochs
    # may replay 4 x (100 + 200) - 2 x 200 = 800 tokens in all, 400 per epoch (2:1).
    most = replay_budget(ReplayOptions(horizon=10), 1000, 4)
    assert most(200, 2) == pytest.approx(400)
    assert most(2000, 3) == pytest.approx(800)  # a large day: 4 x 2,100 - 3 x 2,000 = 2,400 in all
    assert most(2000, 5) == 0  # at more epochs than a retrain would spend on it: no replay
    assert replay_budget(ReplayOptions(horizon=0), 1000, 4) is None  # no budget
    assert replay_budget(ReplayOptions(horizon=10, consolidate=True), 1000, 4) is None  # a consolidation replays
    assert replay_budget(ReplayOptions(horizon=10), 1000, 4, drift=0.019) is not None
    assert replay_budget(ReplayOptions(horizon=10), 1000, 4, drift=0.02) is None  # budget_max_drift: it yields
    assert replay_budget(ReplayOptions(horizon=10, budget_max_drift=0), 1000, 4, drift=0.5) is not None

    common = [GATE_OFF, "fine_tuning.strategy=[rewarm,replay]", "fine_tuning.epochs=2", "options.replay.share=0.75",
              "options.replay.max_share=0", "fine_tuning.early_stopping.enabled=false"]
    other = tmp_path / "other"
    shutil.copytree(base_model, other)
    free = _update(base_model, new_texts[:30], tmp_path / "a.jsonl", *common)
    base_tokens = ModelStore(other).summary("0001")["counts"]["tokens"]
    new = free["counts"]["tokens"]
    # full_training.epochs 2 (TINY), 2 epochs: 2 x (base / horizon + new) - 2 x new = 2 x new at this horizon,
    # one past token per new one each epoch (1:1) of the asked 3:1
    horizon = base_tokens / new
    capped = _update(other, new_texts[:30], tmp_path / "b.jsonl", *common, f"options.replay.horizon={horizon}")
    assert "replay_budget_capped" not in free["counts"] and capped["counts"]["replay_budget_capped"] == 1
    assert capped["counts"]["tokens"] == new
    assert free["counts"]["replay_tokens"] >= 2 * 3 * new  # 3:1, both epochs
    assert capped["counts"]["replay_tokens"] <= 2 * new + 2 * 64  # rows drawn whole: one row past, each epoch
    assert capped["counts"]["replay_share_percent"] == 50 and free["counts"]["replay_share_percent"] == 75


def test_the_work_budget_cuts_the_days_epochs_before_the_replay_the_drift_asks_for(base_model, new_texts, tmp_path):
    from retain.strategies.replay import budget_epochs, replay_budget

    # base 1,000 tokens over 10 updates, a retrain of 4 epochs: a day of 200 tokens may cost 4 x (100 + 200)
    # = 1,200 token-steps. At 1:1, 3 epochs cost 1,200: they fit.
    most = replay_budget(ReplayOptions(horizon=10), 1000, 4)
    assert budget_epochs(most, 200, 0.5, 3, 2) == 3
    assert budget_epochs(most, 200, 0.6, 3, 2) == 2  # 1.5:1: 3 epochs cost 1,500, 2 cost 1,000
    assert budget_epochs(most, 200, 0.75, 3, 2) == 2  # 3:1: not even 2 fit (1,600); the replay is cut there
    assert budget_epochs(most, 200, 0.75, 3, 1) == 1  # 800 fits
    assert budget_epochs(most, 200, 0.75, 1, 2) == 1  # never more epochs than configured

    common = [GATE_OFF, "fine_tuning.strategy=[rewarm,replay]", "fine_tuning.epochs=3", "options.replay.max_share=0",
              "fine_tuning.early_stopping.enabled=false"]
    other = tmp_path / "other"
    shutil.copytree(base_model, other)
    free = _update(base_model, new_texts[:30], tmp_path / "a.jsonl", *common)
    base_tokens = ModelStore(other).summary("0001")["counts"]["tokens"]
    new = free["counts"]["tokens"]
    # full_training.epochs 2 (TINY): 2 x (base / horizon + new) = 5 x new at this horizon; at 1:1, 3 epochs
    # would cost 6 x new, 2 cost 4 x new: two epochs, with every replayed token the share asks for.
    cut = _update(other, new_texts[:30], tmp_path / "b.jsonl", *common, f"options.replay.horizon={base_tokens / (1.5 * new)}")
    assert len(free["epoch_losses"]) == 3 and "replay_budget_epochs" not in free["counts"]
    assert len(cut["epoch_losses"]) == 2 and cut["counts"]["replay_budget_epochs"] == 2
    assert cut["settings"]["epochs"] == 2 and "options.replay.horizon" in cut["settings"]["epochs_from"]
    assert free["settings"]["epochs_from"] == ""  # the step line says why only when the budget cut them
    assert "replay_budget_capped" not in cut["counts"] and cut["counts"]["replay_share_percent"] == 50
    assert cut["counts"]["replay_tokens"] >= 2 * new  # 1:1, both epochs
    assert cut["counts"]["replay_tokens"] + 2 * new < free["counts"]["replay_tokens"] + 3 * new


def test_the_work_budget_sizes_the_epochs_for_the_replay_the_parents_drift_steers_and_yields_to_a_drifted_one(
        base_model, new_texts, tmp_path):
    # The epochs are decided before the run scores its drift reference: from the parent's recorded
    # drift, the share the steering will replay. A drifted parent asks 4:1, which 3 epochs do not fit.
    drifted = _update(base_model, new_texts[:30], tmp_path / "a.jsonl", GATE_OFF, "fine_tuning.strategy=[naive]",
                      "options.naive.learning_rate=0.01", "fine_tuning.early_stopping.enabled=false")
    assert drifted["metrics"]["drift_after"] > 0  # the precondition: a parent that drifted
    common = [GATE_OFF, "fine_tuning.strategy=[rewarm,replay]", "fine_tuning.epochs=3", "options.replay.max_share=0.8",
              "options.replay.steer_at=0.000001", "fine_tuning.early_stopping.enabled=false"]
    other, yielding = tmp_path / "other", tmp_path / "yielding"
    shutil.copytree(base_model, other)
    shutil.copytree(base_model, yielding)
    free = _update(base_model, new_texts[30:60], tmp_path / "b.jsonl", *common)
    assert free["counts"]["replay_share_percent"] == 80 and len(free["epoch_losses"]) == 3
    store = ModelStore(other)
    base_tokens = store.summary(store.lineage_root(store.chain()))["counts"]["tokens"]
    new = free["counts"]["tokens"]
    # full_training.epochs 2 (TINY): 2 x (base / horizon + new) = 8 x new. At 1:1, 3 epochs (6 x new) would
    # fit; at the steered 4:1 they cost 15 x new and 2 epochs 10 x new: 2 epochs, the replay trimmed.
    horizon = f"options.replay.horizon={base_tokens / (3 * new)}"
    cut = _update(other, new_texts[30:60], tmp_path / "c.jsonl", *common, horizon,
                  "options.replay.budget_max_drift=0")  # a budget at any drift
    assert len(cut["epoch_losses"]) == 2 and cut["counts"]["replay_budget_epochs"] == 2
    assert cut["counts"]["replay_budget_capped"] == 1
    # A parent drifted to budget_max_drift or beyond: the budget yields, the update replays what the steering asks.
    limit = drifted["metrics"]["drift_after"] / 2
    held = _update(yielding, new_texts[30:60], tmp_path / "d.jsonl", *common, horizon,
                   f"options.replay.budget_max_drift={limit}")
    assert len(held["epoch_losses"]) == 3 and held["counts"]["replay_share_percent"] == 80
    assert "replay_budget_epochs" not in held["counts"] and "replay_budget_capped" not in held["counts"]


def test_the_base_share_caps_the_old_domains_part_of_the_replay_so_earlier_days_are_rehearsed(
        base_model, new_texts, tmp_path):
    # Uniform over the history, a base much larger than the days leaves them a sliver of the replay;
    # options.replay.base_share caps the base's part, and the earlier updates' items fill the rest.
    common = [GATE_OFF, "fine_tuning.strategy=[rewarm,replay]", "fine_tuning.epochs=1", "options.replay.max_share=0",
              "fine_tuning.early_stopping.enabled=false"]
    assert _update(base_model, new_texts[:30], tmp_path / "a.jsonl", *common)["status"] == "accepted"
    capped_model = tmp_path / "capped"
    shutil.copytree(base_model, capped_model)
    uniform = _update(base_model, new_texts[30:60], tmp_path / "b.jsonl", *common, "options.replay.base_share=null")
    capped = _update(capped_model, new_texts[30:60], tmp_path / "c.jsonl", *common, "options.replay.base_share=0.3")
    assert uniform["counts"]["replay_base_percent"] > 60  # the base's size: most of the history
    assert capped["counts"]["replay_base_percent"] <= 45  # 30%, give or take whole items
    assert capped["counts"]["replay_tokens"] >= 0.9 * uniform["counts"]["replay_tokens"]  # the same amount
    # A consolidation rehearses uniformly (no cap): the old domain is what it pulls back.
    again = _update(capped_model, [t + " (again)" for t in new_texts[:20]], tmp_path / "d.jsonl", *common, "options.replay.base_share=0.3",
                    "options.replay.consolidate=true")
    assert again["counts"]["replay_base_percent"] > 60


def _drift(model: Path, version: str) -> float:
    return ModelStore(model).manifest(version)["metrics"]["drift_after"]


def test_after_a_drift_rejection_the_advice_says_consolidate_and_a_consolidation_lowers_the_drift(
        base_model, new_texts, tmp_path):
    # Drift the old domain past a budget of 1%, the gate off: plain fine-tuning at a high rate.
    drifted = _update(base_model, new_texts[:40], tmp_path / "drift.jsonl", GATE_OFF, "fine_tuning.strategy=[naive]",
                      "full_training.learning_rate=0.01", "fine_tuning.epochs=3")
    before = _drift(base_model, drifted["version"])
    assert before > 0.02, before
    # The next ordinary day is rejected for it, and the advice names the way on.
    day = new_texts[40:52]
    # (1:1 replay: the steered default's higher share at this drift could pull it back inside 1% in one day)
    rejected = _update(base_model, day, tmp_path / "day.jsonl", "validators=[finite,retention]",
                       "options.retention.max_drift=0.01", "options.replay.max_share=0")
    assert rejected["status"] == "rejected"
    steps = " ".join(s["step"] for s in rejected["next_steps"])
    assert "drifted more than 1% since the last full training" in steps
    assert "every next update will be rejected" in steps and "retain update --consolidate" in steps

    # The same day as a consolidation, through the CLI option (gate off: its effect is measured).
    other = tmp_path / "other"
    shutil.copytree(base_model, other)
    args = ["update", "--data", str(tmp_path / "day.jsonl"), "--json", "--quiet", "--set", GATE_OFF]
    for key in TINY:
        args += ["--set", key]
    consolidated = json.loads(CliRunner().invoke(app, [*args, "--model", str(base_model), "--consolidate"]).stdout)
    # against 1:1 replay (steering off: the steered default would replay 4:1 at this drift too)
    plain = json.loads(CliRunner().invoke(app, [*args, "--model", str(other), "--set",
                                                "options.replay.max_share=0"]).stdout)
    assert consolidated["counts"]["replay_share_percent"] == 80 and plain["counts"]["replay_share_percent"] == 50
    after = consolidated["metrics"]["drift_after"]
    assert after < before and after < plain["metrics"]["drift_after"], (before, after, plain["metrics"])


def test_the_default_recipe_is_the_one_the_benchmark_measured():
    # BENCHMARKS.md names the daily default it measured; changing config.yaml's default without a
    # new measurement (and that line) fails here.
    text = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    line = re.search(r"^\*\*The daily default \(issue 25\)\.\*\*(.*)$", text, re.M)
    assert line, "BENCHMARKS.md lost the line naming the measured daily default"
    measured = dict(part.split(": ", 1) for part in re.findall(r"`([a-z_.]+: [^`]+)`", line.group(1)))
    assert "fine_tuning.strategy" in measured
    config = load_config(None)
    actual = {"fine_tuning.strategy": "[" + ", ".join(config.fine_tuning.strategy) + "]"}
    for key in measured:
        if key.startswith("options."):
            _, plugin, option = key.split(".")
            actual[key] = str(config.options[plugin][option])
        elif key != "fine_tuning.strategy":
            block, option = key.split(".")
            actual[key] = str(getattr(getattr(config, block), option))
    assert actual == measured


def test_the_learning_check_judges_this_update_with_the_earlier_updates_held_out_items(base_model, new_texts,
                                                                                        tmp_path):
    from retain.core.storage.retention import recent_new

    store = ModelStore(base_model)
    one = ["fine_tuning.epochs=1"]
    reports = [_update(base_model, new_texts[20 * i:20 * i + 20], tmp_path / f"day{i}.jsonl", GATE_OFF, *one)
               for i in range(2)]
    assert [r["status"] for r in reports] == ["accepted", "accepted"]
    earlier = [r["text"] for r in reversed(reports) for r in store.read_jsonl(r["version"], "holdout.jsonl")]
    assert earlier and recent_new(store, store.current(), 64) == earlier  # newest first, not the base's
    assert recent_new(store, store.current(), 3) == earlier[:3]           # bounded by the pool's size
    assert recent_new(store, "0001", 64) == []                            # nothing since the full training

    day = new_texts[40:60]
    other = tmp_path / "other"
    shutil.copytree(base_model, other)
    third = _update(base_model, day, tmp_path / "day2.jsonl", "validators=[finite,learning]", *one)
    own = third["metrics"]["new_holdout_items"]
    assert own and third["metrics"]["new_pool_items"] == own + len(earlier)
    learning = next(v for v in third["verdicts"] if v["validator"] == "learning")
    assert learning["numbers"]["pool_items"] == own + len(earlier)
    assert f"{own + len(earlier)} items in all" in learning["reason"]
    # learning_pool 0: the update's own items alone, as before the pool
    alone = _update(other, day, tmp_path / "day2.jsonl", "validators=[finite,learning]",
                    "validation.learning_pool=0", *one)
    assert alone["metrics"]["new_holdout_items"] == own and "new_pool_items" not in alone["metrics"]
