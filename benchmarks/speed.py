"""Speed at the design document's model size: retain's training loop against a bare PyTorch
loop, padded against bucketed batches, fp32 against bf16 (and torch.compile), and where an
update's wall time goes (import, load, tokenize, evaluate, train, validate, save).

    python benchmarks/speed.py --write BENCHMARKS.md                 # 0.7M, 20M, 88M on CPU
    python benchmarks/speed.py --device cuda --sizes 88M,350M --write BENCHMARKS.md
    python benchmarks/speed.py --tiny                                 # CI-safe: the tables, in seconds

Every size is the built-in GPT (``model.n_layer/n_head/d_model/vocab_size``) with a byte-level
BPE tokenizer trained on its base data. Base data: Wikipedia paragraphs (WikiText-2 valid), an
update's new items: Wikipedia paragraphs of other articles (WikiText-2 test), from
``../shared/data`` (the Python documentation's own text where that folder is absent). The base
model is a real ``retain train`` (1 epoch, half the base held out: the retention pool of the
design document's 1,500-item base, 75 items), so the updates measured here read a real model
directory. Training measurements start every run from the same weights and batches (seeded);
each compared pair or triple runs alternately, ``--runs`` times, and the tables give medians
(ratios are of the medians). tokens/s counts real (non-padding) target tokens. The update
split runs ``retain update`` as a user would, in a fresh process each time, alternating with a
bare ``import avalanche.training`` and a ``--dry-run``.
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

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"

# name -> model block (the built-in gpt); the vocabulary is what the tokenizer reaches on the base.
SIZES = {
    "tiny": {"n_layer": 1, "n_head": 2, "d_model": 32, "vocab_size": 300},
    "0.7M": {"n_layer": 2, "n_head": 4, "d_model": 128, "vocab_size": 2048},
    "20M": {"n_layer": 6, "n_head": 8, "d_model": 512, "vocab_size": 4096},
    "88M": {"n_layer": 12, "n_head": 12, "d_model": 768, "vocab_size": 4096},
    "350M": {"n_layer": 24, "n_head": 16, "d_model": 1024, "vocab_size": 4096},
}
# Dense bf16 peak of the GPU, FLOP/s (vendor data sheets, without sparsity), by name fragment.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "4090": 165e12, "3090": 71e12}
from sections import write_section  # benchmarks/ is the script's folder: on sys.path

SECTION = "## Speed at the design document's size (issue 13)"


# --- data and models ------------------------------------------------------------------------

def corpora(tiny: bool, base_items: int, new_items: int, data: Path = DATA) -> tuple[list[str], list[str], str]:
    """(base texts, new texts, where they come from)."""
    if not tiny and (data / "wikitext2-valid.txt").exists():
        def paragraphs(name: str) -> list[str]:
            lines = (ln.strip() for ln in (data / name).read_text(encoding="utf-8").split("\n"))
            return [ln for ln in lines if len(ln) >= 80 and not ln.startswith("=")]
        rng = random.Random(0)
        return (rng.sample(paragraphs("wikitext2-valid.txt"), base_items),
                rng.sample(paragraphs("wikitext2-test.txt"), new_items), "WikiText-2 valid / test")
    from retain.demo import base_corpus, docstring_paragraphs

    return base_corpus(base_items), docstring_paragraphs()[:new_items], "Python's documentation"


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def overrides(size: str, device: str, epochs: int) -> list[str]:
    model = [f"model.{k}={v}" for k, v in SIZES[size].items()]
    return [*model, f"device={device}", "precision=fp32", f"fine_tuning.epochs={epochs}",
            "full_training.epochs=1", "validation.retention_fraction=0.5"]


def base_model(work: Path, size: str, base: list[str], device: str, epochs: int) -> Path:
    """A real full training (1 epoch, half the base held out), kept in ``work`` between runs."""
    from retain.core.config import load_config
    from retain.core.engine import Engine

    model = work / f"base-{size}-{device}" / "model"
    if (model / "CURRENT").exists():
        return model
    shutil.rmtree(model.parent, ignore_errors=True)
    model.parent.mkdir(parents=True)
    data = write_jsonl(model.parent / "base.jsonl", base)
    Engine(load_config(None, overrides(size, device, epochs))).train([str(data)], model)
    return model


# --- training loops ---------------------------------------------------------------------------

def fresh(model_dir: Path, device: str):
    """The base model, loaded anew: every measured run starts from the same weights."""
    from retain.core.storage.models import load_version, resolve_device
    from retain.core.storage.store import ModelStore

    lm = load_version(ModelStore(model_dir), device=resolve_device(device)).lm
    lm.module.train()
    return lm


def retain_fit(lm, rows, epochs: int, device: str, precision: str = "fp32") -> dict:
    """retain's training loop: ``core/training.fit``, the avalanche template the engine runs."""
    import torch

    from retain.core.storage.models import resolve_device
    from retain.core.learning.strategy import TrainSettings
    from retain.core.learning.training import fit

    settings = TrainSettings(1e-4, epochs, 8, rows.max_len if hasattr(rows, "max_len") else rows.x.size(1))
    losses: list[float] = []
    torch.manual_seed(0)
    started = time.perf_counter()
    fit(lm.module, rows, settings, device=resolve_device(device), pad_id=lm.pad_id, plugins=[],
        penalty=lambda *a: None, on_step=lambda epoch, step, steps, loss, tokens: losses.append(loss),
        on_epoch=lambda e, loss: None, continuing=True, precision=precision)
    _sync(device)
    return {"seconds": time.perf_counter() - started, "tokens": rows.tokens * epochs, "loss": losses[-1]}


