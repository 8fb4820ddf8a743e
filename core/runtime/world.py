"""The processes one run spans: its ``World``, created once where a run starts and passed to
what needs it (the engine, the training loop, the strategies through the training template).

One process is the trivial world, ``SOLO``: rank 0 of 1, the writer, every collective a no-op.
Several processes are the ranks torchrun starts (``retain update --nproc N`` runs it, or a user
runs ``torchrun ... -m retain``): torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in
each, and ``join`` makes them one process group (gloo on CPU, nccl on CUDA). Every rank reads
the same data and model and builds the same rows (ingest is deterministic); each trains on its
shard of every batch (``ShardedBatches``), DDP sums the gradients.

Rank 0 is the only writer: it holds the model directory's lock for the whole run, writes
rejects, the version and the ledger (the other ranks open the directory read-only). What rank
0 alone decides (the lock, the gate's verdicts, early stopping's judgment, a time limit's
stop) is sent to the others, so every rank ends the same way. Before rank 0 commits, all ranks
meet (``barrier``): a rank that died makes that fail, and nothing is committed.

Starting the ranks and turning their outcome into one exit code is ``retain/launch.py``'s.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

from retain.core.errors import RetainError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run, and what they do together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" or "nccl" once joined; None: one process, no group
    device: str | None = None   # the device this rank trains on; None: the one configured

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes to the model directory (one process: always)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (picklable values)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_writer else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, what: str) -> None:
        """All ranks got here; raises if one of them is gone."""
        if not self.distributed:
            return
        import torch.distributed as dist

        try:
            dist.barrier()
        except Exception as exc:
            raise RankFailed(f"a process of the distributed run failed before {what} ({type(exc).__name__}: "
                             f"{exc}); nothing was committed") from exc

    def all_reduce_(self, tensor, average: bool = False):
        """Sum (or average) ``tensor`` over the ranks, in place."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        dist.all_reduce(tensor)
        if average:
            tensor /= self.size
        return tensor

    def average_(self, tensors) -> None:
        """Average each floating tensor over the ranks, in place. Strategy state computed by
        every rank (EWC, SI, MAS importances) ends the same on all."""
        if not self.distributed:
            return
        for t in tensors:
            if t.is_floating_point():
                self.all_reduce_(t, average=True)

    def on_writer(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` run by rank 0 alone, its result given to every rank."""
        if not self.distributed:
            return func

        def shared(*args):
            return self.broadcast(func(*args) if self.is_writer else None)
        return shared

    def agree(self, error: RetainError | None) -> None:
        """Rank 0's outcome of a step only it runs: its error is raised on every rank."""
        sent = self.broadcast(None if error is None else (type(error).__name__, error.exit_code, error.kind,
                                                          str(error)))
        if error is not None:
            raise error
        if sent is not None:
            raise SharedError(*sent[1:])


SOLO = World()  # the trivial world: one process, the writer, nothing to share


def world_of(template) -> World:
    """The world a training template runs in (``training.LMTemplate.world``); a strategy's
    avalanche plugin asks it, being handed the template at each event."""
    return getattr(template, "world", SOLO)


class RankFailed(RetainError):
    """A peer died: the run ends with nothing committed (exit 1: not the user's to fix here)."""


class SharedError(RetainError):
    """Rank 0's error, raised the same way on the other ranks (same exit code and kind)."""

    def __init__(self, exit_code: int, kind: str, message: str):
        super().__init__(message)
        self.exit_code, self.kind = exit_code, kind


# --- joining torchrun's processes -------------------------------------------------------------

def launched() -> bool:
    """This process is one of several started by torchrun."""
    return all(k in os.environ for k in ENV) and int(os.environ["WORLD_SIZE"]) > 1


def launched_rank() -> int:
    """This process's rank under torchrun (0 outside it), before any process group exists."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def missing_backend(device: str) -> str | None:
    """What the machine lacks to run several processes on ``device`` ("cpu" or "cuda"), or None."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return f"torch is not importable ({exc})"
    if not dist.is_available():
        return "this torch build has no torch.distributed (reinstall torch with distributed support)"
    if device == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available for --device cuda"
        if not dist.is_nccl_available():
            return "this torch build has no NCCL backend, which training on CUDA needs"
        return None
    if not dist.is_gloo_available():
        return "this torch build has no gloo backend, which training on CPU needs"
    return None


def join(device: str | None) -> World:
    """This process's world: torchrun's process group, joined (gloo on CPU, nccl on CUDA, each
    rank on ``cuda:LOCAL_RANK``), when torchrun started it; else ``SOLO``. Call it once, where
    the run starts (``device``: the configured one, "auto" included)."""
    if not launched():
        return SOLO
    import torch
    import torch.distributed as dist

    from retain.core.storage.models import resolve_device

    cuda = resolve_device(device or "auto").type == "cuda"
    missing = missing_backend("cuda" if cuda else "cpu")
    if missing:
        from retain.core.errors import ConfigError

        raise ConfigError(f"cannot train in several processes: {missing}")
    backend = "nccl" if cuda else "gloo"
    # avalanche-lib refuses to be imported by a rank other than 0 once a group exists (its
    # loggers): the training stack comes in first.
    import retain.core.learning.training  # noqa: F401
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # A peer that hangs (not one that dies: that fails at once) ends the run after this long.
        timeout = datetime.timedelta(seconds=float(os.environ.get("RETAIN_DIST_TIMEOUT", "1800")))
        dist.init_process_group(backend, timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend,
                 f"cuda:{local_rank}" if cuda else "cpu")


class ShardedBatches:
    """Rank ``r`` of ``n`` trains on rows ``r, r+n, ...`` of every batch of ``batches`` (the same
    batch sampler, same seed, on every rank): together the ranks train on the global batch.

    A batch with fewer rows than ranks leaves some ranks without any: they take the batch's
    first row as a stand-in, flagged in ``stand_in``, and train on none of its tokens (every
    rank must step in step with DDP)."""

    def __init__(self, batches, world: World):
        self.batches, self.world = batches, world
        self.stand_in = False

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            shard = batch[self.world.rank::self.world.size]
            self.stand_in = not shard
            yield shard or batch[:1]
