"""A year of daily versions in one model directory: does an update, `history` or `status`
get slower as versions pile up, and does the disk grow by what changed?

    python benchmarks/growth.py --write BENCHMARKS.md      # 365 daily versions (~15 min on 2 cores)
    python benchmarks/growth.py --tiny                      # CI-safe: 8 versions, the same tables
    python benchmarks/growth.py --compare-only --write BENCHMARKS.md   # a finished run's timings again

A tiny model (1 layer, d_model 32, byte-level BPE of 300) and generated text (random words of a
seeded vocabulary), so that a year of updates fits in minutes: what is measured is the model
directory's bookkeeping, which does not depend on the model's size. Every validator runs, with
thresholds that never reject (on random words a tiny model's gate would, and a rejected version
does not lengthen the chain). The base is trained on
2,000 items (10% held out: 200, the retention set's start); every day brings 20 new items (2
held out), so the retention pool reaches its cap (256) on day 28. The keep policy is on
(``prune.keep_last=7``, full trainings kept): older versions become stubs without weights.

Each update is an ``Engine.update`` in this process (with the end-of-update retrain advice, as
``retain update`` gives it), one torch thread; its wall seconds are recorded for every version.
The directory is copied at the checkpoints; at the end, an update of the same 20 new items runs
on a copy of the directory at version 30 and on a copy at the last version, alternately,
``--rounds`` times each: the ratio of the medians is the growth of an update's cost. It runs
twice: from each directory's own head (different models: early stopping may train another
number of epochs), and from the last head grafted onto the directory at version 30 (the same
model: only the directory differs). ``--compare-only`` measures a finished run again. ``history`` and
``status`` run as commands (fresh processes, medians of 3) at each checkpoint. Disk is the
directory's bytes (a file linked from several versions counted once); "without the keep
policy" adds back what pruning removed, "without sharing" also counts every linked file again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sections import write_section  # benchmarks/ is the script's folder: on sys.path

SECTION = "## A year of daily versions (issue 13)"
MODEL = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.vocab_size=300",
         "full_training.max_seq_length=64", "fine_tuning.max_seq_length=64", "full_training.epochs=2",
         "device=cpu", "validation.retention_fraction=0.1",
         # Every validator runs (its cost is part of an update) but none rejects: on random words a
         # tiny model's gate would, and a rejected version does not lengthen the chain.
         "options.retention.max_increase=10", "options.retention.max_items_worse=1",
         "options.learning.min_drop=-10", "options.loss_trend.tolerance=10",
         "options.generation.max_repetition=1", "options.generation.max_empty=1"]


def vocabulary(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
            for _ in range(3000)]


def items(start: int, n: int, vocab: list[str]) -> list[str]:
    """``n`` distinct generated paragraphs, numbered from ``start`` (never repeated across days)."""
    out = []
    for i in range(start, start + n):
        rng = random.Random(i)
        out.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(20, 40))) + f" ({i}).")
    return out


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def disk(root: Path, seen: set | None = None) -> int:
    """Bytes of the files under ``root``, each inode once (``seen``: inodes already counted)."""
    seen = set() if seen is None else seen
    total = 0
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def command_seconds(args: list[str], runs: int = 3) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retain.cli", *args], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)



def graft(late: Path, early: Path, out: Path) -> Path:
    """A copy of ``early`` (a short chain) with the last version of ``late`` on top, as its
    child: the same weights, retention pool and settings at the head of a chain of the early
    length + 1, so that an update from either head trains, scores and generates the same, and
    only the directory differs. (An update from each directory's own head does not: early
    stopping keeps 2 epochs of the same new items at version 30 and 3 at version 365, and the
    generation validator's samples differ in length.)"""
    from retain.core.storage.store import MANIFEST, ModelStore

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(early, out)
    source, target = ModelStore(late), ModelStore(out)
    head, parent = source.current(), target.current()
    name = f"{int(parent) + 1:04d}"
    shutil.copytree(source.versions_dir / head, target.versions_dir / name)
    manifest = json.loads((target.versions_dir / name / MANIFEST).read_text(encoding="utf-8"))
    manifest.update(parent=parent, version=name)
    (target.versions_dir / name / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True),
                                                       encoding="utf-8")
    target.set_current(name)
    return out


