"""Beyond one process: an update's training speed in 1 process against 2 DDP processes
(``retain update --nproc 2``), and what a Ray task costs against a process-pool task.

    python benchmarks/scale_out.py --write BENCHMARKS.md          # 2.2M and 11.5M models, 3 runs
    python benchmarks/scale_out.py --parts ray --write BENCHMARKS.md   # Ray against the pool only
    python benchmarks/scale_out.py --tiny                          # CI-safe: the tables, in seconds

DDP: the same ``retain update`` (built-in GPT, a base model trained on WikiText-2 valid,
new items from WikiText-2 test, ``fine_tuning.early_stopping.enabled=false`` so the train
step is the training loop alone), run as a user would in a fresh process, alternately as
1 process with 1 torch thread, 1 process with 2 threads, and 2 processes under torchrun
with 1 thread each (``--nproc 2``), each on a fresh copy of the base model. tokens/s is
the update's real target tokens times its epochs over its ``train`` step (rank 0's, which
waits for every gradient exchange); wall is the whole command. Tables give medians over
``--runs`` alternating runs. Ray: local Ray's start-up (``ray.init``), then the wall time
per task of N tasks on 2 workers, Ray (a fresh worker per task, as ``--ray`` runs them)
against ``concurrent.futures.ProcessPoolExecutor`` (spawn, one task per process, as
``--jobs`` runs them), for a task that does nothing and for one that imports the training
stack (torch and avalanche-lib: what every real strategy or trial does first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import corpora, write_jsonl  # noqa: E402

from sections import write_section  # benchmarks/ is the script's folder: on sys.path

SECTION = "## Beyond one process (issue 14)"
SIZES = {
    "tiny": {"n_layer": 1, "n_head": 2, "d_model": 32, "vocab_size": 300},
    "2.2M": {"n_layer": 4, "n_head": 4, "d_model": 192, "vocab_size": 2048},
    "11.5M": {"n_layer": 6, "n_head": 6, "d_model": 384, "vocab_size": 2048},
}
VARIANTS = {  # name -> (extra arguments, torch threads per process)
    "1 process, 1 thread": ([], 1),
    "1 process, 2 threads": ([], 2),
    "2 processes (DDP), 1 thread each": (["--nproc", "2"], 1),
}


def sets(size: str, epochs: int, batch: int) -> list[str]:
    values = [*(f"model.{k}={v}" for k, v in SIZES[size].items()), "device=cpu", "precision=fp32",
              "full_training.epochs=1", f"fine_tuning.epochs={epochs}", f"fine_tuning.batch_size={batch}",
              "fine_tuning.max_seq_length=128", "full_training.max_seq_length=128",
              "fine_tuning.early_stopping.enabled=false", "validation.retention_fraction=0.2"]
    return [arg for v in values for arg in ("--set", v)]


def retain(args: list[str], threads: int) -> tuple[dict, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "retain", *args, "--json", "--quiet"], capture_output=True,
                         text=True, env=env)
    wall = time.perf_counter() - started
    if out.returncode not in (0, 10):
        raise SystemExit(f"retain {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def ddp_runs(size: str, args, base: list[str], new: list[str], work: Path) -> dict:
    root = work / f"ddp-{size}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base_file, new_file = write_jsonl(root / "base.jsonl", base), write_jsonl(root / "new.jsonl", new)
    options = sets(size, args.epochs, args.batch)
    report, _ = retain(["train", "--data", str(base_file), "--model", str(root / "base"), *options], 2)
    params = report["parameters"]["total"]
    samples: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for run in range(args.runs):
        for name, (extra, threads) in VARIANTS.items():
            model = root / "model"
            shutil.rmtree(model, ignore_errors=True)
            shutil.copytree(root / "base", model)
            report, wall = retain(["update", "--data", str(new_file), "--model", str(model), *options, *extra],
                                  threads)
            tokens = report["counts"]["tokens"] * len(report["epoch_losses"])
            samples[name].append({"tokens_per_s": tokens / report["timings"]["train"], "wall": wall,
                                  "train": report["timings"]["train"], "tokens": tokens})
            print(f"  {size} run {run + 1}: {name}: {samples[name][-1]['tokens_per_s']:.0f} tokens/s, "
                  f"wall {wall:.1f}s", file=sys.stderr)
    return {"size": size, "parameters": params, "samples": samples,
            "items": report["counts"]["trained"], "tokens": report["counts"]["tokens"]}


# --- Ray against the process pool ---------------------------------------------------------------

def noop() -> int:
    return os.getpid()


def import_training() -> int:
    import retain.core.learning.training  # noqa: F401  (torch and avalanche-lib)

    return os.getpid()


def per_task(executor, fn, tasks: int) -> float:
    started = time.perf_counter()
    futures = [executor.submit(fn) for _ in range(tasks)]
    wait(futures)
    pids = {f.result() for f in futures}
    assert len(pids) == tasks, "each task must get a process of its own"
    return (time.perf_counter() - started) / tasks


def ray_runs(args) -> dict:
    from retain.raytasks import RayExecutor

    startup, rows = [], {("pool", "noop"): [], ("ray", "noop"): [], ("pool", "import"): [],
                         ("ray", "import"): []}
    tasks = args.tasks
    for run in range(args.runs):
        ray = RayExecutor("local", num_cpus=2)
        startup.append(ray.startup_seconds)
        try:
            for kind, fn in (("noop", noop), ("import", import_training)):
                with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"),
                                         max_tasks_per_child=1) as pool:
                    rows[("pool", kind)].append(per_task(pool, fn, tasks))
                rows[("ray", kind)].append(per_task(ray, fn, tasks))
                print(f"  ray run {run + 1}: {kind}: pool {rows[('pool', kind)][-1]:.2f}s/task, "
                      f"ray {rows[('ray', kind)][-1]:.2f}s/task", file=sys.stderr)
        finally:
            ray.shutdown()
    import ray as ray_module

    return {"startup": startup, "rows": rows, "tasks": tasks, "version": ray_module.__version__}


# --- the section ----------------------------------------------------------------------------------

def med(values) -> float:
    return statistics.median(values)


def tables(ddp: list[dict], ray: dict | None, args, load: tuple[str, str], corpus: str) -> str:
    text = ddp_table(ddp, args) if ddp else ""
    if ray is not None:
        text += ("\n" if text else "") + ray_table(ray)
    return text + (f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load "
                   f"average (`uptime`) {load[0]} before, {load[1]} after. Data: {corpus}.\n")


def ddp_table(ddp: list[dict], args) -> str:
    out = ["| model | parameters | update | " + " | ".join(f"{v}: tokens/s" for v in VARIANTS)
           + " | 2 processes / 1 process, 1 thread | 2 processes / 1 process, 2 threads | "
           + " | ".join(f"{v}: wall s" for v in VARIANTS) + " |",
           "|" + " --- |" * (5 + 2 * len(VARIANTS))]
    for r in ddp:
        rate = {v: med([s["tokens_per_s"] for s in r["samples"][v]]) for v in VARIANTS}
        wall = {v: med([s["wall"] for s in r["samples"][v]]) for v in VARIANTS}
        one, two_threads, ddp_rate = rate.values()
        out.append(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {r['items']} items, {r['tokens']:,} tokens x "
                   f"{args.epochs} epochs, batch {args.batch} | "
                   + " | ".join(f"{rate[v]:,.0f}" for v in VARIANTS)
                   + f" | {ddp_rate / one:.2f}x | {ddp_rate / two_threads:.2f}x | "
                   + " | ".join(f"{wall[v]:.1f}" for v in VARIANTS) + " |")
    return "\n".join(out) + "\n"


def ray_table(ray: dict) -> str:
    rows = ray["rows"]
    text = ("| task | process pool (spawn, 1 task per process): s per task | Ray (fresh worker per task): "
            "s per task | Ray - pool |\n| --- | --- | --- | --- |\n")
    for kind, label in (("noop", "does nothing"), ("import", "imports torch + avalanche-lib")):
        pool, mine = med(rows[("pool", kind)]), med(rows[("ray", kind)])
        text += f"| {label} | {pool:.2f} | {mine:.2f} | {mine - pool:+.2f} |\n"
    return text + (f"\nLocal Ray start-up (`ray.init`, 2 CPUs, no dashboard): median {med(ray['startup']):.1f} s "
                   f"({', '.join(f'{s:.1f}' for s in ray['startup'])}); Ray {ray['version']}; {ray['tasks']} tasks "
                   "on 2 workers per measurement.\n")


def uptime() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2.2M,11.5M")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="the global batch (each of 2 processes: half)")
    ap.add_argument("--base-items", type=int, default=400)
    ap.add_argument("--new-items", type=int, default=300)
    ap.add_argument("--tasks", type=int, default=4, help="Ray vs pool: tasks per measurement")
    ap.add_argument("--parts", default="ddp,ray", help="what to measure: ddp, ray or both")
    ap.add_argument("--tiny", action="store_true", help="CI-safe: tiny model, 1 run, few items")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--write", type=Path, help="put the section into this BENCHMARKS.md")
    args = ap.parse_args()
    if args.tiny:
        args.sizes, args.runs, args.base_items, args.new_items, args.epochs, args.tasks = "tiny", 1, 60, 30, 1, 2
    work = args.work or Path(tempfile.mkdtemp(prefix="retain-scale-out-"))
    base, new, corpus = corpora(args.tiny, args.base_items, args.new_items)
    started, before = time.perf_counter(), uptime()
    parts = args.parts.split(",")
    ddp = [ddp_runs(size, args, base, new, work) for size in args.sizes.split(",")] if "ddp" in parts else []
    ray = None
    if "ray" in parts:
        try:
            import ray as _  # noqa: F401
            ray = ray_runs(args)
        except ImportError:
            print("Ray is not installed (pip install 'retain[ray]'): its table is left out", file=sys.stderr)
    shown, skip = [], False
    for a in sys.argv[1:]:  # the command without --work DIR (a scratch folder)
        if skip or a.startswith("--work="):
            skip = False
            continue
        skip = a == "--work"
        if not skip:
            shown.append(a)
    cmd = "python benchmarks/scale_out.py " + " ".join(shown)
    text = (f"{SECTION}\n\nCommand: `{cmd.strip()}` ({(time.perf_counter() - started) / 60:.0f} min in all). "
            "Medians of alternating runs; every update a fresh `retain update` process on a fresh copy of the "
            "base model.\n\n" + tables(ddp, ray, args, (before, uptime()), corpus))
    print(text)
    if args.write:
        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
