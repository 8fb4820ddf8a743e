"""``retain compare``: anti-forgetting strategies side by side (``retain/compare/``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import app, handle_errors, _console, _emit, json_option, QuietOpt


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
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes (strategies run in parallel). With "
                             "--ray and a local Ray: the CPUs it gets."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run each strategy as a Ray task, on the cluster at "
                                      "ADDRESS (ray://host:10001, or auto), or on a local Ray started here "
                                      "without one. Needs retain\\[ray].", metavar="[ADDRESS]"),
    out: Path = typer.Option(Path("compare-results"), "--out", "-o", help="Where results.json, results.csv "
                             "and compare.png go."),
    seed: int = typer.Option(0, "--seed", help="One seed for every strategy: splits, init, batch order."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: the base model's "
                                          "own, so full_retrain rebuilds the same model; split-digits: the "
                                          "embedded one)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    gate: bool = typer.Option(False, "--gate", help="Text: let the validators reject updates as `retain update` "
                              "does (off: every update is kept, so each strategy's own effect is measured)."),
    json_out: bool = json_option("the results (R matrices, metrics, time and memory per strategy; "
                                 "also in --out's results.json)"),
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
                         overrides=list(set_), gate=gate, ray=ray)
    results = run_compare(req, console=console)
    paths = write_outputs(results, out)
    if console is not None:
        console.print(table(results))
        console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['plot']}")
    _emit(results, json_out)
