"""Ray as an executor: ``retain compare --ray`` and ``retain update --auto --ray`` run each
strategy or trial as a Ray task, where they would otherwise run in a process pool (``--jobs``).

``RayExecutor`` is a ``concurrent.futures.Executor``: ``submit`` returns an ordinary future
(a Ray object ref's), so the code that waits on a pool's futures waits on Ray's unchanged.
Each task gets a fresh worker process (``max_calls=1``), as a pool's task gets one, so a
strategy's peak memory is its own. Ray is an optional extra (``retain[ray]``); nothing
imports it unless ``--ray`` is given.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable

from retain.core.errors import ConfigError

LOCAL = "local"  # --ray without an address: start Ray on this machine


def require_ray():
    """The ``ray`` module, or a clear error saying what to install."""
    try:
        import ray
    except ImportError:
        # exit 3, as --auto without Optuna: an optional extra the command asks for is missing
        raise ConfigError("--ray runs tasks on Ray, which is not installed: pip install 'retain[ray]'") from None
    return ray


def _in_task(threads: int, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """A task's body: the torch threads it may use (its share of the node's cores), then ``fn``."""
    import torch

    torch.set_num_threads(threads)
    return fn(*args, **kwargs)


class RayExecutor(Executor):
    """Tasks on the Ray cluster at ``address`` (``"local"``: a Ray started here, with ``num_cpus``
    CPUs when given, and shut down with the executor). Each task takes ``cpus_per_task`` CPUs
    and as many torch threads."""

    def __init__(self, address: str = LOCAL, *, num_cpus: int | None = None, cpus_per_task: int = 1):
        ray = require_ray()
        self.ray = ray
        self.started_here = not ray.is_initialized()
        started = time.perf_counter()
        if self.started_here:
            if address == LOCAL:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.startup_seconds = time.perf_counter() - started
        self.cpus_per_task = cpus_per_task
        self._task = ray.remote(num_cpus=cpus_per_task, max_calls=1, max_retries=0)(_in_task)

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        return self._task.remote(self.cpus_per_task, fn, args, kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()

