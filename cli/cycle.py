"""The update cycle's commands: ``train``, ``update``, ``import`` (a model in), ``export`` (a
version out), ``demo`` (the whole story). Each runs ``core/engine.py``'s cycle and prints its report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (app, handle_errors, _load, _text_field, _log_to, _console, _listeners, _emit, _emit_json,
                     _under_torchrun, _world, _device, ConfigOpt, DataOpt, ModelOpt, json_option, JsonOpt,
                     DeviceOpt, StrictOpt, TextFieldOpt, LogToOpt, AllowEmptyOpt, QuietOpt, NprocOpt)


@app.command()
@handle_errors
def train(
    ctx: typer.Context, data: List[str] = DataOpt, model: Path = ModelOpt, config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="full_training.learning_rate"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="full_training.epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="full_training.batch_size"),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="The strategies later updates will use (e.g. replay,ewc): they record "
        "what the first update needs from the base data (replay buffer, importances)."),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt, strict: bool = StrictOpt,
    quiet: bool = QuietOpt,
    force: bool = typer.Option(False, "--force", help="Train into a directory that holds other files "
                               "(refused otherwise: it is probably not where the model should go)."),
    nproc: Optional[int] = NprocOpt, allow_empty: bool = AllowEmptyOpt, text_field: Optional[str] = TextFieldOpt,
    log_to: Optional[str] = LogToOpt,
):
    """Full training from scratch on all data (the full_training block).

    Into a new or empty directory, or one holding a retain model (the new model becomes current;
    the old versions stay, `retain rollback` returns to them)."""
    from retain.core.engine import Engine

    sets = [*set_, *_text_field(text_field), *_log_to(log_to)]
    cfg = _load(config, sets, "full_training", lr, epochs, batch_size, strategy)
    _under_torchrun(ctx, nproc, device, cfg.device, model)
    engine = Engine(cfg, listeners=_listeners(json_out, quiet), device=_device(device), strict=strict,
                    world=_world(device, cfg.device), allow_empty=allow_empty)
    _emit(engine.train(data, model, force=force), json_out)


@app.command()
@handle_errors
def update(
    ctx: typer.Context, data: List[str] = DataOpt, model: Path = ModelOpt, config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="the update's learning rate, whatever the strategies: fine_tuning.learning_rate, rewarm's peak and naive's and lora's rates"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="fine_tuning.epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="fine_tuning.batch_size"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="e.g. low_lr or replay,ewc"),
    json_out: bool = JsonOpt, device: Optional[str] = DeviceOpt, strict: bool = StrictOpt,
    quiet: bool = QuietOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what the update would learn (items read, "
                                 "rejected, duplicates, held out) without loading the model's weights, "
                                 "training or writing anything; takes about a second. With --auto: "
                                 "also what the search would cover."),
    check: bool = typer.Option(False, "--check", help="Train and validate, but save nothing at all (no "
                               "version, no ledger rows, no rejects lines); exits 10 if the gate would "
                               "reject."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer to finish."),
    auto: bool = typer.Option(False, "--auto", help="Search the recipe (learning rate, epochs, replay share, "
                              "strategy mix from tune.strategies) within a time budget; each trial is judged "
                              "by the gate, the best accepted one becomes current. Needs retain\\[auto]."),
    budget: Optional[float] = typer.Option(None, "--budget", help="With --auto: the trials' training time, as "
                                           "a share of the last full training's (default tune.budget, 0.1)."),
    nproc: Optional[int] = NprocOpt,
    ray: Optional[str] = typer.Option(None, "--ray", help="With --auto: run each trial as a Ray task, on the "
                                      "cluster at ADDRESS (ray://host:10001, or auto), or on a local Ray started "
                                      "here without one. Needs retain\\[ray].", metavar="[ADDRESS]"),
    allow_empty: bool = AllowEmptyOpt, text_field: Optional[str] = TextFieldOpt, log_to: Optional[str] = LogToOpt,
    consolidate: bool = typer.Option(False, "--consolidate", help="Spend this update on bringing the old domain "
                                     "back inside the gate's drift budget: replay past items 4:1 "
                                     "(options.replay.consolidate_share) while learning the new data; the way "
                                     "on after a rejection for cumulative drift."),
    html_report: bool = typer.Option(False, "--report", help="Also write the update's page (retain report) "
                                     "into the new version's folder: versions/V/report.html."),
):
    """One fine-tuning cycle on new data only: load, collect, dedupe, preprocess, tokenize,
    fine-tune, validate, save.

    A candidate failing a validator is kept as a rejected version with its report, the current
    model stays, and the exit code is 10. Ends with `retain status`'s advice."""
    from retain.core.engine import Engine
    from retain.core.errors import ConfigError

    if dry_run and check:
        raise typer.BadParameter("--dry-run trains nothing, --check trains and validates: pick one")
    if budget is not None and not auto:
        raise ConfigError("--budget is the budget of --auto's search: add --auto")
    if ray is not None and not auto:
        raise typer.BadParameter("--ray runs --auto's trials as Ray tasks: add --auto", param_hint="--ray")
    if ray is not None:
        from retain.raytasks import require_ray

        require_ray()
    from retain.core.runtime.world import launched

    if (nproc not in (None, 1) or launched()) and (dry_run or check or auto):
        what = "--dry-run trains nothing" if dry_run else "--check runs in one process" if check else \
            "--auto runs its trials in processes of their own (tune.jobs, --ray)"
        raise typer.BadParameter(f"{what}: drop --nproc (or torchrun)", param_hint="--nproc")
    sets = [*set_, *_text_field(text_field), *_log_to(log_to)]
    cfg = _load(config, sets, "fine_tuning", lr, epochs, batch_size, strategy)
    if consolidate:
        from retain.strategies.replay import consolidation_overrides

        cfg = _load(config, [*sets, *consolidation_overrides(cfg.fine_tuning.strategy)], "fine_tuning", lr,
                    epochs, batch_size, None)
    _under_torchrun(ctx, nproc, device, cfg.device, model)
    listeners = _listeners(json_out, quiet)
    if html_report:  # retain/report/page.py: written once the version is saved
        from retain.report.page import PageWriter

        listeners.append(PageWriter(listeners[0].say if listeners else None))
    engine = Engine(cfg, listeners=listeners, device=_device(device), strict=strict,
                    world=_world(device, cfg.device), allow_empty=allow_empty)
    # The retrain advice ends the update; under --quiet nobody reads it (unless --json).
    # A rejection (exit 10) prints its report too, with the error object: handle_errors.
    advise = json_out or not quiet
    if auto:
        from retain.tune import auto_update

        on_trial = listeners[0].show_trial if listeners else None
        executor = None
        if ray is not None and not dry_run:  # each trial a Ray task; a local Ray gets tune.jobs CPUs
            from retain.raytasks import RayExecutor

            executor = RayExecutor(ray, num_cpus=max(1, cfg.tune.jobs))
        try:
            report = auto_update(engine, data, model, budget=budget, dry_run=dry_run, check=check,
                                 wait_lock=wait, advise=advise, on_trial=on_trial, executor=executor)
        finally:
            if executor is not None:
                executor.shutdown()
    else:
        report = engine.update(data, model, dry_run=dry_run, check=check, wait=wait, advise=advise)
    _emit(report, json_out)