def first_steps(rows, steps: int | None):
    """The rows of ``steps`` batches (a seeded sample), for measurements too slow over all of them."""
    if not steps or steps * 8 >= len(rows):
        return rows
    from retain.core.learning.lm import Rows

    pick = sorted(random.Random(0).sample(range(len(rows)), steps * 8))
    if hasattr(rows, "select"):  # a token shard: the same rows, read from its map
        return rows.select(pick)
    return Rows(rows.x[pick], rows.y[pick], rows.owner[pick])


def bare_loop(lm, rows, epochs: int, device: str, bucketed: bool = True) -> dict:
    """The same batches, model, optimizer and clipping in a plain PyTorch loop. ``bucketed``:
    the engine's length-bucketed batches; else shuffled batches, each padded to its longest row."""
    import torch

    from retain.core.learning.lm import IGNORE_INDEX, lm_loss
    from retain.core.learning.training import LengthBatches

    dev = torch.device(device)
    model = lm.module.to(dev)
    torch.manual_seed(0)
    seed = torch.initial_seed() % (2**31 - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    buckets = LengthBatches(rows.lengths(), 8, seed)
    shuffle = torch.Generator().manual_seed(seed)
    computed, losses = 0, []
    started = time.perf_counter()
    for _ in range(epochs):
        order = list(buckets) if bucketed else [b.tolist() for b in torch.randperm(len(rows), generator=shuffle).split(8)]
        for batch in order:
            x, y = rows.x[batch], rows.y[batch]
            width = int((y != IGNORE_INDEX).sum(1).max())
            x, y = x[:, :width].to(dev), y[:, :width].to(dev)
            computed += x.numel()
            loss = lm_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss))
    _sync(device)
    return {"seconds": time.perf_counter() - started, "tokens": rows.tokens * epochs, "loss": losses[-1],
            "computed": computed}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def alternate(runs: int, variants: dict) -> dict[str, list[dict]]:
    """Each variant once per round, ``runs`` rounds: machine load hits them alike."""
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, run in variants.items():
            results[name].append(run())
    return results


def median_rate(samples: list[dict]) -> float:
    return statistics.median(s["tokens"] / s["seconds"] for s in samples)


