"""Where the ``retain`` command starts: Ctrl-C is handled from its first instruction.

The console script and ``python -m retain`` enter here, not in ``cli.py``: importing
the command line (typer, rich) and then torch takes time, and an interrupt at any
moment of it must end the run as cleanly as one during training
(``core/interrupts.py``): "interrupted: ..." on stderr, under ``--json`` also the
error object on stdout, exit 130.
"""

from __future__ import annotations

import json
import os
import sys


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
    from retain.core import interrupts

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


def main() -> None:
    install()
    quiet_library_warnings()
    from retain.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
