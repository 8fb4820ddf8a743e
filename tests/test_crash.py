"""Crash safety: SIGKILL `retain update` at random moments and at each step of the save,
then check that the model directory is consistent and that a rerun completes.

Each trial is a real `retain update` (retain.cli's app, run in a child process
and killed with SIGKILL). The children are forked from a forkserver that has
imported torch and avalanche-lib once, so a trial costs the update, not the
~5 s of imports. Deterministic kills use the test-only RETAIN_FAULT_AT seam
(core/storage/store.py: fault_point) to land inside the short save steps; random kills
are spread over a whole run (load, collect, dedupe, train, validate, save).

Invariants after every kill:
- CURRENT names a complete version whose files all match their checksums and which loads;
- every version of CURRENT's chain has exactly its own items in the ledger (the
  trained items' digest equals the manifest's data_hash, the held-out ones equal
  holdout.jsonl) and the same number of near-duplicate index entries;
- rows of any other version (a crash, a finished-but-never-current version) are
  invisible to ledger lookups;
and after each completed rerun: no temp dirs, no rows of unfinished versions, a
valid rejects file, and the job's items learned exactly once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from retain.core.storage.models import load_version
from retain.core.data.items import Item
from retain.core.data.known import KnownItems
from retain.core.data.nearindex import NearDuplicateIndex
from retain.core.storage.store import INDEX, ModelStore
from retain.plugins.dedupers import MinhashDeduper, MinhashOptions

from conftest import TINY

# learning_pool=0: a day's learning is judged on its own 2 held-out items (too few: a warning), as
# before the pool; on this tiny model one epoch moves the pool's loss by noise, and whether the gate
# accepts a day is not what this test is about (its kills decide which days run, not the gate).
SETTINGS = [*TINY, "fine_tuning.epochs=1", "dedupers=[exact, minhash]", "validation.learning_pool=0"]
# Every fault_point in the save path, in the order an update reaches them.
FAULTS = ["write-model.safetensors", "minhash", "ledger", "ledger-committed", "rename", "renamed",
          "replace-CURRENT"]
RANDOM_KILLS = 12  # plus the 7 deterministic FAULTS: 19 kills per run, each a different moment
PRELOAD = ["retain.cli", "retain.core.engine", "retain.core.learning.training", "retain.plugins.gpt",
           "retain.plugins.dedupers", "retain.core.data.nearindex", "datasketch", "scipy.integrate",
           "avalanche.training.templates", "avalanche.benchmarks.scenarios.dataset_scenario"]


def _cli_child(args: list[str], fault: str | None, log: str) -> None:
    """Runs in the forked child: `retain update ...` with output to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.pop("RETAIN_FAULT_AT", None)
    if fault:
        os.environ["RETAIN_FAULT_AT"] = fault
    import torch

    torch.set_num_threads(1)  # trials may run two at a time on two cores
    from retain.cli import app

    code = 0
    try:
        app(args, prog_name="retain")
    except SystemExit as exc:
        sys.stdout.flush()
        code = exc.code if isinstance(exc.code, int) else 1
    Path(log + ".exit").write_text(str(code))  # only an ending the child chose writes it
    os._exit(code)


