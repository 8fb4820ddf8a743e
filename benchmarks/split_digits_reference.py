"""Split-Digits: retain compare against avalanche-lib's own strategies, and the engine's overhead.

Part 1 runs Naive, EWC and Replay on Split-Digits (class- and task-incremental)
twice per seed: through ``retain compare``'s Python API (the split-digits scenario, retain's
strategies rebuilt each experience with their state carried by state_dict) and
through avalanche-lib's strategy classes directly (avalanche.training.Naive,
EWC, Replay: one template for the whole stream). Same MLP and initial weights,
same data, optimizer (AdamW, weight decay 0), learning rate, batch size,
epochs, EWC lambda/mode, replay memory, and the same seed before each
experience. It reports the average final accuracy per side (mean and std over
seeds) and the per-seed differences. Replay is set beside two avalanche
references: its Replay class (an experience-balanced buffer, its default) and
Naive + ReplayPlugin with a reservoir buffer, retain's sampling policy.

Part 3 runs ``retain compare --scenario split-digits`` with every built-in
strategy and the baselines (naive at lr 1e-3, full retrain on all data so
far), class- and task-incremental, and prints its tables.

Part 2 times one training run of the same MLP three ways, alternating, and
reports medians and ratios: a bare PyTorch loop, avalanche's Naive template,
and the split-digits scenario's ``train_experience`` (avalanche's SupervisedTemplate
built per experience, as compare runs it; the LM engine's own loop is measured by
the speed benchmark on token batches).

    .venv/bin/python benchmarks/split_digits_reference.py            # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/split_digits_reference.py --seeds 0 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from retain.compare.digits import (DIGITS_DEFAULTS, accuracy, make_dataset, new_model, settings_for, split_digits,
                                   tensors, train_experience)
from retain.compare.metrics import stream_metrics
from retain.compare.report import markdown
from retain.compare.run import CompareRequest, run_compare
from retain.core.config import load_config

EPOCHS = 10
LR = 1e-3
BATCH = 32
EWC_LAMBDA = 100000.0  # the Fisher of a well-trained 2-class task is small
MEM_SIZE = 200
# retain names: naive's lr (full_training.learning_rate) with each method's plugins.
RETAIN = {"Naive": "naive", "EWC": "naive+ewc", "Replay": "naive+replay"}
# Part 3: every built-in strategy through `retain compare` itself, with the baselines.
ALL = "naive,low_lr,replay,ewc,lwf,full_retrain"
# Replay twice on the avalanche side: its Replay class (experience-balanced buffer, its default)
# and Naive + ReplayPlugin with a reservoir buffer, the sampling policy of retain's replay.
AVALANCHE = {"Naive": ["Naive"], "EWC": ["EWC"], "Replay": ["Replay", "Replay (reservoir)"]}
OVERRIDES = [f"full_training.learning_rate={LR}", f"options.ewc.ewc_lambda={EWC_LAMBDA}", "options.ewc.decay=1.0",
             f"options.replay.buffer_size={MEM_SIZE}", "options.replay.share=0.5"]


def avalanche_run(method: str, setting: str, seed: int, epochs: int) -> list[list[float]]:
    """R of avalanche-lib's own strategy class on the same stream."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.training import EWC, Naive, Replay
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    stream = split_digits(setting, seed=seed)
    model = new_model(stream, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    common = dict(model=model, optimizer=opt, criterion=F.cross_entropy, train_mb_size=BATCH,
                  train_epochs=epochs, eval_mb_size=BATCH, device="cpu", evaluator=None)
    if method == "Naive":
        strategy = Naive(**common)
    elif method == "EWC":
        strategy = EWC(**common, ewc_lambda=EWC_LAMBDA, mode="online", decay_factor=1.0)
    elif method == "Replay":
        strategy = Replay(**common, mem_size=MEM_SIZE)
    else:
        strategy = Naive(**common, plugins=[ReplayPlugin(mem_size=MEM_SIZE, batch_size_mem=BATCH,
                                                         storage_policy=ReservoirSamplingBuffer(MEM_SIZE))])
    bm = benchmark_from_datasets(train=[make_dataset(*tensors(e, "train")) for e in stream.experiences])
    rows = []
    for i, exp in enumerate(bm.train_stream):
        opt.state.clear()  # retain's fit starts each experience with a fresh optimizer
        torch.manual_seed(seed + i)  # as retain's digits runner does before each experience
        strategy.train(exp)
        rows.append([accuracy(model, e) for e in stream.experiences])
    return rows


def part1(seeds: list[int], epochs: int) -> dict:
    out: dict = {}
    for setting in ("class", "task"):
        for seed in seeds:
            res = run_compare(CompareRequest(strategies=",".join(RETAIN.values()), scenario="split-digits",
                                             setting=setting, seed=seed, epochs=epochs, overrides=OVERRIDES))
            for method, name in RETAIN.items():
                r = res["results"][name]
                for ref in AVALANCHE[method]:
                    a = stream_metrics(avalanche_run(ref, setting, seed, epochs), higher_is_better=True)
                    row = out.setdefault(setting, {}).setdefault(ref, {"retain": [], "avalanche": [],
                                                                       "retain_forgetting": [],
                                                                       "avalanche_forgetting": []})
                    row["retain"].append(r["metrics"]["average_final"])
                    row["avalanche"].append(a.average_final)
                    row["retain_forgetting"].append(r["metrics"]["forgetting"])
                    row["avalanche_forgetting"].append(a.forgetting)
                    print(f"  {setting:5s} seed {seed} {name:12s} retain {row['retain'][-1]:.4f}   "
                          f"avalanche {ref:18s} {row['avalanche'][-1]:.4f}", flush=True)
    return out


def _bare_loop(model, x, y, t, epochs):
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, t), batch_size=BATCH, shuffle=True)
    for _ in range(epochs):
        for xb, yb, tb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb, tb), yb).backward()
            opt.step()


