"""The ``retain`` command line. User errors become one red line and an exit code here, only here.

Start-up stays fast: torch and avalanche-lib are imported inside the commands
that train or evaluate, never at module level. What every command shares lives
here, so a new command gets it by being an ``@app.command()`` with
``@handle_errors``: the exit codes and the ``--json`` error object
(``handle_errors``, ``RetainGroup``), the console (``_console``: whole lines in
logs, tables that fit the terminal), ``-h``/``--help``, help text that reads
as written, Ctrl-C (``retain/launch.py``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from retain import __version__
from retain.core.errors import EXIT_CODES, USAGE, RetainError, error_object

EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."


def _reflow(text: Optional[str]) -> Optional[str]:
    """Docstring paragraphs as one line each: help output wraps them at the terminal's width,
    instead of breaking where the source line ended."""
    if not text:
        return text
    return "\n\n".join(" ".join(line.strip() for line in para.splitlines())
                        for para in inspect.cleandoc(text).split("\n\n"))


def _untyped_flags(params) -> None:
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""  # typer would label an option that takes no value "<bool>"


class RetainCommand(TyperCommand):
    """A command of the group (``RetainGroup`` makes every command one)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _untyped_flags([option] if option is not None else [])
        return option


def _ray_address(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional ADDRESS: given alone, it means a local Ray ("local")."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("local")
    return out


class RetainGroup(TyperGroup):
    """The ``retain`` group: what every command inherits, whoever adds it.

    - Help reads as written: paragraphs reflowed, flags not labelled ``<bool>``, ``-h``.
    - A command-line usage error (exit 2) is also the JSON error object on stdout under ``--json``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _untyped_flags(self.params)
        for command in self.commands.values():
            if type(command) is TyperCommand:
                command.__class__ = RetainCommand
            command.help = _reflow(command.help)
            for param in command.params:
                param.help = _reflow(getattr(param, "help", None))
            _untyped_flags(command.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _untyped_flags([option] if option is not None else [])
        return option

    def main(self, args=None, *rest, **kwargs):
        argv = _ray_address(sys.argv[1:] if args is None else list(args))
        self.argv = argv  # --nproc runs the same command line again, under torchrun
        self.json_mode = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
        command = next((a for a in argv if not a.startswith("-")), None)
        if command not in (None, "train", "update"):
            from retain.core.world import launched

            if launched():  # every rank would run it, and write
                message = f"'retain {command}' runs in one process: only train and update run under torchrun"
                _error_line(message)
                if self.json_mode:
                    _emit_json(error_object(USAGE, "usage", message))
                sys.exit(USAGE)
        return super().main(argv, *rest, **kwargs)

    def make_context(self, *args, **kwargs):
        with self._usage_errors_as_json():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with self._usage_errors_as_json():
            return super().invoke(ctx)

    @contextlib.contextmanager
    def _usage_errors_as_json(self):
        try:
            yield
        except typer.TyperException as exc:  # click's usage errors (exit 2), raised as parsing fails
            if getattr(self, "json_mode", False) and type(exc).__name__ != "NoArgsIsHelpError":
                _emit_json(error_object(getattr(exc, "exit_code", USAGE), "usage", exc.format_message()))
            raise


app = typer.Typer(
    name="retain",
    cls=RetainGroup,
    help="Update an existing model with new data only, without forgetting.\n\n" + EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"retain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print retain's version and exit.")):
    pass


def _console(json_mode: bool = False, quiet: bool = False):
    """The console a command prints through (stdout; stderr under --json, where stdout holds
    the JSON object alone), or None under --quiet. ``render.make_console`` sets the policy:
    terminal width and narrow-table layout on a terminal, whole lines anywhere else."""
    if quiet:
        return None
    from retain.render import make_console

    return make_console(stderr=json_mode)


def _listeners(json_mode: bool, quiet: bool) -> list:
    """The renderer of the engine's events, unless --quiet (or not rank 0 of several processes)."""
    console = _console(json_mode, quiet or _other_rank())
    if console is None:
        return []
    from retain.render import ConsoleRenderer

    return [ConsoleRenderer(console)]


def _error_line(message: str) -> None:
    from rich.markup import escape

    from retain.render import make_console

    make_console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def _warning_line(message: str) -> None:
    """A registry command's warning (what its ``recover`` did, a damaged shared file): one
    yellow line on stderr."""
    from rich.markup import escape

    from retain.render import make_console

    make_console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _emit_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, default=str))


