"""Output that reads anywhere: whole lines in logs, tables that keep numbers whole at 80
columns, plurals, percentages that never contradict a verdict, a progress bar only once
training runs, no qpsolvers warning."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.quality.validation import Evidence
from retain.core.wording import percent, plural

from conftest import TINY, write_jsonl

runner = CliRunner()
TERMINAL_80 = {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
LOG_80 = {"COLUMNS": "80", "TTY_COMPATIBLE": "0"}


def plain(text: str) -> str:
    """Without the terminal's style codes (bold, dim), as a reader sees it."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def compare_results() -> dict:
    """A `retain compare` result as summarize() writes it: four strategies, every column filled."""
    def res(i):
        return {"supported": True, "metrics": {"average_final": 7.1234 + i, "forgetting": 0.0123 * i,
                                               "bwt": -0.0456 * i, "fwt": 0.0789},
                "final_old": 6.54321 + i, "final_new": 7.65432 - i, "final_perplexity": 1234.5 + i,
                "old_rise": 0.0321 * i, "train_seconds": 12.34 * (i + 1), "wall_seconds": 23.45 * (i + 1),
                "peak_rss_mib": 1024.0 + i, "trainable_parameters": 544256 - 1000 * i, "version_mib": 2.107 + i}
    names = ["naive", "low_lr", "replay", "full_retrain"]
    return {"scenario": {"name": "text", "setting": None, "metric": "loss", "higher_is_better": False,
                         "experiences": [{"name": "day1"}, {"name": "day2"}]},
            "strategies": names, "seed": 0, "results": {n: res(i) for i, n in enumerate(names)}}


def test_compare_table_at_80_columns_keeps_every_number_whole(monkeypatch, capsys):
    from retain.compare.report import _columns, rows, table
    from retain.render import make_console

    results = compare_results()
    expected = {format(r[key], fmt) for r in rows(results) for key, _, fmt, _ in _columns(results)}
    for env, narrow in ((TERMINAL_80, True), (LOG_80, False)):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        make_console().print(table(results))
        out = plain(capsys.readouterr().out)
        assert "…" not in out
        shown = set(re.findall(r"[-+]?\d[\d,]*(?:\.\d+)?", out))
        assert expected <= shown, sorted(expected - shown)
        lines = out.splitlines()
        if narrow:  # one block per strategy, every line within the terminal
            assert max(map(len, lines)) <= 80, max(lines, key=len)
            assert "full_retrain" in lines
        else:  # a log: the grid, one line per strategy, however wide
            row = next(line for line in lines if "full_retrain" in line)
            assert "1237.5" in row and "93.8" in row and "1027" in row, row


def test_the_check_sees_a_cut_number(monkeypatch, capsys):
    # Without the narrow layout, rich shrinks the columns and cuts the numbers: what the
    # test above guards against.
    from rich.console import Console

    from retain.compare.report import table

    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    Console(width=80).print(table(compare_results()))
    assert "…" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["plugins"], ["strategies"]], ids=["plugins", "strategies"])
def test_listing_tables_at_80_columns(command):
    r = runner.invoke(app, command, env=TERMINAL_80)
    assert r.exit_code == 0, r.output
    out = plain(r.stdout)
    lines = out.splitlines()
    assert "…" not in out and max(map(len, lines)) <= 80, max(lines, key=len)
    names = {"plugins": ["dedupers", "preprocessors", "strategies", "validators"],
             "strategies": ["low_lr", "replay", "naive", "agem"]}[command[0]]
    for name in names:  # each row's name on a line of its own, whole
        assert name in lines, name
    # In a log (not a terminal), whatever COLUMNS says: the grid, one line per row.
    r = runner.invoke(app, command, env=LOG_80)
    line = next(ln for ln in r.stdout.splitlines() if "│ validators" in ln or "│ low_lr" in ln)
    assert ("validator:duration" in line) if command == ["plugins"] else ("warmup_steps=0" in line), line
    assert "…" not in r.stdout


def test_history_at_80_columns(base_model):
    r = runner.invoke(app, ["history", "-m", str(base_model)], env=TERMINAL_80)
    assert r.exit_code == 0, r.output
    out = plain(r.stdout)
    assert "…" not in out and max(map(len, out.splitlines())) <= 80
    assert re.search(r"old items' loss: \d+\.\d{3} → \d+\.\d{3}", out), out
    assert "created (UTC): 20" in out


