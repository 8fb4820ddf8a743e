"""Ctrl-C: SIGINT at many moments of `retain update` ends it cleanly, every time.

Whenever it arrives (while typer, torch or avalanche-lib import, while the model
loads, data is collected and deduplicated, while it trains), the run must exit
130 with "interrupted: the current model is unchanged" and no traceback, CURRENT
must not move, and the model directory must hold exactly the files it held
before (no SQLite -wal/-shm, no .tmp-* version, no .CURRENT.tmp-*).

Three kinds of trials, run two at a time:
- cold starts: a fresh interpreter, so the interrupt lands in the imports. The clock
  starts when retain's code runs (the console script's first statement installs the
  handler; the interpreter's own start-up before it is not retain's to handle), or
  when the run says it has deduplicated, which is when avalanche-lib is imported;
- warm starts, forked from a forkserver that imported the training stack once:
  an interrupt just after each step line, and at several moments of training;
- the save: SIGINT sent from the test-only fault points inside it. Before the
  version is complete it is removed and CURRENT stays; once the version is renamed
  into place, the interrupt waits until CURRENT has moved, and says so.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

ARGS = [a for s in [*TINY, "fine_tuning.epochs=2"] for a in ("--set", s)]
PRELOAD = ["retain.launch", "retain.cli", "retain.render", "retain.core.engine", "retain.core.learning.training",
           "retain.plugins.gpt", "avalanche.training.templates",
           "avalanche.benchmarks.scenarios.dataset_scenario"]
COLD = [
    # (wait for, then seconds): "ready" is retain's first statement (then typer, rich and torch
    # import); after "Skip duplicates" avalanche-lib imports
    ("ready", 0.0), ("ready", 0.05), ("ready", 0.15), ("ready", 0.4), ("ready", 1.0), ("ready", 2.5),
    ("Skip duplicates", 1.0),
]
WARM = [("Load model", 0.0), ("Collect new data", 0.0), ("Skip duplicates", 0.0), ("Tokenize", 0.0),
        ("Fine-tune", 0.3), ("Epoch 1/2", 0.1)]
COLD_CHILD = """
import os, sys
from retain.launch import install, main
install()
os.write(int(sys.argv[1]), b"ready\\n")
os.close(int(sys.argv[1]))
sys.argv = ["retain", *sys.argv[2:]]
main()
"""


def snapshot(model: Path) -> tuple[str, list[str]]:
    return (model / "CURRENT").read_text(), sorted(str(p.relative_to(model)) for p in model.rglob("*"))


def _warm_child(argv: list[str], log: str, env: dict) -> None:
    """In the forked child: the `retain` console script's main, output to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    sys.argv = ["retain", *argv]
    from retain.launch import main

    try:
        main()
    except SystemExit as exc:
        sys.stdout.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    os._exit(0)


