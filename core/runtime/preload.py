"""The training stack's import, started early in a thread so that it overlaps reading the data.

``import avalanche`` takes seconds (it imports all of avalanche-lib: torchvision, its
metrics, its loggers, qpsolvers and their solvers) and only the ``train`` step needs
it. An update starts that import in a background thread before it loads the model,
then reads, cleans, deduplicates, tokenizes and scores while the import runs: the
main thread spends most of that time in torch, tokenizers, SQLite and file reads,
which release the interpreter lock. The ``import`` step is what remains to wait for.

Python's per-module import locks make a module the main thread needs at the same
moment wait until the thread has finished it.

Three of avalanche-lib's module-level imports serve features an update never
touches at import time: ``qpsolvers`` (GEM's quadratic program, which pulls in jax
through its jaxopt solver), ``wandb`` (a confusion-matrix plot for the W&B logger)
and ``gdown`` (the CUB-200 downloader). While the thread imports avalanche they
are loaded with the standard library's ``importlib.util.LazyLoader``: the module
object exists, and its code runs on the first attribute access. A ``gem`` run
still solves its QP with qpsolvers, and a user's own ``import wandb`` afterwards
gets the real package at its first use: nothing is hidden or patched. This takes
about a third off the import (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import time
from types import ModuleType

TRAINING = "retain.core.learning.training"
LAZY = ("qpsolvers", "wandb", "gdown")  # imported by avalanche-lib, first used long after (if ever)


class _LazyFinder(importlib.abc.MetaPathFinder):
    """Finds ``names`` as the other finders do, then wraps the loader in a LazyLoader."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                    return None
                spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


def import_deferring(name: str, lazy: tuple[str, ...] = LAZY) -> ModuleType:
    """``import_module(name)``, with the ``lazy`` packages (not yet imported) loaded lazily."""
    finder = _LazyFinder(tuple(n for n in lazy if n not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)


class Preload:
    """``import_module(name)`` in a daemon thread; ``wait()`` returns the module (or raises
    what the import raised) and says how long the caller waited."""

    def __init__(self, name: str = TRAINING):
        self.name = name
        self.seconds = 0.0      # how long the import took, in the thread
        self.waited = 0.0       # how long ``wait`` blocked
        module = sys.modules.get(name)
        # A module another thread is still importing (an earlier run's preload, in a process
        # that goes on: the Python API, tests) is not loaded yet: its import is waited for in
        # the thread (the module's import lock), never handed back half initialized.
        initializing = getattr(getattr(module, "__spec__", None), "_initializing", False)
        self._module: ModuleType | None = None if initializing else module
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
            self._module = import_deferring(self.name)
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