def handle_errors(func):
    """Every command's failures, one scheme: a RetainError is one red line on stderr and its
    documented exit code; under --json the error object (code, kind, message) is also printed
    on stdout, inside the command's report when the error carries one (a rejected update).
    Anything else is a bug: its traceback and exit 1 (and the error object under --json)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        json_mode = bool(kwargs.get("json_out"))
        try:
            return func(*args, **kwargs)
        except RetainError as exc:
            if _other_rank():  # rank 0 says how the run ended; another rank only what it alone saw
                if exc.kind in ("internal", "out_of_memory"):
                    _error_line(f"rank {os.environ.get('RANK')}: {exc}")
                raise typer.Exit(exc.exit_code) from None
            _error_line(str(exc))
            if json_mode:
                _emit_json({**(getattr(exc, "report", None) or {}),
                            **error_object(exc.exit_code, exc.kind, str(exc))})
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            # Only where retain/launch.py's handler is not installed (the app called in-process).
            from retain.core import errors, interrupts

            message = "interrupted: " + interrupts.UNCHANGED
            typer.echo(message, err=True)
            if json_mode:
                _emit_json(error_object(errors.Interrupted.exit_code, errors.Interrupted.kind, message))
            raise typer.Exit(errors.Interrupted.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            from retain.core.retry import out_of_memory_error
            from retain.core.store import storage_error

            oom = out_of_memory_error(exc, "") if isinstance(exc, (RuntimeError, MemoryError)) else None
            # Out of memory anywhere (exit 11), or a disk refusing a write outside a model
            # directory's lock, which maps its own (exit 12): the remedy, not a traceback.
            known = oom if oom is not None else storage_error(exc)
            if known is not None:
                _error_line(str(known))
                if json_mode:
                    _emit_json(error_object(known.exit_code, known.kind, str(known)))
                raise typer.Exit(known.exit_code) from None
            if json_mode:
                _emit_json(error_object(1, "internal", f"{type(exc).__name__}: {exc}"))
            raise

    return wrapper


def _load(config: Optional[Path], sets: List[str], block: str, lr: Optional[float],
          epochs: Optional[int], batch_size: Optional[int], strategy: Optional[str] = None):
    from retain.core.config import load_config

    from retain.core.strategy import UPDATE_LEARNING_RATE_KEYS

    overrides = list(sets)
    if lr is not None:  # an update's rate is every strategy's: the one asked for is the one used
        keys = UPDATE_LEARNING_RATE_KEYS if block == "fine_tuning" else (f"{block}.learning_rate",)
        overrides += [f"{key}={lr}" for key in keys]
    if epochs is not None:
        overrides.append(f"{block}.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"{block}.batch_size={batch_size}")
    if strategy is not None:
        overrides.append(f"fine_tuning.strategy={strategy}")
    return load_config(config, overrides)


def _emit(report, json_mode: bool) -> None:
    if json_mode and not _other_rank():
        _emit_json(report)


def _other_rank() -> bool:
    """One of several torchrun processes, but not rank 0: rank 0 alone prints the run."""
    from retain.core.world import launched_rank

    return launched_rank() != 0


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: the embedded config.yaml).")
DataOpt = typer.Option(..., "--data", "-d", help="Input: a file, a folder, or NAME:LOCATION (repeatable).")
ModelOpt = typer.Option(..., "--model", "-m", help="Model directory.")


def json_option(prints: str, shape: str = "object"):
    """``--json``, saying what this command prints (``shape``: one JSON "object", or an "array"
    for the commands that list things); every command's errors print the same error object."""
    return typer.Option(False, "--json", help=f"Print {prints} as one JSON {shape} on stdout (human lines go "
                        "to stderr). On failure: {\"error\": {\"code\", \"kind\", \"message\"}}.")


JsonOpt = json_option("the run's report (counts, epoch losses, metrics, verdicts, version, timings)")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda (default: config 'device').")
StrictOpt = typer.Option(False, "--strict", help="Any rejected input record is fatal.")
AllowEmptyOpt = typer.Option(False, "--allow-empty", help="--data with no usable item (every record rejected, "
                             "or none at all) is a warning and exit 0, not exit 4: for pipelines where "
                             "nothing today is normal.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (and --json).")
NprocOpt = typer.Option(None, "--nproc", min=1, help="Train in N processes (PyTorch DistributedDataParallel "
                        "under torchrun: gloo on CPU, nccl on CUDA), each on its share of every batch; rank 0 "
                        "alone writes. Same as `torchrun --nproc-per-node N -m retain ...`. See docs/scale-out.md.")


def _under_torchrun(ctx: typer.Context, nproc: Optional[int], device: Optional[str], cfg_device: str,
                    model: Path) -> None:
    """``--nproc N``: this command line again in N processes under torchrun (``retain/launch.py``);
    exits as the run did. Returns (run here) without --nproc, with --nproc 1, or inside torchrun."""
    from retain.launch import under_torchrun

    argv = getattr(ctx.find_root().command, "argv", [])  # as RetainGroup.main read it
    code = under_torchrun(nproc, argv, device or cfg_device, model)
    if code is not None:
        raise typer.Exit(code)


