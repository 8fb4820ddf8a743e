"""Out of memory during training: retry with half the batch size before giving up.

The design document's remedy ("Out of memory: reduce batch_size to 4"), applied by the
update itself. Each failed attempt may have taken optimizer steps, so the
weights are put back to what they were before it; the optimizer and the
avalanche template are built afresh by every attempt.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from .errors import OutOfMemory

T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # CPU allocators and older CUDA builds raise a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


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
