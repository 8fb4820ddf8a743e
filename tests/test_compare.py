"""retain compare: metrics by hand, identical data for every strategy, workers = sequential, outputs."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.compare.run import CompareRequest, check_identical, run_compare
from retain.compare.metrics import old_and_new, stream_metrics
from retain.compare.digits import split_digits
from retain.compare.text import daily_stream, fingerprint

from conftest import write_jsonl


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread here, as in a --jobs 2 worker on 2 cores: the sequential and worker
    runs then do the same arithmetic, and a shared, busy machine is not oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Hand-computed: after exp 0, 1, 2 (rows) on exp 0, 1, 2 (columns).
R = [[0.90, 0.10, 0.20],
     [0.70, 0.80, 0.30],
     [0.60, 0.65, 0.95]]
B = [0.10, 0.15, 0.20]  # before any training (random init)


def test_metrics_on_a_hand_computed_matrix():
    m = stream_metrics(R, higher_is_better=True, initial=B)
    # forgetting: 0.90-0.60, 0.80-0.65; the last experience has none
    assert m.forgetting_per_experience == pytest.approx([0.30, 0.15, None])
    assert m.forgetting == pytest.approx(0.225)
    assert m.bwt == pytest.approx(-0.225)
    # FWT: R[0][1]-B[1] = -0.05, R[1][2]-B[2] = +0.10
    assert m.fwt_per_experience == pytest.approx([None, -0.05, 0.10])
    assert m.fwt == pytest.approx(0.025)
    assert m.average_final == pytest.approx((0.60 + 0.65 + 0.95) / 3)
    assert old_and_new(R) == (pytest.approx([None, 0.70, 0.625]), [0.90, 0.80, 0.95])


def test_loss_metrics_flip_the_sign_and_text_fwt_skips_the_base():
    m = stream_metrics(R, higher_is_better=False, initial=R[0], fwt_from=2)
    assert m.forgetting == pytest.approx(-0.225)  # these "losses" fell: negative forgetting
    assert m.bwt == pytest.approx(0.225)
    assert m.fwt_per_experience == pytest.approx([None, None, 0.20 - 0.30])
    assert stream_metrics([[2.0]], higher_is_better=False).forgetting is None
    with pytest.raises(ValueError):
        stream_metrics([[1.0, 2.0]], higher_is_better=True)


def test_metrics_match_avalanche_metric_classes():
    from avalanche.evaluation.metrics.forgetting_bwt import BWT, Forgetting
    from avalanche.evaluation.metrics.forward_transfer import ForwardTransfer

    forgetting, bwt, fwt = Forgetting(), BWT(), ForwardTransfer()
    for j in range(3):
        forgetting.update(j, R[j][j], initial=True)
        bwt.update(j, R[j][j], initial=True)
        fwt.update(j, B[j], initial=True)
        if j < 2:
            forgetting.update(j, R[2][j])
            bwt.update(j, R[2][j])
        if j > 0:
            fwt.update(j, R[j - 1][j])
    m = stream_metrics(R, higher_is_better=True, initial=B)
    assert m.forgetting_per_experience[:2] == pytest.approx([forgetting.result()[j] for j in range(2)])
    assert m.bwt == pytest.approx(sum(bwt.result().values()) / 2)
    assert m.fwt_per_experience[1:] == pytest.approx([fwt.result()[j] for j in (1, 2)])


def test_daily_stream_injects_duplicates_but_never_copies_test_items(new_texts, old_texts):
    from retain.core.data.items import Item

    items = [Item(t, "jsonl", "new.jsonl", i) for i, t in enumerate(new_texts, 1)]
    base = [Item(t, "jsonl", "old.jsonl", i) for i, t in enumerate(old_texts[:20], 1)]
    days = daily_stream(items, 12, 0.25, test_fraction=0.2, seed=3, base_items=base)
    assert len(days) == len(items) // 9
    tested = {it.hash for d in days for it in d.test}
    seen = {it.hash for it in base}
    for d in days:
        fresh = [it for it in d.train if it.source != "daily-duplicate"]
        dupes = [it for it in d.train if it.source == "daily-duplicate"]
        assert len(fresh) + len(d.test) == 9 and len(dupes) == 3 == d.injected_duplicates
        assert all(it.hash in seen | {f.hash for f in fresh} for it in dupes)  # copies of trained items
        assert not tested & {it.hash for it in d.train}
        seen |= {it.hash for it in fresh}


def test_split_digits_is_five_experiences_of_two_classes():
    stream = split_digits("task", seed=0)
    assert [e.classes for e in stream.experiences] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [e.task for e in stream.experiences] == [0, 1, 2, 3, 4]
    for e in stream.experiences:
        assert set(e.y_train) == set(e.y_test) == set(e.classes)
    assert {e.task for e in split_digits("class", seed=0).experiences} == {0}


def test_task_incremental_heads_answer_only_their_task_classes():
    import torch

    from retain.compare.digits import DigitsMLP

    model = DigitsMLP([[0, 1], [2, 3]])
    x = torch.randn(6, 64)
    pred = model(x, torch.tensor([0, 0, 0, 1, 1, 1])).argmax(1)
    assert set(pred[:3].tolist()) <= {0, 1} and set(pred[3:].tolist()) <= {2, 3}


def _digits_hashes(stream):
    return {e.name: {"train": fingerprint(e.x_train, e.y_train), "test": fingerprint(e.x_test, e.y_test)}
            for e in stream.experiences}


def test_worker_processes_give_the_same_numbers_as_sequential_runs():
    req = dict(strategies="naive,full_retrain", scenario="split-digits", setting="task", epochs=1, seed=7)
    seq = run_compare(CompareRequest(**req, jobs=1))
    par = run_compare(CompareRequest(**req, jobs=2))
    import os
    assert {r["pid"] for r in seq["results"].values()} == {os.getpid()}
    assert os.getpid() not in {r["pid"] for r in par["results"].values()}
    for label in ("naive", "full_retrain"):
        assert par["results"][label]["R"] == seq["results"][label]["R"]
        assert par["results"][label]["initial"] == seq["results"][label]["initial"]
    # every strategy got the bytes of the scenario itself, in both runs
    expected = _digits_hashes(split_digits("task", seed=7))
    for run in (seq, par):
        assert run["identical_data"] and run["data_hashes"] == expected
        assert all(r["data_hashes"] == expected for r in run["results"].values())
    # the joint baseline keeps the old classes; naive fine-tuning does not
    assert seq["results"]["full_retrain"]["metrics"]["forgetting"] < seq["results"]["naive"]["metrics"]["forgetting"]


def test_different_data_is_caught():
    a = {"data_hashes": {"e1": {"train": "1", "test": "2"}}}
    b = {"data_hashes": {"e1": {"train": "1", "test": "3"}}}
    with pytest.raises(RuntimeError, match="different data"):
        check_identical({"naive": a, "low_lr": b})


def test_a_strategy_without_classification_variant_is_reported(monkeypatch):
    from retain.core import pluginmanager
    from retain.core.hookspecs import hookimpl
    from retain.core.learning.strategy import Strategy
    from retain.strategies.builtin import Naive

    class TokenOnly(Strategy):
        """Has token-batch plugins only."""

        def avalanche_plugins(self, run):
            raise AssertionError("must not be called for classification")

    class Extra:
        @hookimpl
        def register_strategies(self, register):
            register("token_only", lambda options: TokenOnly())

    from retain.compare.digits import row_plugins

    assert row_plugins(Naive(), None, {}) == [] and row_plugins(TokenOnly(), None, {}) is None
    real = pluginmanager.make_plugin_manager
    monkeypatch.setattr(pluginmanager, "make_plugin_manager",
                        lambda *a, **k: real(extra_plugins=[Extra()]))
    monkeypatch.setattr(pluginmanager, "_DEFAULT", real(extra_plugins=[Extra()]))
    res = run_compare(CompareRequest(strategies="token_only", scenario="split-digits", epochs=1, jobs=1))
    got = res["results"]["token_only"]
    assert got["supported"] is False and "no classification variant" in got["reason"]
    # the output says so: a dimmed n/a row, and the reason under the table and in the CSV
    from rich.console import Console

    from retain.compare.report import rows, table

    console = Console(record=True, width=200)
    console.print(table(res))
    shown = console.export_text()
    assert "n/a token_only: 'token_only' has no classification variant" in shown
    assert rows(res)[0]["note"] == got["reason"] and rows(res)[0]["average_final"] is None


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_text_compare_end_to_end(base_model, old_texts, new_texts, tmp_path):
    from retain.compare.report import figure, figure_labels

    day1 = write_jsonl(tmp_path / "day1.jsonl", new_texts[:15])
    day2 = write_jsonl(tmp_path / "day2.jsonl", new_texts[15:30])
    old = write_jsonl(tmp_path / "old.jsonl", old_texts[:60])  # full_retrain's base data: kept small
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "compare", "--strategies", "naive,low_lr,replay,ewc,lwf,full_retrain,full_retrain_keep", "--model",
        str(base_model),
        "--data", str(day1), "--data", str(day2), "--base-data", str(old), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert [e["name"] for e in res["scenario"]["experiences"]] == ["base", "day1", "day2"]
    naive, low, full = (res["results"][s] for s in ("naive", "low_lr", "full_retrain"))
    stateful = [res["results"][s] for s in ("replay", "ewc", "lwf")]
    # the base was trained with the default config: it recorded a replay buffer (full_training.record)
    # but no EWC importances; compare says ewc starts without the base's state
    assert len(res["notes"]) == 1 and "without ewc among its strategies" in res["notes"][0]
    for r in (naive, low, full, *stateful):
        assert len(r["R"]) == 3 and all(len(row) == 3 for row in r["R"])
        assert r["R"][0] == naive["R"][0]  # every strategy starts from the same base model
        assert r["peak_rss_mib"] > 0 and r["train_seconds"] > 0
    # the engine trained naive and low_lr on the same items (its own record), full_retrain on more
    for r in (low, *stateful):
        assert [s["trained_hash"] for s in r["stages"]] == [s["trained_hash"] for s in naive["stages"]]
    assert full["stages"][0]["trained"] > naive["stages"][0]["trained"]
    keep = res["results"]["full_retrain_keep"]  # the same data, the base's tokenizer: other numbers
    assert [s["trained_hash"] for s in keep["stages"]] == [s["trained_hash"] for s in full["stages"]]
    assert keep["R"][2] != full["R"][2]
    assert naive["R"][2] != low["R"][2]  # lr 1e-3 vs 1e-4: the strategies really differ
    # text: "old data" is the base model's held-out items, "new" the day just learned
    assert naive["old"] == [row[0] for row in naive["R"]] and naive["new"] == [None, *(naive["R"][i][i] for i in (1, 2))]
    assert naive["old_rise"] == pytest.approx(naive["R"][2][0] - naive["R"][0][0])
    # outputs
    assert (out / "results.json").is_file() and json.loads((out / "results.json").read_text())["strategies"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,") and len(csv_lines) == 8
    png = (out / "compare.png").read_bytes()
    width, height = _png_size(png)
    assert width > 800 and height > 600 and len(png) > 20_000
    assert res["plot"]["legend"] == sorted(res["strategies"])
    assert {f"R: {s}" for s in res["strategies"]} <= set(res["plot"]["titles"])
    fig = figure(res)  # the same labels, read from the figure objects themselves
    assert figure_labels(fig) == {k: res["plot"][k] for k in ("legend", "titles")}


def test_cli_daily_updates_skip_the_injected_duplicates(base_model, old_texts, new_texts, tmp_path):
    new = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    old = write_jsonl(tmp_path / "old.jsonl", old_texts)
    result = CliRunner().invoke(app, [
        "compare", "--strategies", "naive", "--model", str(base_model), "--data", str(new),
        "--base-data", str(old), "--daily", "16", "--dup-share", "0.25", "--days", "2",
        "--out", str(tmp_path / "out"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    days = res["scenario"]["experiences"][1:]
    assert [d["injected_duplicates"] for d in days] == [4, 4]
    # the engine's exact deduper skipped every injected copy (exact, or case/spacing variant)
    assert [s["duplicates"] for s in res["results"]["naive"]["stages"]] == [4, 4]


def test_cli_compare_errors_are_one_line(base_model, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["compare", "--strategies", "naive,nope", "--scenario", "split-digits"])
    assert r.exit_code == 6 and "unknown strategy 'nope'" in r.output
    data = write_jsonl(tmp_path / "d.jsonl", ["a new paragraph about something"] * 1 + ["another one here"])
    r = runner.invoke(app, ["compare", "--strategies", "naive,full_retrain", "--model", str(base_model),
                            "--data", str(data)])
    assert r.exit_code == 3 and "--base-data" in r.output


def test_the_update_gate_is_off_unless_asked(base_model, new_texts, tmp_path):
    day = write_jsonl(tmp_path / "day.jsonl", new_texts[:12])
    always_fail = ["validators=[retention]", "options.retention.max_increase=-1.0"]
    req = dict(strategies="naive", model=base_model, data=[str(day)], overrides=always_fail)
    measured = run_compare(CompareRequest(**req))["results"]["naive"]
    gated = run_compare(CompareRequest(**req, gate=True))["results"]["naive"]
    assert measured["stages"][0]["status"] == "accepted" and measured["R"][1] != measured["R"][0]
    assert gated["stages"][0]["status"] == "rejected" and gated["stages"][0]["verdicts"] == {"retention": "fail"}
    assert gated["R"][1] == gated["R"][0]  # the gate kept the base model


def _avalanche_R(make_strategy, setting: str, seed: int, epochs: int):
    """avalanche-lib's own strategy over the same stream, evaluated like retain compare."""
    import torch
    import torch.nn.functional as F
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    from retain.compare.digits import accuracy, make_dataset, new_model, tensors

    stream = split_digits(setting, seed=seed)
    model = new_model(stream, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    strategy = make_strategy(model=model, optimizer=opt, criterion=F.cross_entropy, train_mb_size=32,
                             train_epochs=epochs, device="cpu", evaluator=None)
    rows = []
    for i, exp in enumerate(benchmark_from_datasets(
            train=[make_dataset(*tensors(e, "train")) for e in stream.experiences]).train_stream):
        opt.state.clear()          # retain's fit: a fresh optimizer per experience
        torch.manual_seed(seed + i)  # and the same seed before each experience
        strategy.train(exp)
        rows.append([accuracy(model, e) for e in stream.experiences])
    return rows


def test_split_digits_ewc_and_replay_match_avalanche_exactly():
    """Retain's strategies rebuild their plugins each experience from state_dict (as between
    two updates); avalanche keeps one template and its plugins in memory. Same numbers."""
    from avalanche.training import EWC, Naive
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    res = run_compare(CompareRequest(strategies="naive+ewc,naive+replay,lwf", scenario="split-digits",
                                     epochs=1, seed=3, overrides=[
                                         "options.ewc.ewc_lambda=100000.0", "options.replay.buffer_size=100",
                                         "options.replay.share=0.5"]))
    ewc = _avalanche_R(lambda **k: EWC(**k, ewc_lambda=1e5, mode="online", decay_factor=1.0), "class", 3, 1)
    replay = _avalanche_R(lambda **k: Naive(**k, plugins=[ReplayPlugin(
        mem_size=100, batch_size_mem=32, storage_policy=ReservoirSamplingBuffer(100))]), "class", 3, 1)
    assert res["results"]["naive+ewc"]["R"] == ewc
    assert res["results"]["naive+replay"]["R"] == replay
    assert res["results"]["naive+replay"]["final_old"] > 0.3  # replay keeps old classes alive
    assert res["results"]["lwf"]["supported"] is False  # its distillation is written for token batches


def test_compare_says_when_the_base_already_learned_an_experience(base_model, old_texts, new_texts, tmp_path):
    from retain.core.config import load_config
    from retain.core.engine import Engine

    from conftest import TINY

    learned = write_jsonl(tmp_path / "learned.jsonl", new_texts[:12])
    Engine(load_config(None, [*TINY, "validators=[finite]"])).update([str(learned)], base_model)
    fresh = write_jsonl(tmp_path / "fresh.jsonl", new_texts[12:24])
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, [
        "compare", "--strategies", "low_lr", "--model", str(base_model), "--data", str(learned),
        "--data", str(fresh), "--epochs", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "note: experience 'learned': nothing new to learn for low_lr: the base model had already learned" in said
    assert "'fresh'" not in said.split("nothing new to learn")[0][-60:]  # only the learned experience
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["status"] for s in res["results"]["low_lr"]["stages"]] == ["nothing_new", "accepted"]
    assert any("experience 'learned': nothing new" in n for n in res["notes"])