class Lane:
    """One model directory and the update jobs run (and killed) on it, one at a time."""

    def __init__(self, ctx, model: Path, work: Path, texts: list[str], seed: int):
        self.ctx, self.model, self.work, self.texts = ctx, model, work, texts
        self.rng = random.Random(seed)
        self.jobs = 0
        self.log: list[str] = []      # what each trial did, for the failure message
        self.kills: list[str] = []    # where each kill landed
        self.full_run_s = 0.0

    def new_job(self) -> Path:
        """A data file of 8 new items (and one junk line, so rejects are written too)."""
        chunk = self.texts[self.jobs * 8:(self.jobs + 1) * 8]
        assert len(chunk) == 8, "not enough distinct texts for the jobs"
        self.jobs += 1
        path = self.work / f"job{self.jobs}.jsonl"
        path.write_bytes(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in chunk) + b"\xff junk\n")
        return path

    def run(self, data: Path, fault: str | None = None, kill_after: float | None = None) -> int:
        log = self.work / f"trial{len(self.log)}.log"
        args = ["update", "-d", str(data), "-m", str(self.model), "--device", "cpu",
                *[a for s in SETTINGS for a in ("--set", s)]]
        proc = self.ctx.Process(target=_cli_child, args=(args, fault, str(log)))
        start = time.monotonic()
        proc.start()
        proc.join(kill_after)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        exitcode = proc.exitcode
        if exitcode == 255:
            # The forkserver lost the child's status (seen once in ~1,500 trials, here and in
            # test_faults, after a kill and once after a clean ending): the child's own ending,
            # if it wrote one, is the truth; without one, it was the kill.
            ended = Path(f"{log}.exit")
            exitcode = int(ended.read_text()) if ended.exists() else -signal.SIGKILL
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
        where = fault or (lines[-1].strip()[:40] if lines else "start-up")
        self.log.append(f"{data.name} fault={fault} kill_after={kill_after} exit={exitcode} "
                        f"last={where!r}")
        if exitcode == -signal.SIGKILL:
            self.kills.append(where)
        elif exitcode != 0:
            raise AssertionError(f"update failed (exit {exitcode}):\n" + "\n".join(lines[-20:]))
        else:  # random kills are spread over the latest whole run's duration
            self.full_run_s = time.monotonic() - start
        return exitcode

    def learned_rows(self, data: Path) -> int:
        """Ledger rows, in CURRENT's chain, of the job's 8 items."""
        store = ModelStore(self.model)
        try:
            hashes = [Item(json.loads(line)["text"]).hash for line in data.read_bytes().splitlines()[:8]]
            chain = store.chain()
            return store.ledger.db.execute(
                f"SELECT COUNT(*) FROM items WHERE version IN ({','.join('?' * len(chain))})"
                f" AND hash IN ({','.join('?' * 8)})", [*chain, *hashes]).fetchone()[0]
        finally:
            store.ledger.close()

    def complete(self, data: Path) -> None:
        """The rerun after kills: it must finish normally, with the job's items learned once."""
        assert self.run(data) == 0
        check_consistent(self.model, recovered=True)
        rows = self.learned_rows(data)
        assert rows == 8, f"{data.name}: {rows} ledger rows in the chain for its 8 items"


def check_consistent(model: Path, recovered: bool = False) -> None:
    store = ModelStore(model)
    try:
        current = store.current()
        manifest = store.manifest(current)
        for rel in manifest["files"]:
            store.verified_path(current, rel, manifest)
        load_version(store)
        chain = store.chain()
        db = store.ledger.db
        bands = MinhashDeduper(MinhashOptions()).spec.bands
        index = NearDuplicateIndex(store.ledger, MinhashDeduper(MinhashOptions()).spec)
        for version in chain:
            m = store.manifest(version)
            rows = db.execute("SELECT hash, role FROM items WHERE version = ?", (version,)).fetchall()
            trained = sorted(h for h, role in rows if role == "train")
            held = sorted(h for h, role in rows if role == "holdout")
            assert len(trained) == m["counts"]["trained"], version
            digest = hashlib.sha256()
            for h in trained:
                digest.update(h.encode())
            assert digest.hexdigest() == m["data_hash"], f"{version}: ledger rows are not its items"
            on_disk = sorted(r["hash"] for r in store.read_jsonl(version, "holdout.jsonl", m)) \
                if "holdout.jsonl" in m["files"] else []
            assert held == on_disk, f"{version}: held-out rows differ from holdout.jsonl"
            if "minhash" in m["config"]["dedupers"]:
                assert index.count(version) == bands * len(rows), f"{version}: index rows"
        outside = [v for (v,) in db.execute("SELECT DISTINCT version FROM items") if v not in chain]
        if outside:
            hashes = [h for (h,) in db.execute(
                f"SELECT hash FROM items WHERE version IN ({','.join('?' * len(outside))})", outside)]
            assert all(v in chain for v, _ in store.ledger.find(hashes, chain).values())
        if recovered:
            # Nothing unfinished stays (the summaries' index, a cache, is the one hidden file)
            assert not [p for p in (model / "versions").iterdir() if p.name.startswith(".") and p.name != INDEX]
            assert not list(model.glob(".CURRENT.tmp-*"))
            assert set(outside) <= set(store.versions()), "rows of unfinished versions survived recover()"
            for line in (model / "rejects.jsonl").read_text(encoding="utf-8").splitlines():
                json.loads(line)
    finally:
        store.ledger.close()


