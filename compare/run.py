"""``retain compare``: anti-forgetting strategies side by side on one stream of experiences.

A scenario (a ``register_scenarios`` plugin: ``text``, ``split-digits``, or a
third party's) builds the stream once; every strategy is then run on it from
the same starting point with the same seeds. A strategy is any registered
name, a composition ``a+b`` (``naive+ewc``: naive's learning rate with EWC's
penalty), or ``full_retrain``: after each experience, train from scratch on
everything so far (the expensive baseline). A part may carry its own options,
``name:key=value:...`` (``lora:rank=4,lora:rank=16+replay``): the same strategy
at two settings in one comparison.

Strategies are independent, so with ``--jobs N`` they run in N spawned worker
processes, each limited to ``cores // N`` torch threads; ``--jobs 1`` runs them
one after another in this process; ``--ray [ADDRESS]`` runs each as a Ray task
(``raytasks.py``), on a cluster or on a Ray started here. Every worker reports a hash of the data it
was shown, and the comparison refuses results computed on different data.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from retain.core.runtime import interrupts
from retain.core.config import Config
from retain.core.errors import ConfigError, PluginError
from retain.core.pluginmanager import Registry, default_plugin_manager

from .metrics import old_and_new, stream_metrics

FULL_RETRAIN = "full_retrain"
FULL_RETRAIN_KEEP = "full_retrain_keep"  # the same, keeping the base model's tokenizer
BASELINES = (FULL_RETRAIN, FULL_RETRAIN_KEEP)


@dataclass
class CompareRequest:
    strategies: list[str] | str
    scenario: str = "text"                 # a registered scenario: "text" (with --daily), "split-digits"
    data: list[str] = field(default_factory=list)
    model: Path | None = None
    base_data: list[str] = field(default_factory=list)
    daily: int | None = None
    dup_share: float = 0.25
    days: int | None = None
    setting: str = "class"
    test_fraction: float | None = None     # default: 0.2 for text, 0.3 for Split-Digits
    seed: int = 0
    jobs: int = 1
    epochs: int | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    gate: bool = False                     # text: let the validators reject updates, as in `retain update`
    ray: str | None = None                 # run each strategy as a Ray task: a cluster's address, or "local"


def parse_strategies(text: str | list[str]) -> list[str]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ConfigError("--strategies is empty; e.g. --strategies naive,low_lr,full_retrain")
    if len(set(names)) != len(names):
        raise ConfigError(f"--strategies names a strategy twice: {','.join(names)}")
    return names


def parse_label(label: str) -> tuple[list[str], dict[str, dict]]:
    """``"lora:rank=4+replay"`` -> (["lora", "replay"], {"lora": {"rank": 4}}): the strategies of a
    label, and the options its parts set (values are YAML, as with --set)."""
    import yaml

    names, options = [], {}
    for part in label.split("+"):
        name, *settings = part.split(":")
        names.append(name)
        for setting in settings:
            key, sep, raw = setting.partition("=")
            if not sep or not key:
                raise ConfigError(f"'{label}': expected name:key=value, got {part!r}")
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            options.setdefault(name, {})[key] = value
    return names, options


def with_options(config: Config, options: dict[str, dict]) -> Config:
    """``config`` with a label's own strategy options over ``config.options``."""
    if not options:
        return config
    import copy

    out = copy.deepcopy(config)
    for name, values in options.items():
        out.options[name] = {**out.options.get(name, {}), **values}
    return out


def check_strategies(names: list[str], registry: Registry, config: Config) -> None:
    """Every part is installed and its options are valid: one clear error here, not one per worker."""
    known = registry.by_kind["strategies"]
    for label in names:
        parts, options = parse_label(label)
        own = with_options(config, options)
        if set(BASELINES) & set(parts) and len(parts) > 1:
            raise ConfigError(f"'{label}': {parts[0] if parts[0] in BASELINES else parts[1]} is a baseline, "
                              "it does not compose")
        if len(set(parts)) != len(parts):
            raise ConfigError(f"'{label}' names a strategy twice")
        for part in parts:
            if part in BASELINES:
                continue
            if part not in known:
                raise PluginError(f"unknown strategy '{part}' (known: {', '.join(sorted(known))}, "
                                  f"and the baselines {', '.join(BASELINES)}); `retain strategies` lists what is installed")
            registry.build("strategies", part, own)


