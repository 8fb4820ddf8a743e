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
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt, strict: bool = StrictOpt,
    quiet: bool = QuietOpt,
):
    """Full training from scratch on all data (the full_training block)."""
    from retain.core.engine import Engine, Output

    cfg = _load(config, set_, "full_training", lr, epochs, batch_size)
    engine = Engine(cfg, output=Output(_console(json_out, quiet)), device=_device(device), strict=strict)
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
    dry_run: bool = typer.Option(False, "--dry-run", help="Everything but the save."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
):
    """One fine-tuning cycle on new data only: load, collect, dedupe, preprocess, tokenize,
    fine-tune, validate, save."""
    from retain.core.engine import Engine, Output

    cfg = _load(config, set_, "fine_tuning", lr, epochs, batch_size, strategy)
    engine = Engine(cfg, output=Output(_console(json_out, quiet)), device=_device(device), strict=strict)
    _emit(engine.update(data, model, dry_run=dry_run, wait=wait), json_out)


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
    from retain.core.demo import run_demo

    report = run_demo(model, console=_console(json_out), device=_device(device), overrides=set_)
    _emit(report, json_out)


@app.command()
@handle_errors
def plugins(json_out: bool = JsonOpt):
    """List every registered plugin, its package and the hooks it implements."""
    from retain.core.pluginmanager import describe_plugins, make_plugin_manager

    rows = describe_plugins(make_plugin_manager())
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
    from retain.core.pluginmanager import Registry, make_plugin_manager

    regs = Registry(make_plugin_manager()).by_kind["strategies"].values()
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
                                        "and full_retrain (retrain from scratch after each experience)."),
    data: List[str] = typer.Option([], "--data", "-d", help="New data: one source or folder per experience "
                                   "(repeatable), or all of it with --daily."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Base model every strategy starts from."),
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
    config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results object as JSON."),
    quiet: bool = QuietOpt,
):
    """Compare anti-forgetting strategies side by side on one stream of experiences:
    the R matrix, average final metric, forgetting, BWT, FWT, time and peak memory."""
    from retain.core.compare import CompareRequest, run_compare
    from retain.core.compare_report import table, write_outputs

    console = _console(json_out, quiet)
    req = CompareRequest(strategies=strategies, scenario=scenario, data=list(data), model=model,
                         base_data=list(base_data), daily=daily, dup_share=dup_share, days=days, setting=setting,
                         test_fraction=test_fraction, seed=seed, jobs=jobs, epochs=epochs, config=config,
                         overrides=list(set_))
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