def _lane_trials(lane: Lane, faults: list[str], random_kills: int) -> None:
    lane.complete(lane.new_job())  # a normal run first: also measures how long a whole run takes
    trials = [("fault", f) for f in faults] + [("random", None)] * random_kills
    lane.rng.shuffle(trials)
    data = lane.new_job()
    kills_in_job = 0
    for kind, fault in trials:
        if kind == "fault":
            code = lane.run(data, fault=fault)
            assert code == -signal.SIGKILL, f"fault point {fault!r} was never reached"
        else:
            while lane.run(data, kill_after=lane.rng.uniform(0.0, lane.full_run_s)) == 0:
                data = lane.new_job()  # the run beat the kill: it counts as a completed rerun
        check_consistent(lane.model)
        kills_in_job += 1
        if kills_in_job == 4 or lane.learned_rows(data):  # (a kill after CURRENT moved: job done)
            lane.complete(data)
            data, kills_in_job = lane.new_job(), 0
        elif lane.rng.random() < 0.3:
            # The user reruns with other data: whatever the killed run left under the
            # version name the next run reuses must not count for it.
            data, kills_in_job = lane.new_job(), 0
    lane.complete(data)


def test_sigkill_at_any_moment_leaves_a_consistent_model_and_a_rerun_completes(base_model, tmp_path):
    from retain.demo import base_corpus, docstring_paragraphs

    # New texts for the jobs: none a (near-)duplicate of another or of what base_model learned.
    learned = {Item(t).hash for t in base_corpus(240)}  # conftest's old_texts
    candidates = [Item(t) for t in dict.fromkeys(docstring_paragraphs() + base_corpus(1500))
                  if len(t) >= 120 and Item(t).hash not in learned]
    near = MinhashDeduper(MinhashOptions()).find_duplicates(candidates, KnownItems(None, []))
    texts = [it.text for i, it in enumerate(candidates) if i not in near]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    warm_up = ctx.Process(target=os.getpid)  # starts the forkserver: its imports are no trial's
    warm_up.start()
    warm_up.join()
    lanes = []
    for n in range(2):
        model = tmp_path / f"lane{n}" / "model"
        (tmp_path / f"lane{n}").mkdir()
        shutil.copytree(base_model, model)
        lanes.append(Lane(ctx, model, tmp_path / f"lane{n}", texts[n::2], seed=n))
    plans = [(lanes[0], FAULTS[0::2], RANDOM_KILLS // 2), (lanes[1], FAULTS[1::2], RANDOM_KILLS // 2)]
    with ThreadPoolExecutor(len(plans)) as pool:
        futures = [pool.submit(_lane_trials, *plan) for plan in plans]
        for future, lane in zip(futures, lanes):
            try:
                future.result()
            except BaseException:
                print("\n".join(lane.log))
                raise
    kills = [k for lane in lanes for k in lane.kills]
    print(f"{len(kills)} kills landed at: " + "; ".join(kills))
    assert len(kills) >= len(FAULTS) + RANDOM_KILLS
    assert set(FAULTS) <= set(kills)
