"""Data at scale (issue 24): `retain train` ingest + N training steps on corpora of growing size,
peak resident memory, ingest MB/s and training tokens/s for each.

    python benchmarks/data_scale.py --sizes 10MB,100MB --steps 200 --write BENCHMARKS.md
    python benchmarks/data_scale.py --sizes 10MB --paths shards,memory     # against the in-memory rows

Each corpus is the paragraphs of ``../shared/data`` (WikiText-2 valid and test, Tiny Shakespeare),
repeated and shuffled (seeded) until it holds the size asked for, each item prefixed with its
number so that deduplication keeps every one of them. Each run is one `retain train`
(``Engine.train``, the command's engine) in a fresh process: the default 0.7M model, one epoch
stopped after ``--steps`` steps (the run then saves its version as a stopped training does),
``--threads`` torch threads. What it reports:

    peak RSS      the process's high-water mark (``ru_maxrss``), imports included
    ingest MB/s   the corpus's bytes over collect + preprocess + dedupe + hold out + tokenize
                  (tokenize includes training the BPE tokenizer on the corpus, as `retain train` does)
    tokens/s      real (non-padding) target tokens of the ``--steps`` steps over their time

``--paths memory`` runs the same with the tokenized rows built in memory, as before shards
(``lm.encode``: padded int64 rows), for the comparison; ``--paths tokenizers`` with every item
encoded by the ``tokenizers`` library, as before ``plugins/fast_bpe.py`` (tiktoken).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SECTION = "## Data at scale: token shards (issue 24)"
MB = 1_000_000


def paragraphs(data: Path) -> list[str]:
    out = []
    for name in ("wikitext2-valid.txt", "wikitext2-test.txt", "tinyshakespeare.txt"):
        text = (data / name).read_text(encoding="utf-8")
        blocks = text.split("\n\n") if name.startswith("tiny") else text.split("\n")
        out += [b.strip() for b in blocks if len(b.strip()) >= 80 and not b.strip().startswith("=")]
    return out


def build_corpus(path: Path, size: int, data: Path) -> int:
    """A JSON Lines corpus of at least ``size`` bytes of text, unique items; returns its items."""
    if path.exists() and path.with_suffix(".items").exists():
        return int(path.with_suffix(".items").read_text())
    base = paragraphs(data)
    rng = random.Random(0)
    written, n = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            order = list(range(len(base)))
            rng.shuffle(order)
            for i in order:
                text = f"[{n}] {base[i]}"
                f.write(json.dumps({"text": text}) + "\n")
                written += len(text.encode("utf-8"))
                n += 1
                if written >= size:
                    break
    path.with_suffix(".items").write_text(str(n))
    return n


def child(args) -> None:
    """One `retain train` in this process: prints one JSON line of measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from retain.core.data import shards
    from retain.core.learning import training
    from retain.core.config import load_config
    from retain.core.engine import Engine
    from retain.core.learning.lm import IGNORE_INDEX

    if args.path == "memory":  # the rows as before shards: every padded row in memory
        shards.encode_to_shard = lambda lm, texts, max_len, folder: lm.encode(list(texts), max_len)
    if args.path == "tokenizers":  # shards, every item encoded by the tokenizers library (before tiktoken)
        from retain.plugins import gpt

        gpt.fast_encoder = lambda tokenizer, tokenizer_json: None
    counted = {"steps": 0, "tokens": 0, "started": None, "seconds": 0.0}
    original_forward = training.EngineLoop.before_forward
    original_after = training.EngineLoop.after_training_iteration

    def before_forward(self, strategy, **kw):
        original_forward(self, strategy, **kw)
        if counted["started"] is None:
            counted["started"] = time.perf_counter()
        counted["tokens"] += int((strategy.mbatch[1] != IGNORE_INDEX).sum())

    def after_iteration(self, strategy, **kw):
        original_after(self, strategy, **kw)
        counted["steps"] += 1
        if counted["steps"] >= args.steps:
            counted["seconds"] = time.perf_counter() - counted["started"]
            strategy.stop_training()

    training.EngineLoop.before_forward = before_forward
    training.EngineLoop.after_training_iteration = after_iteration
    from retain.core.hookspecs import hookimpl

    peaks: dict[str, float] = {}
    cpu: dict[str, float] = {}

    class StepMemory:
        """The high-water mark after each step: which step raised it; the CPU seconds of each
        step, every thread of the process (less moved by the machine's load than wall time)."""

        @hookimpl
        def step_started(self, run, step):
            cpu[step] = time.process_time()

        @hookimpl
        def step_finished(self, run, step, info, seconds):
            peaks[step] = high_water_mb()
            cpu[step] = time.process_time() - cpu.get(step, time.process_time())

    sets = ["full_training.epochs=1", "precision=fp32", "validation.retention_max=64",
            "full_training.record=[]", "device=cpu", *args.set]
    started = time.perf_counter()
    report = Engine(load_config(None, sets), listeners=[StepMemory()]).train([str(args.corpus)], args.model)
    wall = time.perf_counter() - started
    t = report["timings"]
    ingest = sum(t.get(k, 0.0) for k in ("collect", "preprocess", "dedupe", "holdout", "tokenize"))
    print(json.dumps({
        "path": args.path, "bytes": os.path.getsize(args.corpus), "items": report["counts"].get("trained"),
        "tokens": report["counts"].get("tokens"), "ingest_seconds": ingest,
        "ingest": {k: round(t.get(k, 0.0), 2) for k in ("collect", "preprocess", "dedupe", "holdout", "tokenize")},
        "ingest_cpu": {k: round(cpu.get(k, 0.0), 2) for k in ("collect", "preprocess", "dedupe", "holdout", "tokenize")},
        "steps": counted["steps"], "train_tokens": counted["tokens"], "train_seconds": counted["seconds"],
        "save_seconds": t.get("save"), "wall": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_after_step_mb": {k: round(v) for k, v in peaks.items()},
    }), flush=True)


