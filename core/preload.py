"""The training stack's import, started early in a thread so that it overlaps reading the data.

``import avalanche`` takes seconds (it imports all of avalanche-lib: torchvision, its
metrics, its loggers, qpsolvers and their solvers) and only the ``train`` step needs
it. An update starts that import in a background thread before it loads the model,
then reads, cleans, deduplicates, tokenizes and scores while the import runs: the
main thread spends most of that time in torch, tokenizers, SQLite and file reads,
which release the interpreter lock. The ``import`` step is what remains to wait for.

Nothing is hidden or patched: the thread runs a plain ``importlib.import_module``,
and Python's per-module import locks make a module the main thread needs at the
same moment wait until the thread has finished it.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from types import ModuleType

TRAINING = "retain.core.training"


class Preload:
    """``import_module(name)`` in a daemon thread; ``wait()`` returns the module (or raises
    what the import raised) and says how long the caller waited."""

    def __init__(self, name: str = TRAINING):
        self.name = name
        self.seconds = 0.0      # how long the import took, in the thread
        self.waited = 0.0       # how long ``wait`` blocked
        self._module: ModuleType | None = sys.modules.get(name)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self._module is None:
            self._thread = threading.Thread(target=self._run, name=f"import {name}", daemon=True)
            self._thread.start()

    @property
    def already_loaded(self) -> bool:
        return self._thread is None

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._module = importlib.import_module(self.name)
        except BaseException as exc:  # handed to the caller by wait()
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - started

    def wait(self) -> ModuleType:
        started = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
        self.waited = time.perf_counter() - started
        if self._error is not None:
            raise self._error
        assert self._module is not None
        return self._module