@app.command("import")
@handle_errors
def import_(
    source: Path = typer.Argument(..., help="A transformers model directory, a .pth/.pt state dict, or a "
                                  ".safetensors file."),
    model: Path = ModelOpt,
    data: List[str] = typer.Option([], "--data", "-d", help="The base data the model was trained on (repeatable): "
                                   "its held-out share measures retention from the first update on, and the "
                                   "strategies record their state from it (replay buffer, Fisher)."),
    family: Optional[str] = typer.Option(None, "--family", help="model.family of a weights file: gpt (default) "
                                         "or python; a directory is hf."),
    factory: Optional[str] = typer.Option(None, "--factory", help="model.factory (python family): "
                                          "package.module:function returning your nn.Module."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="model.tokenizer of a weights file: a "
                                            "tokenizers JSON file or an HF tokenizer directory."),
    config: Optional[Path] = ConfigOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="The strategies later updates will use (e.g. replay,ewc): with --data they "
        "record what the first update needs from the base data."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="full_training.batch_size of the pass "
                                             "over --data"),
    json_out: bool = json_option("the import's report (source, counts, metrics, version)"), device: Optional[str] = DeviceOpt, strict: bool = StrictOpt,
    quiet: bool = QuietOpt, allow_empty: bool = AllowEmptyOpt, text_field: Optional[str] = TextFieldOpt,
    log_to: Optional[str] = LogToOpt,
):
    """Bring an existing model in as the first version of a model directory.

    Weights are read as safetensors, or with torch.load(weights_only=True): a file that needs
    arbitrary unpickling is refused (exit 5) and nothing in it runs. Without --data, `retain
    status` says retention is not yet measured against the base domain."""
    from retain.core.engine import Engine

    extra = [f"model.{key}={value}" for key, value in (("family", family), ("factory", factory),
                                                      ("tokenizer", tokenizer)) if value is not None]
    sets = [*set_, *extra, *_text_field(text_field), *_log_to(log_to)]
    cfg = _load(config, sets, "full_training", None, None, batch_size, strategy)
    engine = Engine(cfg, listeners=_listeners(json_out, quiet), device=_device(device), strict=strict,
                    allow_empty=allow_empty)
    _emit(engine.import_model(source, model, data), json_out)


@app.command()
@handle_errors
def export(
    model: Path = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="A new directory."),
    fmt: str = typer.Option("hf", "--format", help="hf: what transformers' from_pretrained loads."),
    version: Optional[str] = typer.Option(None, "--version", help="Version to export (default: current)."),
    json_out: bool = json_option("what was exported (version, family, adapter_merged, files)"),
):
    """Export a version for serving: --format hf writes a directory that
    AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load
    (the built-in gpt as GPT-2; LoRA adapters merged)."""
    from retain.core.storage.exports import export_version
    from retain.core.pluginmanager import Registry, default_plugin_manager
    from retain.core.storage.store import ModelStore

    result = export_version(ModelStore(model, read_only=True), version, fmt, out, Registry.of(default_plugin_manager()))
    if json_out:
        _emit_json(result)
    else:
        typer.echo(f"exported version {result['version']} ({result['family']}"
                   f"{', adapters merged' if result['adapter_merged'] else ''}) to {out} as {fmt}: "
                   f"{', '.join(result['files'])}")



@app.command()
@handle_errors
def demo(
    model: Path = typer.Option(Path("demo-model"), "--model", "-m", help="Where the demo model goes."),
    json_out: bool = json_option("the demo's reports (training, update, before/after)"), device: Optional[str] = DeviceOpt,
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
):
    """The whole story on text that ships with Python: train a base model, update it, compare."""
    from retain.demo import run_demo

    report = run_demo(model, console=_console(json_out), device=_device(device), overrides=set_)
    _emit(report, json_out)
