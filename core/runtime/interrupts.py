"""Ctrl-C, as safe as a kill and clearer: the run stops at once, tidies up, says so, exits 130.

A ``KeyboardInterrupt`` raised at an arbitrary moment is not safe in this process: it can
land inside the import of torch, numpy or avalanche-lib, where libraries catch it (the run
goes on as if nothing happened) or leave modules half-initialized (the run fails later,
far away), or inside C++ code that cannot unwind it (``std::terminate``). So the command
line never raises one. ``install`` routes SIGINT to a handler that

1. releases what this process holds in model directories (what was registered with
   ``on_interrupt``: unfinished version folders, open ledger connections, so no SQLite
   ``-wal``/``-shm`` files stay behind),
2. says what happened (``report``), and
3. ends the process with ``os._exit(130)``: nothing unwinds, exactly as with a kill, and a
   kill at any moment leaves a consistent model directory (tests/test_crash.py).

A few short sections must not be cut in half (moving a finished version into place and
CURRENT after it, appending to the rejects file): they run ``shielded()``, and an interrupt
arriving inside takes effect as they end. Once a run has moved CURRENT it records that with
``set_outcome``, so the message says what was saved instead of "unchanged".

Only the command line installs the handler: a Python program using ``ModelTrainer`` keeps
its own SIGINT handling (the ``on_interrupt`` registrations then cost nothing).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import weakref
from typing import Callable, Iterator

EXIT_CODE = 130  # errors.Interrupted.exit_code; not imported, so installing imports nothing
UNCHANGED = "the current model is unchanged"

_tidy: dict[int, Callable[[], Callable[[], None] | None]] = {}  # token -> (weak) tidy function
_tokens = itertools.count(1)
_shield_depth = 0
_pending = False
_outcome: str | None = None
_report: Callable[[str], None] | None = None


def on_interrupt(fn: Callable[[], None]) -> int:
    """Call ``fn`` if an interrupt ends the process, until ``release(token)``. A bound method is
    held weakly: registering does not keep its object (an open ledger, say) alive."""
    token = next(_tokens)
    ref = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else (lambda: fn)
    _tidy[token] = ref
    return token


def release(token: int | None) -> None:
    if token is not None:
        _tidy.pop(token, None)


def set_outcome(text: str | None) -> None:
    """What an interrupt from now on should report instead of "the current model is unchanged"
    (a run that moved CURRENT says so); None at the start of a run."""
    global _outcome
    _outcome = text


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A section an interrupt must not cut in half: one arriving inside acts when it ends."""
    global _shield_depth
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
    if _pending and not _shield_depth:
        abort()


def installed() -> bool:
    return _report is not None


def install(report: Callable[[str], None]) -> bool:
    """Handle SIGINT as described above; ``report(message)`` says it (it must not raise, and
    should write with ``os.write``: it may run while the program is in the middle of a print).
    Not installed when SIGINT is ignored on entry (``nohup``, a background job): that stays."""
    global _report
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return False
    _report = report
    signal.signal(signal.SIGINT, _handler)
    return True


def _handler(signum, frame) -> None:
    global _pending
    if _shield_depth:
        _pending = True
        return
    abort()


def abort() -> None:
    """Tidy up, report and end the process (exit 130); never returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the tidying short
    while _tidy:  # newest first; a tidy function may register another (a ledger it reopens)
        _, ref = _tidy.popitem()
        fn = ref()
        if fn is not None:
            try:
                fn()
            except BaseException:  # best effort: what is left is what a kill leaves, still consistent
                pass
    try:
        if _report is not None:
            _report(f"interrupted: {_outcome or UNCHANGED}")
    finally:
        os._exit(EXIT_CODE)
