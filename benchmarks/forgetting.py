"""Forgetting benchmark: which update recipe learns a new domain like a full retrain and keeps the old one?

A base model is trained from scratch on one domain, then each recipe gets the
same updates from another: several daily updates (~45 new items each), then
one large update. Every update is a separate ``Engine.update`` on the model
directory (or ``retain.tune.auto_update`` for ``--auto``), so strategy state
travels between updates through the saved versions exactly as between
``retain update`` processes, and the quality gate judges each update as it
would for a user (a rejected update leaves the model as it was; the table
counts them). Baselines in the same run: ``naive`` fine-tuning at the
full-training lr 1e-3 (with and without the gate), the design document's
``low_lr`` at 1e-4, and two full retrains from scratch on all data: one that
keeps the base model's tokenizer (``full_training.tokenizer: keep``, the fair
reference for an update, which cannot change its vocabulary) and one that
trains a new tokenizer (the default of ``retain train``).

Domain pairs (``--pair``):

- ``wikipedia-shakespeare``: WikiText-2 paragraphs, then Shakespeare speeches
  (``../shared/data``, or ``RETAIN_DATA``);
- ``python-docs-code``: Python's own documentation (the language reference in
  ``pydoc_data.topics`` and standard-library module docstrings), then the
  standard library's source code (function bodies, docstrings removed): text
  that ships with every CPython;
- ``shakespeare-wikipedia``: the first pair the other way round (a Shakespeare
  model, Wikipedia days; its old-domain held-out speeches are the base's unused
  ones).

Measured on held-out items never trained on: old-domain items kept aside from
the base domain, new-domain items kept aside from the new one. Loss = mean
per-item token cross-entropy (nats per token); "nats/byte" = all held-out
nats over all their UTF-8 bytes, comparable across tokenizers. Train time =
the updates' ``timings.train`` (what ``--auto``'s budget counts), beside the
retrain's, measured in this one run, side by side.

A month (``--days 10`` or more; the issue-25 tables use ``--days 30``): no large
update; each recipe's days one by one, both domains measured after days 5, 10,
20 and 30, and a same-tokenizer retrain on the base and every day so far after
every 10th day as the reference; ``--jobs`` runs the retrains and recipes in
processes side by side.

    .venv/bin/python benchmarks/forgetting.py                          # ~30 min on 2 busy CPU cores
    .venv/bin/python benchmarks/forgetting.py --days 30 --jobs 3       # the month: hours on 2 busy cores
    .venv/bin/python benchmarks/forgetting.py --pair python-docs-code
    .venv/bin/python benchmarks/forgetting.py --quick                  # a smoke run, ~3 min
    .venv/bin/python benchmarks/forgetting.py --days 0 --no-retrain --jobs 2   # the large update alone
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RETAIN_DATA", REPO.parent / "shared" / "data"))  # RETAIN_DATA: elsewhere

# name -> (fine_tuning.strategy, extra overrides). "auto" is `retain update --auto`. Replay is 1:1 unless
# the name says otherwise ("steered": options.replay.max_share, the default since issue 25), drawn uniformly
# over the history (the default caps the base's part since issue 25: options.replay.base_share), with no work
# budget whatever the config says (options.replay.horizon).
FIXED = ["options.replay.max_share=0", "options.replay.base_share=null", "options.replay.horizon=0"]
RECIPES = {
    "naive (no gate)": (["naive"], ["validators=[]"]),
    "naive": (["naive"], []),
    "low_lr": (["low_lr"], []),
    "naive+replay": (["naive", "replay"], FIXED),
    "rewarm": (["rewarm"], []),
    "rewarm+replay": (["rewarm", "replay"], FIXED),
    "rewarm+replay 1ep": (["rewarm", "replay"], [*FIXED, "fine_tuning.epochs=1"]),
    "auto": (None, []),
    "auto budget 1": (None, ["tune.budget=1.0"]),  # --auto with a budget of one full training's time
    # the daily recipes (issue 25): weight averaging with the parent, more replay, replay steered by the drift
    "rewarm+replay+average": (["rewarm", "replay", "average"], FIXED),
    "rewarm+replay 3:1": (["rewarm", "replay"], [*FIXED, "options.replay.share=0.75"]),
    "rewarm+replay steered": (["rewarm", "replay"], ["options.replay.max_share=0.8"]),
    "rewarm+replay+average steered": (["rewarm", "replay", "average"], ["options.replay.max_share=0.8"]),
}
DEFAULT_RECIPES = ["naive (no gate)", "naive", "low_lr", "naive+replay", "rewarm", "rewarm+replay",
                   "rewarm+replay 1ep", "rewarm+replay+average steered", "auto"]  # the config's default: steered+average
# The month (--days 10 or more), no large update: the default (config.yaml's options), the default
# before issue 25, and naive fine-tuning at the full training's rate.
RECIPES["default"] = (["rewarm", "replay", "average"], [])
MONTH_RECIPES = ["default", "rewarm+replay", "naive"]
MONTH_CHECKPOINTS = (5, 10, 20, 30)  # days after which both domains are measured
RETRAIN_EVERY = 10                    # a same-tokenizer retrain on all data seen so far, every this many days
# Not in the default run (time), selectable with --recipes.
MORE = {"ewc": (["naive", "ewc"], []), "lwf": (["naive", "lwf"], []), "replay+ewc": (["naive", "replay", "ewc"], []),
        "si": (["naive", "si"], []), "mas": (["naive", "mas"], []), "agem": (["naive", "agem"], []),
        "gem": (["naive", "gem"], []), "rewarm+replay+ewc": (["rewarm", "replay", "ewc"], [])}


# --- the domain pairs ----------------------------------------------------------------------------

def wiki_paragraphs(path: Path) -> list[str]:
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").split("\n"))
    return [ln for ln in lines if len(ln) >= 80 and not ln.startswith("=")]


def speeches(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").split("\n\n") if s.strip()]


def python_docs() -> list[str]:
    """The language reference's paragraphs and the standard library's module docstrings."""
    from retain.demo import docstring_paragraphs

    from pydoc_data.topics import topics

    paras = [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n")]
    return [p for p in paras if len(p) >= 80] + docstring_paragraphs()


def split_pair(old: list[str], old_test: list[str] | None, new: list[str], args) -> dict:
    from retain.core.data.items import text_hash

    rng = random.Random(args.seed)
    old = list(dict.fromkeys(old))
    rng.shuffle(old)
    base = old[:args.base_items]
    old_heldout = rng.sample(old_test, args.eval_items) if old_test else old[args.base_items:][:args.eval_items]
    new = list(dict.fromkeys(new))
    rng.shuffle(new)
    n_days = args.days * args.daily_items
    days = [new[i * args.daily_items:(i + 1) * args.daily_items] for i in range(args.days)]
    large = new[n_days:n_days + args.large_items]
    trained = {text_hash(t) for t in new[:n_days + args.large_items]} | {text_hash(t) for t in base}
    # Held-out items: never trained on, not even as a repeated line ("All: Ay.").
    new_heldout = [t for t in new[n_days + args.large_items:] if text_hash(t) not in trained]
    return {"base": base, "days": days, "large": large, "old_heldout": old_heldout,
            "new_heldout": new_heldout[:args.eval_items]}


def make_data(args) -> dict:
    if args.pair == "python-docs-code":
        from retain.demo import stdlib_functions

        return split_pair(python_docs(), None, stdlib_functions(), args)
    if not DATA.is_dir():
        sys.exit(f"data folder not found: {DATA} (the benchmark reads ../shared/data beside the repo, or "
                 "RETAIN_DATA)")
    wikipedia = wiki_paragraphs(DATA / "wikitext2-valid.txt"), wiki_paragraphs(DATA / "wikitext2-test.txt")
    if args.pair == "shakespeare-wikipedia":  # the other direction: a Shakespeare model, Wikipedia days
        return split_pair(speeches(DATA / "tinyshakespeare.txt"), None, wikipedia[0] + wikipedia[1], args)
    return split_pair(*wikipedia, speeches(DATA / "tinyshakespeare.txt"), args)


PAIRS = {"wikipedia-shakespeare": ("Wikipedia", "Shakespeare"), "python-docs-code": ("Python docs", "stdlib code"),
         "shakespeare-wikipedia": ("Shakespeare", "Wikipedia")}


# --- measuring ------------------------------------------------------------------------------------

def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def held_out(model_dir: Path, data: dict, seq_len: int) -> dict:
    """Old and new domain: mean per-item token loss, and nats per byte."""
    import torch

    from retain.core.quality.evaluation import score_texts
    from retain.core.learning.lm import IGNORE_INDEX
    from retain.core.storage.models import load_version
    from retain.core.storage.store import ModelStore

    lm = load_version(ModelStore(model_dir)).lm
    out = {}
    for domain in ("old", "new"):
        texts = data[f"{domain}_heldout"]
        losses = score_texts(lm, texts, seq_len)
        rows = lm.encode(texts, seq_len)
        tokens = torch.zeros(len(texts), dtype=torch.float64).index_add_(
            0, rows.owner, (rows.y != IGNORE_INDEX).sum(1).double())
        nats = float((losses * tokens).sum())
        out[domain] = float(losses.mean())
        out[f"{domain}_per_byte"] = nats / sum(len(t.encode("utf-8")) for t in texts)
    return out


def update(engine, model: Path, spec: str, auto: bool, budget: float | None) -> dict:
    """One update (``auto``: ``--auto`` at ``budget``, None: the recipe's ``tune.budget``)."""
    from retain.core.errors import UpdateRejected

    try:
        if auto:
            from retain.tune import auto_update

            return auto_update(engine, [spec], model, budget=budget)
        return engine.update([spec], model)
    except UpdateRejected as exc:  # the gate kept the model as it was, as it would for a user
        return exc.report or {"status": "rejected"}


def run_recipe(work: Path, name: str, overrides: list[str], auto: bool, files: dict, data: dict, args) -> dict:
    """The daily updates, then the large one, on a copy of the base model."""
    from retain.core.config import load_config
    from retain.core.engine import Engine

    model = work / "".join(c if c.isalnum() or c in "+-" else "_" for c in name)
    shutil.rmtree(model, ignore_errors=True)  # a kept --work folder's earlier run of it
    shutil.copytree(work / "base", model)
    engine = Engine(load_config(None, overrides))
    budget = None if any(o.startswith("tune.budget=") for o in overrides) else args.budget
    reports = {"days": [], "large": []}
    for day in files["days"]:
        reports["days"].append(update(engine, model, str(day), auto, budget))
    after_days = held_out(model, data, args.seq_len)
    reports["large"].append(update(engine, model, str(files["large"]), auto, budget))
    after_large = held_out(model, data, args.seq_len)

    def seconds(stage):
        return sum(r.get("timings", {}).get("train", 0.0) + _trials(r) for r in reports[stage])

    accepted = sum(r.get("status") == "accepted" for rs in reports.values() for r in rs)
    row = {"recipe": name, "overrides": overrides, "auto": auto, "days_seconds": seconds("days"),
           "large_seconds": seconds("large"), "after_days": after_days, "after_large": after_large,
           "accepted": accepted, "updates": len(reports["days"]) + 1,
           "settings": [r.get("settings") for rs in reports.values() for r in rs],
           "failed": [[v["validator"] for v in r.get("verdicts", []) if v["status"] == "fail"]
                      for rs in reports.values() for r in rs],
           "metrics": [r.get("metrics") for rs in reports.values() for r in rs],
           "early_stopping": [r.get("early_stopping") for rs in reports.values() for r in rs],
           "search": [r.get("search") for rs in reports.values() for r in rs if r.get("search")]}
    print(f"{name}: days {row['days_seconds']:.0f}s, large {row['large_seconds']:.0f}s, accepted "
          f"{accepted}/{row['updates']}, old {after_days['old']:.3f}/{after_large['old']:.3f}, "
          f"new {after_days['new']:.3f}/{after_large['new']:.3f}", flush=True)
    for search in row["search"][-1:]:  # --auto: the large update's trials, what each cost, the winner
        for t in search["trials"]:
            print(f"  {name} trial {t['number']}: {t['describe']}, {t['seconds']:.0f}s training, "
                  f"{t.get('cost_seconds', t['seconds']):.0f}s in all, new {t['new_loss_after']}, drift "
                  f"{t['drift_after']}, {'accepted' if t['accepted'] else 'rejected'}", flush=True)
        print(f"  {name} winner: trial {search.get('winner')} of {search['budget_seconds']:.0f}s budget, "
              f"{search['spent_seconds']:.0f}s spent; {search.get('note') or ''}", flush=True)
    return row


def _trials(report: dict) -> float:
    """--auto: what its trials cost (all of it: ``spent_seconds``), beyond the winner's training
    (already in timings.train)."""
    search = report.get("search") or {}
    return search.get("spent_seconds", 0.0) - report.get("timings", {}).get("train", 0.0) if search else 0.0


def retrain(work: Path, name: str, common: list[str], tokenizer: str, files: dict, data: dict, args) -> dict:
    from retain.core.config import load_config
    from retain.core.engine import Engine

    model = work / name
    if tokenizer == "keep":
        shutil.copytree(work / "base", model)  # the base's tokenizer, a fresh model
    report = Engine(load_config(None, [*common, f"full_training.tokenizer={tokenizer}"])).train(
        [str(files["base"]), *map(str, files["days"]), str(files["large"])], model)
    losses = held_out(model, data, args.seq_len)
    print(f"full retrain, {tokenizer} tokenizer: {report['timings']['train']:.0f}s, old {losses['old']:.3f}, "
          f"new {losses['new']:.3f}, new {losses['new_per_byte']:.4f} nats/byte", flush=True)
    return {"tokenizer": tokenizer, "seconds": report["timings"]["train"], "losses": losses,
            "lr": report["settings"]["learning_rate"]}


# --- the month: many small days, a retrain every RETRAIN_EVERY days --------------------------------

def checkpoints(days: int) -> list[int]:
    return sorted({d for d in MONTH_CHECKPOINTS if d <= days} | {days})


def run_month(work: Path, name: str, overrides: list[str], auto: bool, files: dict, data: dict, args) -> dict:
    """Every day an update on a copy of the base model; both domains measured at the checkpoints."""
    from retain.core.config import load_config
    from retain.core.engine import Engine

    model = work / "".join(c if c.isalnum() or c in "+-" else "_" for c in name)
    shutil.rmtree(model, ignore_errors=True)  # a kept --work folder's earlier run of it
    shutil.copytree(work / "base", model)
    engine = Engine(load_config(None, overrides))
    days, at = [], {}
    for number, day in enumerate(files["days"], 1):
        r = update(engine, model, str(day), auto, args.budget)
        m = r.get("metrics") or {}
        days.append({"status": r.get("status"), "seconds": r.get("timings", {}).get("train", 0.0) + _trials(r),
                     "work": token_steps(r),
                     "drift": m.get("drift_after"), "failed": [v["validator"] for v in r.get("verdicts", [])
                                                               if v["status"] == "fail"],
                     "epochs": len(r.get("epoch_losses") or []), "counts": r.get("counts") or {},
                     "pool": [m.get("new_pool_loss_before"), m.get("new_pool_loss_after")]})
        if number in checkpoints(len(files["days"])):
            at[number] = held_out(model, data, args.seq_len)
            print(f"  {name} day {number}: accepted {sum(d['status'] == 'accepted' for d in days)}/{number}, "
                  f"old {at[number]['old']:.3f}, new {at[number]['new']:.3f}, drift {days[-1]['drift']}",
                  flush=True)
    row = {"recipe": name, "overrides": overrides, "auto": auto, "days": days, "at": at,
           "accepted": sum(d["status"] == "accepted" for d in days), "seconds": sum(d["seconds"] for d in days)}
    print(f"{name}: {row['seconds']:.0f}s, accepted {row['accepted']}/{len(days)}", flush=True)
    return row


def token_steps(report: dict) -> int:
    """Token-steps of an update or a training (a rejected day trained too), as `retain status` weighs
    the updates since a full training. Counts what a wall clock on a shared machine cannot."""
    from retain.core.quality.retrain import token_steps as work

    return work(report.get("counts") or {}, len(report.get("epoch_losses") or []))


def retrain_days(n: int) -> list[int]:
    return sorted({d for d in range(RETRAIN_EVERY, n + 1, RETRAIN_EVERY)} | {n})


def retrain_upto(work: Path, common: list[str], files: dict, data: dict, args, day: int) -> dict:
    """A same-tokenizer retrain from scratch on the base and days 1 to ``day``."""
    from retain.core.config import load_config
    from retain.core.engine import Engine

    model = work / f"retrain-day{day}"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(work / "base", model)
    report = Engine(load_config(None, [*common, "full_training.tokenizer=keep"])).train(
        [str(files["base"]), *map(str, files["days"][:day])], model)
    losses = held_out(model, data, args.seq_len)
    shutil.rmtree(model, ignore_errors=True)
    print(f"retrain on base + days 1-{day}, keep tokenizer: {report['timings']['train']:.0f}s, "
          f"old {losses['old']:.3f}, new {losses['new']:.3f}", flush=True)
    return {"day": day, "tokenizer": "keep", "seconds": report["timings"]["train"], "losses": losses,
            "work": token_steps(report)}


def in_process(job: tuple):
    """A task in a process of its own (--jobs): ``(threads, function, *arguments)``."""
    import torch

    threads, task, *task_args = job
    torch.set_num_threads(threads)
    return task(*task_args)


def run_tasks(tasks: list[tuple], args) -> list:
    """``(function, *arguments)`` tasks, ``args.jobs`` at a time in processes of their own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if args.jobs <= 1:
        return [task(*rest) for task, *rest in tasks]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(in_process, [(args.threads, *task) for task in tasks]))


def run_month_tasks(work: Path, common: list[str], recipes: dict, files: dict, data: dict, args) -> tuple:
    """The retrains and the recipes' months, ``args.jobs`` at a time (each its own model directory)."""
    retrains = [] if args.no_retrain else [(retrain_upto, work, common, files, data, args, day)
                                           for day in retrain_days(len(files["days"]))[::-1]]
    tasks = retrains[:1]  # the longest first: the last retrain, the months, the shorter retrains
    for name, (chain, extra) in recipes.items():
        overrides = [*common, *(["fine_tuning.strategy=" + ",".join(chain)] if chain else []), *extra]
        tasks.append((run_month, work, name, overrides, chain is None, files, data, args))
    tasks += retrains[1:]
    results = run_tasks(tasks, args)
    retrains = sorted((r for r in results if "losses" in r), key=lambda r: r["day"])
    return retrains, [r for r in results if "recipe" in r]


def month_table(r: dict) -> str:
    b = r["base"]
    old_name, new_name = PAIRS[r["args"]["pair"]]
    retrains = {t["day"]: t for t in r["retrains"]}
    n = r["args"]["days"]
    at = checkpoints(n)
    new_at = [d for d in at if d in retrains]
    last = retrains.get(n)

    def pct(value: float | None, ref: float | None) -> str:  # "-": not measured (a run cut short)
        return "-" if value is None or ref is None else f"{value:.3f} ({100 * (value - ref) / ref:+.1f}%)"

    lines = [f"| recipe | accepted days | {old_name} (old) loss vs base, after day " + " / ".join(map(str, at))
             + f" | {new_name} (new) loss vs the retrain of that day, day " + " / ".join(map(str, new_at))
             + f" | train time, {n} days (vs the day-{n} retrain) | work, token-steps (vs the day-{n} retrain) "
             "| mean per-day drift of accepted days |",
             "|---|---|---|---|---|---|---|",
             f"| base model | - | {b['old']:.3f} | {b['new']:.3f} | {b['seconds']:.0f}s | - | - |"]
    for row in r["recipes"]:
        at_ = {int(k): v for k, v in row["at"].items()}
        old = " / ".join(pct(at_.get(d, {}).get("old"), b["old"]) for d in at)
        new = " / ".join(pct(at_.get(d, {}).get("new"), retrains[d]["losses"]["new"]) for d in new_at) or "-"
        share = f" ({row['seconds'] / last['seconds']:.2f}x)" if last else ""
        steps = sum(d.get("work", 0) for d in row["days"])
        steps_share = f" ({steps / last['work']:.2f}x)" if last and last.get("work") else ""
        ran = len(row["days"])
        accepted = f"{row['accepted']}/{n}" if ran == n else f"{row['accepted']}/{ran} (of {n} run)"
        lines.append(f"| {row['recipe']} | {accepted} | {old} | {new} | {row['seconds']:.0f}s{share} | "
                     f"{steps / 1e6:.2f}M{steps_share} | {per_day_drift(row['days'])} |")
    for t in r["retrains"]:
        lines.append(f"| retrain, keep tokenizer, base + days 1-{t['day']} | - | "
                     f"{pct(t['losses']['old'], b['old'])} | {t['losses']['new']:.3f} | {t['seconds']:.0f}s | "
                     f"{t.get('work', 0) / 1e6:.2f}M | - |")
    lines += ["", "Each day, accepted (A) or rejected (r):", ""]
    lines += [f"- {row['recipe']}: `{''.join('A' if d['status'] == 'accepted' else 'r' for d in row['days'])}`"
              + rejected_by(row['days']) for row in r["recipes"]]
    return "\n".join(lines)


def rejected_by(days: list[dict]) -> str:
    """Which validators failed the rejected days, and how often."""
    from collections import Counter

    failed = Counter(v for d in days if d["status"] != "accepted" for v in d.get("failed", []))
    return (" (rejected by " + ", ".join(f"{v} {n}x" for v, n in failed.most_common()) + ")") if failed else ""


def per_day_drift(days: list[dict]) -> str:
    """The mean change of the cumulative drift (the gate's, since the base) over the accepted days."""
    previous, steps = 0.0, []
    for d in days:
        if d["status"] == "accepted" and d["drift"] is not None:
            steps.append(d["drift"] - previous)
            previous = d["drift"]
    return f"{100 * sum(steps) / len(steps):+.2f}%" if steps else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="wikipedia-shakespeare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-items", type=int, default=1500)
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--daily-items", type=int, default=45)
    parser.add_argument("--large-items", type=int, default=600)
    parser.add_argument("--eval-items", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--budget", type=float, default=0.1, help="--auto's budget (share of the base's training)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. options.replay.share=0.25")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated, from: " + ", ".join([*RECIPES, *MORE]) + "; or NAME=STRATEGIES "
                        "with STRATEGIES joined by '+' (or auto: --auto), and KEY=VALUE overrides after ';' (a recipe of "
                        "your own); "
                        f"default: {', '.join(DEFAULT_RECIPES)}; with --days 10 or more: {', '.join(MONTH_RECIPES)}")
    parser.add_argument("--no-retrain", action="store_true", help="skip the full-retrain baselines")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a small model gains nothing from a second, busy core)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="the retrains and recipes in this many processes at once")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--work", type=Path, help="keep the base model and day files in this folder, and reuse "
                        "them when it has them (same data arguments): explore recipes without training the base again")
    args = parser.parse_args()
    month = args.days >= RETRAIN_EVERY  # a month of days: no large update, a retrain every RETRAIN_EVERY days
    if args.quick:
        args.base_items, args.base_epochs, args.large_items, args.eval_items = 200, 1, 60, 40
        args.days, args.daily_items = (RETRAIN_EVERY, 10) if month else (2, args.daily_items)
    if month:
        args.large_items = 0
    args.recipes = args.recipes or ",".join(MONTH_RECIPES if month else DEFAULT_RECIPES)

    import torch

    from retain.core.config import load_config
    from retain.core.engine import Engine

    torch.set_num_threads(args.threads)
    data = make_data(args)
    common = [f"seed={args.seed}", "device=cpu", f"full_training.epochs={args.base_epochs}",
              f"full_training.max_seq_length={args.seq_len}", f"fine_tuning.max_seq_length={args.seq_len}",
              "validation.eval_max_items=64", *args.set]
    recipes = parse_recipes(args.recipes)
    stateful = sorted({s for chain, _ in recipes.values() if chain for s in chain
                       if s not in ("naive", "low_lr", "rewarm", "average")})

    work = args.work or Path(tempfile.mkdtemp(prefix="retain-forgetting-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        files = {"base": write_jsonl(work / "base.jsonl", data["base"]),
                 "large": write_jsonl(work / "large.jsonl", data["large"] or data["days"][-1])}
        files["days"] = [write_jsonl(work / f"day{i + 1}.jsonl", d) for i, d in enumerate(data["days"])]

        # The base records what the strategies' first update needs (replay buffer, Fisher).
        base_cfg = [*common, f"full_training.record=[{','.join(stateful)}]"]
        if args.work and (work / "base.json").exists():  # trained by an earlier run on this folder
            base = json.loads((work / "base.json").read_text())
        else:
            report = Engine(load_config(None, base_cfg)).train([str(files["base"])], work / "base")
            base = {"seconds": report["timings"]["train"], **held_out(work / "base", data, args.seq_len)}
            (work / "base.json").write_text(json.dumps(base))
        print(f"base: {base['seconds']:.0f}s, held-out loss old {base['old']:.3f}, new {base['new']:.3f}", flush=True)

        if month:
            retrains, rows = run_month_tasks(work, common, recipes, files, data, args)
        else:
            tasks = [(retrain, work, f"retrain-{tok}", common, tok, files, data, args)
                     for tok in ([] if args.no_retrain else ("keep", "new"))]
            for name, (chain, extra) in recipes.items():
                overrides = [*common, *(["fine_tuning.strategy=" + ",".join(chain)] if chain else []), *extra]
                tasks.append((run_recipe, work, name, overrides, chain is None, files, data, args))
            results = run_tasks(tasks, args)  # --jobs: side by side, the retrains first (the longest)
            rows = [r for r in results if "recipe" in r]
            retrains = [r for r in results if "tokenizer" in r]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    paths = {k: str(getattr(args, k)) if getattr(args, k) else None for k in ("json", "work")}
    results = {"args": vars(args) | paths,
               "base": base, "recipes": rows, "retrains": retrains,
               "sizes": {k: (len(v) if k != "days" else [len(d) for d in v]) for k, v in data.items()}}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print()
    print(month_table(results) if month else table(results))


def parse_recipes(text: str) -> dict:
    out = {}
    for spec in text.split(","):
        spec = spec.strip()
        if "=" in spec.split(";")[0]:
            name, rest = spec.split("=", 1)
            chain, *extra = rest.split(";")
            out[name] = (None if chain == "auto" else chain.split("+"), extra)  # name=auto;...: --auto
        else:
            out[spec] = (RECIPES | MORE)[spec]
    return out


def table(r: dict) -> str:
    b = r["base"]
    keep = next((t for t in r["retrains"] if t["tokenizer"] == "keep"), None)
    old_name, new_name = PAIRS[r["args"]["pair"]]

    def pct(value: float, ref: float | None) -> str:
        return f"{value:.3f}" if ref is None else f"{value:.3f} ({100 * (value - ref) / ref:+.1f}%)"

    ref_new = keep["losses"]["new"] if keep else None
    ref_time = keep["seconds"] if keep else None
    days = r["args"]["days"]
    lines = [f"| recipe | {old_name} (old) loss vs base: after {days} days / after large | {new_name} (new) loss vs "
             f"retrain: after {days} days / after large | new nats/byte | train time: {days} days / large "
             "(vs retrain) | accepted |",
             "|---|---|---|---|---|---|",
             f"| base model | {b['old']:.3f} | {b['new']:.3f} | {b['new_per_byte']:.4f} | {b['seconds']:.0f}s | - |"]
    for row in r["recipes"]:
        d, g = row["after_days"], row["after_large"]
        share = (f" ({row['days_seconds'] / ref_time:.2f}x / {row['large_seconds'] / ref_time:.2f}x)"
                 if ref_time else "")
        lines.append(f"| {row['recipe']} | {pct(d['old'], b['old'])} / {pct(g['old'], b['old'])} | "
                     f"{pct(d['new'], ref_new)} / {pct(g['new'], ref_new)} | {g['new_per_byte']:.4f} | "
                     f"{row['days_seconds']:.0f}s / {row['large_seconds']:.0f}s{share} | "
                     f"{row['accepted']}/{row['updates']} |")
    for t in r["retrains"]:
        lines.append(f"| full retrain, {t['tokenizer']} tokenizer | - / {pct(t['losses']['old'], b['old'])} | "
                     f"- / {pct(t['losses']['new'], ref_new)} | {t['losses']['new_per_byte']:.4f} | "
                     f"{t['seconds']:.0f}s (once) | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
