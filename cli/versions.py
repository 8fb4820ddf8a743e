"""The version store's commands: ``status`` (fine-tune or retrain?), ``history``, ``rollback``,
``validate``, ``generate``, ``prune``. All but rollback and prune only read."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .common import (app, handle_errors, _load, _console, _emit, _emit_json, _warning_line, _device,
                     ConfigOpt, ModelOpt, json_option, DeviceOpt)


@app.command()
@handle_errors
def status(
    model: Path = ModelOpt, config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    data: List[str] = typer.Option([], "--data", "-d", help="Pending new data, counted as new items "
                                   "(after dedupe and preprocessing) toward retrain.max_new_items."),
    json_out: bool = json_option("the assessment (retrain or not, summary, each check with its numbers)"),
    device: Optional[str] = DeviceOpt,
):
    """Fine-tune or fully retrain? Says which, and why.

    Recommends a full retrain, with the reason, when the new items since the last full training
    exceed retrain.max_new_items, the config explicitly asks for another architecture or tokenizer than the
    model's (what it does not set comes from the model's manifest), retention drifted past retrain.max_retention_drift since
    the last full training, the new data needs more than retrain.max_token_drift more tokens per byte than
    the base data (the vocabulary does not fit), or the gate rejected the last retrain.max_rejected_in_row
    updates."""
    from retain.core.quality.retrain import assess
    from retain.core.storage.store import ModelStore

    cfg = _load(config, set_, "fine_tuning", None, None, None)
    store = ModelStore(model, read_only=True)
    current = store.current()
    pending, text = _pending_items(data, store, cfg) if data else (0, None)
    damaged = store.damaged_shared_files(current)  # one damaged hard link breaks several versions
    for line in damaged:
        _warning_line(line)
    assessment = assess(store, cfg, pending_items=pending, device=_device(device), pending_text=text)
    if json_out:
        _emit_json({**assessment.to_json(), **({"damaged_files": damaged} if damaged else {})})
        return
    from retain.render import print_assessment  # rich: only for the table

    console = _console(False)
    m = store.manifest(current)
    console.print(f"[bold]{model}[/]: current version {current} ({m.get('kind')}, {m.get('created_at')}); "
                  f"last full training {assessment.last_full_training}; config "
                  f"{config or '<embedded config.yaml>'}" + (" with --set overrides" if set_ else ""),
                  highlight=False)
    print_assessment(console, assessment)


def _pending_items(data: List[str], store, cfg) -> tuple[int, Optional[dict]]:
    """How many items of ``data`` an update would learn (collected, preprocessed, deduped against
    the ledger), and their tokens and bytes under the current tokenizer: the cycle's plan, as
    ``update --dry-run`` runs it (``cycle.plan``: load and ingest). Reads only."""
    from retain.core import cycle
    from retain.core.engine import Engine

    # no listeners: the plan's steps and warnings are not printed here; data with no usable item
    # is 0 pending items, as it always was (status reports, an update is what fails on it)
    setup = Engine(cfg, allow_empty=True).setup
    with contextlib.closing(store.ledger):  # read: no -wal or -shm left behind, whatever ends the process
        items = cycle.Ingested.of(cycle.plan(setup, data, store)).learned  # the hold-out is split off later
    if not items:
        return 0, None
    from retain.core.storage.models import load_version
    from retain.core.data.vocabulary import measure_texts

    return len(items), measure_texts(load_version(store, registry=setup.registry).lm, (it.text for it in items))


@app.command()
@handle_errors
def history(model: Path = ModelOpt,
            json_out: bool = json_option("the list of versions (parent, kind, status, items learned, "
                                         "losses, verdicts, dates)", "array"),
            plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the versions into this file, "
                                                ".png or .svg (by the extension): old- and new-domain held-out "
                                                "loss, drift since the last full training, new items; rejections, "
                                                "full trainings, rollbacks and the thresholds marked.")):
    """Every version: parent, date, kind, items learned, losses, accepted or rejected.

    * marks the current version."""
    from retain.core.storage.versions import history as version_history
    from retain.core.storage.store import ModelStore

    rows = version_history(ModelStore(model, read_only=True))
    if plot is not None:  # retain/report/plots.py; an unknown extension is a usage error (exit 2)
        from retain.report.plots import write_history_plot

        write_history_plot(ModelStore(model, read_only=True), plot)
    if json_out:
        _emit_json(rows)
        return
    from retain.render import history_table

    _console(False).print(history_table(rows, f"{model}: versions (* current)"))


@app.command()
@handle_errors
def report(
    model: Path = ModelOpt,
    version: Optional[str] = typer.Option(None, "--version", help="Version to report (default: current)."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write."),
):
    """One self-contained HTML page about a version's update (no network needed to view it).

    The eight steps with their counts, the skipped duplicates and what they matched, the rejected
    records with their reasons, each validator's verdict and numbers, losses before and after,
    the gate's generation samples before and after, the loss per epoch, the retrain advice.
    Reads only."""
    from retain.core.storage.store import ModelStore
    from retain.report.page import write_page

    typer.echo(f"wrote {write_page(ModelStore(model, read_only=True), version, out)}")


@app.command()
@handle_errors
def rollback(
    model: Path = ModelOpt,
    version: Optional[str] = typer.Argument(None, help="Version to make current (default: the parent "
                                            "of current). Only accepted, unpruned versions."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
    json_out: bool = json_option("the previous and the new current version"),
):
    """Make an earlier (or any accepted) version current.

    One atomic switch of CURRENT, under the lock, after checking the version's checksums.
    Nothing is deleted."""
    from retain.core.storage.versions import rollback as switch
    from retain.core.storage.store import ModelStore

    switched = switch(ModelStore(model), version, wait=wait, warn=_warning_line)
    before, after = switched.previous, switched.current
    if json_out:
        _emit_json({"previous": before, "current": after,
                    **({"repaired": switched.repaired} if switched.repaired else {})})
    elif switched.repaired:
        typer.echo(f"repaired CURRENT ({switched.repaired.split('; make an accepted')[0]}): "
                   f"version {after} is current")
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
    json_out: bool = json_option("the result (metrics, each verdict, next steps, passed)"),
    device: Optional[str] = DeviceOpt,
):
    """Run the validators on demand: a version against its parent.

    Uses the retention items and --data as new held-out items. Writes nothing. Exits 10 if a
    validator fails."""
    from retain.core.engine import Engine
    from retain.core.errors import UpdateRejected
    from retain.core.storage.versions import validate_version
    from retain.core.storage.store import ModelStore

    cfg = _load(config, set_, "fine_tuning", None, None, None)
    result = validate_version(Engine(cfg, device=_device(device)), ModelStore(model, read_only=True), version, data)
    if not json_out:
        from retain.render import print_validation

        print_validation(_console(False), result)
    if not result["passed"]:  # exit 10; under --json the result is printed with the error object
        failed = ", ".join(v["validator"] for v in result["verdicts"] if v["status"] == "fail")
        raise UpdateRejected(f"version {result['version']} fails the quality gate (failed: {failed})", result)
    _emit(result, json_out)


@app.command()
@handle_errors
def generate(
    prompts: List[str] = typer.Argument(..., metavar="PROMPT", help="Prompts to continue, one sample each."),
    model: Path = ModelOpt,
    version: Optional[str] = typer.Option(None, "--version", help="Version to sample (default: current). A "
                                          "rejected version may be sampled (with a note); a pruned one has no weights."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Tokens to generate per prompt "
                                       "(fewer when the model's context is shorter)."),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="Sampling temperature; 0 is greedy "
                                      "(the most likely token each step, the same text whatever the seed)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same text."),
    json_out: bool = json_option("the samples (version, status, seed, temperature, max_new_tokens, "
                                 "samples: [{prompt, text}])"),
    device: Optional[str] = DeviceOpt,
):
    """Sample text from a version: one continuation per prompt.

    Works for every model family (adapter-only versions load the version they build on).
    Reads only: no lock, nothing written, works on a read-only model directory."""
    from retain.core.storage.models import resolve_device
    from retain.core.storage.store import ModelStore
    from retain.core.storage.versions import sample_version

    result = sample_version(ModelStore(model, read_only=True), version, prompts, max_new_tokens=max_new_tokens,
                            temperature=temperature, seed=seed, device=resolve_device(_device(device)))
    if result.get("note"):
        _warning_line(result["note"])
    if json_out:
        _emit_json(result)
        return
    for i, sample in enumerate(result["samples"]):
        typer.echo(("\n" if i else "") + sample["prompt"] + sample["text"])


@app.command()
@handle_errors
def prune(
    model: Path = ModelOpt,
    keep: int = typer.Option(..., "--keep", min=1, help="How many of the newest accepted versions to keep "
                             "whole (at least 1)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing."),
    keep_full_trainings: Optional[bool] = typer.Option(
        None, "--keep-full-trainings/--no-keep-full-trainings",
        help="Keep every accepted full training whole too (default: the config's prune.keep_full_trainings, on)."),
    config: Optional[Path] = ConfigOpt,
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
    json_out: bool = json_option("the plan (versions kept whole, kept as stubs, deleted) and dry_run"),
):
    """Keep the last N accepted versions of the current chain (and current); stub or delete the rest.

    The last N accepted versions along the current chain (what `retain rollback` walks back to;
    a branch a rollback abandoned does not count) and current stay whole. Their ancestors, and the streak of
    rejected versions after the newest accepted one, stay as stubs without weights: the ledger
    (dedupe), the retention items and the drift baseline need them. The rest is deleted.
    Config `prune.keep_last` (and `prune.keep_full_trainings`) applies this after every update."""
    from retain.core.config import load_config
    from retain.core.storage.versions import prune as prune_versions
    from retain.core.storage.store import ModelStore

    if keep_full_trainings is None:
        keep_full_trainings = load_config(config).prune.keep_full_trainings
    plan = prune_versions(ModelStore(model), keep, writes=not dry_run, wait=wait,
                          keep_full_trainings=keep_full_trainings, warn=_warning_line)
    if json_out:
        _emit_json({**plan.to_json(), "dry_run": dry_run})
        return
    verb = "would " if dry_run else ""
    typer.echo(f"kept whole: {', '.join(plan.keep) or '-'}")
    typer.echo(f"{verb}keep as stubs (weights removed): {', '.join(plan.stub) or '-'}")
    typer.echo(f"{verb}delete: {', '.join(plan.delete) or '-'}")
