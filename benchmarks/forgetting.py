"""Forgetting benchmark: which strategy learns a new domain and keeps the old one?

A base model is trained from scratch on Wikipedia paragraphs (WikiText-2 valid).
Each strategy then gets the same updates with Shakespeare speeches: several
seed-sized daily updates (~45 new items each), then one large update. Every
update is a separate ``Engine.update`` on the model directory, so strategy state
travels between updates through the saved versions exactly as between
``retain update`` processes. Baselines in the same run: ``naive`` (fine-tuning
at the full-training lr 1e-3) and a full retrain from scratch on all data.

Measured on held-out sets never trained on: old domain = paragraphs of the
WikiText-2 *test* articles, new domain = Shakespeare speeches kept aside.
Losses are mean per-item token cross-entropy (nats). Times are wall seconds
measured in this one run, side by side.

    .venv/bin/python benchmarks/forgetting.py            # ~10-15 min on 2 CPU cores
    .venv/bin/python benchmarks/forgetting.py --quick    # a smoke run, ~1 min

Data: ../shared/data beside the repository (see its README).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"

# name -> fine_tuning.strategy. The anti-forgetting strategies run at naive's learning rate
# (1e-3): the question is whether they keep the old domain while learning as much as naive.
CONFIGS = {
    "naive": ["naive"],
    "low_lr": ["low_lr"],
    "replay": ["naive", "replay"],
    "ewc": ["naive", "ewc"],
    "lwf": ["naive", "lwf"],
    "replay+ewc": ["naive", "replay", "ewc"],
}
# Not in the default run (time), selectable with --configs.
MORE_CONFIGS = {"si": ["naive", "si"], "mas": ["naive", "mas"], "agem": ["naive", "agem"], "gem": ["naive", "gem"]}


def wiki_paragraphs(path: Path) -> list[str]:
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").split("\n"))
    return [ln for ln in lines if len(ln) >= 80 and not ln.startswith("=")]


def speeches(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").split("\n\n") if s.strip()]


def make_data(args) -> dict:
    from retain.core.items import text_hash

    rng = random.Random(args.seed)
    base = rng.sample(wiki_paragraphs(DATA / "wikitext2-valid.txt"), args.base_items)
    old_heldout = rng.sample(wiki_paragraphs(DATA / "wikitext2-test.txt"), args.eval_items)
    plays = speeches(DATA / "tinyshakespeare.txt")
    rng.shuffle(plays)
    n_days = args.days * args.daily_items
    days = [plays[i * args.daily_items:(i + 1) * args.daily_items] for i in range(args.days)]
    large = plays[n_days:n_days + args.large_items]
    trained = {text_hash(t) for t in plays[:n_days + args.large_items]}
    # Held-out speeches: never trained on, not even as a repeated line ("All: Ay.").
    new_heldout = [t for t in plays[n_days + args.large_items:] if text_hash(t) not in trained]
    return {"base": base, "days": days, "large": large, "old_heldout": old_heldout,
            "new_heldout": new_heldout[:args.eval_items]}


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def held_out_losses(model_dir: Path, data: dict, seq_len: int) -> tuple[float, float]:
    from retain.core.evaluation import score_texts
    from retain.core.models import load_version
    from retain.core.store import ModelStore

    lm = load_version(ModelStore(model_dir)).lm
    old, new = (float(score_texts(lm, texts, seq_len).mean()) for texts in (data["old_heldout"], data["new_heldout"]))
    return old, new


def run_updates(work: Path, name: str, overrides: list[str], files: dict, data: dict, args) -> dict:
    """The daily updates, then the large one, on a copy of the base model."""
    from retain.core.config import load_config
    from retain.core.engine import Engine

    model = work / name
    shutil.copytree(work / "base", model)
    engine = Engine(load_config(None, overrides))
    t = time.perf_counter()
    for day in files["days"]:
        report = engine.update([str(day)], model)
    days_seconds = time.perf_counter() - t
    after_days = held_out_losses(model, data, args.seq_len)
    t = time.perf_counter()
    engine.update([str(files["large"])], model)
    large_seconds = time.perf_counter() - t
    after_large = held_out_losses(model, data, args.seq_len)
    print(f"{name}: days {days_seconds:.0f}s, large {large_seconds:.0f}s, "
          f"old {after_days[0]:.3f}/{after_large[0]:.3f}, new {after_days[1]:.3f}/{after_large[1]:.3f}",
          flush=True)
    return {"strategy": name, "lr": report["settings"]["learning_rate"], "days_seconds": days_seconds,
            "large_seconds": large_seconds, "after_days": after_days, "after_large": after_large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-items", type=int, default=1500)
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--daily-items", type=int, default=45)
    parser.add_argument("--large-items", type=int, default=600)
    parser.add_argument("--eval-items", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. options.ewc.ewc_lambda=30000")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated, from: " + ", ".join([*CONFIGS, *MORE_CONFIGS]))
    parser.add_argument("--no-retrain", action="store_true", help="skip the full-retrain baseline")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a small model gains nothing from a second, busy core)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.base_items, args.base_epochs, args.days, args.large_items, args.eval_items = 200, 1, 2, 60, 40
    if not DATA.is_dir():
        sys.exit(f"data folder not found: {DATA} (the benchmark reads ../shared/data beside the repo)")

    import torch

    from retain.core.config import load_config
    from retain.core.engine import Engine

    torch.set_num_threads(args.threads)
    data = make_data(args)
    common = [f"seed={args.seed}", "device=cpu", f"full_training.epochs={args.base_epochs}",
              f"full_training.max_seq_length={args.seq_len}", f"fine_tuning.max_seq_length={args.seq_len}",
              "validation.eval_max_items=64", *args.set]
    configs = {name: (CONFIGS | MORE_CONFIGS)[name] for name in args.configs.split(",")}
    stateful = sorted({s for chain in configs.values() for s in chain if s not in ("naive", "low_lr")})

    work = Path(tempfile.mkdtemp(prefix="retain-forgetting-"))
    try:
        files = {"base": write_jsonl(work / "base.jsonl", data["base"]),
                 "large": write_jsonl(work / "large.jsonl", data["large"])}
        files["days"] = [write_jsonl(work / f"day{i + 1}.jsonl", d) for i, d in enumerate(data["days"])]

        # The base records what the strategies' first update needs (replay buffer, Fisher).
        t = time.perf_counter()
        Engine(load_config(None, [*common, f"fine_tuning.strategy={','.join(stateful) or 'low_lr'}"])).train(
            [str(files["base"])], work / "base")
        base_seconds = time.perf_counter() - t
        base_old, base_new = held_out_losses(work / "base", data, args.seq_len)
        print(f"base: {base_seconds:.0f}s, held-out loss old {base_old:.3f}, new {base_new:.3f}", flush=True)

        rows = []
        for name, chain in configs.items():
            row = run_updates(work, name, [*common, f"fine_tuning.strategy={','.join(chain)}"], files, data, args)
            rows.append(row | {"chain": chain})

        retrain = None
        if not args.no_retrain:
            t = time.perf_counter()
            Engine(load_config(None, common)).train(
                [str(files["base"]), *map(str, files["days"]), str(files["large"])], work / "retrain")
            seconds = time.perf_counter() - t
            retrain = {"seconds": seconds, "losses": held_out_losses(work / "retrain", data, args.seq_len),
                       "lr": load_config(None, common).full_training.learning_rate}
            print(f"full retrain: {retrain['seconds']:.0f}s, old {retrain['losses'][0]:.3f}, "
                  f"new {retrain['losses'][1]:.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {"args": vars(args) | {"json": str(args.json) if args.json else None},
               "base": {"seconds": base_seconds, "old": base_old, "new": base_new},
               "strategies": rows, "retrain": retrain,
               "sizes": {k: (len(v) if k != "days" else [len(d) for d in v]) for k, v in data.items()}}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))


def table(r: dict) -> str:
    b = r["base"]

    def pct(value: float, ref: float) -> str:
        return f"{value:.3f} ({100 * (value - ref) / ref:+.1f}%)"

    days = r["args"]["days"]
    lines = [f"| strategy | lr | old-domain loss: after {days} days / after large | new-domain loss: after {days} "
             f"days / after large | time: {days} daily updates / large update |",
             "|---|---|---|---|---|",
             f"| base model | - | {b['old']:.3f} | {b['new']:.3f} | - |"]
    for row in r["strategies"]:
        (od, nd), (ol, nl) = row["after_days"], row["after_large"]
        lines.append(f"| {row['strategy']} (`{','.join(row['chain'])}`) | {row['lr']:g} | {pct(od, b['old'])} / "
                     f"{pct(ol, b['old'])} | {pct(nd, b['new'])} / {pct(nl, b['new'])} | "
                     f"{row['days_seconds']:.0f}s / {row['large_seconds']:.0f}s |")
    if r["retrain"]:
        rt = r["retrain"]
        lines.append(f"| full retrain on all data | {rt['lr']:g} | - / {pct(rt['losses'][0], b['old'])} "
                     f"| - / {pct(rt['losses'][1], b['new'])} | {rt['seconds']:.0f}s (once) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
