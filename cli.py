"""The ``retain`` command line. User errors become one red line and an exit code here, only here.

Start-up stays fast: torch and avalanche-lib are imported inside the commands
that train or evaluate, never at module level.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from retain.core.errors import EXIT_CODES, RetainError

EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."

app = typer.Typer(
    name="retain",
    help="Update an existing model with new data only, without forgetting.\n\n" + EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(json_mode: bool, quiet: bool = False):
    from rich.console import Console

    if quiet:
        return None
    # In --json mode the JSON object alone goes to stdout; human lines go to stderr.
    return Console(stderr=json_mode, highlight=False)


def _listeners(json_mode: bool, quiet: bool) -> list:
    """The renderer of the engine's events, unless --quiet."""
    console = _console(json_mode, quiet)
    if console is None:
        return []
    from retain.render import ConsoleRenderer

    return [ConsoleRenderer(console)]


def handle_errors(func):
    """Turn a RetainError into one red line on stderr and its documented exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RetainError as exc:
            from rich.console import Console

            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: the current model is unchanged", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _load(config: Optional[Path], sets: List[str], block: str, lr: Optional[float],
          epochs: Optional[int], batch_size: Optional[int], strategy: Optional[str] = None):
    from retain.core.config import load_config

    overrides = list(sets)
    if lr is not None:
        overrides.append(f"{block}.learning_rate={lr}")
    if epochs is not None:
        overrides.append(f"{block}.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"{block}.batch_size={batch_size}")
    if strategy is not None:
        overrides.append(f"fine_tuning.strategy={strategy}")
    return load_config(config, overrides)


def _emit(report: dict, json_mode: bool) -> None:
    if json_mode:
        typer.echo(json.dumps(report, default=str))


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: the embedded config.yaml).")
DataOpt = typer.Option(..., "--data", "-d", help="Input: a file, a folder, or NAME:LOCATION (repeatable).")
ModelOpt = typer.Option(..., "--model", "-m", help="Model directory.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object (counts, losses, metrics, version, timings).")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda (default: config 'device').")
StrictOpt = typer.Option(False, "--strict", help="Any rejected input record is fatal.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (and --json).")


@app.command()
@handle_errors
def train(
    data: List[str] = DataOpt, model: Path = ModelOpt, config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="full_training.learning_rate"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="full_training.epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="full_training.batch_size"),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="The strategies later updates will use (e.g. replay,ewc): they record "
        "what the first update needs from the base data (replay buffer, importances)."),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt, strict: bool = StrictOpt,
    quiet: bool = QuietOpt,
):
    """Full training from scratch on all data (the full_training block)."""
    from retain.core.engine import Engine

    cfg = _load(config, set_, "full_training", lr, epochs, batch_size, strategy)
    engine = Engine(cfg, listeners=_listeners(json_out, quiet), device=_device(device), strict=strict)
    _emit(engine.train(data, model), json_out)


@app.command()
@handle_errors
def update(
    data: List[str] = DataOpt, model: Path = ModelOpt, config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="fine_tuning.learning_rate"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="fine_tuning.epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="fine_tuning.batch_size"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="e.g. low_lr or replay,ewc"),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt, strict: bool = StrictOpt,
    quiet: bool = QuietOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Everything but the save, and nothing is "
                                 "written at all (no version, no ledger rows, no rejects lines); "
                                 "still exits 10 if the gate would reject."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
    auto: bool = typer.Option(False, "--auto", help="Search the recipe (learning rate, epochs, replay share, "
                              "strategy mix from tune.strategies) within a time budget; each trial is judged "
                              "by the gate, the best accepted one becomes current. Needs retain[auto]."),
    budget: Optional[float] = typer.Option(None, "--budget", help="With --auto: the trials' training time, as "
                                           "a share of the last full training's (default tune.budget, 0.1)."),
):
    """One fine-tuning cycle on new data only: load, collect, dedupe, preprocess, tokenize,
    fine-tune, validate, save.

    A candidate failing a validator is kept as a rejected version with its report, the current
    model stays, and the exit code is 10. Ends with `retain status`'s advice."""
    from retain.core.engine import Engine
    from retain.core.errors import ConfigError, UpdateRejected

    if budget is not None and not auto:
        raise ConfigError("--budget is the budget of --auto's search: add --auto")
    cfg = _load(config, set_, "fine_tuning", lr, epochs, batch_size, strategy)
    listeners = _listeners(json_out, quiet)
    engine = Engine(cfg, listeners=listeners, device=_device(device), strict=strict)
    # The retrain advice ends the update; under --quiet nobody reads it (unless --json).
    advise = json_out or not quiet
    try:
        if auto:
            from retain.tune import auto_update

            on_trial = listeners[0].show_trial if listeners else None
            report = auto_update(engine, data, model, budget=budget, dry_run=dry_run, wait_lock=wait,
                                 advise=advise, on_trial=on_trial)
        else:
            report = engine.update(data, model, dry_run=dry_run, wait=wait, advise=advise)
    except UpdateRejected as exc:
        _emit(exc.report or {}, json_out)
        raise
    _emit(report, json_out)


