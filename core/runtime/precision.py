"""``precision: auto``, decided by measuring: fp32 or bf16 autocast, whichever trains faster here.

A CPU flag does not predict the speed: on one CPU with AVX512-BF16 and AMX, bf16 autocast made
``retain demo`` (the 0.7M default model) 2.2x slower and an 88M model's training 1.87x faster;
on another CPU the 0.7M model trained 1.23x faster in bf16 (issue 21, BENCHMARKS.md). So on a CPU with native bf16, an update measures a few
training steps of both on its own model and a real batch of its rows, alternating, and keeps
bf16 only when its median step is clearly faster; below ``MEASURED_FROM`` parameters the
probe proved unfaithful (a small model's whole loop lost in bf16 where its passes won), so such
a model is fp32, unmeasured. The answer is cached per machine and model
shape (``precision.json`` in the user's cache directory), so a model directory's daily updates
measure once. Without native bf16 a CPU emulates it, several times slower: fp32, unmeasured.
A CUDA device keeps its rule: bf16 where it is supported.

The probe runs forward and backward passes only, never an optimizer step, under a forked RNG:
the weights, gradients and random stream the run trains with are the same whatever it measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROUNDS = 3           # timed steps of each precision, alternating (after one untimed step of each) ...
MAX_ROUNDS = 15      # ... and more while they fit in PROBE_SECONDS: cheap where steps are short,
PROBE_SECONDS = 3.0  # where a busy machine's noise is largest against a step
MARGIN = 1.05        # bf16 is kept only when its median step is at least this much faster
# Below this many parameters a CPU run is fp32, unmeasured: the demo's 0.72M model's full training
# took 62.0 s in bf16 against 50.5 s in fp32 on an AMD EPYC with avx512_bf16, while the forward and
# backward probe measured bf16 1.1-1.3x faster (its cost is outside those passes), and issue 21
# measured it 2.2x slower on a Xeon with AMX; at 20M and 88M bf16 trained 1.6x and 2.2x faster
# (BENCHMARKS.md, "precision: auto, measured").
MEASURED_FROM = 5_000_000
# The CPU flags that decide how fast bf16 and fp32 matrix products run: part of the cache key.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
CACHE_VERSION = 1


@dataclass
class Choice:
    """What ``precision: auto`` chose, and why: the run's report and the CLI show it."""

    asked: str                         # the config's "auto", "fp32" or "bf16"
    chose: str                         # "fp32" or "bf16"
    why: str                           # one sentence
    speedup: float | None = None       # fp32 step time / bf16 step time, median of the rounds: >1 is bf16 faster
    batch: list[int] | None = None     # the measured batch: rows x tokens
    cached: str | None = None          # when a cached measurement was made (UTC date), else None
    seconds: float = 0.0               # what deciding cost this run (0 from the cache)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def choose_for_run(run, time_steps: Callable | None = None, cache: Path | None = None) -> Choice:
    """The precision ``run`` trains and scores in, from ``run.config.precision`` on ``run.device``,
    measured on ``run.model`` and a batch of ``run.rows`` where it must be (see the module).
    ``time_steps(precision)``: one step's seconds (tests inject one; default: a real step)."""
    from retain.core.storage.models import cpu_has_native_bf16, resolve_precision

    asked, device = run.config.precision, run.device
    if asked != "auto":
        return Choice(asked, asked, f"asked for {asked}")
    if device.type != "cpu":
        chose = resolve_precision(asked, device)
        return Choice(asked, chose, f"{device.type}: bf16 where the device supports it"
                      + ("" if chose == "bf16" else " (this one does not)"))
    if not cpu_has_native_bf16():
        return Choice(asked, "fp32", "this CPU has no native bf16 (avx512_bf16, amx_bf16): emulated bf16 "
                      "is several times slower")
    parameters = sum(p.numel() for p in run.model.parameters())
    if parameters < MEASURED_FROM:
        return Choice(asked, "fp32", f"{parameters / 1e6:.2f}M parameters, under {MEASURED_FROM / 1e6:g}M: small "
                      "models trained slower in bf16 autocast on the CPUs measured (BENCHMARKS.md)")
    return measured_choice(run.model, probe_batch(run.rows, run.settings.batch_size), device,
                           time_steps=time_steps, cache=cache)


def measured_choice(module, batch, device, *, time_steps: Callable | None = None,
                    cache: Path | None = None) -> Choice:
    """fp32 or bf16 for ``module`` training on ``batch`` (inputs, targets) on a CPU: from the
    cache when this machine measured this shape before, else measured now and cached."""
    cache = cache or cache_path()
    key = cache_key(module, batch)
    rows, width = (int(n) for n in batch[0].shape)
    entry = read_cache(cache).get(key)
    if entry is not None:
        measured = entry.get("batch")  # the batch of the same bucket it was measured on
        return _choice(entry["speedup"], measured if _pair(measured) else [rows, width], cached=entry["measured"])
    started = time.perf_counter()
    try:
        times = measure(module, batch, device, time_steps)
    except Exception as exc:
        from retain.core.learning.retry import first_line, is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        # Training halves its batch when memory runs out (core/learning/retry.py); the probe just stops.
        return Choice("auto", "fp32", f"the probe ran out of memory at {rows}x{width} tokens ({first_line(exc)}): "
                      "fp32, unmeasured", batch=[rows, width], seconds=time.perf_counter() - started)
    # Each round's two steps ran back to back: their ratio is what the machine's load changes least.
    speedup = statistics.median(f / b if b > 0 else 0.0 for f, b in zip(times["fp32"], times["bf16"]))
    entry = {"speedup": speedup, "fp32": statistics.median(times["fp32"]), "bf16": statistics.median(times["bf16"]),
             "rounds": len(times["fp32"]), "batch": [rows, width], "measured": time.strftime("%Y-%m-%d", time.gmtime())}
    write_cache(cache, key, entry)
    choice = _choice(speedup, [rows, width])
    choice.seconds = time.perf_counter() - started
    return choice


