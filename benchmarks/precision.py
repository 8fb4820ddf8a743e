"""``precision: auto`` against fp32 and bf16 autocast, on this machine's CPU: training tokens/s
at each size, what auto chose, what its probe cost, and ``retain demo``'s wall time.

    python benchmarks/precision.py --write BENCHMARKS.md            # 0.7M, 20M, 88M on the CPU
    python benchmarks/precision.py --demo-runs 1 --write BENCHMARKS.md   # and retain demo, auto vs fp32
    python benchmarks/precision.py --tiny                            # CI-safe: the tables, in seconds

Every size is the built-in GPT (``model.n_layer/n_head/d_model/vocab_size``, benchmarks/speed.py's
sizes) with a byte-level BPE tokenizer trained on the base texts, random weights (the speed of a
step does not depend on what the weights hold). The rows are an update's: Wikipedia paragraphs
(WikiText-2 test) from ``../shared/data`` (the Python documentation where that folder is absent),
``max_seq_length`` 512, batches of 8 rows. Each round trains the same rows from the same weights
with retain's loop (``core/training.fit``, the avalanche template an update runs) in fp32, in bf16
autocast, and as ``precision: auto`` does: its probe (``core/runtime/precision.py``, with an empty cache:
the first run on a machine) decides, then training runs in what it chose. The three alternate,
``--runs`` rounds; the tables give medians. tokens/s counts real (non-padding) target tokens.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sections import write_section  # benchmarks/ is the script's folder: on sys.path
from speed import DATA, SIZES, alternate, corpora, first_steps, median_rate, retain_fit

SECTION = "## precision: auto, measured (issue 21)"


def model_and_rows(size: str, base: list[str], new: list[str], seq_len: int):
    """A fresh ``size`` model (tokenizer trained on ``base``) and the training rows of ``new``."""
    from retain.core.config import load_config
    from retain.core.storage.models import create_model
    from retain.core.pluginmanager import Registry, default_plugin_manager

    cfg = load_config(None, [*(f"model.{k}={v}" for k, v in SIZES[size].items()), "device=cpu"])
    import torch

    torch.manual_seed(0)
    lm = create_model(Registry.of(default_plugin_manager()), cfg, base, seq_len)
    lm.module.train()
    return lm, lm.encode(new, seq_len)


def measure_size(size: str, args, base: list[str], new: list[str]) -> dict:
    """fp32, bf16 and auto (probe, then training in its choice), alternating, ``args.runs`` rounds."""
    import torch

    from retain.core.runtime import precision

    lm, rows = model_and_rows(size, base, new, args.seq_len)
    some = first_steps(rows, args.steps.get(size))
    if size in args.probe_only:
        return probe_only(size, lm, some)
    start = copy.deepcopy(lm.module.state_dict())
    cpu = torch.device("cpu")
    choices: list[dict] = []

    def train(which: str) -> dict:
        lm.module.load_state_dict(start)
        return retain_fit(lm, some, 1, "cpu", which)

    def auto() -> dict:
        lm.module.load_state_dict(start)
        with tempfile.TemporaryDirectory(prefix="retain-precision-bench-") as tmp:
            cache = Path(tmp) / "precision.json"
            batch = precision.probe_batch(some, 8)
            began = time.perf_counter()
            choice = precision.measured_choice(lm.module, batch, cpu, cache=cache)
            probe = time.perf_counter() - began
            began = time.perf_counter()
            precision.measured_choice(lm.module, batch, cpu, cache=cache)  # the next run: from the cache
            cached = time.perf_counter() - began
        choices.append({**choice.to_json(), "probe_seconds": probe, "cached_seconds": cached})
        return {**train(choice.chose), "chose": choice.chose}

    results = alternate(args.size_runs.get(size, args.runs), {"fp32": lambda: train("fp32"), "bf16": lambda: train("bf16"), "auto": auto})
    steps = len(some) // 8 + (len(some) % 8 > 0)
    out = {"size": size, "parameters": sum(p.numel() for p in lm.module.parameters()), "rows": len(some),
           "steps": steps, "tokens": some.tokens, "choices": choices, **results}
    say(f"[{size}] " + ", ".join(f"{k} {median_rate(v):.0f} tok/s" for k, v in results.items())
        + f"; auto chose {[c['chose'] for c in choices]}, probe {[round(c['probe_seconds'], 1) for c in choices]} s")
    return out


def probe_only(size: str, lm, rows) -> dict:
    """Where a training run per round costs too much (88M on a busy machine): auto's probe alone,
    which is itself alternating fp32 / bf16 steps (forward and backward, no optimizer step); its
    step times give each precision's tokens/s, its choice auto's."""
    import torch

    from retain.core.runtime import precision

    batch = precision.probe_batch(rows, 8)
    real = precision._timed_step(lm.module, batch, torch.device("cpu"))
    steps: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def step(which: str) -> float:
        steps[which].append(real(which))
        return steps[which][-1]

    with tempfile.TemporaryDirectory(prefix="retain-precision-bench-") as tmp:
        began = time.perf_counter()
        choice = precision.measured_choice(lm.module, batch, torch.device("cpu"), time_steps=step,
                                           cache=Path(tmp) / "precision.json")
        probe = time.perf_counter() - began
    tokens = int((batch[1] != -100).sum())
    timed = {k: [{"seconds": t, "tokens": tokens} for t in v[1:]] for k, v in steps.items()}  # [0]: untimed
    out = {"size": size, "parameters": sum(p.numel() for p in lm.module.parameters()), "rows": len(batch[0]),
           "steps": 1, "tokens": tokens, "probe_only": list(batch[0].shape), **timed, "auto": timed[choice.chose],
           "choices": [{**choice.to_json(), "probe_seconds": probe, "cached_seconds": 0.0}]}
    say(f"[{size}] probe only: fp32 {median_rate(timed['fp32']):.0f} tok/s, bf16 {median_rate(timed['bf16']):.0f} "
        f"tok/s; auto chose {choice.chose} ({choice.why}), probe {probe:.1f} s")
    return out


def demo_runs(runs: int, work: Path) -> list[dict]:
    """``retain demo`` as a user runs it, ``precision: auto`` (an empty cache: it measures) and
    ``--set precision=fp32``, alternating, each a fresh process and model directory; wall
    seconds and peak RSS (GNU time)."""
    out = []
    for r in range(runs):
        for name, sets in (("auto", []), ("fp32", ["--set", "precision=fp32"])):
            with tempfile.TemporaryDirectory(prefix="retain-precision-demo-", dir=work) as tmp:
                env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
                load = os.getloadavg()[0]
                cmd = ["/usr/bin/time", "-f", "%e %M", "-o", str(Path(tmp) / "time"), sys.executable, "-m",
                       "retain.cli", "demo", "--model", str(Path(tmp) / "model"), "--json", *sets]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"retain demo failed ({proc.returncode}): {proc.stderr[-2000:]}")
                wall, rss = (Path(tmp) / "time").read_text().split()[-2:]
                report = json.loads(proc.stdout)
                chose = (report["train"].get("precision") or {}).get("chose", "?")
            out.append({"variant": name, "wall": float(wall), "rss_mb": int(rss) / 1024, "load": load,
                        "load_after": os.getloadavg()[0], "chose": chose,
                        "probe": (report["train"].get("timings") or {}).get("precision", 0.0)})
            say(f"[demo] {name}: {float(wall):.0f} s, {int(rss) / 1024:.0f} MB, chose {chose}, load {load:.1f}")
    return out


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the tables ----------------------------------------------------------------------------------

def tables(results: list[dict], demo: list[dict], args) -> str:
    md = [] if not results else ["**Training** (retain's loop, batches of 8 rows; tokens/s, medians of the rounds, "
          "fp32 / bf16 / auto alternating; auto's probe with an empty cache, then training "
          "in its choice):", "",
          "| model | parameters | measured over | rounds | fp32 tokens/s | bf16 tokens/s | bf16 / fp32 | auto chose "
          "| auto tokens/s | auto / fp32 | probe's bf16 / fp32 | probe s | cached s |", "|" + "---|" * 13]
    for r in results:
        f32, b16, aut = (median_rate(r[k]) for k in ("fp32", "bf16", "auto"))
        chose = [c["chose"] for c in r["choices"]]
        picked = ", ".join(f"{c} x{chose.count(c)}" for c in sorted(set(chose)))
        probe_ratio = statistics.median(c["speedup"] for c in r["choices"])
        over = (f"the probe alone: forward+backward of {r['probe_only'][0]}x{r['probe_only'][1]}" if "probe_only" in r
                else f"{r['steps']} step{'s' * (r['steps'] != 1)} ({r['tokens']:,} tokens)")
        md.append(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {over} | {len(r['fp32'])} "
                  f"| {f32:,.0f} | {b16:,.0f} | {b16 / f32:.2f} | {picked} | {aut:,.0f} | {aut / f32:.2f} "
                  f"| {probe_ratio:.2f} | {_med(c['probe_seconds'] for c in r['choices']):.2f} "
                  f"| {_med(c['cached_seconds'] for c in r['choices']):.3f} |")
    if demo:
        md += ["", "**`retain demo`** (a fresh process and model directory each, alternating; auto with an "
               "empty cache, so its probe is included; wall seconds and peak RSS from GNU time):", "",
               "| run | precision | auto chose | wall s | of it: probe s | peak RSS MB | load before / after |",
               "|---|---|---|---|---|---|---|"]
        for i, d in enumerate(demo):
            md.append(f"| {i // 2 + 1} | {d['variant']} | {d['chose']} | {d['wall']:.1f} | {d['probe']:.2f} "
                      f"| {d['rss_mb']:,.0f} | {d['load']:.1f} / {d['load_after']:.1f} |")
    return "\n".join(md) + "\n"


def _med(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.7M,20M,88M", help=f"model sizes, from {', '.join(SIZES)}")
    ap.add_argument("--runs", type=int, default=3, help="alternating rounds of fp32 / bf16 / auto")
    ap.add_argument("--probe-only", default="", help="SIZES: measure these by auto's probe alone (its own "
                    "alternating fp32/bf16 steps), no training runs: for sizes too slow to train each round")
    ap.add_argument("--size-runs", default="", help="SIZE=RUNS,...: more rounds where they are cheap "
                    "(small models: a busy machine's noise is largest against a short run)")
    ap.add_argument("--steps", default="20M=5,88M=3", help="SIZE=STEPS,...: train this many batches "
                    "(a seeded sample of the rows) instead of one epoch of all of them")
    ap.add_argument("--base-items", type=int, default=150, help="texts the tokenizer is trained on")
    ap.add_argument("--new-items", type=int, default=41, help="texts of the update whose rows train")
    ap.add_argument("--seq-len", type=int, default=512, help="max_seq_length (fine_tuning's default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as a user runs)")
    ap.add_argument("--demo-runs", type=int, default=0, help="alternating `retain demo` pairs, auto and fp32")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="scratch folder")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared corpora (default: ../shared/data)")
    ap.add_argument("--tiny", action="store_true", help="CI-safe: a tiny model, few items, one round")
    ap.add_argument("--write", type=Path, help="put the section into this BENCHMARKS.md")
    args = ap.parse_args()
    if args.tiny:
        args.sizes, args.runs, args.base_items, args.new_items, args.seq_len = "tiny", 1, 40, 12, 64
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    args.steps = {k: int(v) for k, v in (p.split("=") for p in args.steps.split(",") if p)}
    args.probe_only = [s for s in args.probe_only.split(",") if s]
    args.size_runs = {k: int(v) for k, v in (p.split("=") for p in args.size_runs.split(",") if p)}
    sizes = [s for s in args.sizes.split(",") if s]  # none: only the demo
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        sys.exit(f"unknown size(s) {unknown}; known: {', '.join(SIZES)}")
    base, new, source = corpora(args.tiny, args.base_items, args.new_items, args.data)
    args.work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.perf_counter(), os.getloadavg()
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = []
    for size in sizes:  # each size's numbers kept as it ends: a long run stopped keeps the rest
        results.append(measure_size(size, args, base, new))
        (args.work / "precision-results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    demo = demo_runs(args.demo_runs, args.work)
    md = tables(results, demo, args)
    print(md)
    if args.write:
        from retain.core.runtime.precision import cpu_identity

        cpu, flags = cpu_identity()
        load = lambda a: ", ".join(f"{x:.2f}" for x in a)
        text = (f"{SECTION}\n\nCommand: `python benchmarks/precision.py {shlex.join(sys.argv[1:])}` (started {began}, "
                f"{(time.perf_counter() - started) / 60:.0f} min in all; {os.cpu_count()} CPU cores, {cpu} "
                f"({', '.join(flags)}), {args.threads} torch thread(s), torch {torch.__version__}; data: {source}; "
                f"load average {load(load_before)} before, {load(os.getloadavg())} after).\n\n"
                + __doc__.split("\n\n", 2)[2].strip() + "\n\n" + md)
        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
