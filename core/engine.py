"""The engine: the update cycle, as a sequence of named steps. Plugins own only their step.

    load     the current version (an update), nothing (a full training),
             or the model to import (an import)                            core/models.py, imports.py
    collect, preprocess, dedupe, holdout: new data in                      core/ingest.py
    tokenize the model to train and its rows                               core/models.py
    evaluate_before, train, validate (the gate)                            core/evaluation.py, training.py, gate.py
    save     the version, atomically; CURRENT moves if accepted            core/commit.py

Each step fills in its part of the ``Run`` and says what it did through the
``step_started``/``step_finished`` hooks; the CLI renders those events.
``retain train`` runs the same steps from a random init on all data;
``retain import`` runs them on a model made elsewhere, without changing its
weights (the strategies record the base data, the held-out base items are its
retention set) and without the gate (there is no parent to judge it against).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from . import evaluation, gate, ingest, interrupts, precision, workload
from .commit import commit
from .errors import ConfigError, ModelError, RetainError, SourceError
from .gate import raise_if_rejected
from .config import Config
from .items import Item
from .loggers import Loggers
from .models import (LoadedVersion, count_parameters, load_version, model_config, prepare_model,
                     resolve_device, resolve_precision)
from .plugin_errors import reports_plugin_errors
from .preload import Preload
from .pluginmanager import Registry, default_plugin_manager
from .versions import auto_prune
from .run import FINE_TUNING, FULL_TRAINING, IMPORT, Run
from .store import ModelStore
from .strategy import build_strategies
from .wording import plural
from .world import SOLO, World


class Engine:
    def __init__(self, config: Config, *, pm=None, listeners: tuple | list = (), device: str | None = None,
                 strict: bool = False, world: World = SOLO, allow_empty: bool = False):
        """``listeners``: objects with event hookimpls (a renderer), registered while a run lasts.
        ``world``: the processes the run spans (``core/world.py``), made where the run starts.
        ``allow_empty``: ``--data`` that gives no usable item is a warning, not a ``SourceError``."""
        self.config = config
        self.pm = pm or default_plugin_manager()
        self.registry = Registry.of(self.pm)
        self.registry.check_config(config)  # unknown plugin names and options fail here, early
        self.listeners = list(listeners)
        self.world = world
        self.device_name = world.device or device or config.device  # a rank's own GPU
        self.strict = strict
        self.allow_empty = allow_empty

    @functools.cached_property
    def dedupers(self) -> list[tuple[str, Any]]:
        return ingest.build_dedupers(self.registry, self.config)

    # --- what the commands run ------------------------------------------------------------
    def train(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None,
              force: bool = False) -> dict:
        """Full training from a random init on all data; saves the next version (0001 in a new dir).
        A directory holding files of its own and no model is refused unless ``force``."""
        store = ModelStore(model_dir, read_only=not self.world.is_writer)  # rank 0 alone writes
        foreign = [] if force or store.exists() else store.foreign_entries()
        if foreign:
            raise ModelError(f"{store.root} is not empty and holds no retain model ({plural(len(foreign), 'entry', 'entries')}"
                             f": {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); train "
                             "into a new or empty directory, or pass --force to train into this one")
        if self.world.distributed:
            return self.run_distributed(FULL_TRAINING, data, store, items=items)
        with store.undone_if_failed(), self.listening(), store.lock(), contextlib.closing(store.ledger):
            self.recover(store)
            replaces = store.current() if store.exists() else None  # a retrain starts a new lineage
            run = self.prepare(FULL_TRAINING, data, store, None, items=items)
            report = self.commit(run, store, replaces=replaces)
        return raise_if_rejected(report, store)

    def import_model(self, source: str | Path, model_dir: str | Path, data: list[str] = (), *,
                     items: list[Item] | None = None) -> dict:
        """A model made elsewhere (``core/imports.py``) becomes the next version (0001 in a new dir),
        through the same steps and commit as a training. With base ``data`` (or ``items``) its
        held-out items are the retention set and the strategies record their state from it."""
        store = ModelStore(model_dir)
        with store.undone_if_failed(), self.listening(), store.lock(), contextlib.closing(store.ledger):  # no -wal/-shm left
            self.recover(store)
            replaces = store.current() if store.exists() else None  # an import starts a new lineage
            run = self.prepare(IMPORT, list(data), store, None, items=items, source=Path(source))
            report = self.commit(run, store, replaces=replaces)
        return report

    def update(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None,
               dry_run: bool = False, check: bool = False, wait: float = 0.0, advise: bool = False) -> dict:
        """One fine-tuning cycle on new data only; a new version, current if the gate accepts it.
        ``dry_run``: what the update would learn (collect, preprocess, dedupe, hold out) and
        nothing more: no model loaded, nothing trained, nothing written (``plan``).
        ``check``: train and validate, write nothing; rejected by the gate raises as usual.
        ``advise`` ends with the full-retrain assessment (``advice_given``, report["retrain"])."""
        writes = not (dry_run or check)
        # A read-only mount serves a dry run or a check; rank 0 alone writes (``core/world.py``).
        store = ModelStore(model_dir, read_only=not writes or not self.world.is_writer)
        store.current()  # a clear error before anything else if there is no model
        if self.world.distributed:
            if dry_run or check:
                raise ConfigError("--dry-run and --check run in one process: drop --nproc (or torchrun)")
            return self.run_distributed(FINE_TUNING, data, store, items=items, wait=wait, advise=advise)
        # The ledger is closed when the run ends (a dry run's or check's before the advice):
        # no -wal/-shm left behind, even by a process that ends without tearing down.
        with self.listening(), (store.lock(wait=wait) if writes else contextlib.nullcontext()), \
                contextlib.closing(store.ledger):
            if writes:
                self.recover(store)
            try:
                if dry_run:
                    run = self.plan(data, store, items=items)
                else:
                    run = self.prepare(FINE_TUNING, data, store, store.current(), items=items, writes=not check)
            finally:
                if not writes:
                    store.ledger.close()
            if dry_run or (check and run.trained):
                report = self.not_saved(run, "dry_run" if dry_run else "check")
            elif not run.trained:
                report = run.report()
            else:
                report = self.commit(run, store)
            if advise:
                self.advise(run, store, report)
        return raise_if_rejected(report, store)

    def run_distributed(self, kind: str, data: list[str], store: ModelStore, *, items: list[Item] | None = None,
                    wait: float = 0.0, advise: bool = False) -> dict:
        """``train`` or ``update`` as one of several torchrun processes (``core/world.py``).

        Every rank runs the cycle on the same data; rank 0 holds the lock from start to end,
        validates, and alone saves, after all ranks have finished training: a rank that died
        fails that meeting and nothing is committed. The lock goes with rank 0's process."""
        world = self.world
        with self.listening(), self._writer_lock(world, store, wait), contextlib.closing(store.ledger):
            if world.is_writer:
                self.recover(store)
            world.barrier("reading the model directory")  # rank 0 has tidied up after a crash
            replaces = store.current() if kind == FULL_TRAINING and store.exists() else None
            base = store.current() if kind == FINE_TUNING else None
            run = self.prepare(kind, data, store, base, items=items)
            world.barrier("the save")
            report = self.commit(run, store, replaces=replaces) if world.is_writer else run.report()
            # The others wait for the save, and end as rank 0 does.
            report.update(world.broadcast({"version": report["version"], "status": report["status"]}))
            if advise and world.is_writer:
                self.advise(run, store, report)
        return raise_if_rejected(report, store)

    @contextlib.contextmanager
    def _writer_lock(self, world: World, store: ModelStore, wait: float) -> Iterator[None]:
        """Rank 0 takes the model directory's lock for the whole run; if it cannot, every rank
        ends with its error."""
        with contextlib.ExitStack() as stack:
            error = None
            if world.is_writer:
                try:
                    stack.enter_context(store.lock(wait=wait))
                except RetainError as exc:
                    error = exc
            world.agree(error)
            yield

    # --- the cycle ----------------------------------------------------------------------------
    @reports_plugin_errors
    def plan(self, data: list[str], store: ModelStore, items: list[Item] | None = None) -> Run:
        """``retain update --dry-run``: load (the manifest only), collect, preprocess, dedupe and
        hold out, as an update would. Loads no weights, imports no torch, trains nothing."""
        run = Run(uuid.uuid4().hex[:12], FINE_TUNING, self.config, store.root, parent=store.current(),
                  writes=False)
        started = time.perf_counter()
        with self._step(run, "load") as info:
            store.manifest(run.parent)  # checked: a broken current version is an error here too
            info.update(version=run.parent, parameters=None)
        self.ingest(run, store, data, items)
        workload.announce_plan(run, store, functools.partial(self._warn, run))  # its size, estimated
        run.timings["total"] = time.perf_counter() - started
        return run

    @reports_plugin_errors
    def prepare(self, kind: str, data: list[str], store: ModelStore, base: str | LoadedVersion | None,
                items: list[Item] | None = None, writes: bool = True, source: Path | None = None) -> Run:
        """Every step but the save: a ``Run`` holding the trained candidate and the gate's verdicts."""
        interrupts.set_outcome(None)  # until this run saves, an interrupt leaves the model as it was
        started = time.perf_counter()
        preload = Preload()  # avalanche-lib: its import overlaps loading and reading the data
        run = self.start(kind, store, base, writes=writes, source=source)
        with self.strategies_registered(run):
            self.ingest(run, store, data, items)
            if run.items:
                self.train_and_judge(run, store, preload)
        run.timings["total"] = time.perf_counter() - started
        return run

    def start(self, kind: str, store: ModelStore, base: str | LoadedVersion | None, *,
              writes: bool = True, source: Path | None = None) -> Run:
        """1. Load: a new ``Run`` from ``base`` (a version name, a loaded version, or None for
        a full training; ``source`` for an import), with its strategies and their state; seeds set."""
        import torch

        # The model directory remembers its model: what the config does not ask for explicitly
        # (architecture, tokenizer, family) is the model's own. An import makes a new one.
        cfg = self.config if kind == IMPORT else model_config(store, self.config,
                                                              base.version if isinstance(base, LoadedVersion) else base)
        device = resolve_device(self.device_name)
        run = Run(uuid.uuid4().hex[:12], kind, cfg, store.root, parent=None, writes=writes,
                  device=device, precision=resolve_precision(cfg.precision, device))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        with self._step(run, "load") as info:
            if kind == IMPORT:
                info.update(self._import(run, source))
            else:
                if isinstance(base, str):
                    base = load_version(store, base, registry=self.registry)
                run.base, run.parent = base, base.version if base is not None else None
                if run.full and cfg.full_training.tokenizer == "keep":
                    run.tokenizer_from = self._tokenizer_to_keep(store).lm
                info.update(version=run.parent, parameters=count_parameters(base.lm) if base else None)
            run.strategies = build_strategies(self.registry, run.config, run.base)
        wanted = run.config.fine_tuning.max_seq_length
        if kind == IMPORT and wanted > run.lm.context:  # the model's own: its updates clamp to it quietly
            self._warn(run, f"fine_tuning.max_seq_length {wanted} exceeds the imported model's context "
                            f"{run.lm.context}: its updates use {run.lm.context} (said once, here)")
        return run

    def _import(self, run: Run, source: Path) -> dict:
        from .imports import import_source

        run.config = copy.deepcopy(run.config)  # the family records in it what it imported
        run.lm, run.origin = import_source(self.registry, run.config, source)
        return {"version": None, "source": str(source), "family": run.origin["family"],
                "parameters": count_parameters(run.lm)}

    def ingest(self, run: Run, store: ModelStore, data: list[str], items: list[Item] | None) -> None:
        """2-4 and the hold-out: new data in (``core/ingest.py``)."""
        with self._step(run, "collect") as info:
            info.update(ingest.collect_step(run, self.registry, store, data, items, self.strict))
        with self._step(run, "preprocess") as info:
            info.update(ingest.preprocess_step(run, self.registry, store))
        if items is None and data and not run.items:
            self._nothing_usable(run, store, data)
        with self._step(run, "dedupe") as info:
            info.update(ingest.dedupe_step(run, self.dedupers, store))
        for name, deduper in self.dedupers:  # what a deduper could not see (minhash turned on late)
            for message in getattr(deduper, "warnings", None) or []:
                self._warn(run, f"deduper '{name}': {message}")
        with self._step(run, "holdout") as info:
            info.update(ingest.holdout_step(run))

    def _nothing_usable(self, run: Run, store: ModelStore, data: list[str]) -> None:
        """Sources read, no item to use (every record rejected, or none at all): a broken export
        a scheduler must see (exit 4), unlike data the model already knows (nothing new, exit 0)."""
        # A model directory with no version is removed on failure, its rejects file with it.
        kept = run.writes and run.rejects and store.versions()
        problem = ingest.nothing_usable(run.rejects, data, store.root / "rejects.jsonl" if kept else None)
        if not self.allow_empty:
            raise SourceError(f"{problem}; --allow-empty where no data is normal")
        self._warn(run, f"{problem} (--allow-empty)")

    def train_and_judge(self, run: Run, store: ModelStore, preload: Preload | None = None) -> None:
        """Tokenize, evaluate the starting model, train, validate: ``run`` holds the candidate.
        A run whose starting scores are already known (``run.before``, a search's trials)
        skips ``evaluate_before``. ``preload``: the training stack's import, started earlier."""
        preload = preload or Preload()
        self.tokenize(run, store)
        writer = self.world.is_writer  # several processes: rank 0 alone scores and judges
        if run.before is None and writer:
            self.evaluate_before(run, store)
        if run.kind != IMPORT or run.strategies:  # an import trains nothing: strategies record only
            with self._step(run, "import") as info:  # what is left of the training stack's import
                training = preload.wait()
                info.update(module=preload.name, import_seconds=preload.seconds,
                            overlapped=not preload.already_loaded)
            with self._step(run, "train") as info:
                stopping = run.kind == FINE_TUNING and self.config.fine_tuning.early_stopping.enabled
                training.train(run, self.pm, registry=self.registry if stopping else None, world=self.world)
                info.update(epoch_losses=run.epoch_losses, oom_retries=run.oom_retries,
                            early_stopping=run.early_stopping)
        if run.kind == IMPORT:  # no gate: there is no parent to judge the imported model against
            evaluation.measure_unchanged(run)
            return
        with self._step(run, "validate") as info:
            if writer:
                evidence = evaluation.measure_after(run, store)
                run.verdicts, run.next_steps = gate.judge(self.registry, self.config, evidence, run.oom_retries)
                evaluation.sample_generation(run, self.registry, "after")
            # the verdicts of rank 0's gate, on every rank
            run.verdicts, run.next_steps, run.metrics = self.world.broadcast((run.verdicts, run.next_steps,
                                                                              run.metrics))
            self.pm.hook.verdicts_given(run=run.view(), verdicts=run.verdicts, next_steps=run.next_steps)
            info.update(metrics=run.metrics, verdicts=[v.to_json() for v in run.verdicts],
                        next_steps=run.next_steps)

    def tokenize(self, run: Run, store: ModelStore | None = None) -> None:
        """5. Tokenize: the model to train, its rows, the strategies' settings (``core/models.py``);
        with ``store``, items over ``max_item_tokens`` go to its rejects (``core/workload.py``)."""
        warn = functools.partial(self._warn, run)
        with self._step(run, "tokenize") as info:
            if store is not None:  # a record of millions of tokens is not encoded whole to find out
                workload.cap_long_items(run, store, warn)
            info.update(prepare_model(run, self.registry, warn))
            if store is not None:
                info.update(workload.cap_item_tokens(run, store, warn))
        if store is not None:
            workload.announce(run, store, warn)  # before the work: its size, if far beyond the usual
        self.choose_precision(run)

    def choose_precision(self, run: Run) -> None:
        """``precision: auto`` decided on this model and a batch of its rows, measured where a
        rule cannot tell (``core/precision.py``); several processes use rank 0's choice, a
        search's trials their search's (given in ``run.precision_choice``: it scored before)."""
        with self._step(run, "precision") as info:
            if run.precision_choice is None:
                run.precision_choice = self.world.on_writer(precision.choose_for_run)(run).to_json()
            run.precision = run.precision_choice["chose"]
            info.update(run.precision_choice)

    def evaluate_before(self, run: Run, store: ModelStore) -> None:
        """The starting model's held-out losses (``core/evaluation.py``)."""
        with self._step(run, "evaluate_before") as info:
            info.update(evaluation.measure_before(run, store))
            if not run.new_lineage:  # a full training starts from random init: nothing to say
                evaluation.sample_generation(run, self.registry, "before")

    def _tokenizer_to_keep(self, store: ModelStore) -> LoadedVersion:
        from .errors import ConfigError

        if not store.exists():
            raise ConfigError("config key 'full_training.tokenizer' is 'keep', but there is no current model "
                              f"in {store.root} whose tokenizer to keep; use 'new' for a first training")
        return load_version(store, registry=self.registry)

    @reports_plugin_errors
    def commit(self, run: Run, store: ModelStore, replaces: str | None = None) -> dict:
        """Save ``run``'s candidate as a version (current if accepted), then ``update_finished``."""
        if not run.trained:
            return run.report()
        with self.strategies_registered(run):
            with self._step(run, "save") as info:
                report = commit(run, store, self.dedupers, replaces)
                pruned = auto_prune(store, self.config)  # the keep policy, if configured
                store.save_index()  # the summaries this run read, for the next one
                if pruned is not None:
                    report["pruned"] = pruned.to_json()
                info.update(version=report["version"], status=report["status"], current=store.current(),
                            pruned=report.get("pruned"))
            try:
                self.pm.hook.update_finished(run=run.view(), report=report)
            except Exception as exc:  # the version is saved: a listener failing cannot undo that
                self._warn(run, f"a plugin failed in update_finished ({type(exc).__name__}: {exc}); "
                           f"version {report['version']} is saved as {report['status']}")
        return report

    # --- helpers ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """The listeners registered on the plugin manager while a run lasts, and the config's
        loggers (``core/loggers.py``: rank 0 alone reports; one that fails is a warning)."""
        loggers = Loggers({}, self._warn)
        if self.world.is_writer:
            loggers = Loggers.of(self.registry, self.config, self._warn)
        listeners = [*self.listeners, *([loggers] if loggers else [])]
        for listener in listeners:
            self.pm.register(listener)
        error = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            loggers.close(error)
            for listener in listeners:
                self.pm.unregister(listener)

    @contextlib.contextmanager
    def strategies_registered(self, run: Run) -> Iterator[None]:
        """Strategies are plugins for the run: their hookimpls (training_penalty, ...) fire."""
        for strategy in run.strategies:
            self.pm.register(strategy, name=f"strategy:{strategy.name}:{run.id}")
        try:
            yield
        finally:
            for strategy in run.strategies:
                self.pm.unregister(strategy)

    @contextlib.contextmanager
    def _step(self, run: Run, name: str) -> Iterator[dict]:
        self.pm.hook.step_started(run=run.view(), step=name)
        started = time.perf_counter()
        info: dict[str, Any] = {}
        yield info
        run.timings[name] = time.perf_counter() - started
        self.pm.hook.step_finished(run=run.view(), step=name, info=info, seconds=run.timings[name])

    def announce_verdicts(self, run: Run) -> None:
        """A ``validate`` step run elsewhere (a search's trial judged its candidate in its own
        process, where nobody listens), told to the listeners as an update tells its own."""
        self.pm.hook.step_started(run=run.view(), step="validate")
        self.pm.hook.verdicts_given(run=run.view(), verdicts=run.verdicts, next_steps=run.next_steps)
        self.pm.hook.step_finished(run=run.view(), step="validate", seconds=run.timings.get("validate", 0.0),
                                   info={"metrics": run.metrics, "verdicts": [v.to_json() for v in run.verdicts],
                                         "next_steps": run.next_steps})

    def not_saved(self, run: Run, status: str) -> dict:
        """The report of a dry run or a check: what would have been saved, nothing written
        (``--auto --dry-run`` and ``--auto --check`` end here too)."""
        report = {**run.report(), "status": status, "version": None}
        if status == "check":
            report["gate"] = "accepted" if run.accepted else "rejected"
        with self._step(run, "save") as info:
            info.update(status=status, version=None, accepted=run.accepted if status == "check" else None,
                        train=run.counts.get("trained", 0), held_out=run.counts.get("holdout", 0))
        return report

    def _warn(self, run: Run | None, message: str) -> None:
        self.pm.hook.warning_raised(run=run.view() if run is not None else None, message=message)

    def recover(self, store: ModelStore) -> None:
        """Tidy up after an interrupted run, rebuild a lost ledger (call with the lock held);
        each note is a warning."""
        for note in store.recover():
            self._warn(None, note)

    def advise(self, run: Run, store: ModelStore, report: dict) -> None:
        """Fine-tune or fully retrain? ``report["retrain"]`` and ``advice_given``."""
        from .errors import RetainError
        from .retrain import assess

        # Nothing was saved (a dry run, a check): count what this update would have added.
        counts = report.get("counts", {})
        pending = counts.get("new", 0) if not run.writes else 0
        text = {k: counts.get(k, 0) for k in ("tokens", "bytes")} if not run.writes else None
        try:
            assessment = assess(store, self.config, pending_items=pending, device=self.device_name,
                                registry=self.registry, pending_text=text)
        except RetainError as exc:  # advice must not turn a finished update into a failure
            report["retrain"] = {"error": str(exc)}
            self._warn(run, f"could not assess full retrain vs fine-tune: {exc}")
            return
        report["retrain"] = assessment.to_json()
        self.pm.hook.advice_given(run=run.view(), assessment=assessment)