# --- one strategy's run (worker process, or this one with --jobs 1) -------------------------

def _init_worker(threads: int) -> None:
    import signal

    import torch

    # Ctrl-C reaches the whole process group: the parent handles it (and ends the workers),
    # a worker must not print a KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes); torch tensors live outside tracemalloc.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if os.uname().sysname == "Darwin" else 1024)


def run_one(label: str, scenario: Any, stream: Any, config: Config, seed: int) -> dict:
    """Run one strategy over the whole stream; everything it reports is JSON-able."""
    preload = getattr(scenario, "preload", None)
    if preload is not None:
        preload()  # the training stack's import time is not the strategy's
    started = time.perf_counter()
    hashes = stream.fingerprints()
    names, options = parse_label(label)
    with tempfile.TemporaryDirectory(prefix="retain-compare-") as tmp:
        token = interrupts.on_interrupt(lambda: shutil.rmtree(tmp, ignore_errors=True))
        try:
            result = scenario.run(names, stream, with_options(config, options), seed, Path(tmp))
        finally:
            interrupts.release(token)
    result.update(strategy=label, data_hashes=hashes, wall_seconds=time.perf_counter() - started,
                  peak_rss_mib=_peak_rss_mib(), pid=os.getpid())
    return result


# --- the whole comparison -----------------------------------------------------------------

def run_compare(req: CompareRequest, *, console=None) -> dict:
    req.strategies = parse_strategies(req.strategies)
    if req.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {req.jobs}")
    if req.ray is not None:
        from retain.raytasks import require_ray

        require_ray()  # before the scenario is built: without Ray nothing else need happen
    registry = Registry.of(default_plugin_manager())
    scenarios = registry.by_kind["scenarios"]
    if req.scenario not in scenarios:
        raise ConfigError(f"unknown --scenario {req.scenario!r} ({', '.join(sorted(scenarios))})")
    scenario = registry.build("scenarios", req.scenario, None)
    started = time.perf_counter()
    stream, config = scenario.build(req, registry)
    check_strategies(req.strategies, registry, config)
    notes = list(getattr(stream, "notes", []))
    say = console.print if console is not None else (lambda *a, **k: None)
    for note in notes:
        say(f"[yellow]note:[/] {note}")
    exps = stream.experiences
    where = f"--ray {req.ray}" if req.ray is not None else f"--jobs {req.jobs}"
    say(f"[bold]retain compare[/]: {len(req.strategies)} strategies on {stream.name} "
        f"({len(exps)} experiences: {', '.join(e.name for e in exps)}), {where}")
    results: dict[str, dict] = {}
    args = [(label, scenario, stream, config, req.seed) for label in req.strategies]
    ray_startup = None
    if req.ray is not None:
        from retain.raytasks import RayExecutor

        # A local Ray gets --jobs CPUs when given (all of them otherwise); a task takes one.
        ray = RayExecutor(req.ray, num_cpus=req.jobs if req.jobs > 1 else None)
        ray_startup = ray.startup_seconds
        say(f"  Ray {'started here' if ray.started_here else 'already running'} ({ray_startup:.1f}s)")
        try:
            _run_all(ray, args, results, say)
        finally:
            ray.shutdown()
    elif req.jobs == 1:
        for a in args:
            results[a[0]] = run_one(*a)
            say(f"  {a[0]}: done in {results[a[0]]['wall_seconds']:.1f}s")
    else:
        threads = max(1, (os.cpu_count() or 1) // req.jobs)
        # spawn: a clean interpreter per worker (fork would copy torch's thread pools);
        # one task per worker so each peak memory is that strategy's own.
        with ProcessPoolExecutor(max_workers=req.jobs, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,),
                                 max_tasks_per_child=1) as pool:
            # An interrupt ends this process at once (core/runtime/interrupts.py): end the workers with it.
            token = interrupts.on_interrupt(lambda: [p.kill() for p in list((pool._processes or {}).values())])
            _run_all(pool, args, results, say)
            interrupts.release(token)
    learned_before = nothing_new_notes(stream, results)
    for note in learned_before:
        say(f"[yellow]note:[/] {note}")
    summary = summarize(req, stream, config, req.strategies, results, time.perf_counter() - started)
    summary["ray_startup_seconds"] = ray_startup
    summary["notes"] = notes + learned_before
    return summary