def _avalanche_naive(model, x, y, t, epochs):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.training import Naive

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    exp = benchmark_from_datasets(train=[make_dataset(x, y, t)]).train_stream[0]
    Naive(model=model, optimizer=opt, criterion=F.cross_entropy, train_mb_size=BATCH, train_epochs=epochs,
          device="cpu", evaluator=None).train(exp)


def _retain_fit(model, x, y, t, epochs):
    cfg = load_config(None, [*DIGITS_DEFAULTS, f"fine_tuning.learning_rate={LR}", f"fine_tuning.epochs={epochs}"])
    train_experience(model, x, y, t, settings_for(cfg.fine_tuning), seed=0, plugins=[])


def part2(repeats: int, epochs: int) -> dict:
    stream = split_digits("class", seed=0)
    parts = [tensors(e, "train") for e in stream.experiences]
    x, y, t = (torch.cat([p[k] for p in parts]) for k in range(3))
    iterations = epochs * -(-len(x) // BATCH)
    runs = {"bare PyTorch loop": _bare_loop, "avalanche Naive template": _avalanche_naive,
            "retain split-digits train_experience": _retain_fit}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(repeats + 1):  # the first round warms up and is dropped
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            model = new_model(stream, 0)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            runs[name](model, x, y, t, epochs)
            if rep:
                times[name].append((time.perf_counter() - t0) / iterations)
    bare = statistics.median(times["bare PyTorch loop"])
    return {name: {"median_ms_per_iteration": 1000 * statistics.median(v), "ratio_to_bare": statistics.median(v) / bare,
                   "runs": len(v)} for name, v in times.items()} | {"iterations_per_run": iterations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    warnings.showwarning = lambda *a, **k: None  # avalanche's Replay forces a deprecation warning on
    started = time.perf_counter()
    print(f"Split-Digits, {args.epochs} epochs per experience, batch {BATCH}, AdamW lr {LR}, "
          f"EWC online lambda {EWC_LAMBDA}, replay memory {MEM_SIZE}, seeds {args.seeds}, "
          f"torch threads {args.threads}", flush=True)
    accuracy_table = part1(args.seeds, args.epochs)
    print("\n| setting | avalanche-lib strategy (retain name) | retain compare: final avg acc | avalanche-lib direct | "
          "mean diff | max abs diff | forgetting (retain / avalanche) |")
    print("|---|---|---|---|---|---|---|")
    for setting, methods in accuracy_table.items():
        for method, row in methods.items():
            r, a = row["retain"], row["avalanche"]
            diffs = [p - q for p, q in zip(r, a)]
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            name = RETAIN[method.split(" ")[0]]
            print(f"| {setting}-IL | {method} ({name}) | {statistics.mean(r):.4f} ± {sd(r):.4f} | "
                  f"{statistics.mean(a):.4f} ± {sd(a):.4f} | {statistics.mean(diffs):+.4f} | "
                  f"{max(abs(d) for d in diffs):.4f} | {statistics.mean(row['retain_forgetting']):.3f} / "
                  f"{statistics.mean(row['avalanche_forgetting']):.3f} |")
    overhead = part2(args.repeats, epochs=5)
    print(f"\nPer-iteration time, same MLP, batch {BATCH}, {overhead['iterations_per_run']} iterations per run, "
          f"median of {args.repeats} alternating runs:\n")
    print("| loop | ms / iteration | ratio to bare loop |")
    print("|---|---|---|")
    for name, v in overhead.items():
        if isinstance(v, dict):
            print(f"| {name} | {v['median_ms_per_iteration']:.3f} | {v['ratio_to_bare']:.2f} |")
    for setting in ("class", "task"):
        res = run_compare(CompareRequest(strategies=ALL, scenario="split-digits", setting=setting, seed=0,
                                         epochs=args.epochs, jobs=2))
        print(f"\n`retain compare --scenario split-digits --setting {setting} --strategies {ALL} --jobs 2` "
              f"(defaults: seed 0, {args.epochs} epochs; accuracy; time and memory per worker process):\n")
        print(markdown(res))
        for label in res["strategies"]:
            if not res["results"][label].get("supported"):
                print(f"\nn/a {label}: {res['results'][label]['reason']}")
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"accuracy": accuracy_table, "overhead": overhead, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
