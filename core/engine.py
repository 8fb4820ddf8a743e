"""The engine: the update cycle, as a sequence of named steps. Plugins own only their step.

    load     the current version (an update) or nothing (a full training)  core/models.py
    collect, preprocess, dedupe, holdout: new data in                      core/ingest.py
    tokenize the model to train and its rows                               core/models.py
    evaluate_before, train, validate (the gate)                            core/evaluation.py, training.py, gate.py
    save     the version, atomically; CURRENT moves if accepted            core/commit.py

Each step fills in its part of the ``Run`` and says what it did through the
``step_started``/``step_finished`` hooks; the CLI renders those events.
``retain train`` runs the same steps from a random init on all data.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from . import evaluation, gate, ingest
from .commit import commit
from .gate import raise_if_rejected
from .config import Config
from .items import Item
from .models import LoadedVersion, count_parameters, load_version, prepare_model, resolve_device
from .plugin_errors import reports_plugin_errors
from .pluginmanager import Registry, default_plugin_manager
from .run import FINE_TUNING, FULL_TRAINING, Run
from .store import ModelStore
from .strategy import build_strategies


class Engine:
    def __init__(self, config: Config, *, pm=None, listeners: tuple | list = (), device: str | None = None,
                 strict: bool = False):
        """``listeners``: objects with event hookimpls (a renderer), registered while a run lasts."""
        self.config = config
        self.pm = pm or default_plugin_manager()
        self.registry = Registry.of(self.pm)
        self.registry.check_config(config)  # unknown plugin names and options fail here, early
        self.listeners = list(listeners)
        self.device_name = device or config.device
        self.strict = strict

    @functools.cached_property
    def dedupers(self) -> list[tuple[str, Any]]:
        return ingest.build_dedupers(self.registry, self.config)

    # --- what the commands run ------------------------------------------------------------
    def train(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None) -> dict:
        """Full training from a random init on all data; saves the next version (0001 in a new dir)."""
        store = ModelStore(model_dir)
        with self.listening(), store.lock():
            self.recover(store)
            replaces = store.current() if store.exists() else None  # a retrain starts a new lineage
            run = self.prepare(FULL_TRAINING, data, store, None, items=items)
            report = self.commit(run, store, replaces=replaces)
        return raise_if_rejected(report, store)

    def update(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None,
               dry_run: bool = False, wait: float = 0.0, advise: bool = False) -> dict:
        """One fine-tuning cycle on new data only; a new version, current if the gate accepts it.
        ``dry_run`` writes nothing at all (no lock, rejects, version or ledger rows).
        ``advise`` ends with the full-retrain assessment (``advice_given``, report["retrain"])."""
        store = ModelStore(model_dir)
        store.current()  # a clear error before anything else if there is no model
        with self.listening(), (contextlib.nullcontext() if dry_run else store.lock(wait=wait)):
            if not dry_run:
                self.recover(store)
            try:
                run = self.prepare(FINE_TUNING, data, store, store.current(), items=items, dry_run=dry_run)
            finally:
                if dry_run:
                    store.ledger.close()  # leave no -wal/-shm behind
            if not run.trained:
                report = run.report()
            elif dry_run:
                report = {**run.report(), "status": "dry_run", "gate": "accepted" if run.accepted else "rejected"}
                with self._step(run, "save") as info:
                    info.update(status="dry_run", version=None, accepted=run.accepted)
            else:
                report = self.commit(run, store)
            if advise:
                self.advise(run, store, report)
        return raise_if_rejected(report, store)

    # --- the cycle ----------------------------------------------------------------------------
    @reports_plugin_errors
    def prepare(self, kind: str, data: list[str], store: ModelStore, base: str | LoadedVersion | None,
                items: list[Item] | None = None, dry_run: bool = False) -> Run:
        """Every step but the save: a ``Run`` holding the trained candidate and the gate's verdicts."""
        started = time.perf_counter()
        run = self.start(kind, store, base, dry_run=dry_run)
        with self.strategies_registered(run):
            self.ingest(run, store, data, items)
            if run.items:
                self.train_and_judge(run, store)
        run.timings["total"] = time.perf_counter() - started
        return run

    def start(self, kind: str, store: ModelStore, base: str | LoadedVersion | None, *,
              dry_run: bool = False) -> Run:
        """1. Load: a new ``Run`` from ``base`` (a version name, a loaded version, or None for
        a full training), with its strategies and their state; seeds set."""
        import torch

        cfg = self.config
        run = Run(uuid.uuid4().hex[:12], kind, cfg, store.root, parent=None, dry_run=dry_run,
                  device=resolve_device(self.device_name))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        with self._step(run, "load") as info:
            if isinstance(base, str):
                base = load_version(store, base, registry=self.registry)
            run.base, run.parent = base, base.version if base is not None else None
            if run.full and cfg.full_training.tokenizer == "keep":
                run.tokenizer_from = self._tokenizer_to_keep(store).lm
            run.strategies = build_strategies(self.registry, cfg, base)
            info.update(version=run.parent, parameters=count_parameters(base.lm) if base else None)
        return run

    def ingest(self, run: Run, store: ModelStore, data: list[str], items: list[Item] | None) -> None:
        """2-4 and the hold-out: new data in (``core/ingest.py``)."""
        with self._step(run, "collect") as info:
            info.update(ingest.collect_step(run, self.registry, store, data, items, self.strict))
        with self._step(run, "preprocess") as info:
            info.update(ingest.preprocess_step(run, self.registry, store))
        with self._step(run, "dedupe") as info:
            info.update(ingest.dedupe_step(run, self.dedupers, store))
        with self._step(run, "holdout") as info:
            info.update(ingest.holdout_step(run))

    def train_and_judge(self, run: Run, store: ModelStore) -> None:
        """Tokenize, evaluate the starting model, train, validate: ``run`` holds the candidate.
        A run whose starting scores are already known (``run.before``, a search's trials)
        skips ``evaluate_before``."""
        from .training import train  # avalanche-lib: imported only by runs that train

        self.tokenize(run)
        if run.before is None:
            self.evaluate_before(run, store)
        with self._step(run, "train") as info:
            stopping = not run.full and self.config.fine_tuning.early_stopping.enabled
            train(run, self.pm, judge=functools.partial(self._judge_epoch, run) if stopping else None)
            info.update(epoch_losses=run.epoch_losses, oom_retries=run.oom_retries,
                        early_stopping=run.early_stopping)
        with self._step(run, "validate") as info:
            evidence = evaluation.measure_after(run)
            run.verdicts, run.next_steps = gate.judge(self.registry, self.config, evidence, run.oom_retries)
            self.pm.hook.verdicts_given(run=run, verdicts=run.verdicts, next_steps=run.next_steps)
            info.update(metrics=run.metrics, verdicts=[v.to_json() for v in run.verdicts],
                        next_steps=run.next_steps)

    def tokenize(self, run: Run) -> None:
        """5. Tokenize: the model to train, its rows, the strategies' settings (``core/models.py``)."""
        with self._step(run, "tokenize") as info:
            info.update(prepare_model(run, self.registry, lambda m: self._warn(run, m)))

    def evaluate_before(self, run: Run, store: ModelStore) -> None:
        """The starting model's held-out losses (``core/evaluation.py``)."""
        with self._step(run, "evaluate_before") as info:
            info.update(evaluation.measure_before(run, store))

    def _judge_epoch(self, run: Run) -> tuple:
        """Early stopping's look at the model after an epoch: its scores and the gate's verdicts."""
        scores = evaluation.score_candidate(run)
        _, evidence = evaluation.candidate_evidence(run, scores)
        return scores, gate.run_validators(self.registry, self.config, evidence)

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
                info.update(version=report["version"], status=report["status"], current=store.current())
            try:
                self.pm.hook.update_finished(run=run, report=report)
            except Exception as exc:  # the version is saved: a listener failing cannot undo that
                self._warn(run, f"a plugin failed in update_finished ({type(exc).__name__}: {exc}); "
                           f"version {report['version']} is saved as {report['status']}")
        return report

    # --- helpers ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """The listeners registered on the plugin manager while a run lasts."""
        for listener in self.listeners:
            self.pm.register(listener)
        try:
            yield
        finally:
            for listener in self.listeners:
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
        self.pm.hook.step_started(run=run, step=name)
        started = time.perf_counter()
        info: dict[str, Any] = {}
        yield info
        run.timings[name] = time.perf_counter() - started
        self.pm.hook.step_finished(run=run, step=name, info=info, seconds=run.timings[name])

    def _warn(self, run: Run | None, message: str) -> None:
        self.pm.hook.warning_raised(run=run, message=message)

    def recover(self, store: ModelStore) -> None:
        """Tidy up after an interrupted run (call with the lock held); each note is a warning."""
        for note in store.recover():
            self._warn(None, f"recovered from an interrupted run: {note}")

    def advise(self, run: Run, store: ModelStore, report: dict) -> None:
        """Fine-tune or fully retrain? ``report["retrain"]`` and ``advice_given``."""
        from .errors import RetainError
        from .retrain import assess

        # In a dry run nothing was saved: count what this update would have added.
        counts = report.get("counts", {})
        pending = counts.get("new", 0) if run.dry_run else 0
        text = {k: counts.get(k, 0) for k in ("tokens", "bytes")} if run.dry_run else None
        try:
            assessment = assess(store, self.config, pending_items=pending, device=self.device_name,
                                registry=self.registry, pending_text=text)
        except RetainError as exc:  # advice must not turn a finished update into a failure
            report["retrain"] = {"error": str(exc)}
            self._warn(run, f"could not assess full retrain vs fine-tune: {exc}")
            return
        report["retrain"] = assessment.to_json()
        self.pm.hook.advice_given(run=run, assessment=assessment)