def test_an_update_logs_whole_lines(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:14] + new_texts[:1])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model),
                            *[a for s in TINY for a in ("--set", s)]], env=LOG_80)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert any(len(line) > 80 for line in lines)  # long lines stay long ...
    summary = next(line for line in lines if line.startswith("Fine-tuning is fine") or
                   line.startswith("Full retrain recommended"))
    assert summary.endswith("."), summary      # ... and whole: the summary is one line
    assert "Collect new data: 15 items" in r.stdout and "Skip duplicates: 1 (14 items left)" in r.stdout
    assert re.search(r"\d+ new items in 1 update since the last full training \(\d+ learned, \d+ held out\)",
                     r.stdout), r.stdout


def test_plurals_and_a_progress_bar_only_once_training_runs():
    from io import StringIO

    from rich.console import Console

    from retain.render import ConsoleRenderer

    out = StringIO()
    renderer = ConsoleRenderer(Console(file=out, force_terminal=True, width=120, no_color=True), progress=True)
    run = SimpleNamespace(full=False, kind="fine_tuning", parameters={"total": 1000}, strategies=[SimpleNamespace(name="low_lr")],
                          settings=SimpleNamespace(epochs=2, learning_rate=1e-4, batch_size=8))
    renderer.show_collect(run, {"items": 1, "rejected": 0, "rejects_file": None})
    renderer.show_tokenize(run, {"items": 1, "sequences": 1, "tokens": 1, "held_out": 1})
    renderer.step_started(run=run, step="train")
    assert renderer.progress is None  # nothing to show before the first step (imports may run)
    renderer.training_progress(run=run, epoch=1, epochs=2, step=1, steps=4, loss=5.25, tokens=64)
    assert renderer.progress is not None
    renderer.progress.refresh()
    renderer.epoch_ended(run=run, epoch=1, loss=5.25)  # the bar starts over for epoch 2/2
    renderer.progress.refresh()
    renderer.training_progress(run=run, epoch=2, epochs=2, step=1, steps=4, loss=5.0, tokens=64)
    renderer.epoch_ended(run=run, epoch=2, loss=5.0)
    assert renderer.progress is None  # the last epoch ended: the bar is gone
    text = plain(out.getvalue())
    assert "Collect new data: 1 item\n" in text and "1 item -> 1 sequence, 1 token (1 item held out)" in text
    assert "2 epochs, lr 0.0001" in text and "epoch 2/2" in text and "loss 5.250" in text
    assert "nan" not in text
    renderer.step_started(run=SimpleNamespace(**{**vars(run), "settings": SimpleNamespace(
        epochs=1, learning_rate=1e-4, batch_size=8)}), step="train")
    assert "1 epoch, lr 0.0001" in plain(out.getvalue())


@pytest.mark.parametrize("fraction, thresholds, shown", [
    (-0.000915, (-0.001,), "-0.09%"), (0.0504, (0.05, 0.02), "+5.04%"), (-0.028, (-0.001,), "-2.8%"),
    (0.0004, (), "+0.04%"), (0.1, (0.1,), "+10.0%")])
def test_percent_never_rounds_across_a_threshold(fraction, thresholds, shown):
    assert percent(fraction, *thresholds) == shown
    assert plural(1, "epoch") == "1 epoch" and plural(2, "entry", "entries") == "2 entries"


def test_an_auto_recipe_of_one_trial_says_1_trial():
    from retain.render import recipe as _recipe

    assert _recipe({"search": {"trials": 1, "describe": "rewarm, lr 1e-3"}}) == "auto (1 trial): rewarm, lr 1e-3"
    assert _recipe({"search": {"trials": 3, "describe": "x"}}).startswith("auto (3 trials)")