def _world(device: Optional[str], cfg_device: str):
    """The processes this run spans: torchrun's, joined, or this one alone (``core/world.py``)."""
    from retain.core.world import join

    return join(device or cfg_device)


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
    nproc: Optional[int] = NprocOpt, allow_empty: bool = AllowEmptyOpt,
):
    """Full training from scratch on all data (the full_training block).

    Into a new or empty directory, or one holding a retain model (the new model becomes current;
    the old versions stay, `retain rollback` returns to them)."""
    from retain.core.engine import Engine

    cfg = _load(config, set_, "full_training", lr, epochs, batch_size, strategy)
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
    allow_empty: bool = AllowEmptyOpt,
    consolidate: bool = typer.Option(False, "--consolidate", help="Spend this update on bringing the old domain "
                                     "back inside the gate's drift budget: replay past items 4:1 "
                                     "(options.replay.consolidate_share) while learning the new data; the way "
                                     "on after a rejection for cumulative drift."),
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
    from retain.core.world import launched

    if (nproc not in (None, 1) or launched()) and (dry_run or check or auto):
        what = "--dry-run trains nothing" if dry_run else "--check runs in one process" if check else \
            "--auto runs its trials in processes of their own (tune.jobs, --ray)"
        raise typer.BadParameter(f"{what}: drop --nproc (or torchrun)", param_hint="--nproc")
    cfg = _load(config, set_, "fine_tuning", lr, epochs, batch_size, strategy)
    if consolidate:
        from retain.strategies.replay import consolidation_overrides

        cfg = _load(config, [*set_, *consolidation_overrides(cfg.fine_tuning.strategy)], "fine_tuning", lr,
                    epochs, batch_size, None)
    _under_torchrun(ctx, nproc, device, cfg.device, model)
    listeners = _listeners(json_out, quiet)
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
    quiet: bool = QuietOpt, allow_empty: bool = AllowEmptyOpt,
):
    """Bring an existing model in as the first version of a model directory.

    Weights are read as safetensors, or with torch.load(weights_only=True): a file that needs
    arbitrary unpickling is refused (exit 5) and nothing in it runs. Without --data, `retain
    status` says retention is not yet measured against the base domain."""
    from retain.core.engine import Engine

    extra = [f"model.{key}={value}" for key, value in (("family", family), ("factory", factory),
                                                      ("tokenizer", tokenizer)) if value is not None]
    cfg = _load(config, [*set_, *extra], "full_training", None, None, batch_size, strategy)
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
    from retain.core.exports import export_version
    from retain.core.pluginmanager import Registry, default_plugin_manager
    from retain.core.store import ModelStore

    result = export_version(ModelStore(model, read_only=True), version, fmt, out, Registry.of(default_plugin_manager()))
    if json_out:
        _emit_json(result)
    else:
        typer.echo(f"exported version {result['version']} ({result['family']}"
                   f"{', adapters merged' if result['adapter_merged'] else ''}) to {out} as {fmt}: "
                   f"{', '.join(result['files'])}")


def _device(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ("auto", "cpu", "cuda"):
        from retain.core.errors import ConfigError
        raise ConfigError(f"--device must be auto, cpu or cuda, got {value!r}")
    return value


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


@app.command()
@handle_errors
def plugins(json_out: bool = json_option("the list of plugins (name, package, hooks, provides)", "array")):
    """List every registered plugin, its package and the hooks it implements."""
    from retain.core.pluginmanager import default_plugin_manager, describe_plugins

    rows = describe_plugins(default_plugin_manager())
    if json_out:
        _emit_json(rows)
        return
    from rich.table import Table

    table = Table(title="retain plugins")
    table.add_column("plugin", no_wrap=True)
    table.add_column("package", no_wrap=True)
    table.add_column("hooks", max_width=24)
    table.add_column("provides", max_width=40)
    for r in rows:
        table.add_row(r["name"], r["package"], ", ".join(r["hooks"]), ", ".join(r["provides"]))
    _console(False).print(table)


@app.command()
@handle_errors
def strategies(json_out: bool = json_option("the list of strategies (name, description, option defaults, "
                                            "plugin)", "array")):
    """List the anti-forgetting strategies with their options and defaults."""
    from retain.core.pluginmanager import Registry, default_plugin_manager

    regs = Registry.of(default_plugin_manager()).by_kind["strategies"].values()
    rows = [{"name": r.name, "description": r.description, "options": r.option_defaults(),
             "plugin": r.plugin} for r in sorted(regs, key=lambda r: r.name)]
    if json_out:
        _emit_json(rows)
        return
    from rich.table import Table

    table = Table(title="strategies (fine_tuning.strategy, or --strategy a,b)")
    table.add_column("name", no_wrap=True)
    table.add_column("description", max_width=48)
    table.add_column("options (defaults)", max_width=36)
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


@app.command("config")
@handle_errors
def show_config(config: Optional[Path] = ConfigOpt,
                set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
                model: Optional[Path] = typer.Option(None, "--model", "-m", help="Show this model's stored "
                                                     "config (its current version's), not a file's."),
                json_out: bool = json_option("the configuration")):
    """Print the effective configuration (after overrides), as YAML, checked as `retain update` checks it.

    Every key and type, and every plugin it names (dedupers, preprocessors, validators, strategies, the
    model family, options.<name>) must be installed and take those options. `retain config > config.yaml`
    writes a file to start from."""
    from retain.core.config import config_from_dict, load_config
    from retain.core.pluginmanager import Registry, default_plugin_manager

    if model is not None and config is not None:
        raise typer.BadParameter("give --config or --model, not both", param_hint="--model")
    if model is not None:
        from retain.core.store import ModelStore

        store = ModelStore(model)
        cfg = config_from_dict(store.manifest(store.current()).get("config") or {}, set_)
    else:
        cfg = load_config(config, set_)
    Registry.of(default_plugin_manager()).check_config(cfg)
    if json_out:
        _emit_json(cfg.to_dict())
        return
    import yaml

    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)


