"""Where the ``retain`` command starts and how its process ends.

Ctrl-C is handled from the first instruction: the console script and ``python -m retain``
enter here, not in ``cli.py``, because importing the command line (typer, rich) and then
torch takes time, and an interrupt at any moment of it must end the run as cleanly as one
during training (``core/runtime/interrupts.py``): "interrupted: ..." on stderr, under ``--json``
also the error object on stdout, exit 130.

``--nproc N`` starts the same command line again in N processes under torchrun
(``under_torchrun``), each one rank of the run's ``World`` (``core/runtime/world.py``). torchrun
itself only says whether every rank exited 0: rank 0 tells the launching process its exit
code through a file (``Ending``), and the launcher exits with it (``outcome``).

A reader that goes away (``retain update ... | head -1``) ends the output, not the run
(``OutputToClosedPipe``): the command finishes its work, saves what it saves, and exits
with its own code, without a word about the pipe.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path


def _report(message: str) -> None:
    # Runs inside a signal handler, maybe in the middle of a print: flush what is buffered
    # (best effort) and write with os.write, which cannot collide with a buffered writer.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    from retain.core.errors import Interrupted, error_object

    for fd in (1, 2):
        try:
            if os.isatty(fd):  # a progress bar may be drawn, its cursor hidden: clear it, show it
                os.write(fd, b"\r\x1b[2K\x1b[?25h")
        except OSError:
            pass
    try:
        os.write(2, f"{message}\n".encode(errors="replace"))
        if "--json" in sys.argv[1:]:
            obj = error_object(Interrupted.exit_code, Interrupted.kind, message)
            os.write(1, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def install() -> None:
    """Install the interrupt handler (once); the command line calls it too, for ``-m retain.cli``."""
    from retain.core.runtime import interrupts

    if not interrupts.installed():
        import retain.core.errors  # noqa: F401  (loaded now: the handler must not import)

        interrupts.install(_report)


def quiet_library_warnings() -> None:
    """Warnings of libraries that say nothing to a retain user, filtered for the command line.

    qpsolvers (imported by avalanche-lib for its GEM plugin) warns "no QP solver found" at
    import, i.e. on every training command, when none of its optional solvers is
    installed; retain's ``gem`` strategy checks for the one it needs (quadprog) itself."""
    import warnings

    warnings.filterwarnings("ignore", message="no QP solver found", module="qpsolvers")


