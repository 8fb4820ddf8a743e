"""Several processes, one update (``--nproc``, torchrun, DDP on gloo): the same weights as one
process on the same global batch, rank 0 the only writer, a dead rank commits nothing."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.store import ModelStore
from conftest import TINY, private_copy, write_jsonl

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP, fcntl")

UPDATE = [*TINY, "fine_tuning.batch_size=8"]


def _retain(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retain", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _weights(model_dir, version: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "versions" / version / "model.safetensors"))


def _relative(a: dict, b: dict) -> float:
    diff = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a) ** 0.5
    return diff / sum(float((a[k].double() ** 2).sum()) for k in a) ** 0.5


def _lock_is_free(model_dir) -> bool:
    fd = os.open(model_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.fixture
def new_data(tmp_path, new_texts):
    return write_jsonl(tmp_path / "new.jsonl", new_texts)


def test_two_processes_train_as_one_on_the_same_global_batch(_base_model, tmp_path, new_data):
    one = private_copy(_base_model, tmp_path / "one")
    two = private_copy(_base_model, tmp_path / "two")
    Engine(load_config(None, UPDATE)).update([str(new_data)], one)

    done = _retain(["update", "--data", str(new_data), "--model", str(two), "--nproc", "2", "--json",
                    *_sets(UPDATE)])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0 alone prints it
    assert report["version"] == "0002" and report["status"] == "accepted"

    store = ModelStore(two)
    assert store.versions() == ["0001", "0002"] and store.current() == "0002"  # exactly one new version
    base, single, ddp = _weights(one, "0001"), _weights(one, "0002"), _weights(two, "0002")
    assert _relative(single, base) > 1e-3  # the update did move the weights...
    assert _relative(ddp, single) < 1e-5   # ...and 2 ranks x 4 rows moved them as 1 x 8 rows did
    # The same epoch losses: each rank's loss is weighed by the whole batch's tokens.
    assert report["epoch_losses"] == pytest.approx(json.loads(
        (one / "versions" / "0002" / "report.json").read_text())["epoch_losses"], rel=1e-5)
    assert _lock_is_free(two)


# Rank 0 killed: it cannot remove its own shard scratch folder; the launcher must (a rank 0 that
# torchrun stopped after rank 1 died was seen, under load, to leave it too).
@pytest.mark.parametrize("killed", ["1", "0"])
def test_a_rank_killed_mid_update_commits_nothing_and_frees_the_lock(_base_model, tmp_path, new_data, killed):
    model = private_copy(_base_model, tmp_path)
    before = (model / "CURRENT").read_text()

    done = _retain(["update", "--data", str(new_data), "--model", str(model), "--nproc", "2", *_sets(UPDATE)],
                   env={"RETAIN_FAULT_AT": "train-step", "RETAIN_FAULT_RANK": killed,  # that rank SIGKILLed
                        "TMPDIR": str(tmp_path)})  # rank 1's scratch folder, which a kill leaves, stays here
    assert done.returncode != 0
    assert "SIGKILL" in done.stderr  # the rank died as planned, not of something else
    assert "nothing was committed" in done.stderr
    store = ModelStore(model)
    assert store.versions() == ["0001"]
    assert (model / "CURRENT").read_text() == before
    assert not [p for p in (model / "versions").iterdir() if p.name.startswith(".tmp-")]
    assert _lock_is_free(model)


def test_nproc_without_the_backend_names_what_is_missing(base_model, new_data, monkeypatch):
    import torch.distributed

    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["update", "--data", str(new_data), "--model", str(base_model),
                                      "--nproc", "2", *_sets(UPDATE)])
    assert result.exit_code == 2, result.output
    assert "torch.distributed" in result.output
    assert ModelStore(base_model).versions() == ["0001"]


@pytest.mark.parametrize("flag", ["--dry-run", "--check", "--auto"])
def test_nproc_with_a_one_process_mode_is_a_usage_error(base_model, new_data, flag):
    result = CliRunner().invoke(app, ["update", "--data", str(new_data), "--model", str(base_model),
                                      "--nproc", "2", flag])
    assert result.exit_code == 2
    assert "--nproc" in result.output


def test_sharded_batches_split_every_batch_between_the_ranks():
    from retain.core.runtime.world import ShardedBatches, World

    batches = [[0, 1, 2, 3, 4], [5]]
    shards = [list(ShardedBatches(batches, World(rank, 2, rank, "gloo"))) for rank in (0, 1)]
    assert shards == [[[0, 2, 4], [5]], [[1, 3], [5]]]  # rank 1 has no row of [5]: a stand-in...
    sampler = ShardedBatches(batches, World(1, 2, 1, "gloo"))
    flags = [sampler.stand_in for _ in sampler]
    assert flags == [False, True]  # ...flagged, so it trains on none of its tokens


def test_under_torchrun_only_train_and_update_run(base_model, new_data, monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)  # as torchrun starts each process
    history = CliRunner().invoke(app, ["history", "--model", str(base_model)])
    assert history.exit_code == 2 and "only train and update run under torchrun" in history.output
    auto = CliRunner().invoke(app, ["update", "--data", str(new_data), "--model", str(base_model), "--auto"])
    assert auto.exit_code == 2 and "--auto" in auto.output


def test_the_trivial_world_is_one_writer_whose_collectives_change_nothing(monkeypatch):
    import dataclasses

    import torch
    import torch.distributed as dist

    from retain.core.errors import LockedError
    from retain.core.runtime.world import SOLO, join, world_of

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert join("cpu") is SOLO  # not started by torchrun: one process, no process group joined
    assert (SOLO.rank, SOLO.size, SOLO.is_writer, SOLO.distributed) == (0, 1, True, False)
    box = {"verdicts": [1]}
    assert SOLO.broadcast(box) is box
    t = torch.tensor([1.0, 3.0])
    assert SOLO.all_reduce_(t, average=True) is t and t.tolist() == [1.0, 3.0]
    SOLO.average_([t])
    assert t.tolist() == [1.0, 3.0]
    SOLO.barrier("the save")
    assert SOLO.on_writer(len)([1, 2]) == 2
    SOLO.agree(None)
    with pytest.raises(LockedError):
        SOLO.agree(LockedError("held elsewhere"))
    assert not dist.is_available() or not dist.is_initialized()  # none of it needed a process group
    assert world_of(object()) is SOLO  # a template that is not retain's trains alone
    with pytest.raises(dataclasses.FrozenInstanceError):
        SOLO.rank = 1


def test_a_rank_other_than_0_writes_no_rejects(tmp_path):
    from retain.core.data.items import Item, Reject

    rejects = [Reject.of(Item("x", "s"), "too long")]
    ModelStore(tmp_path / "m", read_only=True).append_rejects(rejects, "run")  # how rank 1 opens it
    assert not (tmp_path / "m" / "rejects.jsonl").exists()
    ModelStore(tmp_path / "m").append_rejects(rejects, "run")
    assert len((tmp_path / "m" / "rejects.jsonl").read_text().splitlines()) == 1


def test_rank_0_hands_its_exit_code_to_the_launcher(tmp_path, monkeypatch):
    from retain.core.runtime.world import RankFailed
    from retain.launch import EXIT_FILE, Ending, outcome

    handoff = tmp_path / "exit_code"
    monkeypatch.setenv(EXIT_FILE, str(handoff))
    for rank, code, told, exits_0 in [("0", 10, "10", True), ("1", 10, "10", True), ("0", 1, "1", False)]:
        monkeypatch.setenv("RANK", rank)
        ending = Ending()
        ending.code = code
        assert ending.tell_launcher() is exits_0  # an agreed outcome: torchrun must not end the others
        assert handoff.read_text() == told  # rank 0's alone (rank 1 found rank 0's 10 there)
    assert outcome(2, 0, 10, None) == 10  # a rejection: every rank agreed, exit 10
    assert outcome(2, 0, 0, "0002") == 0
    with pytest.raises(RankFailed, match="after rank 0 saved version 0002"):
        outcome(2, 1, 1, "0002")  # rank 1 died after the save
    with pytest.raises(RankFailed, match="nothing was committed"):
        outcome(2, -9, None, None)  # rank 0 killed: it said nothing
