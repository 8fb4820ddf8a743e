"""What every command shares: the ``retain`` group and app, exit codes and the ``--json`` error
object (``handle_errors``, ``RetainGroup``), the console (``_console``: whole lines in logs,
tables that fit the terminal), the options several commands take, ``-h``/``--help``, help text
that reads as written. A new command gets all of it by being an ``@app.command()`` with
``@handle_errors`` in one of the command-group modules beside this one.

Start-up stays fast: torch and avalanche-lib are imported inside the commands that train or
evaluate, never at module level.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
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
            from retain.core.runtime.world import launched

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
            from retain.core import errors
            from retain.core.runtime import interrupts

            message = "interrupted: " + interrupts.UNCHANGED
            typer.echo(message, err=True)
            if json_mode:
                _emit_json(error_object(errors.Interrupted.exit_code, errors.Interrupted.kind, message))
            raise typer.Exit(errors.Interrupted.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            from retain.core.learning.retry import out_of_memory_error
            from retain.core.storage.store import storage_error

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

    from retain.core.learning.strategy import UPDATE_LEARNING_RATE_KEYS

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
    from retain.core.runtime.world import launched_rank

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
LogToOpt = typer.Option(None, "--log-to", help="Report the run to these trackers: mlflow, tensorboard (the "
                        "config's `loggers`; retain\\[mlflow], retain\\[tensorboard]). See docs/tracking.md.",
                        metavar="LOGGERS")
TextFieldOpt = typer.Option(None, "--text-field", help="The field (or column) holding the text, for every "
                            "source that has one: jsonl, csv, parquet, arrow, datasets, sql (default: text).")


def _log_to(loggers: Optional[str]) -> List[str]:
    """``--log-to a,b``: the config's ``loggers``, as ``--set loggers=a,b`` would set them."""
    return [] if loggers is None else [f"loggers={loggers}"]


def _text_field(name: Optional[str]) -> List[str]:
    """--text-field as the --set overrides of every built-in source's text field (JSON: always a string)."""
    from retain.plugins.sources import TEXT_FIELD_OPTIONS

    return [] if name is None else [f"options.{key}={json.dumps(name)}" for key in TEXT_FIELD_OPTIONS]


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
    """The processes this run spans: torchrun's, joined, or this one alone (``core/runtime/world.py``)."""
    from retain.core.runtime.world import join

    return join(device or cfg_device)




def _device(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ("auto", "cpu", "cuda"):
        from retain.core.errors import ConfigError
        raise ConfigError(f"--device must be auto, cpu or cuda, got {value!r}")
    return value

