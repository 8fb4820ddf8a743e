"""Out of memory during training: retry with half the batch size before giving up.

The design document's remedy ("Out of memory: reduce batch_size to 4"), applied by the
update itself. Each failed attempt may have taken optimizer steps, so the
weights are put back to what they were before it; the optimizer and the
avalanche template are built afresh by every attempt.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, TypeVar

from retain.core.errors import OutOfMemory

T = TypeVar("T")

# A model that does not fit: what the user can do about it (exit 11).
TOO_BIG = ("the model does not fit in this machine's free memory: free memory or use a machine with "
           "more, run on the device with more memory (--device cuda, or --device cpu), or use a smaller model")
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # CPU allocators ("DefaultCPUAllocator: can't allocate memory") and older CUDA builds
    # raise a plain RuntimeError.
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MESSAGES)


def first_line(exc: BaseException) -> str:
    """The error's first line, without c10's "[enforce fail at alloc_cpu.cpp:127] err == 0." prefix."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if line.startswith("[enforce fail"):
        line = line.split("]", 1)[-1].strip().removeprefix("err == 0.").strip()
    return f"{type(exc).__name__}: {line}".strip()


def out_of_memory_error(exc: BaseException, what: str, remedy: str = TOO_BIG) -> OutOfMemory | None:
    """``OutOfMemory`` (exit 11) with the remedy for an out-of-memory error, else None."""
    if not is_out_of_memory(exc):
        return None
    return OutOfMemory(f"out of memory{' ' + what if what else ''} ({first_line(exc)}); {remedy}")


@contextlib.contextmanager
def memory_for(what: str, remedy: str = TOO_BIG) -> Iterator[None]:
    """Out of memory while ``what`` (loading, creating, importing a model) becomes ``OutOfMemory``
    (exit 11) with ``remedy``, not a traceback."""
    try:
        yield
        return
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        error = first_line(exc)
    # Outside the except block, so the failed allocation's frames and tensors are freed.
    raise OutOfMemory(f"out of memory {what} ({error}); {remedy}")


def retry_halving_batch(attempt: Callable[[], T], model: Any, settings: Any,
                        on_retry: Callable[[int, int, str], None]) -> T:
    """Run ``attempt()``; on out-of-memory restore the weights, halve
    ``settings.batch_size`` and run it again, down to batch size 1."""
    import torch

    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    while True:
        try:
            return attempt()
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            failed = settings.batch_size
        # Outside the except block, so the failed attempt's frames and tensors are freed.
        if failed <= 1:
            raise OutOfMemory(f"out of memory even at batch_size 1 ({error}); use a smaller model or "
                              "max_seq_length, or --device cpu")
        model.load_state_dict(snapshot)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        settings.batch_size = max(1, failed // 2)
        on_retry(failed, settings.batch_size, error)