def high_water_mb() -> float:
    """VmHWM of this process, in MB (the peak resident memory so far)."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loop_ab(args) -> None:
    """The training loop alone, from the shard against from rows in memory, on the whole corpus of
    ``--corpus`` with the model of ``--model``: ``--steps`` steps each (after 2 untimed), alternating,
    ``--runs`` rounds, the same weights and seed. Prints one JSON line."""
    import statistics

    import torch

    torch.set_num_threads(args.threads)
    from retain.core.learning import training
    from retain.core.learning.lm import IGNORE_INDEX
    from retain.core.storage.models import load_version
    from retain.core.data.shards import encode_to_shard
    from retain.core.storage.store import ModelStore
    from retain.core.learning.strategy import TrainSettings

    lm = load_version(ModelStore(args.model)).lm
    texts = [json.loads(line)["text"] for line in open(args.corpus, encoding="utf-8")]
    variants = {"shards": encode_to_shard(lm, texts, 512, args.model.parent / "ab-shard"),
                "memory": lm.encode(texts, 512)}
    count: dict = {}
    forward, after = training.EngineLoop.before_forward, training.EngineLoop.after_training_iteration

    def before_forward(self, strategy, **kw):
        forward(self, strategy, **kw)
        if count["steps"] == 2:
            count["started"] = time.perf_counter()
        if count["steps"] >= 2:
            count["tokens"] += int((strategy.mbatch[1] != IGNORE_INDEX).sum())

    def after_iteration(self, strategy, **kw):
        after(self, strategy, **kw)
        count["steps"] += 1
        if count["steps"] >= args.steps + 2:
            count["seconds"] = time.perf_counter() - count["started"]
            strategy.stop_training()

    training.EngineLoop.before_forward, training.EngineLoop.after_training_iteration = before_forward, after_iteration
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, rows in variants.items():
            count.update(steps=0, tokens=0)
            module = load_version(ModelStore(args.model)).lm.module
            torch.manual_seed(0)
            training.fit(module, rows, TrainSettings(1e-4, 1, 8, 512), device=torch.device("cpu"), pad_id=lm.pad_id,
                         plugins=[], penalty=lambda *a: None, on_step=lambda *a: None, on_epoch=lambda *a: None,
                         continuing=True)
            rates[name].append(count["tokens"] / count["seconds"])
    medians = {name: statistics.median(v) for name, v in rates.items()}
    print(json.dumps({"rows": len(variants["memory"]), "rates": rates, "medians": medians,
                      "ratio": medians["shards"] / medians["memory"]}), flush=True)


def run_one(corpus: Path, work: Path, path: str, steps: int, threads: int, keep: bool = False,
            sets: list[str] = ()) -> dict:
    model = work / f"model-{corpus.stem}-{path}"
    subprocess.run(["rm", "-rf", str(model)], check=True)
    cmd = [sys.executable, __file__, "--child", "--corpus", str(corpus), "--model", str(model), "--path", path,
           "--steps", str(steps), "--threads", str(threads), *[f"--set={kv}" for kv in sets]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    if not keep:
        subprocess.run(["rm", "-rf", str(model)], check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_ab(corpus: Path, model: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child-ab", "--corpus", str(corpus), "--model", str(model), "--steps",
           str(args.loop_ab), "--ab-runs", str(args.ab_runs), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    subprocess.run(["rm", "-rf", str(model.parent / "ab-shard"), str(model)], check=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ab_text(ab: dict, args) -> str:
    rates = {k: ", ".join(f"{x:,.0f}" for x in v) for k, v in ab["rates"].items()}
    return (f"\nThe training loop alone on the first corpus ({ab['rows']:,} rows, the model its run trained), "
            f"{args.loop_ab} steps of batch 8 after 2 untimed, alternating, {args.ab_runs} rounds: from the shard "
            f"{ab['medians']['shards']:,.0f} tokens/s ({rates['shards']}), from rows in memory "
            f"{ab['medians']['memory']:,.0f} ({rates['memory']}): **shards / memory = {ab['ratio']:.2f}**.\n")


def table(rows: list[dict], args) -> str:
    lines = [SECTION, "",
             f"`retain train` (0.7M model, 1 epoch stopped after {args.steps} steps of batch 8, {args.threads} torch "
             f"thread(s)) on corpora of the paragraphs of ../shared/data repeated and shuffled, each item numbered "
             f"so that dedupe keeps it. One fresh process per run; {uname()}. Command:", "",
             "```", " ".join(["python benchmarks/data_scale.py", *sys.argv[1:]]), "```", "",
             "| corpus | rows | items | tokens | peak RSS | ingest MB/s | ingest s (collect/preprocess/dedupe/holdout/tokenize) "
             "| ingest CPU s (same steps) | train tokens/s | save s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        i = r["ingest"]
        lines.append(f"| {r['bytes'] / MB:,.0f} MB | {r['path']} | {r['items']:,} | {r['tokens']:,} | "
                     f"{r['peak_rss_mb']:,.0f} MB | {r['bytes'] / MB / r['ingest_seconds']:.2f} | "
                     f"{r['ingest_seconds']:.1f} ({i['collect']}/{i['preprocess']}/{i['dedupe']}/{i['holdout']}/"
                     f"{i['tokenize']}) | {_cpu(r)} | {r['train_tokens'] / max(r['train_seconds'], 1e-9):,.0f} | "
                     f"{r['save_seconds']:.1f} |")
    lines += ["", "Peak resident memory after each step (MB), where it rises:", ""]
    for r in rows:
        steps = r.get("peak_after_step_mb", {})
        lines.append(f"- {r['bytes'] / MB:,.0f} MB, {r['path']}: " + ", ".join(f"{k} {v:,}" for k, v in steps.items()))
    return "\n".join(lines) + "\n"


def _cpu(r: dict) -> str:
    c = r.get("ingest_cpu")
    if not c:
        return "-"
    return f"{sum(c.values()):.1f} ({c['collect']}/{c['preprocess']}/{c['dedupe']}/{c['holdout']}/{c['tokenize']})"


def uname() -> str:
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores, load {load:.1f} at the end"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10MB,100MB,1GB")
    ap.add_argument("--paths", default="shards", help="shards, memory, tokenizers (comma-separated)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", type=int, default=1, help="runs of each (size, path), alternating paths")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/retain-data-scale"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--write", type=Path, help="put the section into this BENCHMARKS.md")
    ap.add_argument("--loop-ab", type=int, default=0, metavar="STEPS",
                    help="also the training loop alone, shards against memory, STEPS steps x --ab-runs, on the "
                         "first corpus with the model its first run trained")
    ap.add_argument("--ab-runs", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run (e.g. full_training.tokenizer_sample_mb=8)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-ab", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--path", default="shards", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.child_ab:
        args.runs = args.ab_runs
        return loop_ab(args)
    args.work.mkdir(parents=True, exist_ok=True)
    rows, ab = [], None
    for number, size in enumerate(args.sizes.split(",")):
        n = int(float(size[:-2]) * (1000 if size.endswith("GB") else 1) * MB)
        corpus = args.work / f"corpus-{size}.jsonl"
        build_corpus(corpus, n, args.data)
        for run in range(args.runs):
            for path in args.paths.split(","):
                keep = bool(args.loop_ab) and number == 0 and run == 0 and path == "shards"
                r = run_one(corpus, args.work, path, args.steps, args.threads, keep, args.set)
                print(json.dumps(r), file=sys.stderr, flush=True)
                rows.append(r)
                if keep:
                    ab = run_ab(corpus, args.work / f"model-{corpus.stem}-shards", args)
    text = table(rows, args) + (ab_text(ab, args) if ab else "")
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from sections import write_section

        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
