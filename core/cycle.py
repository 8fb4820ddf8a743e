"""The update cycle, top to bottom: one function per stage, and the compositions every entry
point runs. This module alone announces steps to the renderer (``step_started``/``step_finished``).

    load     the parent version, nothing (a full training), or the model to import   -> Run
    ingest   collect, preprocess, dedupe, hold out (core/data/ingest.py)                  -> Ingested
    prepare  tokenize, the model to train, precision (core/storage/models.py, workload.py)    -> Prepared
    measure  the starting model's held-out losses (core/quality/evaluation.py)                -> Measured
    train    the epoch loop (core/learning/training.py)                                       -> Training
    gate     score the candidate, the validators judge it (core/quality/gate.py)              -> Judged
    commit   the version, atomically; CURRENT moves if accepted (core/storage/commit.py)      -> UpdateReport
    advise   fine-tune again or fully retrain? (core/quality/retrain.py)                      -> UpdateReport

Each stage takes the ``Setup`` (config, plugins, processes), the ``Run`` the stages before it
filled in (``core/run.py``), and what it needs besides; it adds its part to the run and
returns its small typed result. Entry points (core/engine.py, trainer.py, tune/, versions.py,
the CLI's ``status --data``) call these functions with options and never re-wire them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from retain.core.quality import evaluation, gate as gates
from retain.core.data import ingest as ingesting, workload
from retain.core.runtime import interrupts, precision as precisions
from retain.core.storage.commit import commit as commit_version
from retain.core.config import Config
from retain.core.errors import ConfigError, RetainError, SourceError
from retain.core.data.items import Item
from retain.core.data.spool import Joined, heap_frozen
from retain.core.loggers import Loggers
from retain.core.storage.models import LoadedVersion, count_parameters, load_version, model_config, prepare_model, \
    resolve_device, resolve_precision
from retain.core.plugin_errors import reports_plugin_errors
from retain.core.pluginmanager import Registry
from retain.core.runtime.preload import Preload
from retain.core.run import FINE_TUNING, IMPORT, Measured, Run
from retain.core.storage.report import UpdateReport
from retain.core.storage.store import ModelStore
from retain.core.learning.strategy import TrainSettings, build_strategies
from retain.core.quality.validation import Verdict
from retain.core.storage.versions import auto_prune
from retain.core.runtime.world import SOLO, World


@dataclass(frozen=True)
class Setup:
    """What every stage runs with: the config, the plugins, the processes the run spans
    (``core/runtime/world.py``), the device name asked for. ``strict``: a bad record fails the run;
    ``allow_empty``: ``--data`` with no usable item is a warning, not a ``SourceError``.
    ``announces``: False for stages run where nobody follows a run (``retain validate``):
    no step, no verdict is told to the listeners."""

    config: Config
    pm: Any
    registry: Registry
    world: World = SOLO
    device_name: str = "auto"
    strict: bool = False
    allow_empty: bool = False
    listeners: tuple = ()
    announces: bool = True

    @functools.cached_property
    def dedupers(self) -> list[tuple[str, Any]]:
        return ingesting.build_dedupers(self.registry, self.config)


# --- how the cycle speaks: steps announced, warnings, listeners -------------------------------

@contextlib.contextmanager
def step(setup: Setup, run: Run, name: str) -> Iterator[dict]:
    """A step of the cycle, told to the listeners; the caller fills in what it did (``info``)."""
    if setup.announces:
        setup.pm.hook.step_started(run=run.view(), step=name)
    started = time.perf_counter()
    info: dict[str, Any] = {}
    yield info
    run.timings[name] = time.perf_counter() - started
    if setup.announces:
        setup.pm.hook.step_finished(run=run.view(), step=name, info=info, seconds=run.timings[name])


def warn(setup: Setup, run: Run | None, message: str) -> None:
    setup.pm.hook.warning_raised(run=run.view() if run is not None else None, message=message)


@contextlib.contextmanager
def listening(setup: Setup) -> Iterator[None]:
    """The listeners (a renderer) registered on the plugin manager while a run lasts, and the
    config's loggers (``core/loggers.py``: rank 0 alone reports; one that fails is a warning)."""
    loggers = Loggers({}, functools.partial(warn, setup))
    if setup.world.is_writer:
        loggers = Loggers.of(setup.registry, setup.config, functools.partial(warn, setup))
    listeners = [*setup.listeners, *([loggers] if loggers else [])]
    for listener in listeners:
        setup.pm.register(listener)
    error = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        loggers.close(error)
        for listener in listeners:
            setup.pm.unregister(listener)