def test_a_failing_verdict_does_not_contradict_itself():
    from retain.plugins.validators import Learning, LearningOptions, LossTrend, LossTrendOptions

    ev = Evidence("fine_tuning", [5.0, 4.9], None, None, 7.4335, 7.4267, extra={"new_holdout_items": 7})
    v = Learning(LearningOptions()).validate(ev)
    assert v.status == "fail"
    assert "7.4335 -> 7.4267 (-0.09%): must fall by at least 0.1%" in v.reason, v.reason
    flat = LossTrend(LossTrendOptions()).validate(Evidence("fine_tuning", [5.050, 5.052], None, None, None, None))
    assert flat.status == "pass" and "fell" not in flat.reason and "flat" in flat.reason, flat.reason


def test_the_validate_lines_show_a_change_as_the_verdict_below_them_does(capsys):
    from io import StringIO

    from rich.console import Console

    from retain.core.pluginmanager import Registry, make_plugin_manager
    from retain.core.config import load_config
    from retain.render import ConsoleRenderer

    # Held-out new items fell 0.05%, against a 0.1% threshold: the line must not read "-0.1%".
    ev = Evidence("fine_tuning", [5.0, 4.9], None, None, 7.4335, 7.4298, extra={"new_holdout_items": 7})
    verdict = Registry.of(make_plugin_manager()).build("validators", "learning", load_config(None)).validate(ev)
    assert "(-0.05%): must fall by at least 0.1%" in verdict.reason, verdict.reason
    out = StringIO()
    renderer = ConsoleRenderer(Console(file=out, width=200, color_system=None), progress=False)
    metrics = {"retention_loss_before": 4.0, "retention_loss_after": 4.0, "new_loss_before": 7.4335,
               "new_loss_after": 7.4298, "retention_items": 10, "new_holdout_items": 7}
    renderer.show_validate(SimpleNamespace(full=False), {
        "metrics": metrics, "next_steps": [],
        "verdicts": [{**verdict.to_json(), "validator": "learning"}]})
    text = out.getvalue()
    assert "learning, held-out new items (7): loss 7.4335 -> 7.4298 (-0.05%)\n" in text, text
    assert "(-0.0%)" not in text and "(-0.1%)" not in text, text


def test_status_and_history_count_learned_items_alike(base_model, new_texts, tmp_path):
    sets = [a for s in TINY for a in ("--set", s)]
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:30])
    assert runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "-q", *sets]).exit_code == 0
    history = json.loads(runner.invoke(app, ["history", "-m", str(base_model), "--json"]).stdout)
    status = json.loads(runner.invoke(app, ["status", "-m", str(base_model), "--json", *sets]).stdout)
    update = history[-1]
    numbers = next(c for c in status["checks"] if c["name"] == "new_items")["numbers"]
    assert numbers["learned"] == update["items_learned"] and numbers["held_out"] == update["items_held_out"]
    assert update["items_held_out"] > 0  # the two counts would differ if one of them counted these
    text = runner.invoke(app, ["status", "-m", str(base_model), *sets]).stdout
    assert f"({update['items_learned']} learned, {update['items_held_out']} held out)" in text, text


QP_BLOCKED = """
import importlib.abc, sys
class NoSolvers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith("qpsolvers.solvers.") and name.endswith("_"):
            raise ImportError(name)  # as if none of qpsolvers' optional solvers were installed
sys.meta_path.insert(0, NoSolvers())
if sys.argv[1] == "cli":
    from retain.launch import quiet_library_warnings
    quiet_library_warnings()
import qpsolvers
print(qpsolvers.available_solvers)
"""


def test_no_qp_solver_warning_on_the_command_line():
    runs = {mode: subprocess.run([sys.executable, "-c", QP_BLOCKED, mode], capture_output=True, text=True)
            for mode in ("bare", "cli")}
    assert runs["bare"].stdout.strip() == "[]" and "no QP solver found" in runs["bare"].stderr
    assert runs["cli"].stdout.strip() == "[]" and "no QP solver found" not in runs["cli"].stderr


def test_gem_without_quadprog_is_a_clear_plugin_error(monkeypatch):
    import qpsolvers

    from retain.core.errors import PluginError
    from retain.strategies.memory import Gem, GemOptions

    monkeypatch.setattr(qpsolvers, "available_solvers", ["osqp"])
    with pytest.raises(PluginError, match="pip install quadprog"):
        Gem(GemOptions()).avalanche_plugins(None)