class OutputToClosedPipe:
    """``sys.stdout``, where a closed pipe ends the output quietly instead of the run.

    Python ignores SIGPIPE: a write to a pipe whose reader has gone raises BrokenPipeError
    wherever it happens, in the middle of an update (which then stopped, exit 1, with its
    traceback lost on the same closed stream). A tool killed by SIGPIPE (exit 141) would stop
    there too; an update is work with a result, not a filter: it goes on. From the first
    failed write on, stdout is /dev/null (the ``os.dup2`` Python's documentation recommends,
    so the interpreter's own last flush is quiet too)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def quiet_when_stdout_closes() -> None:
    """Install ``OutputToClosedPipe`` (once)."""
    if sys.stdout is not None and not isinstance(sys.stdout, OutputToClosedPipe):
        sys.stdout = OutputToClosedPipe(sys.stdout)


def main() -> None:
    install()
    quiet_library_warnings()
    quiet_when_stdout_closes()
    from retain.cli import main as cli_main

    cli_main()


# --- several processes: --nproc N, under torchrun ---------------------------------------------
EXIT_FILE = "RETAIN_EXIT_FILE"  # set by the launcher: where rank 0 writes its exit code


def under_torchrun(nproc: int | None, argv: list[str], device: str, model: str | Path) -> int | None:
    """``--nproc N``: the command line ``argv`` run again (less ``--nproc``) in N processes under
    torchrun; the exit code of the run (``outcome``). None (run here) without --nproc, with
    --nproc 1, or inside torchrun already. ``device``: the configured one; ``model``: the
    model directory, to say what a failed run saved."""
    from retain.core.runtime import world

    if nproc is None or nproc == 1 or world.launched():
        return None
    if device == "auto":
        from retain.core.storage.models import resolve_device

        device = resolve_device(device).type
    missing = world.missing_backend(device.split(":")[0])
    if missing:
        import typer

        raise typer.BadParameter(f"cannot train in {nproc} processes: {missing}", param_hint="--nproc")
    relaunched, skip = [], False
    for arg in argv:  # the same command line, less --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            relaunched.append(arg)
    import subprocess
    import tempfile

    before = _versions(model)
    with tempfile.TemporaryDirectory(prefix="retain-nproc-") as tmp:
        exit_file = Path(tmp) / "exit_code"
        env = {**os.environ, EXIT_FILE: str(exit_file)}
        # torchrun would set 1 thread per process, and warn: share the cores out instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "retain", *relaunched]
        rc = subprocess.run(cmd, env=env).returncode
        told = int(exit_file.read_text()) if exit_file.exists() else None
    _remove_dead_scratch(model)
    saved = [v for v in _versions(model) if v not in before]
    return outcome(nproc, rc, told, saved[-1] if saved else None)


def outcome(nproc: int, rc: int, told: int | None, saved: str | None) -> int:
    """The exit code of a run of ``nproc`` processes: the one rank 0 ``told`` when the ranks
    agreed on it (a rejection, a lock held elsewhere: they exit 0, torchrun ``rc`` 0). A crash
    or a kill (torchrun failed, and rank 0 said 0 or 1, or nothing) is ``RankFailed``, saying
    whether rank 0 had ``saved`` a version (the model directory says; a killed rank 0 cannot)."""
    if told is None or (rc != 0 and told in (0, 1)):
        from retain.core.runtime.world import RankFailed

        raise RankFailed(f"a process of the {nproc}-process run failed (torchrun exited {rc}; its errors are above)"
                         + (f", after rank 0 saved version {saved}" if saved else
                            ": nothing was committed, the current model is unchanged"))
    return told


def _remove_dead_scratch(model: str | Path) -> None:
    """The shard scratch folders of ranks that are gone. A rank that torchrun stopped after
    another died may be killed before its own cleanup runs (seen under load: rank 1 SIGKILLed,
    rank 0's ``.tmp-shards-<pid>`` left). Every rank has ended here; a live process's folder stays."""
    import shutil

    from retain.core.storage.store import _alive

    versions = Path(model) / "versions"
    for p in versions.glob(".tmp-shards-*") if versions.is_dir() else []:
        if not _alive(p.name):
            shutil.rmtree(p, ignore_errors=True)


def _versions(model: str | Path) -> list[str]:
    from retain.core.errors import RetainError
    from retain.core.storage.store import ModelStore

    try:
        return ModelStore(model).versions()
    except (RetainError, OSError):  # not a model directory: nothing to tell apart
        return []


class Ending:
    """How this process ends: the command's exit code, told to the ``--nproc`` launcher when
    there is one, then the end of the process without the interpreter's teardown."""

    def __init__(self) -> None:
        self.code = 0

    def run(self, app) -> None:
        """Run the command line ``app`` (click's standalone mode: it exits) in this process."""
        atexit.register(self.skip_teardown)  # registered first: runs after every other handler
        try:
            app()
        except SystemExit as exc:
            self.code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if self.tell_launcher():
                raise SystemExit(0) from None
            raise
        except BaseException:
            self.code = 1
            self.tell_launcher()
            raise

    def tell_launcher(self) -> bool:
        """Under ``--nproc``: rank 0's exit code goes to the launching process, which exits with
        it. True when this process may then exit 0: an outcome every rank agreed on (a
        rejection, a lock held elsewhere), not a crash, which must still fail torchrun so that
        it ends the other ranks."""
        path = os.environ.get(EXIT_FILE)
        if not path:
            return False
        if os.environ.get("RANK") == "0":
            Path(path).write_text(str(self.code))
        if self.code not in (0, 1):
            self.code = 0
            return True
        return False

    def skip_teardown(self) -> None:
        """A command that trained has imported some 5,000 modules (torch, avalanche-lib and what
        they import); the interpreter's teardown of them, after the work is done, saved and
        printed, takes seconds (4-5 s measured on 2 loaded cores, more than a whole update of a
        small model). Every atexit handler has run by now: flush and end the process here."""
        if "retain.core.learning.training" not in sys.modules:
            return  # a light command: its teardown is quick
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(self.code)


if __name__ == "__main__":
    main()