@contextlib.contextmanager
def strategies_registered(setup: Setup, run: Run) -> Iterator[None]:
    """Strategies are plugins for the run: their hookimpls (training_penalty, ...) fire."""
    for strategy in run.strategies:
        setup.pm.register(strategy, name=f"strategy:{strategy.name}:{run.id}")
    try:
        yield
    finally:
        for strategy in run.strategies:
            setup.pm.unregister(strategy)


def recover(setup: Setup, store: ModelStore) -> None:
    """Tidy up after an interrupted run, rebuild a lost ledger (call with the lock held);
    each note is a warning."""
    for note in store.recover():
        warn(setup, None, note)


# --- 1. load ----------------------------------------------------------------------------------

def load(setup: Setup, kind: str, store: ModelStore, base: str | LoadedVersion | None, *,
         writes: bool = True, source: Path | None = None) -> Run:
    """A new ``Run`` from ``base`` (a version name, a loaded version, or None for a full
    training; ``source`` for an import), with its strategies and their state; seeds set."""
    import torch

    # The model directory remembers its model: what the config does not ask for explicitly
    # (architecture, tokenizer, family) is the model's own. An import makes a new one.
    cfg = setup.config if kind == IMPORT else model_config(
        store, setup.config, base.version if isinstance(base, LoadedVersion) else base)
    device = resolve_device(setup.device_name)
    run = Run(uuid.uuid4().hex[:12], kind, cfg, store.root, parent=None, writes=writes,
              device=device, precision=resolve_precision(cfg.precision, device))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    with step(setup, run, "load") as info:
        if kind == IMPORT:
            info.update(_import(setup, run, source))
        else:
            if isinstance(base, str):
                base = load_version(store, base, registry=setup.registry)
            run.base, run.parent = base, base.version if base is not None else None
            if run.full and cfg.full_training.tokenizer == "keep":
                run.tokenizer_from = _tokenizer_to_keep(setup, store).lm
            info.update(version=run.parent, parameters=count_parameters(base.lm) if base else None)
        run.strategies = build_strategies(setup.registry, run.config, run.base)
    wanted = run.config.fine_tuning.max_seq_length
    if kind == IMPORT and wanted > run.lm.context:  # the model's own: its updates clamp to it quietly
        warn(setup, run, f"fine_tuning.max_seq_length {wanted} exceeds the imported model's context "
                         f"{run.lm.context}: its updates use {run.lm.context} (said once, here)")
    return run


def _import(setup: Setup, run: Run, source: Path) -> dict:
    from retain.core.storage.imports import import_source

    run.config = copy.deepcopy(run.config)  # the family records in it what it imported
    run.lm, run.origin = import_source(setup.registry, run.config, source)
    return {"version": None, "source": str(source), "family": run.origin["family"],
            "parameters": count_parameters(run.lm)}


def _tokenizer_to_keep(setup: Setup, store: ModelStore) -> LoadedVersion:
    if not store.exists():
        raise ConfigError("config key 'full_training.tokenizer' is 'keep', but there is no current model "
                          f"in {store.root} whose tokenizer to keep; use 'new' for a first training")
    return load_version(store, registry=setup.registry)


# --- 2. ingest --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ingested:
    """New data in: the items to train on (a view of the run's spool, ``core/data/spool.py``:
    read them, do not list them all), those held out, the counts (``counts["new"]``...)."""

    items: Sequence[Item]
    holdout: tuple[Item, ...]
    counts: dict[str, int]

    @classmethod
    def of(cls, run: Run) -> "Ingested":
        return cls(run.items, tuple(run.holdout), dict(run.counts))

    @property
    def learned(self) -> Sequence[Item]:
        """What an update would learn: the hold-out is split off the same new items (the two
        one after the other, neither copied: iterate them, do not list them all)."""
        return Joined(self.items, self.holdout)


def ingest(setup: Setup, run: Run, store: ModelStore, data: list[str], items: list[Item] | None, *,
           all_usable: bool = False) -> Ingested:
    """Collect, preprocess, dedupe and hold out (``core/data/ingest.py``). ``all_usable``: collect
    and preprocess, no more: every usable item (``retain validate`` judges a version on them)."""
    with heap_frozen():  # the items are read again each step: no full collection of the process's heap
        with step(setup, run, "collect") as info:
            info.update(ingesting.collect_step(run, setup.registry, store, data, items, setup.strict))
        with step(setup, run, "preprocess") as info:
            info.update(ingesting.preprocess_step(run, setup.registry, store))
        if all_usable:
            return Ingested.of(run)
        if items is None and data and not run.items:
            _nothing_usable(setup, run, store, data)
        with step(setup, run, "dedupe") as info:
            info.update(ingesting.dedupe_step(run, setup.dedupers, store))
        for name, deduper in setup.dedupers:  # what a deduper could not see (minhash turned on late)
            for message in getattr(deduper, "warnings", None) or []:
                warn(setup, run, f"deduper '{name}': {message}")
        with step(setup, run, "holdout") as info:
            info.update(ingesting.holdout_step(run))
    return Ingested.of(run)