def compare(engine, work: Path, early_dir: Path, late_dir: Path, early: int, late: int, rounds: int,
            daily: int) -> dict:
    """The same update (the same new items), alternately, ``rounds`` times each: from the
    directory at ``early`` versions and from the one at ``late`` (each from its own head), and
    from ``late``'s head grafted onto the directory at ``early`` against ``late`` itself."""
    from retain.core.errors import UpdateRejected

    fresh = write_jsonl(work / "same.jsonl", items(10**8, daily, vocabulary()))
    grafted = graft(late_dir, early_dir, work / f"at-{early}-with-head-{late}")
    sources = {"own_head": {early: early_dir, late: late_dir}, "same_head": {early: grafted, late: late_dir}}
    timed = {kind: {early: [], late: []} for kind in sources}
    epochs = {kind: {early: [], late: []} for kind in sources}
    for _ in range(rounds):
        for kind, dirs in sources.items():
            for n, source in dirs.items():
                copy = work / f"copy-{n}"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(source, copy)
                started = time.perf_counter()
                try:
                    report = engine.update([str(fresh)], copy, advise=True)
                except UpdateRejected as exc:
                    report = exc.report
                timed[kind][n].append(time.perf_counter() - started)
                epochs[kind][n].append(len(report.get("epoch_losses") or []))
                shutil.rmtree(copy)
    return {"timed": timed["own_head"], "timed_same_head": timed["same_head"], "epochs": epochs}


def run(versions: int, checkpoints: list[int], keep_last: int, daily: int, base_items: int, work: Path,
        rounds: int, command_runs: int = 3) -> dict:
    import torch

    from retain.core.config import load_config
    from retain.core.engine import Engine
    from retain.core.errors import UpdateRejected
    from retain.core.storage.models import load_version
    from retain.core.storage.store import ModelStore

    torch.set_num_threads(1)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = work / "model"
    vocab = vocabulary()
    config = load_config(None, [*MODEL, f"prune.keep_last={keep_last}"])
    engine = Engine(config)
    engine.train([str(write_jsonl(work / "base.jsonl", items(0, base_items, vocab)))], model)
    store = ModelStore(model)
    rows, seen, added, plain = [], set(), disk(model), disk(model)
    disk(model, seen)
    snapshots = {}
    for day in range(1, versions):
        data = write_jsonl(work / "day.jsonl", items(10**6 + day * daily, daily, vocab))
        started = time.perf_counter()
        try:
            report = engine.update([str(data)], model, advise=True)
        except UpdateRejected as exc:
            report = exc.report
        seconds = time.perf_counter() - started
        version = store.versions_dir / report["version"]
        new_bytes = disk(version, seen)          # what this version added (links are not new)
        added += new_bytes
        plain += sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
        n = day + 1
        row = {"version": n, "seconds": seconds, "status": report["status"], "disk": disk(model),
               "without_keep": added, "without_sharing": plain,
               "retention_items": report["metrics"].get("retention_items"),
               "pool": store.manifest(report["version"]).get("retention", {}).get("items")}
        if n in checkpoints:
            snapshots[n] = work / f"at-{n}"
            shutil.copytree(model, snapshots[n])
            row["history_s"] = command_seconds(["history", "--model", str(model), "--json"], command_runs)
            row["status_s"] = command_seconds(["status", "--model", str(model), "--json",
                                               *[a for o in MODEL for a in ("--set", o)]], command_runs)
            print(f"version {n}: update {seconds:.2f} s, history {row['history_s']:.2f} s, status "
                  f"{row['status_s']:.2f} s, disk {row['disk'] / 1e6:.1f} MB", file=sys.stderr, flush=True)
        rows.append(row)
    early = 30 if 30 in snapshots and 30 < versions else checkpoints[0]
    timed = compare(engine, work, snapshots[early], model, early, versions, rounds, daily)
    current = store.current()
    parent = store.manifest(current)["parent"]
    a, b = (load_version(store, v).model.state_dict_for_save() for v in (parent, current))
    same = sum(torch.equal(a[k], b[k]) for k in a)
    return {"rows": rows, "early": early, "late": versions, **timed, "identical_tensors": same,
            "tensors": len(a), "keep_last": keep_last, "daily": daily, "base_items": base_items,
            "weights_bytes": (store.versions_dir / current / "model.safetensors").stat().st_size}



def remeasure(work: Path, checkpoints: list[int], versions: int, keep_last: int, rounds: int, daily: int) -> dict:
    """``--compare-only``: the timings of a finished run again, on its kept directories (the
    directory at each checkpoint), at one time: history and status, then the updates."""
    import torch

    from retain.core.config import load_config
    from retain.core.engine import Engine

    torch.set_num_threads(1)
    result = json.loads((work / "results.json").read_text(encoding="utf-8"))
    rows = {r["version"]: r for r in result["rows"]}
    for n in checkpoints:
        rows[n]["history_s"] = command_seconds(["history", "--model", str(work / f"at-{n}"), "--json"])
        rows[n]["status_s"] = command_seconds(["status", "--model", str(work / f"at-{n}"), "--json",
                                               *[a for o in MODEL for a in ("--set", o)]])
    early = result["early"]
    engine = Engine(load_config(None, [*MODEL, f"prune.keep_last={keep_last}"]))
    result.update(compare(engine, work, work / f"at-{early}", work / "model", early, versions, rounds, daily))
    return result