def nothing_new_notes(stream, results: dict[str, dict]) -> list[str]:
    """The experiences some strategy learned nothing from: the base model had already learned
    every item of them (its ledger skipped them all), so their FWT and the rows after them
    measure no training at all, only a model left as it was."""
    notes = []
    for i, exp in enumerate(stream.experiences[1:]):
        idle = [label for label, r in results.items()
                if i < len(r.get("stages") or []) and r["stages"][i].get("status") == "nothing_new"]
        if idle:
            notes.append(f"experience '{exp.name}': nothing new to learn for {', '.join(idle)}: the base model "
                         "had already learned every item of it, so nothing was trained on it (its FWT is "
                         "+0.000 by construction); compare on data the base has not learned")
    return notes


def _run_all(executor, args: list[tuple], results: dict[str, dict], say) -> None:
    """Every strategy's ``run_one`` on ``executor`` (a process pool, or Ray), as they finish."""
    futures = {executor.submit(run_one, *a): a[0] for a in args}
    for fut in as_completed(futures):
        results[futures[fut]] = fut.result()
        say(f"  {futures[fut]}: done in {results[futures[fut]]['wall_seconds']:.1f}s")


def stage_costs(stages: list[dict]) -> dict:
    """What one update costs beyond time: weights it trained, bytes its version takes on disk."""
    trainable = [s["trainable_parameters"] for s in stages if s.get("trainable_parameters")]
    sizes = [s["version_bytes"] for s in stages if s.get("version_bytes")]
    return {"trainable_parameters": max(trainable) if trainable else None,
            "version_mib": sum(sizes) / len(sizes) / 2**20 if sizes else None}


def check_identical(results: dict[str, dict]) -> dict:
    """The data hashes every strategy reported, refusing results computed on different data."""
    first_label, first = next(iter(results.items()))
    for label, res in results.items():
        if res["data_hashes"] != first["data_hashes"]:
            raise RuntimeError(f"strategies '{first_label}' and '{label}' were shown different data "
                               "(a bug in retain compare)")
    return first["data_hashes"]


def summarize(req: CompareRequest, stream, config: Config, names: list[str], results: dict[str, dict],
              seconds: float) -> dict:
    out_results = {}
    for label in names:
        res = dict(results[label])
        if res.get("supported"):
            R = res["R"]
            m = stream_metrics(R, higher_is_better=stream.higher_is_better, initial=res["initial"],
                               fwt_from=stream.fwt_from)
            old, new = old_and_new(R)
            if stream.old_is_base:
                # Old data is the base model's: the experiences are one new domain, and averaging
                # them in would mix that domain's higher loss into "old". Stage 0 learned nothing new.
                old, new = [row[0] for row in R], [None, *new[1:]]
            if stream.metric == "loss":
                res.update(final_perplexity=math.exp(m.average_final), old_rise=R[-1][0] - R[0][0])
                res.update(stage_costs(res.get("stages", [])))
            res.update(metrics=m.to_json(), old=old, new=new, final_old=old[-1], final_new=new[-1])
        out_results[label] = res
    return {
        "command": "retain compare",
        "scenario": {"name": stream.name, "setting": getattr(stream, "setting", None),
                     "metric": stream.metric, "higher_is_better": stream.higher_is_better,
                     "experiences": stream.describe(), "base_model": str(req.model) if req.model else None,
                     "rejected_inputs": getattr(stream, "rejected", 0)},
        "strategies": names,
        "seed": req.seed,
        "jobs": req.jobs,
        "gate": req.gate if stream.metric == "loss" else None,
        "identical_data": True,
        "data_hashes": check_identical(results),
        "results": out_results,
        "config": config.to_dict(),
        "seconds": seconds,
        "ray": req.ray,
        "memory_note": ("peak_rss_mib: each strategy's own worker process" if req.jobs > 1 or req.ray else
                        "peak_rss_mib: this process so far (--jobs 1 runs strategies in turn; "
                        "use --jobs 2+ for each strategy's own peak)"),
    }