class Trial:
    def __init__(self, root: Path, base: Path, data: Path, name: str, json_out: bool):
        self.model = root / name / "model"
        shutil.copytree(base, self.model)
        self.before = snapshot(self.model)
        self.log = root / name / "out.log"
        self.argv = ["update", "-d", str(data), "-m", str(self.model), *ARGS, *(["--json"] if json_out else [])]
        self.json_out = json_out
        self.name = name

    def wait_for(self, marker: str, alive, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while marker not in (self.log.read_text(errors="replace") if self.log.exists() else ""):
            assert alive(), f"{self.name}: ended before {marker!r}:\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name}: no {marker!r} in {timeout}s"
            time.sleep(0.01)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check(self, code: int | None, expect: str = "interrupted: the current model is unchanged") -> None:
        out = self.output()
        assert code == 130, f"{self.name}: exit {code}, not 130:\n{out[-3000:]}"
        assert "Traceback" not in out and "terminate called" not in out, f"{self.name}:\n{out[-3000:]}"
        assert expect in out, f"{self.name}:\n{out[-3000:]}"
        if self.json_out:
            last = json.loads(out.strip().splitlines()[-1])
            assert last["error"]["code"] == 130 and last["error"]["kind"] == "interrupted", last
        if expect.endswith("unchanged"):
            assert snapshot(self.model) == self.before, f"{self.name}: the model directory changed"


def cold_trial(trial: Trial, marker: str, delay: float) -> str:
    t0 = time.monotonic()
    read, write = os.pipe()
    with open(trial.log, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", COLD_CHILD, str(write), *trial.argv], stdout=log,
                                stderr=subprocess.STDOUT, pass_fds=(write,))
    os.close(write)
    with os.fdopen(read, "rb") as ready:
        assert ready.read(6) == b"ready\n", trial.output()
    if marker != "ready":
        trial.wait_for(marker, lambda: proc.poll() is None)
    time.sleep(delay)
    assert proc.poll() is None, f"{trial.name}: finished before the interrupt"
    proc.send_signal(signal.SIGINT)
    trial.check(proc.wait(timeout=120))
    return f"{trial.name} cold {marker}+{delay} {time.monotonic() - t0:.1f}s"


def warm_trial(ctx, trial: Trial, marker: str, delay: float, env: dict | None = None,
               expect: str = "interrupted: the current model is unchanged") -> str:
    t0 = time.monotonic()
    proc = ctx.Process(target=_warm_child, args=(trial.argv, str(trial.log), env or {}))
    proc.start()
    if marker:
        trial.wait_for(marker, proc.is_alive)
        time.sleep(delay)
        assert proc.is_alive(), f"{trial.name}: finished before the interrupt"
        os.kill(proc.pid, signal.SIGINT)
    proc.join(120)
    trial.check(proc.exitcode, expect)
    return f"{trial.name} warm {marker}+{delay} {env} {time.monotonic() - t0:.1f}s"


def test_sigint_at_any_moment_exits_130_and_leaves_the_model_as_it_was(base_model, new_texts, tmp_path):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    jobs = []
    n = 0

    def trial(json_out: bool = False) -> Trial:
        nonlocal n
        n += 1
        return Trial(tmp_path, base_model, data, f"t{n}", json_out)

    with ThreadPoolExecutor(2) as pool:
        # Cold starts first: they import while the forkserver imports too.
        jobs += [pool.submit(cold_trial, trial(i % 2 == 1), m, d) for i, (m, d) in enumerate(COLD)]
        t0 = time.monotonic()
        warm_up = ctx.Process(target=os.getpid)  # starts the forkserver
        warm_up.start()
        warm_up.join()
        print(f"forkserver {time.monotonic() - t0:.1f}s")
        jobs += [pool.submit(warm_trial, ctx, trial(i % 2 == 0), m, d) for i, (m, d) in enumerate(WARM)]
        # The save: before the version is complete, and once it is renamed into place.
        fault = {"RETAIN_FAULT_SIGNAL": "INT"}
        jobs.append(pool.submit(warm_trial, ctx, trial(), "", 0, {**fault, "RETAIN_FAULT_AT": "ledger"}))
        late = trial(True)
        jobs.append(pool.submit(warm_trial, ctx, late, "", 0, {**fault, "RETAIN_FAULT_AT": "renamed"},
                                "interrupted: the run had finished: version 0002 is current"))
        done = [job.result() for job in jobs]
    print("\n".join(done))
    assert len(done) == len(COLD) + len(WARM) + 2
    # The late interrupt waited for CURRENT: the new version is whole and current, nothing else left.
    store = ModelStore(late.model)
    assert store.current() == "0002" and store.versions() == ["0001", "0002"]
    assert not [p for p in late.model.rglob("*") if p.name.endswith(("-wal", "-shm")) or ".tmp-" in p.name]
    load_version(store)
    store.ledger.close()


def test_an_ignored_sigint_stays_ignored(tmp_path):
    # nohup and background jobs start with SIGINT ignored: installing the handler must not undo that.
    code = ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nfrom retain.core.runtime import interrupts\n"
            "print(interrupts.install(print), signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_an_interrupt_in_a_command_that_reads_only(base_model, json_out):
    # Not only `update`: any command, here with the ledger open, says the same and exits 130.
    code = ("import os, signal, sys\nsys.argv = ['retain', 'history', '-m', sys.argv[1], *sys.argv[2:]]\n"
            "from retain.core.storage import versions\n"
            "real = versions.history\n"
            "def history(store):\n"
            "    store.ledger.db.execute('SELECT 1').fetchone()\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(store)\n"
            "versions.history = history\n"
            "from retain.launch import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code, str(base_model), *(["--json"] if json_out else [])],
                       capture_output=True, text=True)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().endswith("interrupted: the current model is unchanged") and "Traceback" not in r.stderr
    if json_out:
        assert json.loads(r.stdout)["error"] == {"code": 130, "kind": "interrupted",
                                                 "message": "interrupted: the current model is unchanged"}
    assert not list(base_model.glob("ledger.sqlite-*"))