def _device(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ("auto", "cpu", "cuda"):
        from retain.core.errors import ConfigError
        raise ConfigError(f"--device must be auto, cpu or cuda, got {value!r}")
    return value


@app.command()
@handle_errors
def demo(
    model: Path = typer.Option(Path("demo-model"), "--model", "-m", help="Where the demo model goes."),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
):
    """The whole story on text that ships with Python: train a base model, update it, compare."""
    from retain.demo import run_demo

    report = run_demo(model, console=_console(json_out), device=_device(device), overrides=set_)
    _emit(report, json_out)


@app.command()
@handle_errors
def plugins(json_out: bool = JsonOpt):
    """List every registered plugin, its package and the hooks it implements."""
    from retain.core.pluginmanager import default_plugin_manager, describe_plugins

    rows = describe_plugins(default_plugin_manager())
    if json_out:
        typer.echo(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="retain plugins")
    for col in ("plugin", "package", "hooks", "provides"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["package"], ", ".join(r["hooks"]), ", ".join(r["provides"]))
    _console(False).print(table)


@app.command()
@handle_errors
def strategies(json_out: bool = JsonOpt):
    """List the anti-forgetting strategies with their options and defaults."""
    from retain.core.pluginmanager import Registry, default_plugin_manager

    regs = Registry.of(default_plugin_manager()).by_kind["strategies"].values()
    rows = [{"name": r.name, "description": r.description, "options": r.option_defaults(),
             "plugin": r.plugin} for r in sorted(regs, key=lambda r: r.name)]
    if json_out:
        typer.echo(json.dumps(rows, default=str))
        return
    from rich.table import Table

    table = Table(title="strategies (fine_tuning.strategy, or --strategy a,b)")
    for col in ("name", "description", "options (defaults)"):
        table.add_column(col)
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        table.add_row(r["name"], r["description"], opts)
    _console(False).print(table)


@app.command()
@handle_errors
def compare(
    strategies: str = typer.Option(..., "--strategies", "-s",
                                   help="Comma-separated: registered strategies, compositions like naive+ewc, "
                                        "and full_retrain (retrain from scratch after each experience; full_retrain_keep: "
                                        "keeping the base model's tokenizer)."),
    data: List[str] = typer.Option([], "--data", "-d", help="New data: one source or folder per experience "
                                   "(repeatable), or all of it with --daily."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Base model every strategy starts from "
                                         "(trained with `retain train --strategy replay,ewc,...`, stateful "
                                         "strategies start with the base's state)."),
    base_data: List[str] = typer.Option([], "--base-data", help="The base model's training data: what "
                                        "full_retrain retrains on, and old items --daily may repeat."),
    scenario: str = typer.Option("text", "--scenario", help="text | split-digits (scikit-learn digits, 5 x 2 classes)."),
    daily: Optional[int] = typer.Option(None, "--daily", help="Split the new data into days of N items."),
    dup_share: float = typer.Option(0.25, "--dup-share", help="With --daily: share of each day that repeats "
                                    "items already seen."),
    days: Optional[int] = typer.Option(None, "--days", help="With --daily: at most this many days."),
    setting: str = typer.Option("class", "--setting", help="split-digits: class | task incremental."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Held-out share of each "
                                                  "experience (default 0.2 text, 0.3 split-digits)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per experience (fine_tuning.epochs; "
                                         "split-digits: also full_retrain's)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes (strategies run in parallel)."),
    out: Path = typer.Option(Path("compare-results"), "--out", "-o", help="Where results.json, results.csv "
                             "and compare.png go."),
    seed: int = typer.Option(0, "--seed", help="One seed for every strategy: splits, init, batch order."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: the base model's "
                                          "own, so full_retrain rebuilds the same model; split-digits: the "
                                          "embedded one)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    gate: bool = typer.Option(False, "--gate", help="Text: let the validators reject updates as `retain update` "
                              "does (off: every update is kept, so each strategy's own effect is measured)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results object as JSON."),
    quiet: bool = QuietOpt,
):
    """Compare anti-forgetting strategies side by side on one stream of experiences:
    the R matrix, average final metric, forgetting, BWT, FWT, time and peak memory."""
    from retain.compare import CompareRequest, run_compare
    from retain.compare.report import table, write_outputs

    console = _console(json_out, quiet)
    req = CompareRequest(strategies=strategies, scenario=scenario, data=list(data), model=model,
                         base_data=list(base_data), daily=daily, dup_share=dup_share, days=days, setting=setting,
                         test_fraction=test_fraction, seed=seed, jobs=jobs, epochs=epochs, config=config,
                         overrides=list(set_), gate=gate)
    results = run_compare(req, console=console)
    paths = write_outputs(results, out)
    if console is not None:
        console.print(table(results))
        console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['plot']}")
    _emit(results, json_out)


