"""One ``--auto`` trial: a candidate update with one recipe, in a process of its own.

``run_trial(spec) -> result`` takes and returns plain data (JSON-able dicts and
lists), so any executor can run it: a process pool here, Ray tasks at scale.
The trial runs the cycle's own stages (``core/cycle.py``): it loads the parent
version from the model directory (its weights and its strategies' state, read
only), goes on from the stage results the search sent (``Measured``: the items
it ingested, the starting losses; the precision it chose), trains, and is judged
by the configured validators exactly as ``retain update`` judges a candidate. Its candidate (weights, tokenizer,
strategy state) is written as a version of a scratch model directory, which the
search commits through the normal save path if it wins.

Nothing survives from one trial to the next: each starts from the files of
the parent version and the seed, and (with the default pool) in a fresh process.

One training can be two candidates: a recipe that averages with its parent
(``average``) trains exactly as the same recipe without averaging, which only
differs after the last epoch. With ``spec["unaveraged"]`` (the search asks it of
its first trial) the trial also judges the trained weights before averaging
(what ``average`` kept of them before it averaged, restored) and saves them as a
candidate of their own: the "keep the whole step" remedy, at the cost of one more scoring.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any


def preload() -> None:
    """What every trial imports (a pool's processes do it before the clock starts)."""
    import retain.core.learning.training  # noqa: F401  (avalanche-lib: seconds to import)


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and judge one candidate; see ``search.trial_spec`` for ``spec``'s keys."""
    import torch

    from retain.core import cycle
    from retain.core.config import Config, build
    from retain.core.engine import Engine
    from retain.core.run import FINE_TUNING, Measured
    from retain.core.storage.store import ModelStore
    from retain.core.runtime.world import SOLO

    preload()
    started = time.perf_counter()
    torch.set_num_threads(spec["threads"])
    config = build(Config, spec["config"])
    pm = None
    if spec.get("plugins"):
        import importlib

        from retain.core.pluginmanager import make_plugin_manager

        pm = make_plugin_manager(extra_plugins=[importlib.import_module(name) for name in spec["plugins"]])
    setup = Engine(config, pm=pm, device=spec["device"], world=SOLO).setup  # a trial is one process
    store = ModelStore(spec["model_dir"])
    # The trial writes nothing to the model directory (the search owns its lock).
    run = cycle.load(setup, FINE_TUNING, store, spec["parent"], writes=False)
    run.take(Measured.from_json(spec))  # what the search's own ingest and measure established
    run.drift = _drift(store, spec["parent"], config, run.retention_texts)
    run.timings["evaluate_before"] = spec["evaluate_seconds"]  # the parent's: the same texts were scored
    run.precision_choice = spec.get("precision")  # ... in the search's precision, not measured again here
    try:
        with cycle.strategies_registered(setup, run):
            judged = cycle.train_and_judge(setup, run, store)
            result = _result(run, judged, spec, spec["recipe"], save_candidate(run, spec["scratch"]), started)
            if spec.get("unaveraged") and (averaging := _averaging(run)) is not None:
                again = time.perf_counter()
                averaging.restore_trained(run.model)
                run.after = None  # the averaged candidate's scores: these weights are scored anew
                judged = cycle.gate(setup, run, store)
                result["unaveraged"] = _result(run, judged, spec, spec["unaveraged"],
                                               save_candidate(run, spec["scratch"] + "-unaveraged"), again)
    finally:  # the trial's token shard goes into no version, and its process ends with os._exit
        cycle.release_scratch(run)
    return result


def _result(run, judged, spec: dict, recipe: dict, candidate: str, started: float) -> dict:
    from retain.core import cycle

    return {
        "number": spec["number"], "recipe": recipe, "accepted": judged.accepted,
        "seconds": run.timings["train"], "wall_seconds": time.perf_counter() - started,
        "limit_seconds": spec["limit_seconds"], **judged.to_json(), **cycle.Training.of(run).to_json(),
        "settings": asdict(run.settings), "counts": dict(run.counts), "timings": dict(run.timings),
        "candidate": candidate, "pid": os.getpid(),
    }


def _averaging(run):
    """``average``'s plugin, if it averaged this candidate (None: no ``average``, or it kept the
    whole step): it holds the weights training left before averaging (``trained``)."""
    plugin = next((getattr(s, "plugin", None) for s in run.strategies if s.name == "average"), None)
    if plugin is None or plugin.trained is None or min(plugin.weight, plugin.tied_share) >= 1:
        return None
    return plugin


def _drift(store, parent: str, config, retention_texts: list[str]):
    """The same drift reference as the update's own (``core/quality/drift.py``): same sample, same seed."""
    from retain.core.quality import drift

    return drift.baseline(store, parent, config.validation.eval_min_items, config.seed, retention_texts)


def save_candidate(run, scratch: str) -> str:
    """The candidate as version 0001 of a scratch model directory: weights, tokenizer and each
    strategy's state, checksummed like any version (``core/storage/store.py``)."""
    from retain.core.storage.store import ModelStore
    from retain.core.learning.strategy import write_state

    store = ModelStore(scratch)
    writer = store.begin_version()
    try:
        entry = run.lm.save(writer)
        for strategy in run.strategies:
            write_state(writer, strategy)
        writer.finish({"model": entry, "architecture": entry.get("architecture"), "kind": "candidate",
                       "status": "candidate", "parent": run.parent})
    except BaseException:
        writer.abandon()
        raise
    return scratch