def _choice(speedup: float, batch: list[int], cached: str | None = None) -> Choice:
    chose = "bf16" if speedup >= MARGIN else "fp32"
    how = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower" if speedup else "unmeasurable"
    when = f", cached {cached}" if cached else ""
    why = (f"bf16 autocast measured {how} than fp32 on this CPU and model, training steps of "
           f"{batch[0]}x{batch[1]} tokens{when}")
    if chose == "fp32" and speedup >= 1:
        why += f" (bf16 is kept only from {MARGIN:.2f}x)"
    return Choice("auto", chose, why, speedup=round(speedup, 3), batch=batch, cached=cached)


# --- the measurement ---------------------------------------------------------------------------

def probe_batch(rows, batch_size: int):
    """A batch as training makes them: ``batch_size`` rows of about the median length (training
    batches hold rows of similar length), cut to their longest, as the loop cuts its padding."""
    import torch

    from retain.core.learning.lm import IGNORE_INDEX

    if hasattr(rows, "take"):  # a token shard (core/data/shards.py): its rows read from the map
        lengths = rows.lengths()
    else:
        lengths = (rows.y != IGNORE_INDEX).sum(1)
    order = torch.argsort(lengths, stable=True)
    n = min(batch_size, len(order))
    start = max(0, min(len(order) - n, len(order) // 2 - n // 2))
    pick = order[start:start + n]
    width = max(1, int(lengths[pick].max()))
    if hasattr(rows, "take"):
        x, y = rows.take(pick)
        return x[:, :width], y[:, :width]
    return rows.x[pick, :width], rows.y[pick, :width]


def measure(module, batch, device, time_steps: Callable | None = None) -> dict[str, list[float]]:
    """Seconds per training step (forward and backward) in fp32 and in bf16 autocast: one untimed
    step of each, then ``ROUNDS`` rounds of one step of each, and more up to ``MAX_ROUNDS`` while
    the rounds took less than ``PROBE_SECONDS``. Weights, gradients, buffers, mode and the RNG
    are left as they were."""
    import torch

    step = time_steps or _timed_step(module, batch, device)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]), _state_kept(module):
        module.train()
        for precision in times:   # the first step of each builds its kernels: not timed
            step(precision)
        spent = 0.0
        while len(times["fp32"]) < ROUNDS or (len(times["fp32"]) < MAX_ROUNDS and spent < PROBE_SECONDS):
            for precision in times:
                times[precision].append(step(precision))
                spent += times[precision][-1]
    return times


def _timed_step(module, batch, device) -> Callable[[str], float]:
    """One training step's forward and backward in ``precision``, timed. The optimizer's step,
    the same in both precisions, is left out: it would shift both times alike."""
    import torch

    from retain.core.learning.lm import autocast, lm_loss

    x, y = (t.to(device) for t in batch)

    def step(precision: str) -> float:
        started = time.perf_counter()
        with autocast(device, precision):
            logits = module(x)
        lm_loss(logits.float(), y).backward()
        for p in module.parameters():
            p.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started
    return step


@contextlib.contextmanager
def _state_kept(module):
    """Put back what a forward and backward pass may change: gradients, buffers, train/eval."""
    import torch

    grads = {p: p.grad for p in module.parameters()}
    for p in grads:  # else the probe's backward would add into them
        p.grad = None
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    mode = module.training
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads.items():
            p.grad = g
        module.train(mode)


# --- the cache ---------------------------------------------------------------------------------

def cache_path() -> Path:
    """``$XDG_CACHE_HOME/retain/precision.json`` (default ``~/.cache/retain/precision.json``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "retain" / "precision.json"


def cache_key(module, batch) -> str:
    """This machine and this model shape: the CPU's name and the flags that matter, torch's
    version and threads, the module's class and parameter counts, the batch's rows and width
    (rounded up to a power of two)."""
    import torch

    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    rows, width = (int(n) for n in batch[0].shape)
    cpu, flags = cpu_identity()
    return "|".join([cpu, ",".join(flags), f"torch {torch.__version__}", f"threads {torch.get_num_threads()}",
                     type(module).__qualname__, f"params {total}/{trainable}",
                     f"batch {rows}x{1 << max(0, width - 1).bit_length()}"])


def cpu_identity(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU's model name and which of ``FLAGS`` it has (Linux; the platform's name elsewhere)."""
    import platform

    name, flags = None, set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), [f for f in FLAGS if f in flags]


def read_cache(path: Path) -> dict[str, dict]:
    """The cached measurements; an unreadable or malformed file is no cache (measured again,
    then rewritten whole)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["entries"] if data.get("version") == CACHE_VERSION else {}
        return {k: v for k, v in entries.items() if _valid(v)}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _valid(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("measured"), str)
            and isinstance(entry.get("speedup"), (int, float)) and entry["speedup"] >= 0)


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(n, int) for n in value)


def write_cache(path: Path, key: str, entry: dict) -> None:
    """Add ``entry`` under ``key``, written atomically (a temporary file renamed over the old).
    A cache that cannot be written is left alone: the next run measures again."""
    entries = read_cache(path)
    entries[key] = entry
    text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".precision-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass
