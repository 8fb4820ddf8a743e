"""``retain compare``: anti-forgetting strategies side by side on one stream of experiences.

Every strategy starts from the same base checkpoint (a private copy of
``--model``, or for Split-Digits the same seeded random init) and is shown the
same experiences with the same seeds. A strategy is any registered name, a
composition ``a+b`` (``naive+ewc``: naive's learning rate with EWC's penalty),
or ``full_retrain``: after each experience, train from scratch on the base data
plus every experience so far (the expensive baseline).

Strategies are independent, so with ``--jobs N`` they run in N spawned worker
processes, each limited to ``cores // N`` torch threads; ``--jobs 1`` runs them
one after another in this process. Text streams go through ``Engine.update``
(and ``Engine.train`` for full_retrain) exactly as ``retain update`` would, so
strategy state persists between updates the way it does for users.
"""

from __future__ import annotations

import copy
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

from .config import Config, _apply, build_dataclass, load_config, parse_override
from .errors import ConfigError, PluginError, SourceError
from .items import Item
from .metrics import old_and_new, stream_metrics
from .scenarios import (DigitsStream, TextExperience, TextStream, daily_stream, fingerprint, split_digits,
                        text_stream)

FULL_RETRAIN = "full_retrain"
# Split-Digits training defaults (the MLP's, not the LM's); --epochs and --set override them.
DIGITS_DEFAULTS = ["device=cpu", "full_training.learning_rate=0.001", "fine_tuning.learning_rate=0.0001",
                   "full_training.epochs=10", "fine_tuning.epochs=10", "full_training.batch_size=32",
                   "fine_tuning.batch_size=32"]


@dataclass
class CompareRequest:
    strategies: list[str]
    scenario: str = "text"                 # "text" (with --daily: daily updates) or "split-digits"
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


def parse_strategies(text: str | list[str]) -> list[str]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ConfigError("--strategies is empty; e.g. --strategies naive,low_lr,full_retrain")
    if len(set(names)) != len(names):
        raise ConfigError(f"--strategies names a strategy twice: {','.join(names)}")
    return names


def check_strategies(names: list[str], registry) -> None:
    known = registry.by_kind["strategies"]
    for label in names:
        parts = label.split("+")
        if FULL_RETRAIN in parts and len(parts) > 1:
            raise ConfigError(f"'{label}': {FULL_RETRAIN} is a baseline, it does not compose")
        for part in parts:
            if part != FULL_RETRAIN and part not in known:
                raise PluginError(f"unknown strategy '{part}' (known: {', '.join(sorted(known))}, "
                                  f"and {FULL_RETRAIN}); `retain strategies` lists what is installed")


# --- building the stream (parent process) -------------------------------------------

def _config(req: CompareRequest, base: dict | None, extra: list[str]) -> Config:
    overrides = [*extra, *req.overrides, f"seed={req.seed}"]
    if req.config is not None or base is None:
        return load_config(req.config, overrides)
    data = copy.deepcopy(base)  # the base model's own config: full_retrain then rebuilds the same model
    for item in overrides:
        key, value = parse_override(item)
        _apply(data, key, value)
    return build_dataclass(Config, data)


def _items(specs: list[str], registry, config: Config) -> tuple[list[Item], int]:
    from .engine import collect, preprocess

    items, rejects = collect(specs, registry, config)
    clean, pre_rejects = preprocess(items, registry, config)
    return clean, len(rejects) + len(pre_rejects)


def build_text_stream(req: CompareRequest, registry) -> tuple[TextStream, Config]:
    from .engine import _sample
    from .store import ModelStore

    if req.model is None:
        raise ConfigError("a text compare needs the base model: --model BASE")
    if not req.data:
        raise ConfigError("a text compare needs new data: --data (one per experience, or with --daily N)")
    store = ModelStore(req.model)
    version = store.current()
    extra = [f"fine_tuning.epochs={req.epochs}"] if req.epochs else []
    config = _config(req, store.manifest(version).get("config"), extra)
    fraction = 0.2 if req.test_fraction is None else req.test_fraction
    if not 0 < fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {fraction}")
    held = _sample(store.holdout(store.chain(version)), config.validation.eval_max_items, req.seed)
    if not held:
        raise SourceError(f"the base model in {req.model} holds no held-out items to measure forgetting "
                          "on; train it with validation.retention_fraction > 0")
    base_test = [Item(r["text"], "holdout", r.get("origin", ""), None) for r in held]
    base_items, rejected = _items(req.base_data, registry, config) if req.base_data else ([], 0)
    # The base model's test items are never trained on, not even by full_retrain.
    base_items = [it for it in base_items if it.hash not in {t.hash for t in base_test}]
    if req.daily is not None:
        new, r = _items(req.data, registry, config)
        experiences = daily_stream(new, req.daily, req.dup_share, test_fraction=fraction, seed=req.seed,
                                   base_items=base_items, days=req.days)
    else:
        groups, r = [], 0
        for spec in req.data:
            items, r_spec = _items([spec], registry, config)
            r += r_spec
            groups.append((Path(spec.split(":", 1)[-1]).stem or spec, items))
        experiences = text_stream(groups, test_fraction=fraction, seed=req.seed)
    rejected += r
    tested = {it.hash for e in experiences for it in e.test}
    base_items = [it for it in base_items if it.hash not in tested]
    stream = TextStream("daily" if req.daily is not None else "text",
                        [TextExperience("base", [], base_test), *experiences], base_items, rejected)
    return stream, config


# --- one strategy's run (worker process, or this one with --jobs 1) -------------------------

def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes); torch tensors live outside tracemalloc.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if os.uname().sysname == "Darwin" else 1024)


def run_one(label: str, stream: TextStream | DigitsStream, config: Config, seed: int,
            base_model: Path | None) -> dict:
    """Run one strategy over the whole stream; everything it reports is JSON-able."""
    # Import the training stack first: its import time is not the strategy's.
    from . import digits, engine  # noqa: F401

    started = time.perf_counter()
    names = label.split("+")
    if isinstance(stream, DigitsStream):
        hashes = {e.name: {"train": fingerprint(e.x_train, e.y_train), "test": fingerprint(e.x_test, e.y_test)}
                  for e in stream.experiences}
    else:
        hashes = {e.name: {"train": fingerprint(e.train), "test": fingerprint(e.test)} for e in stream.experiences}
        hashes["base"]["train"] = fingerprint(stream.base_items)  # what full_retrain retrains on
    with tempfile.TemporaryDirectory(prefix="retain-compare-") as tmp:
        if isinstance(stream, DigitsStream):
            from .digits import run_strategy
            result = run_strategy(names, stream, config, seed, Path(tmp))
        else:
            result = run_text_strategy(names, stream, config, base_model, Path(tmp))
    result.update(strategy=label, data_hashes=hashes, wall_seconds=time.perf_counter() - started,
                  peak_rss_mib=_peak_rss_mib(), pid=os.getpid())
    return result


def run_text_strategy(names: list[str], stream: TextStream, config: Config, base_model: Path,
                      scratch: Path) -> dict:
    from .engine import Engine, Output, load_version, resolve_device
    from .errors import UpdateRejected
    from .model import encode_texts, per_text_loss
    from .store import ModelStore

    model_dir = scratch / "model"
    shutil.copytree(base_model, model_dir, ignore=shutil.ignore_patterns(".lock"))
    full = names == [FULL_RETRAIN]
    cfg = copy.deepcopy(config)
    cfg.validation.holdout_fraction = 0.0  # compare holds out its own test items, before the engine
    if full:
        cfg.validation.retention_fraction = 0.0  # and base data's test items are already removed
    else:
        cfg.fine_tuning.strategy = list(names)
    device = resolve_device(cfg.device)
    tests = [[it.text for it in e.test] for e in stream.experiences]

    def evaluate() -> list[float]:
        loaded = load_version(ModelStore(model_dir), device=device)
        seq = min(cfg.fine_tuning.max_seq_length, loaded.model.arch.context)
        row = []
        for texts in tests:
            x, y, owner = encode_texts(loaded.tokenizer, texts, seq)
            row.append(float(per_text_loss(loaded.model, x, y, owner, len(texts), device).mean()))
        return row

    rows, stages, train_seconds = [evaluate()], [], 0.0
    for i, exp in enumerate(stream.experiences[1:], 1):
        t0 = time.perf_counter()
        engine = Engine(cfg, output=Output(None))
        stage: dict[str, Any] = {"experience": exp.name}
        try:
            if full:
                items = stream.base_items + [it for e in stream.experiences[1:i + 1] for it in e.train]
                report = engine.train([], model_dir, items=items)
            else:
                report = engine.update([], model_dir, items=exp.train)
            stage["status"] = report.get("status") or "trained"
            stage["verdicts"] = {v["validator"]: v["status"] for v in report.get("verdicts", [])}
            if report.get("version"):
                stage["trained_hash"] = ModelStore(model_dir).manifest(report["version"]).get("data_hash")
            stage.update(trained=report["counts"]["trained"], duplicates=report["counts"]["duplicates"])
        except UpdateRejected as exc:  # the gate kept the previous model, as it would for a user
            stage.update(status="rejected", reason=str(exc),
                         verdicts={v["validator"]: v["status"] for v in (exc.report or {}).get("verdicts", [])})
        stage["seconds"] = time.perf_counter() - t0
        train_seconds += stage["seconds"]
        stages.append(stage)
        rows.append(evaluate())
    return {"supported": True, "R": rows, "initial": rows[0], "stages": stages,
            "train_seconds": train_seconds}


# --- the whole comparison -----------------------------------------------------------------

def run_compare(req: CompareRequest, *, console=None) -> dict:
    from .pluginmanager import Registry, make_plugin_manager

    names = parse_strategies(req.strategies)
    if req.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {req.jobs}")
    registry = Registry(make_plugin_manager())
    check_strategies(names, registry)
    started = time.perf_counter()
    if req.scenario == "split-digits":
        fraction = 0.3 if req.test_fraction is None else req.test_fraction
        stream = split_digits(req.setting, seed=req.seed, test_fraction=fraction)
        extra = list(DIGITS_DEFAULTS)
        if req.epochs:
            extra += [f"full_training.epochs={req.epochs}", f"fine_tuning.epochs={req.epochs}"]
        config = _config(req, None, extra)
        base_model = None
    elif req.scenario == "text":
        stream, config = build_text_stream(req, registry)
        base_model = Path(req.model)
        if not req.gate:
            # compare measures what each strategy does to the model; a gate that rejected, say,
            # naive's updates would keep the base model and hide the very forgetting measured.
            config.validators = []
        if any(n == FULL_RETRAIN for n in names) and not stream.base_items:
            raise ConfigError(f"{FULL_RETRAIN} retrains from scratch on the base data plus the new "
                              "data: pass the base model's training data with --base-data")
    else:
        raise ConfigError(f"unknown --scenario {req.scenario!r} (text, split-digits)")

    from .strategy import Strategy

    notes, stateless_base = [], []
    for label in names:  # bad strategy options are one clear error here, not one per worker
        for part in label.split("+"):
            if part != FULL_RETRAIN:
                built = registry.build("strategies", part, config)
                stateful = type(built).state_dict is not Strategy.state_dict
                if isinstance(stream, TextStream) and stateful and part not in config.fine_tuning.strategy:
                    stateless_base.append(part)
    if stateless_base:
        names_ = ",".join(dict.fromkeys(stateless_base))
        notes.append(f"the base model was trained without {names_} among its strategies, so they start "
                     f"without the base's state (replay buffer, importances); `retain train --strategy "
                     f"{names_}` records it")
    say = console.print if console is not None else (lambda *a, **k: None)
    for note in notes:
        say(f"[yellow]note:[/] {note}")
    exps = stream.experiences
    say(f"[bold]retain compare[/]: {len(names)} strategies on {stream.name} "
        f"({len(exps)} experiences: {', '.join(e.name for e in exps)}), --jobs {req.jobs}")
    results: dict[str, dict] = {}
    args = [(label, stream, config, req.seed, base_model) for label in names]
    if req.jobs == 1:
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
            futures = {pool.submit(run_one, *a): a[0] for a in args}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                say(f"  {futures[fut]}: done in {results[futures[fut]]['wall_seconds']:.1f}s")
    summary = summarize(req, stream, config, names, results, time.perf_counter() - started)
    summary["notes"] = notes
    return summary


def _check_identical(results: dict[str, dict]) -> dict:
    first_label, first = next(iter(results.items()))
    for label, res in results.items():
        if res["data_hashes"] != first["data_hashes"]:
            raise RuntimeError(f"strategies '{first_label}' and '{label}' were shown different data "
                               "(a bug in retain compare)")
    return first["data_hashes"]


def summarize(req: CompareRequest, stream, config: Config, names: list[str], results: dict[str, dict],
              seconds: float) -> dict:
    text = isinstance(stream, TextStream)
    out_results = {}
    for label in names:
        res = dict(results[label])
        if res.get("supported"):
            R = res["R"]
            # Text: the base model is experience 0 and the reference for FWT (see metrics.py).
            m = stream_metrics(R, higher_is_better=stream.higher_is_better, initial=res["initial"],
                               fwt_from=2 if text else 1)
            old, new = old_and_new(R)
            if text:
                # Old data is the base model's: the days are one new domain, and averaging them
                # in would mix that domain's higher loss into "old". Stage 0 learned nothing new.
                old, new = [row[0] for row in R], [None, *new[1:]]
                res.update(final_perplexity=math.exp(m.average_final), old_rise=R[-1][0] - R[0][0])
            res.update(metrics=m.to_json(), old=old, new=new, final_old=old[-1], final_new=new[-1])
        out_results[label] = res
    if text:
        experiences = [{"name": e.name, "train": len(e.train), "test": len(e.test),
                        "injected_duplicates": e.injected_duplicates} for e in stream.experiences]
    else:
        experiences = [{"name": e.name, "classes": e.classes, "task": e.task, "train": len(e.y_train),
                        "test": len(e.y_test)} for e in stream.experiences]
    return {
        "command": "retain compare",
        "scenario": {"name": stream.name, "setting": getattr(stream, "setting", None),
                     "metric": stream.metric, "higher_is_better": stream.higher_is_better,
                     "experiences": experiences, "base_model": str(req.model) if req.model else None,
                     "rejected_inputs": getattr(stream, "rejected", 0)},
        "strategies": names,
        "seed": req.seed,
        "jobs": req.jobs,
        "gate": req.gate if text else None,
        "identical_data": True,
        "data_hashes": _check_identical(results),
        "results": out_results,
        "config": config.to_dict(),
        "seconds": seconds,
        "memory_note": ("peak_rss_mib: each strategy's own worker process" if req.jobs > 1 else
                        "peak_rss_mib: this process so far (--jobs 1 runs strategies in turn; "
                        "use --jobs 2+ for each strategy's own peak)"),
    }
