"""retain compare on text: a base model trained on Wikipedia, then daily Shakespeare updates.

The textbook forgetting setting (../shared/data/README.md): a base model
trained from scratch on encyclopedic English, then days of 45 new items, a
quarter of them duplicates, in another domain. Every strategy starts from the
same base and sees the same days; the metric is the mean token loss on
held-out items (Wikipedia: the base model's held-out paragraphs; each day: its
own held-out speeches).

    .venv/bin/python benchmarks/text_compare.py                  # ~4 minutes on 2 cores
    .venv/bin/python benchmarks/text_compare.py --strategies naive,low_lr,full_retrain
    # LoRA at two ranks against full fine-tuning and replay (issue 11), on the default model size:
    .venv/bin/python benchmarks/text_compare.py --set model.d_model=128 \
        --strategies naive,low_lr,replay,lora:rank=4,lora:rank=16,lora:rank=16+replay,full_retrain

It writes the corpora as JSONL, trains the base (same as ``retain train``),
then runs the equivalent of::

    retain compare --strategies ... --model WORK/base --data WORK/shakespeare.jsonl \\
        --base-data WORK/wikipedia.jsonl --daily 45 --dup-share 0.25 --days 3 --jobs 2 --out WORK/results
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The corpora live beside the checkout (../shared/data); RETAIN_DATA points elsewhere (a worktree).
DATA = Path(os.environ.get("RETAIN_DATA", REPO.parent / "shared" / "data"))
# A model small enough that 4 full trainings (base + full_retrain after each day) fit in minutes.
MODEL = ["model.n_layer=2", "model.n_head=4", "model.d_model=64", "model.vocab_size=1024",
         "full_training.max_seq_length=128", "fine_tuning.max_seq_length=128", "full_training.epochs=4",
         "full_training.batch_size=16", "fine_tuning.epochs=3", "fine_tuning.batch_size=8",
         "validation.retention_fraction=0.1", "device=cpu"]


def wikipedia(n: int, seed: int) -> list[str]:
    lines = [line for name in ("wikitext2-valid.txt", "wikitext2-test.txt")
             for line in (DATA / name).read_text(encoding="utf-8").splitlines()]
    paras = [p.strip() for p in lines if len(p.strip()) >= 200 and not p.strip().startswith("=")]
    return random.Random(seed).sample(paras, n)


def shakespeare(n: int, seed: int) -> list[str]:
    speeches = [s.strip() for s in (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")]
    speeches = [s for s in speeches if len(s) >= 80]
    start = random.Random(seed).randrange(len(speeches) - n)
    return speeches[start:start + n]  # consecutive speeches: a play read day by day


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def markdown(results: dict) -> str:
    from retain.compare.report import rows

    lines = ["| strategy | Wikipedia loss (base → final) | Shakespeare loss, last day | avg final loss (ppl) | "
             "forgetting | BWT | FWT | trained parameters | KiB per version | train s | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows(results):
        res = results["results"][r["strategy"]]
        if not r["supported"]:
            lines.append(f"| {r['strategy']} | n/a ({r['note']}) |||||||||")
            continue
        R = res["R"]
        fwt = "-" if r["fwt"] is None else f"{r['fwt']:+.3f}"
        trained = "-" if r.get("trainable_parameters") is None else f"{r['trainable_parameters']:,}"
        kib = "-" if r.get("version_mib") is None else f"{1024 * r['version_mib']:,.0f}"
        lines.append(f"| {r['strategy']} | {R[0][0]:.3f} → {R[-1][0]:.3f} ({r['old_rise']:+.3f}) | {r['final_new']:.3f} | "
                     f"{r['average_final']:.3f} ({r['final_perplexity']:.1f}) | {r['forgetting']:+.3f} | "
                     f"{r['bwt']:+.3f} | {fwt} | {trained} | {kib} | {r['train_seconds']:.0f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Alone, replay/ewc/lwf train at fine_tuning's lr (1e-4, as low_lr); with naive+ at naive's (1e-3).
    ap.add_argument("--strategies", default="naive,low_lr,replay,ewc,lwf,naive+replay,naive+ewc,naive+lwf,"
                                            "rewarm,rewarm+replay,full_retrain_keep,full_retrain")
    ap.add_argument("--work", type=Path, default=Path("text-compare-work"))
    ap.add_argument("--base-items", type=int, default=1500)  # the design document: "All 1,500"
    ap.add_argument("--daily", type=int, default=45)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--dup-share", type=float, default=0.25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override after the benchmark's own model settings (repeatable)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: the shared corpora are not at {DATA} (they live beside the checkout, "
              "see the project README)")
        sys.exit(0)

    import torch
    from rich.console import Console

    # One thread for the base training too, like each --jobs 2 worker on 2 cores: on a shared,
    # busy machine two spin-waiting torch threads can be many times slower than one.
    torch.set_num_threads(1)

    from retain.compare.run import CompareRequest, run_compare
    from retain.compare.report import table, write_outputs
    from retain.core.config import load_config
    from retain.core.engine import Engine

    console = Console(stderr=True, width=150)
    started = time.perf_counter()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wiki = write_jsonl(work / "wikipedia.jsonl", wikipedia(args.base_items, args.seed))
    fresh = args.daily - round(args.daily * args.dup_share)
    play = write_jsonl(work / "shakespeare.jsonl", shakespeare(fresh * args.days, args.seed))
    # The base is trained with every stateful strategy listed, so each records what its first
    # update needs from the base data (replay buffer, importances), as a user's base would.
    from retain.compare.run import parse_label

    names = list(dict.fromkeys(p for n in args.strategies.split(",") for p in parse_label(n)[0]
                               if not p.startswith("full_retrain")))
    base_cfg = [*MODEL, *args.sets, f"fine_tuning.strategy=[{','.join(names)}]", f"seed={args.seed}"]
    t0 = time.perf_counter()
    Engine(load_config(None, base_cfg)).train([str(wiki)], work / "base")
    console.print(f"base model: {args.base_items} Wikipedia paragraphs, {time.perf_counter() - t0:.0f}s")
    req = CompareRequest(strategies=args.strategies, model=work / "base", data=[str(play)], base_data=[str(wiki)],
                         daily=args.daily, dup_share=args.dup_share, days=args.days, jobs=args.jobs, seed=args.seed)
    results = run_compare(req, console=console)
    write_outputs(results, work / "results")
    console.print(table(results))
    print(f"\n{args.base_items} Wikipedia paragraphs (base, {args.base_items // 10} held out), "
          f"{args.days} days of {args.daily} Shakespeare speeches ({round(args.daily * args.dup_share)} duplicates, "
          f"20% of the fresh ones held out), --jobs {args.jobs}, seed {args.seed}; "
          f"total {time.perf_counter() - started:.0f}s\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