@app.command("config")
@handle_errors
def show_config(config: Optional[Path] = ConfigOpt,
                set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable).")):
    """Print the effective configuration (after overrides), as YAML."""
    import yaml

    from retain.core.config import load_config

    typer.echo(yaml.safe_dump(load_config(config, set_).to_dict(), sort_keys=False))


# --- the registry: status, history, rollback, validate, prune --------------------------------

@app.command()
@handle_errors
def status(
    model: Path = ModelOpt, config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    data: List[str] = typer.Option([], "--data", "-d", help="Pending new data, counted as new items "
                                   "(after dedupe and preprocessing) toward retrain.max_new_items."),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt,
):
    """Fine-tune or fully retrain? Says which, and why.

    Recommends a full retrain, with the reason, when the new items since the last full training
    exceed retrain.max_new_items, the config's architecture or tokenizer differs from the model's, retention drifted past retrain.max_retention_drift since
    the last full training, the new data needs more than retrain.max_token_drift more tokens per byte than
    the base data (the vocabulary does not fit), or the gate rejected the last retrain.max_rejected_in_row
    updates."""
    from retain.core.retrain import assess
    from retain.core.store import ModelStore
    from retain.render import print_assessment

    cfg = _load(config, set_, "fine_tuning", None, None, None)
    store = ModelStore(model)
    current = store.current()
    pending, text = _pending_items(data, store, cfg) if data else (0, None)
    assessment = assess(store, cfg, pending_items=pending, device=_device(device), pending_text=text)
    if json_out:
        typer.echo(json.dumps(assessment.to_json(), default=str))
        return
    console = _console(False)
    m = store.manifest(current)
    console.print(f"[bold]{model}[/]: current version {current} ({m.get('kind')}, {m.get('created_at')}); "
                  f"last full training {assessment.last_full_training}; config "
                  f"{config or '<embedded config.yaml>'}" + (" with --set overrides" if set_ else ""),
                  highlight=False)
    print_assessment(console, assessment)


def _pending_items(data: List[str], store, cfg) -> tuple[int, Optional[dict]]:
    """How many items of ``data`` an update would learn (collected, deduped against the
    ledger, preprocessed), and their tokens and bytes under the current tokenizer. Reads only."""
    from retain.core.ingest import build_dedupers, collect, dedupe, preprocess
    from retain.core.known import KnownItems
    from retain.core.pluginmanager import Registry, default_plugin_manager

    registry = Registry.of(default_plugin_manager())
    items, _ = collect(data, registry, cfg)
    items, _ = preprocess(items, registry, cfg)
    # The same view of the ledger the engine gives dedupers (minhash needs more than a lookup).
    items, _ = dedupe(items, build_dedupers(registry, cfg), KnownItems(store.ledger, store.chain()))
    if not items:
        return 0, None
    from retain.core.models import load_version
    from retain.core.vocabulary import measure_texts

    return len(items), measure_texts(load_version(store, registry=registry).lm, [it.text for it in items])


@app.command()
@handle_errors
def history(model: Path = ModelOpt, json_out: bool = JsonOpt):
    """Every version: parent, date, kind, items learned, losses, accepted or rejected.

    * marks the current version."""
    from retain.core.registry import history as version_history
    from retain.core.store import ModelStore

    rows = version_history(ModelStore(model))
    if json_out:
        typer.echo(json.dumps(rows, default=str))
        return
    from rich import box
    from rich.table import Table

    def loss(before, after):
        return "-" if before is None or after is None else f"{before:.3f} → {after:.3f}"

    table = Table(title=f"{model}: versions (* current)", box=box.SIMPLE_HEAD)
    for col in ("version", "parent", "kind"):
        table.add_column(col, no_wrap=True)
    table.add_column("gate", min_width=10)
    for col in ("lr", "learned"):
        table.add_column(col, no_wrap=True)
    table.add_column("recipe", min_width=8)
    for col in ("old items' loss", "new items' loss"):
        table.add_column(col, min_width=7)
    table.add_column("created (UTC)", min_width=10)
    for r in rows:
        if r["status"] == "unreadable":
            table.add_row(r["version"], "", "", f"[red]unreadable[/] {r['error']}", "", "", "", "", "", "")
            continue
        m = r["metrics"]
        status = {"accepted": "[green]accepted[/]", "rejected": "[red]rejected[/]"}.get(r["status"], r["status"])
        if r["failed"]:
            status += f": {', '.join(r['failed'])}"
        elif r["warned"]:
            status += f" (warn: {', '.join(r['warned'])})"
        if r["pruned"]:
            status += " [dim](pruned)[/]"
        kind = {"full_training": "full", "fine_tuning": "update"}.get(r["kind"], r["kind"] or "")
        table.add_row(("*" if r["current"] else "") + r["version"], r["parent"] or "-", kind, status,
                      f"{r['learning_rate']:g}" if r["learning_rate"] is not None else "-",
                      str(r["items_learned"]), _recipe(r), loss(m["retention_loss_before"], m["retention_loss_after"]),
                      loss(m["new_loss_before"], m["new_loss_after"]),
                      (r["created_at"] or "")[:16].replace("T", " "))
    _console(False).print(table)


def _recipe(row: dict) -> str:
    """The strategies a version trained with; for --auto, the recipe that won its search."""
    search = row.get("search")
    if search:
        return f"auto ({search['trials']} trials): {search['describe']}"
    return ",".join(row.get("strategies") or []) or "-"


@app.command()
@handle_errors
def rollback(
    model: Path = ModelOpt,
    version: Optional[str] = typer.Argument(None, help="Version to make current (default: the parent "
                                            "of current). Only accepted, unpruned versions."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
    json_out: bool = JsonOpt,
):
    """Make an earlier (or any accepted) version current.

    One atomic switch of CURRENT, under the lock, after checking the version's checksums.
    Nothing is deleted."""
    from retain.core.registry import rollback as switch
    from retain.core.store import ModelStore

    before, after = switch(ModelStore(model), version, wait=wait)
    if json_out:
        typer.echo(json.dumps({"previous": before, "current": after}))
    elif before == after:
        typer.echo(f"version {after} is already current")
    else:
        typer.echo(f"current: {before} -> {after}")


@app.command()
@handle_errors
def validate(
    model: Path = ModelOpt,
    version: Optional[str] = typer.Option(None, "--version", help="Version to check (default: current)."),
    data: List[str] = typer.Option(..., "--data", "-d", help="Items the version did NOT train on, used "
                                   "as held-out new items."),
    config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt,
):
    """Run the validators on demand: a version against its parent.

    Uses the retention items and --data as new held-out items. Writes nothing. Exits 10 if a
    validator fails."""
    from retain.core.engine import Engine
    from retain.core.errors import UpdateRejected
    from retain.core.registry import validate_version
    from retain.core.store import ModelStore

    cfg = _load(config, set_, "fine_tuning", None, None, None)
    result = validate_version(Engine(cfg, device=_device(device)), ModelStore(model), version, data)
    if json_out:
        typer.echo(json.dumps(result, default=str))
    else:
        console = _console(False)
        m = result["metrics"]
        console.print(f"version {result['version']} vs its parent {result['parent']}: old items "
                      f"({m['retention_items']}) loss {m['retention_loss_before']:.4f} -> "
                      f"{m['retention_loss_after']:.4f}; new items ({m['new_holdout_items']}) loss "
                      f"{m['new_loss_before']:.4f} -> {m['new_loss_after']:.4f}", highlight=False)
        if result["already_learned"]:
            console.print(f"[yellow]warning:[/] {result['already_learned']} of the {result['items']} items "
                          "were trained on or held out by this version's chain: not a fair held-out test")
        for v in result["verdicts"]:
            color = {"pass": "green", "warn": "yellow", "fail": "red"}[v["status"]]
            console.print(f"  [{color}]{v['status']}[/] {v['validator']}: {v['reason']}", highlight=False)
        for step in result["next_steps"]:
            console.print(f"  [bold]next step[/]: {step['step']}", highlight=False)
    if not result["passed"]:
        raise typer.Exit(UpdateRejected.exit_code)


@app.command()
@handle_errors
def prune(
    model: Path = ModelOpt,
    keep: int = typer.Option(..., "--keep", help="How many of the newest accepted versions to keep whole."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
    json_out: bool = JsonOpt,
):
    """Keep the last N accepted versions (and current); stub or delete the rest.

    The last N accepted versions and current stay whole. Their ancestors, and the streak of
    rejected versions after the newest accepted one, stay as stubs without weights: the ledger
    (dedupe), the retention items and the drift baseline need them. The rest is deleted."""
    from retain.core.registry import prune as prune_versions
    from retain.core.store import ModelStore

    plan = prune_versions(ModelStore(model), keep, dry_run=dry_run, wait=wait)
    if json_out:
        typer.echo(json.dumps({**plan.to_json(), "dry_run": dry_run}))
        return
    verb = "would " if dry_run else ""
    typer.echo(f"kept whole: {', '.join(plan.keep) or '-'}")
    typer.echo(f"{verb}keep as stubs (weights removed): {', '.join(plan.stub) or '-'}")
    typer.echo(f"{verb}delete: {', '.join(plan.delete) or '-'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