def _nothing_usable(setup: Setup, run: Run, store: ModelStore, data: list[str]) -> None:
    """Sources read, no item to use (every record rejected, or none at all): a broken export
    a scheduler must see (exit 4), unlike data the model already knows (nothing new, exit 0)."""
    # A model directory with no version is removed on failure, its rejects file with it.
    kept = run.writes and run.rejects and store.versions()
    problem = ingesting.nothing_usable(run.rejects, data, store.root / "rejects.jsonl" if kept else None)
    if not setup.allow_empty:
        raise SourceError(f"{problem}; --allow-empty where no data is normal")
    warn(setup, run, f"{problem} (--allow-empty)")


@reports_plugin_errors
def plan(setup: Setup, data: list[str], store: ModelStore, items: list[Item] | None = None) -> Run:
    """Load (the manifest only) and ingest, as an update would, writing nothing: ``--dry-run``,
    ``--auto --dry-run`` and ``status --data``. Loads no weights, imports no torch, trains nothing."""
    run = Run(uuid.uuid4().hex[:12], FINE_TUNING, setup.config, store.root, parent=store.current(),
              writes=False)
    started = time.perf_counter()
    with step(setup, run, "load") as info:
        store.manifest(run.parent)  # checked: a broken current version is an error here too
        info.update(version=run.parent, parameters=None)
    ingest(setup, run, store, data, items)
    workload.announce_plan(run, store, functools.partial(warn, setup, run))  # its size, estimated
    run.timings["total"] = time.perf_counter() - started
    return run


# --- 3. prepare -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """The model to train and how: its parameters, the strategies' settings, the precision
    chosen (``core/runtime/precision.py``: asked, chose, why)."""

    parameters: dict[str, int]
    settings: TrainSettings | None
    precision: dict[str, Any]


def prepare(setup: Setup, run: Run, store: ModelStore | None = None) -> Prepared:
    """Tokenize: the model to train, its rows, the strategies' settings (``core/storage/models.py``);
    with ``store``, items over ``max_item_tokens`` go to its rejects (``core/data/workload.py``).
    Then ``precision: auto`` decided on this model and a batch of its rows."""
    say = functools.partial(warn, setup, run)
    with step(setup, run, "tokenize") as info, heap_frozen():
        if store is not None:  # a record of millions of tokens is not encoded whole to find out
            workload.cap_long_items(run, store, say)
        info.update(prepare_model(run, setup.registry, say, saves=setup.world.is_writer))
        if store is not None:
            info.update(workload.cap_item_tokens(run, store, say))
    if store is not None:
        workload.announce(run, store, say)  # before the work: its size, if far beyond the usual
    # Several processes use rank 0's choice, a search's trials their search's (given in
    # ``run.precision_choice``: it scored before in that precision).
    with step(setup, run, "precision") as info:
        if run.precision_choice is None:
            run.precision_choice = setup.world.on_writer(precisions.choose_for_run)(run).to_json()
        run.precision = run.precision_choice["chose"]
        info.update(run.precision_choice)
    return Prepared(dict(run.parameters), run.settings, dict(run.precision_choice))


# --- 4. measure -------------------------------------------------------------------------------

def measure(setup: Setup, run: Run, store: ModelStore) -> Measured:
    """The starting model's held-out losses (``core/quality/evaluation.py``): with what ingest found,
    the stage result a search's trials go on from."""
    with step(setup, run, "evaluate_before") as info:
        info.update(evaluation.measure_before(run, store))
        if not run.new_lineage:  # a full training starts from random init: nothing to say
            evaluation.sample_generation(run, setup.registry, "before")
    return run.measured()


# --- 5. train ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Training:
    """What the epochs did: each one's mean loss, early stopping's record, out-of-memory retries."""

    epoch_losses: list[float]
    early_stopping: dict[str, Any] | None
    oom_retries: list[dict]

    @classmethod
    def of(cls, run: Run) -> "Training":
        return cls(list(run.epoch_losses), run.early_stopping, list(run.oom_retries))

    def to_json(self) -> dict[str, Any]:
        return {"epoch_losses": self.epoch_losses, "early_stopping": self.early_stopping,
                "oom_retries": self.oom_retries}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Training":
        return cls(list(data["epoch_losses"]), data["early_stopping"], list(data["oom_retries"]))


def train(setup: Setup, run: Run, preload: Preload) -> Training:
    """The epoch loop (``core/learning/training.py``), after what is left of its import (``preload``)."""
    with step(setup, run, "import") as info:
        training = preload.wait()
        info.update(module=preload.name, import_seconds=preload.seconds, overlapped=not preload.already_loaded)
    with step(setup, run, "train") as info:
        stopping = run.kind == FINE_TUNING and setup.config.fine_tuning.early_stopping.enabled
        training.train(run, setup.pm, registry=setup.registry if stopping else None, world=setup.world)
        info.update(epoch_losses=run.epoch_losses, oom_retries=run.oom_retries, early_stopping=run.early_stopping)
    return Training.of(run)


# --- 6. gate ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judged:
    """The gate's decision on a candidate: its metrics, each validator's verdict, what to do next."""

    metrics: dict[str, Any]
    verdicts: tuple[Verdict, ...]
    next_steps: list[dict]

    @property
    def accepted(self) -> bool:
        return not gates.failed(list(self.verdicts))

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "verdicts": [v.to_json() for v in self.verdicts],
                "next_steps": self.next_steps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Judged":
        return cls(dict(data["metrics"]), tuple(Verdict(**v) for v in data["verdicts"]), list(data["next_steps"]))


def gate(setup: Setup, run: Run, store: ModelStore | None) -> Judged:
    """The candidate scored (``evaluation.measure_after``; scores already in ``run.after`` are
    used) and judged by the validators (``core/quality/gate.py``); in several processes rank 0 judges
    and every rank gets its verdicts."""
    with step(setup, run, "validate") as info:
        if setup.world.is_writer:
            evidence = evaluation.measure_after(run, store)
            run.verdicts, run.next_steps = gates.judge(setup.registry, setup.config, evidence, run.oom_retries)
            evaluation.sample_generation(run, setup.registry, "after")
        run.verdicts, run.next_steps, run.metrics = setup.world.broadcast((run.verdicts, run.next_steps,
                                                                           run.metrics))
        judged = Judged(run.metrics, tuple(run.verdicts), run.next_steps)
        if setup.announces:
            setup.pm.hook.verdicts_given(run=run.view(), verdicts=run.verdicts, next_steps=run.next_steps)
        info.update(judged.to_json())
    return judged


def announce_verdicts(setup: Setup, run: Run) -> None:
    """A gate run elsewhere (a search's trial judged its candidate in its own process, where
    nobody listens), told to the listeners as an update tells its own."""
    if not setup.announces:
        return
    setup.pm.hook.step_started(run=run.view(), step="validate")
    setup.pm.hook.verdicts_given(run=run.view(), verdicts=run.verdicts, next_steps=run.next_steps)
    setup.pm.hook.step_finished(run=run.view(), step="validate", seconds=run.timings.get("validate", 0.0),
                                info=Judged(run.metrics, tuple(run.verdicts), run.next_steps).to_json())


# --- stages 3-6, from an ingested run: the candidate ------------------------------------------

def train_and_judge(setup: Setup, run: Run, store: ModelStore, preload: Preload | None = None) -> Judged | None:
    """Prepare, measure, train, gate: ``run`` then holds the candidate; the gate's decision is
    returned (None for an import: there is no parent to judge it against). A run whose
    starting scores are known (``run.before``: a search's trials) is not measured again;
    several processes: rank 0 alone measures and judges. An import trains only if a strategy
    records."""
    prepare(setup, run, store)
    if run.before is None and setup.world.is_writer:
        measure(setup, run, store)
    if run.kind != IMPORT or run.strategies:
        train(setup, run, preload or Preload())
    if run.kind == IMPORT:
        evaluation.measure_unchanged(run)
        return None
    return gate(setup, run, store)


@reports_plugin_errors
def candidate(setup: Setup, kind: str, data: list[str], store: ModelStore, base: str | LoadedVersion | None,
              items: list[Item] | None = None, writes: bool = True, source: Path | None = None) -> Run:
    """Every stage but the save: a ``Run`` holding the trained candidate and the gate's verdicts."""
    interrupts.set_outcome(None)  # until this run saves, an interrupt leaves the model as it was
    started = time.perf_counter()
    preload = Preload()  # avalanche-lib: its import overlaps loading and reading the data
    run = load(setup, kind, store, base, writes=writes, source=source)
    with scratch_removed_on_failure(run), strategies_registered(setup, run):
        ingest(setup, run, store, data, items)
        if run.items:
            train_and_judge(setup, run, store, preload)
    run.timings["total"] = time.perf_counter() - started
    return run


def release_scratch(run: Run) -> None:
    """The run's token shard scratch folder (``core/data/shards.py``) removed now, at the end of
    a run. A saved run's shard has moved into its version (nothing is left to remove); a run
    that saves nothing (a check, an ``--auto`` trial, a rank that does not write) would leave
    its folder to a finalizer, which never runs in a pool's process (it ends with ``os._exit``):
    one ``retain-shards-*`` folder in the system temp folder per trial, after every search."""
    release = getattr(run.rows, "release", None)
    if release is not None:
        release()


@contextlib.contextmanager
def scratch_removed_on_failure(run: Run) -> Iterator[None]:
    """A run that fails before its version holds its token shard removes the shard's scratch
    folder at once: the exception's traceback keeps the run alive, so its finalizer would run
    only later, and a failed run must leave the model directory as it was. Its item spool goes
    too (``core/data/spool.py``: a temp file past its memory part)."""
    try:
        yield
    except BaseException:
        release_scratch(run)
        ingesting.close_spool(run.items)
        raise


# --- 7. commit --------------------------------------------------------------------------------

@reports_plugin_errors
def commit(setup: Setup, run: Run, store: ModelStore, replaces: str | None = None) -> UpdateReport:
    """Save ``run``'s candidate as a version (current if accepted), then ``update_finished``;
    the report. A run with nothing trained saves nothing: its report says ``nothing_new``."""
    if not run.trained:
        return run.report()
    with scratch_removed_on_failure(run), strategies_registered(setup, run):
        with step(setup, run, "save") as info:
            report = commit_version(run, store, setup.dedupers, replaces)
            pruned = auto_prune(store, setup.config)  # the keep policy, if configured
            store.save_index()  # the summaries this run read, for the next one
            if pruned is not None:
                report = report.model_copy(update={"pruned": pruned.to_json()})
            info.update(version=report.version, status=report.status, current=store.current(),
                        pruned=report.pruned)
        try:  # listeners get the report as JSON (hookspecs.update_finished): theirs to change
            setup.pm.hook.update_finished(run=run.view(), report=report.to_json())
        except Exception as exc:  # the version is saved: a listener failing cannot undo that
            warn(setup, run, f"a plugin failed in update_finished ({type(exc).__name__}: {exc}); "
                             f"version {report.version} is saved as {report.status}")
    return report


def not_saved(setup: Setup, run: Run, status: str) -> UpdateReport:
    """The save step of a dry run (``dry_run``) or a check (``check``): the report of what would
    have been saved, nothing written (``--auto --dry-run`` and ``--auto --check`` end here too)."""
    report = run.report().model_copy(update={"status": status, "version": None})
    if status == "check":
        report = report.model_copy(update={"gate": "accepted" if run.accepted else "rejected"})
    with step(setup, run, "save") as info:
        info.update(status=status, version=None, accepted=run.accepted if status == "check" else None,
                    train=run.counts.get("trained", 0), held_out=run.counts.get("holdout", 0))
    release_scratch(run)  # a check's token shard goes into no version
    return report


def unsaved_rank(run: Run) -> UpdateReport:
    """The report of a rank that does not save (rank 0 saves for all of them): its token shard,
    in a system temp folder, goes into no version."""
    release_scratch(run)
    return run.report()


# --- 8. advise --------------------------------------------------------------------------------

def advise(setup: Setup, run: Run, store: ModelStore, report: UpdateReport) -> UpdateReport:
    """Fine-tune or fully retrain? The report with its ``retrain`` (returned), and ``advice_given``."""
    from retain.core.quality.retrain import assess

    # Nothing was saved (a dry run, a check): count what this update would have added.
    counts = report.counts
    pending = counts.get("new", 0) if not run.writes else 0
    text = {k: counts.get(k, 0) for k in ("tokens", "bytes")} if not run.writes else None
    try:
        assessment = assess(store, setup.config, pending_items=pending, device=setup.device_name,
                            registry=setup.registry, pending_text=text)
    except RetainError as exc:  # advice must not turn a finished update into a failure
        warn(setup, run, f"could not assess full retrain vs fine-tune: {exc}")
        return report.model_copy(update={"retrain": {"error": str(exc)}})
    setup.pm.hook.advice_given(run=run.view(), assessment=assessment)
    return report.model_copy(update={"retrain": assessment.to_json()})
