"""Ray as an executor: ``compare --ray`` gives the table a process pool gives, ``update --auto
--ray`` runs its trials as Ray tasks, and without Ray ``--ray`` says what to install."""

from __future__ import annotations

import json
import os
import sys

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.compare import CompareRequest, run_compare
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


def test_compare_ray_without_ray_says_what_to_install(no_ray):
    result = CliRunner().invoke(app, ["compare", "--strategies", "naive", "--scenario", "split-digits", "--ray"])
    assert result.exit_code == 3, result.output  # as --auto without Optuna: a missing extra
    assert "pip install 'retain[ray]'" in result.output


def test_auto_ray_without_ray_says_what_to_install(no_ray, base_model, tmp_path, new_texts):
    pytest.importorskip("optuna", reason="--auto needs Optuna, in the test extra: pip install '.[test]'")
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:10])
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(data), "--auto",
                                      "--ray", *[f"--set={o}" for o in TINY]])
    assert result.exit_code == 3, result.output  # as --auto without Optuna: a missing extra
    assert "pip install 'retain[ray]'" in result.output
    assert ModelStore(base_model).versions() == ["0001"]


def test_ray_without_auto_is_a_usage_error(base_model, tmp_path):
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(tmp_path / "x.jsonl"),
                                      "--ray", "auto"])
    assert result.exit_code == 2 and "--auto" in result.output


def test_local_ray_compare_gives_the_table_of_two_worker_processes():
    pytest.importorskip("ray", reason="Ray is the optional extra: pip install '.[ray]'")
    import torch

    req = dict(strategies="naive,low_lr", scenario="split-digits", setting="task", epochs=1, seed=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker of either kind: the same arithmetic
    try:
        pool = run_compare(CompareRequest(**req, jobs=2))
        ray = run_compare(CompareRequest(**req, jobs=2, ray="local"))  # a local Ray with 2 CPUs
    finally:
        torch.set_num_threads(threads)
    assert ray["ray"] == "local" and ray["ray_startup_seconds"] > 0
    assert os.getpid() not in {r["pid"] for r in ray["results"].values()}
    assert len({r["pid"] for r in ray["results"].values()}) == 2  # a fresh worker per task
    for label in ("naive", "low_lr"):
        mine, theirs = ray["results"][label], pool["results"][label]
        assert mine["R"] == theirs["R"] and mine["initial"] == theirs["initial"]
        assert mine["metrics"] == theirs["metrics"]
    assert ray["data_hashes"] == pool["data_hashes"]
    # The runs were not all alike: the table compares something.
    assert ray["results"]["naive"]["R"] != ray["results"]["low_lr"]["R"]


def test_auto_ray_runs_its_trials_as_ray_tasks(base_model, new_texts, tmp_path):
    pytest.importorskip("optuna", reason="--auto needs Optuna, in the test extra: pip install '.[test]'")
    pytest.importorskip("ray", reason="Ray is the optional extra: pip install '.[ray]'")
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:30])
    sets = [f"--set={o}" for o in [*TINY, "fine_tuning.strategy=rewarm", "tune.max_trials=2", "tune.jobs=2"]]
    result = CliRunner().invoke(app, ["update", "--model", str(base_model), "--data", str(data), "--auto",
                                      "--ray", "--budget", "5", "--json", *sets])
    assert result.exit_code in (0, 10), result.output
    search = json.loads(result.stdout)["search"]
    assert len(search["trials"]) == 2
    assert not [t for t in search["trials"] if t.get("error")], search["trials"]
    pids = {t["pid"] for t in search["trials"]}
    assert len(pids) == 2 and os.getpid() not in pids  # each in a Ray worker of its own
    if result.exit_code == 0:
        assert ModelStore(base_model).current() == "0002"