# --- the update, as a user runs it ----------------------------------------------------------------

def cli_runs(model: Path, work: Path, new: Path, sets: list[str], runs: int, threads: int,
             bare_import: bool) -> list[dict]:
    """``retain update`` (a fresh copy of the base each time), a bare ``import avalanche.training``
    (``bare_import``) and ``retain update --dry-run``, alternating, each a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLUMNS": "200"}
    retain = [sys.executable, "-m", "retain.cli"]
    args = [arg for s in sets for arg in ("--set", s)]
    out = []
    for r in range(runs):
        copy = work / f"update-{r}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(model, copy)
        row: dict = {}
        if bare_import:
            row["import_bare"] = _wall([sys.executable, "-c", "import avalanche.training"], env)
        started = time.perf_counter()
        proc = subprocess.run([*retain, "update", "--data", str(new), "--model", str(copy), "--json", "-q", *args],
                              env=env, capture_output=True, text=True)
        row["wall"] = time.perf_counter() - started
        if proc.returncode not in (0, 10):
            raise RuntimeError(f"retain update failed ({proc.returncode}): {proc.stderr[-2000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(timings=report["timings"], status=report["status"], metrics=report["metrics"],
                   verdicts={v["validator"]: v["seconds"] for v in report["verdicts"]})
        row["dry_run"] = _wall([*retain, "update", "--data", str(new), "--model", str(copy), "--dry-run", "-q",
                                *args], env)
        shutil.rmtree(copy, ignore_errors=True)
        out.append(row)
    return out


def _wall(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


# --- one size ----------------------------------------------------------------------------------

def measure_size(size: str, args, base: list[str], new: list[str], work: Path) -> dict:
    import torch

    from retain.core.storage.models import count_parameters

    model = base_model(work, size, base, args.device, args.epochs)
    lm = fresh(model, args.device)
    rows = lm.encode(new, min(512, lm.context))
    out: dict = {"size": size, "parameters": count_parameters(lm), "vocab": lm.tokenizer.get_vocab_size(),
                 "items": len(new), "rows": len(rows), "tokens": rows.tokens, "threads": torch.get_num_threads()}
    say = (lambda *a: print(*a, file=sys.stderr, flush=True))
    # What is measured so far, after each phase: a run stopped part way keeps it.
    keep = lambda: (work / f"partial-{size}.json").write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    say(f"[{size}] {out['parameters'] / 1e6:.1f}M parameters, {rows.tokens} tokens per epoch")

    from retain.core.data.shards import encode_to_shard

    shard = encode_to_shard(lm, new, min(512, lm.context), work / f"shard-{size}")  # what `retain update` trains on
    loop_steps = args.loop_steps.get(size)
    some, e = first_steps(rows, loop_steps), (1 if loop_steps else args.loop_epochs)
    some_shard = first_steps(shard, loop_steps)
    loops = alternate(args.runs, {
        "retain": lambda: retain_fit(fresh(model, args.device), some, e, args.device),
        "shards": lambda: retain_fit(fresh(model, args.device), some_shard, e, args.device),
        "bare": lambda: bare_loop(fresh(model, args.device), some, e, args.device),
        "padded": lambda: bare_loop(fresh(model, args.device), some, e, args.device, bucketed=False),
    })
    out["loop_span"] = f"{loop_steps} steps of 8 rows" if loop_steps else f"{e} epoch(s)"
    out["loops"] = {k: [{kk: vv for kk, vv in s.items()} for s in v] for k, v in loops.items()}
    say(f"[{size}] loops: " + ", ".join(f"{k} {median_rate(v):.0f} tok/s" for k, v in loops.items()))
    keep()
    if args.only_loops:
        return out

    out["scoring"] = scoring_runs(model, args)
    say(f"[{size}] scoring: " + ", ".join(f"{k} {_med(v):.2f} s" for k, v in out["scoring"]["seconds"].items()))
    keep()

    steps = args.bf16_steps.get(size)
    some, epochs = first_steps(rows, steps), (1 if steps else args.epochs)
    precision = alternate(args.bf16_runs.get(size, args.bf16_runs_all), {
        "fp32": lambda: retain_fit(fresh(model, args.device), some, epochs, args.device, "fp32"),
        "bf16": lambda: retain_fit(fresh(model, args.device), some, epochs, args.device, "bf16"),
    })
    out["precision"] = {"steps": steps, "epochs": args.epochs, **precision}
    say(f"[{size}] precision: " + ", ".join(f"{k} {median_rate(v):.0f} tok/s" for k, v in precision.items()))
    keep()

    if size in args.compile_sizes:
        out["compile"] = compile_runs(model, rows, args)
        say(f"[{size}] compile: {out['compile']}")
        keep()

    if not args.skip_update and (not args.update_sizes or size in args.update_sizes):
        data = write_jsonl(work / f"new-{size}.jsonl", new)
        sets = overrides(size, args.device, args.epochs)
        if size == args.fixed_size:  # the fixed costs: a small update of the small model
            small = write_jsonl(work / f"new10-{size}.jsonl", new[:10])
            out["fixed"] = cli_runs(model, work, small, sets, args.runs, args.threads, bare_import=True)
            say(f"[{size}] fixed: " + json.dumps(out["fixed"][-1], default=str)[:300])
            keep()
        out["update"] = cli_runs(model, work, data, sets, args.update_runs, args.threads, bare_import=False)
        say(f"[{size}] update: " + json.dumps(out["update"][-1]["timings"]))
        keep()
    return out


SCORE_BATCHES = (8192, 4096, 2048, 1024, 512)


def scoring_runs(model: Path, args) -> dict:
    """The base model's held-out items (its retention pool: what an update scores) scored in
    batches of at most N tokens, each N once per round, alternating; in the precision an
    update picks on this device (``precision: auto``)."""
    from retain.core.quality.evaluation import score_texts
    from retain.core.storage.models import resolve_device, resolve_precision
    from retain.core.storage.store import HOLDOUT, ModelStore

    store = ModelStore(model)
    texts = [r["text"] for r in store.read_jsonl(store.current(), HOLDOUT)]
    lm = fresh(model, args.device)
    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    max_len = min(512, lm.context)
    rows = lm.encode(texts, max_len)
    score_texts(lm, texts[:2], max_len, device, precision=precision)  # the first call's one-off setup

    def timed(n: int) -> float:
        started = time.perf_counter()
        score_texts(lm, texts, max_len, device, batch_tokens=n, precision=precision)
        _sync(args.device)
        return time.perf_counter() - started

    seconds: dict[int, list[float]] = {n: [] for n in SCORE_BATCHES}
    for _ in range(args.runs):
        for n in SCORE_BATCHES:
            seconds[n].append(timed(n))
    return {"texts": len(texts), "tokens": rows.tokens, "precision": precision, "seconds": seconds}


def compile_runs(model: Path, rows, args) -> dict:
    """An update's training (``--epochs`` epochs) eager against ``torch.compile``d, compile time
    included: the first compiled step pays it."""
    import torch

    def compiled():
        lm = fresh(model, args.device)
        lm.module.compile(dynamic=True)
        return retain_fit(lm, rows, args.epochs, args.device)

    try:
        res = alternate(1, {"eager": lambda: retain_fit(fresh(model, args.device), rows, args.epochs, args.device),
                            "compiled": compiled})
    except Exception as exc:  # no C++ compiler, an unsupported op: say so in the table
        torch._dynamo.reset()
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    return {k: v[0] for k, v in res.items()}


# --- tables ---------------------------------------------------------------------------------------

def _med(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def tables(results: list[dict], args) -> str:
    md = []
    md.append(f"**Training loop** (tokens/s, medians of {args.runs}, alternating; ratio of the medians; each run "
              "trains the update's rows from the same weights):\n")
    md.append("| model | parameters | measured over | retain (avalanche template) | bare PyTorch loop | retain / bare | "
              "retain from token shards | shards / in memory | padded batches | bucketed / padded | "
              "padding computed, padded / bucketed |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lp = r["loops"]
        retain, bare, padded = (median_rate(lp[k]) for k in ("retain", "bare", "padded"))
        shards = median_rate(lp["shards"]) if "shards" in lp else float("nan")
        waste = [s["computed"] / s["tokens"] - 1 for s in lp["padded"]], [s["computed"] / s["tokens"] - 1
                                                                          for s in lp["bare"]]
        md.append(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {r['loop_span']} | {retain:,.0f} | {bare:,.0f} | "
                  f"{retain / bare:.2f} | {shards:,.0f} | {shards / retain:.2f} | {padded:,.0f} | {bare / padded:.2f} | "
                  f"{100 * _med(waste[0]):.0f}% / {100 * _med(waste[1]):.0f}% |")
    md.append("")
    if all("precision" not in r for r in results):  # --only-loops
        return "\n".join(md) + "\n"
    md.append("**fp32 against bf16 autocast** (retain's loop; tokens/s, medians; final loss = the last "
              "step's training loss, same weights, batches and seed):\n")
    md.append("| model | measured over | fp32 tokens/s | bf16 tokens/s | bf16 / fp32 | fp32 final loss | "
              "bf16 final loss | loss difference |" + (" bf16 share of the GPU's peak |" if args.device == "cuda" else ""))
    md.append("|---|---|---|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for r in results:
        p = r["precision"]
        f32, b16 = median_rate(p["fp32"]), median_rate(p["bf16"])
        lf, lb = _med(s["loss"] for s in p["fp32"]), _med(s["loss"] for s in p["bf16"])
        span = f"{p['steps']} steps of 8 rows" if p["steps"] else f"{p['epochs']} epochs"
        row = (f"| {r['size']} | {span} x {len(p['fp32'])} | {f32:,.1f} | {b16:,.1f} | {b16 / f32:.2f} | {lf:.4f} | "
               f"{lb:.4f} | {100 * (lb - lf) / lf:+.2f}% |")
        if args.device == "cuda":
            row += f" {mfu(r, b16):.1%} |"
        md.append(row)
    from retain.core.quality.evaluation import score_tokens

    md.append("")
    default = score_tokens(args.device)
    md.append(f"**Scoring batches** (the base model's held-out items, an update's retention pool, scored in "
              f"batches of at most N tokens; seconds, medians of {args.runs}, alternating; retain's default on "
              f"{args.device} is N = {default:,}):\n")
    md.append("| model | items | tokens | precision | " + " | ".join(f"N = {n:,} s" for n in SCORE_BATCHES)
              + f" | N = 8,192 / N = {default:,} |")
    md.append("|---|---|---|---|" + "---|" * (len(SCORE_BATCHES) + 1))
    for r in results:
        sc = r["scoring"]
        med = {int(n): _med(v) for n, v in sc["seconds"].items()}
        md.append(f"| {r['size']} | {sc['texts']} | {sc['tokens']:,} | {sc['precision']} | "
                  + " | ".join(f"{med[n]:.2f}" for n in SCORE_BATCHES) + f" | {med[8192] / med[default]:.2f} |")
    compiled = [r for r in results if "compile" in r]
    if compiled:
        md.append("")
        md.append(f"**torch.compile** (retain's loop, {args.epochs} epochs of the update, compile time included; "
                  "one run each):\n")
        md.append("| model | eager s | compiled s | compiled / eager |")
        md.append("|---|---|---|---|")
        for r in compiled:
            c = r["compile"]
            if "error" in c:
                md.append(f"| {r['size']} | - | failed: {c['error']} | - |")
            else:
                md.append(f"| {r['size']} | {c['eager']['seconds']:.1f} | {c['compiled']['seconds']:.1f} | "
                          f"{c['compiled']['seconds'] / c['eager']['seconds']:.2f} |")
    updates = [r for r in results if "update" in r]
    if updates:
        md.append("")
        md.append(f"**Where an update's wall time goes** (`retain update` of {results[0]['items']} items, "
                  f"{args.epochs} epochs, fresh process, seconds, medians of {args.update_runs}; "
                  "\"import\" is what the update still waited for after overlapping the import with "
                  "load, read, dedupe, tokenize and evaluate; \"startup\" is the process before the run "
                  "(interpreter, CLI, plugins) and after it; \"judging\" is early stopping's scoring and "
                  "validators after each epoch, inside \"train\"; the measuring share is evaluate before + "
                  "judging + validate over the process wall):\n")
        md.append("| model | process wall | startup | import | load | read + dedupe | tokenize | evaluate before "
                  "| train | of which judging | validate | save | measuring share | `--dry-run` | retained items scored |")
        md.append("|---|" + "---|" * 14)
        for r in updates:
            u = r["update"]
            t = {k: _med(x["timings"].get(k) for x in u) for k in u[0]["timings"]}
            ingest = sum(t.get(k, 0) for k in ("collect", "preprocess", "dedupe", "holdout"))
            wall = _med(x["wall"] for x in u)
            startup = _med(x["wall"] - x["timings"]["total"] - x["timings"].get("save", 0) for x in u)
            share = _med((x["timings"]["evaluate_before"] + x["timings"].get("judge_epochs", 0)
                          + x["timings"]["validate"]) / x["wall"] for x in u)
            md.append(f"| {r['size']} | {wall:.1f} | {startup:.1f} | {t.get('import', 0):.1f} | {t['load']:.1f} | "
                      f"{ingest:.2f} | {t['tokenize']:.2f} | {t['evaluate_before']:.1f} | {t['train']:.1f} | "
                      f"{t.get('judge_epochs', 0):.1f} | {t['validate']:.1f} | {t['save']:.1f} | {100 * share:.1f}% | "
                      f"{_med(x['dry_run'] for x in u):.1f} | {u[0]['metrics']['retention_items']} |")
        fixed = [r for r in results if "fixed" in r]
        for r in fixed:
            f = r["fixed"]
            wall, bare = _med(x["wall"] for x in f), _med(x["import_bare"] for x in f)
            md.append("")
            md.append(f"**Fixed seconds** ({r['size']} model, `retain update` of 10 items, {args.epochs} epochs, "
                      f"alternating with a bare `python -c \"import avalanche.training\"` and the update's "
                      f"`--dry-run`, fresh processes, medians of {len(f)}): update {wall:.1f} s, bare import "
                      f"{bare:.1f} s, **update - import = {wall - bare:+.1f} s**; dry run "
                      f"**{_med(x['dry_run'] for x in f):.1f} s**; the update waited "
                      f"{_med(x['timings'].get('import', 0) for x in f):.1f} s for the import after overlapping it, "
                      f"and trained for {_med(x['timings']['train'] for x in f):.1f} s.")
        md.append("")
        md.append("Seconds per validator (medians): " + "; ".join(
            f"{r['size']}: " + ", ".join(f"{name} {_med(x['verdicts'][name] for x in r['update']):.2f}"
                                         for name in r["update"][0]["verdicts"]) for r in updates) + ".")
    return "\n".join(md) + "\n"


def mfu(r: dict, tokens_per_s: float) -> float:
    """Model FLOP/s (6 x parameters + attention, per token) as a share of the GPU's bf16 peak."""
    import torch

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    if peak is None:
        return float("nan")
    arch = SIZES[r["size"]]
    seq = r["tokens"] / max(1, r["rows"])
    flops = 6 * r["parameters"] + 12 * arch["n_layer"] * arch["d_model"] * seq
    return flops * tokens_per_s / peak




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.7M,20M,88M", help=f"model sizes, from {', '.join(SIZES)}")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runs", type=int, default=3, help="alternating rounds of each comparison")
    ap.add_argument("--update-runs", type=int, default=3, help="`retain update` processes per size")
    ap.add_argument("--epochs", type=int, default=3, help="an update's epochs (the design document's 3)")
    ap.add_argument("--loop-epochs", type=int, default=1, help="epochs per run of the loop comparison")
    ap.add_argument("--bf16-steps", default="", help="SIZE=STEPS,...: measure fp32/bf16 over this many steps "
                    "(one run) instead of --epochs epochs (bf16 without native CPU support is slow)")
    ap.add_argument("--bf16-runs", type=int, default=0, help="alternating fp32/bf16 rounds (default: --runs, "
                    "one where --bf16-steps names the size)")
    ap.add_argument("--loop-steps", default="", help="SIZE=STEPS,...: the loop comparison over this many steps "
                    "instead of --loop-epochs")
    ap.add_argument("--compile-sizes", default="0.7M,20M", help="sizes to measure torch.compile at")
    ap.add_argument("--base-items", type=int, default=150, help="base items (half held out: the retention pool)")
    ap.add_argument("--new-items", type=int, default=41, help="new items of the update")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tests pin 1; 0: torch's default)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/retain-speed-bench"), help="base models are kept here")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared corpora (default: ../shared/data)")
    ap.add_argument("--skip-update", action="store_true", help="no `retain update` processes")
    ap.add_argument("--update-sizes", default="", help="the sizes whose `retain update` runs (default: every size)")
    ap.add_argument("--fixed-size", default="0.7M", help="the size whose 10-item update measures fixed costs")
    ap.add_argument("--tiny", action="store_true", help="CI-safe: a tiny model, few items, one round")
    ap.add_argument("--only-loops", action="store_true", help="the training-loop table alone (retain in memory, "
                    "from token shards, bare, padded)")
    ap.add_argument("--write", type=Path, help="put the section into this BENCHMARKS.md")
    args = ap.parse_args()
    if args.tiny:
        args.sizes, args.runs, args.update_runs, args.epochs = "tiny", 1, 1, 1
        args.base_items, args.new_items, args.compile_sizes, args.fixed_size = 40, 12, "", "tiny"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    steps = dict(part.split("=") for part in args.bf16_steps.split(",") if part)
    args.bf16_steps = {k: int(v) for k, v in steps.items()}
    args.loop_steps = {k: int(v) for k, v in (p.split("=") for p in args.loop_steps.split(",") if p)}
    args.bf16_runs_all = args.bf16_runs or args.runs
    args.bf16_runs = {k: args.bf16_runs or 1 for k in args.bf16_steps}
    args.compile_sizes = [s for s in args.compile_sizes.split(",") if s]
    args.update_sizes = [s for s in args.update_sizes.split(",") if s]
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        sys.exit(f"unknown size(s) {unknown}; known: {', '.join(SIZES)}")
    base, new, source = corpora(args.tiny, args.base_items, args.new_items, args.data)
    work = args.work / ("tiny" if args.tiny else "full")
    work.mkdir(parents=True, exist_ok=True)
    started, load_before, began = time.perf_counter(), os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = [measure_size(size, args, base, new, work) for size in sizes]
    md = tables(results, args)
    print(md)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    if args.write:
        cmd = "python benchmarks/speed.py " + shlex.join(sys.argv[1:])
        where = (torch.cuda.get_device_name() if args.device == "cuda" else
                 f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                 f"{args.threads} torch thread(s)")
        load = lambda a: ", ".join(f"{x:.2f}" for x in a)
        text = (f"{SECTION}\n\nCommand: `{cmd}` (started {began}, {(time.perf_counter() - started) / 60:.0f} min in "
                f"all on {where}, torch {torch.__version__}; data: {source}; load average {load(load_before)} "
                f"before, {load(os.getloadavg())} after).\n\n" + __doc__.split("\n\n", 2)[2].strip()
                + "\n\n" + md)
        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