def tables(result: dict, checkpoints: list[int]) -> str:
    rows = {r["version"]: r for r in result["rows"]}
    md = ["| versions | update s (median of the 10 before) | `history` s | `status` s | disk MB | "
          "without the keep policy MB | without sharing either MB | retention pool / scored |",
          "|---|---|---|---|---|---|---|---|"]
    for n in checkpoints:
        r = rows[n]
        window = [x["seconds"] for x in result["rows"] if n - 10 < x["version"] <= n]
        md.append(f"| {n} | {statistics.median(window):.2f} | {r['history_s']:.2f} | {r['status_s']:.2f} | "
                  f"{r['disk'] / 1e6:.2f} | {r['without_keep'] / 1e6:.2f} | {r['without_sharing'] / 1e6:.2f} | "
                  f"{r['pool']} / {r['retention_items']} |")
    e, l = result["early"], result["late"]
    md.append("")
    for kind, what in (("timed_same_head", f"from the same head version (version {l}'s, grafted onto the directory at "
                        f"version {e}: the same model, retention pool and training)"),
                       ("timed", "each from its own head version (a different model: early stopping and the "
                        "generation validator do different work)")):
        me, ml = statistics.median(result[kind][e]), statistics.median(result[kind][l])
        epochs = result.get("epochs", {}).get("same_head" if kind == "timed_same_head" else "own_head")
        trained = (f"; epochs trained {statistics.median(epochs[e]):g} and {statistics.median(epochs[l]):g}"
                   if epochs else "")
        md.append(f"- The same update on the directory at version {e} and at version {l}, alternately, {what}: "
                  f"{len(result[kind][e])} each, medians {me:.2f} s and {ml:.2f} s, **{ml / me:.2f}x**{trained}.")
    md.append("")
    md.append(f"A version's weights are {result['weights_bytes'] / 1e6:.2f} MB; between the last two versions "
              f"{result['identical_tensors']} of {result['tensors']} tensors are identical (a full fine-tune "
              "changes every tensor, so only whole files are shared: the tokenizer, unchanged strategy "
              "state; the keep policy is what bounds the weights on disk).")
    rejected = sum(r["status"] != "accepted" for r in result["rows"])
    md.append("")
    md.append(f"{len(result['rows'])} updates, {rejected} rejected by the gate.")
    return "\n".join(md) + "\n"




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=365)
    ap.add_argument("--checkpoints", default="10,30,100,200,365")
    ap.add_argument("--keep-last", type=int, default=7)
    ap.add_argument("--daily", type=int, default=20)
    ap.add_argument("--base-items", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="alternating updates at the early and last version")
    ap.add_argument("--work", type=Path, default=Path("/tmp/retain-growth-bench"))
    ap.add_argument("--tiny", action="store_true", help="CI-safe: 8 versions, checkpoints 3 and 8")
    ap.add_argument("--write", type=Path)
    ap.add_argument("--compare-only", action="store_true", help="reuse --work's directories and results.json "
                    "(a finished run): measure history, status and the alternating updates again")
    args = ap.parse_args()
    if args.tiny:
        args.versions, args.checkpoints, args.keep_last, args.rounds, args.base_items = 8, "3,8", 3, 1, 200
    checkpoints = [int(c) for c in args.checkpoints.split(",") if int(c) <= args.versions]
    started = time.perf_counter()
    if args.compare_only:
        result = remeasure(args.work, checkpoints, args.versions, args.keep_last, args.rounds, args.daily)
    else:
        result = run(args.versions, checkpoints, args.keep_last, args.daily, args.base_items, args.work,
                     args.rounds, 1 if args.tiny else 3)
    md = tables(result, checkpoints)
    print(md)
    (args.work / "results.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.write:
        cmd = "python benchmarks/growth.py " + shlex.join(sys.argv[1:])
        text = (f"{SECTION}\n\nCommand: `{cmd}` ({(time.perf_counter() - started) / 60:.0f} min on "
                f"{os.cpu_count()} CPU cores, Python {platform.python_version()}).\n\n"
                + __doc__.split("\n\n", 2)[2].strip() + "\n\n" + md)
        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