# --- the registry: status, history, rollback, validate, prune --------------------------------

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
    from retain.core.retrain import assess
    from retain.core.store import ModelStore

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
    ``update --dry-run`` runs it (``Engine.plan``). Reads only."""
    from retain.core.engine import Engine

    # no listeners: the plan's steps and warnings are not printed here; data with no usable item
    # is 0 pending items, as it always was (status reports, an update is what fails on it)
    engine = Engine(cfg, allow_empty=True)
    with contextlib.closing(store.ledger):  # read: no -wal or -shm left behind, whatever ends the process
        run = engine.plan(data, store)
    items = [*run.items, *run.holdout]  # what it would learn: the hold-out is split off later
    if not items:
        return 0, None
    from retain.core.models import load_version
    from retain.core.vocabulary import measure_texts

    return len(items), measure_texts(load_version(store, registry=engine.registry).lm, [it.text for it in items])


@app.command()
@handle_errors
def history(model: Path = ModelOpt,
            json_out: bool = json_option("the list of versions (parent, kind, status, items learned, "
                                         "losses, verdicts, dates)", "array")):
    """Every version: parent, date, kind, items learned, losses, accepted or rejected.

    * marks the current version."""
    from retain.core.versions import history as version_history
    from retain.core.store import ModelStore

    rows = version_history(ModelStore(model, read_only=True))
    if json_out:
        _emit_json(rows)
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
        kind = {"full_training": "full", "fine_tuning": "update", "import": "import"}.get(r["kind"], r["kind"] or "")
        imported = r["kind"] == "import"  # learned nothing, at no rate: its base data was only recorded
        table.add_row(("*" if r["current"] else "") + r["version"], r["parent"] or "-", kind, status,
                      f"{r['learning_rate']:g}" if r["learning_rate"] is not None else "-",
                      "-" if imported else str(r["items_learned"]),
                      "-" if imported else _recipe(r), loss(m["retention_loss_before"], m["retention_loss_after"]),
                      loss(m["new_loss_before"], m["new_loss_after"]),
                      (r["created_at"] or "")[:16].replace("T", " "))
    _console(False).print(table)


def _recipe(row: dict) -> str:
    """The strategies a version trained with; for --auto, the recipe that won its search."""
    from retain.core.wording import plural

    search = row.get("search")
    if search:
        return f"auto ({plural(search['trials'], 'trial')}): {search['describe']}"
    return ",".join(row.get("strategies") or []) or "-"


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
    from retain.core.versions import rollback as switch
    from retain.core.store import ModelStore

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
    from retain.core.versions import validate_version
    from retain.core.store import ModelStore

    cfg = _load(config, set_, "fine_tuning", None, None, None)
    result = validate_version(Engine(cfg, device=_device(device)), ModelStore(model, read_only=True), version, data)
    if not json_out:
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
    from retain.core.models import resolve_device
    from retain.core.store import ModelStore
    from retain.core.versions import sample_version

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
    from retain.core.versions import prune as prune_versions
    from retain.core.store import ModelStore

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


def main() -> None:
    from retain.launch import Ending, install, quiet_library_warnings, quiet_when_stdout_closes

    install()  # already done by the console script; here for `python -m retain.cli`
    quiet_library_warnings()
    quiet_when_stdout_closes()
    Ending().run(app)


if __name__ == "__main__":
    main()
