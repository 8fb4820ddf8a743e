"""The design document's manual API::

    from retain import ModelTrainer

    trainer = ModelTrainer('config.yaml')
    trainer.load_model('models/my-model')
    trainer.fine_tune(new_data, epochs=3, lr=0.0001)
    trainer.save_model('models/my-model')

A thin layer over the engine: ``fine_tune`` runs every step but the save,
``save_model`` the save. With ``verbose`` the CLI's renderer prints the steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

from retain.core.config import Config, load_config
from retain.core.engine import Engine
from retain.core.errors import ModelError, SourceError
from retain.core.gate import raise_if_rejected
from retain.core.ingest import python_items
from retain.core.models import LoadedVersion, load_version
from retain.core.run import FINE_TUNING, Run
from retain.core.store import ModelStore


class ModelTrainer:
    def __init__(self, config: str | Path | Config | None = None, *, device: str | None = None,
                 verbose: bool = True, overrides: list[str] | None = None, pm=None):
        """``config``: a YAML path, a ``Config``, or None for the embedded defaults."""
        self.config = config if isinstance(config, Config) else load_config(config, overrides)
        listeners = []
        if verbose:
            from retain.render import ConsoleRenderer
            listeners.append(ConsoleRenderer.for_terminal())
        self.engine = Engine(self.config, pm=pm, device=device, listeners=listeners)
        self.path: Path | None = None
        self.loaded: LoadedVersion | None = None
        self.pending: Run | None = None
        self.last_report: dict | None = None

    @property
    def model(self):
        if self.loaded is None:
            raise ModelError("no model loaded: call load_model(path) first")
        return self.loaded.model

    def load_model(self, path: str | Path) -> "ModelTrainer":
        """Load the current version of the model directory ``path``."""
        self.path = Path(path)
        self.loaded = load_version(ModelStore(self.path), registry=self.engine.registry)
        self.pending = None
        return self

    def train(self, data: Iterable[Any], path: str | Path, *, epochs: int | None = None,
              lr: float | None = None) -> dict:
        """Full training from scratch on ``data`` (strings or dicts); saves into ``path``."""
        block = self.config.full_training
        block.epochs = epochs or block.epochs
        block.learning_rate = lr or block.learning_rate
        items, rejects = python_items(data)
        self._check_rejects(rejects)
        report = self.engine.train([], path, items=items)
        self.load_model(path)
        self.last_report = report
        return report

    def fine_tune(self, new_data: Iterable[Any], epochs: int | None = None, lr: float | None = None,
                  strategy: list[str] | str | None = None) -> dict:
        """One update cycle on ``new_data`` (strings, or dicts with a ``text`` field).

        The fine-tuned model stays in memory until ``save_model``; the report
        (counts, epoch losses, before/after metrics) is returned.
        """
        if self.loaded is None or self.path is None:
            raise ModelError("no model loaded: call load_model(path) first")
        if self.pending is not None:
            raise ModelError("this trainer holds an unsaved fine-tune: call save_model() first")
        block = self.config.fine_tuning
        if epochs is not None:
            block.epochs = epochs
        if lr is not None:
            block.learning_rate = lr
        if strategy is not None:
            block.strategy = [strategy] if isinstance(strategy, str) else list(strategy)
        items, rejects = python_items(new_data)
        self._check_rejects(rejects)
        with self.engine.listening():
            run = self.engine.prepare(FINE_TUNING, [], ModelStore(self.path), self.loaded, items=items)
        self.pending = run if run.trained else None
        self.last_report = run.report()
        return self.last_report

    def save_model(self, path: str | Path | None = None) -> str | None:
        """Save the fine-tuned model as a new version of ``path`` (default: where it was loaded).

        Saving to a new directory first copies the loaded model directory there,
        so the copy keeps its history and ledger. Returns the version name.
        """
        if self.pending is None:
            raise ModelError("nothing to save: fine_tune() has not produced a new model")
        target = Path(path) if path is not None else self.path
        assert self.path is not None and self.loaded is not None
        if target.resolve() != self.path.resolve():
            if target.exists() and any(target.iterdir()):
                raise ModelError(f"{target} is not empty; save into the loaded model directory "
                                 f"({self.path}) or into a new one")
            shutil.copytree(self.path, target, ignore=shutil.ignore_patterns(".lock"), dirs_exist_ok=True)
        store = ModelStore(target)
        with self.engine.listening(), store.lock():
            store.recover()
            if store.current() != self.loaded.version:
                raise ModelError(f"{target} moved to version {store.current()} since this model "
                                 f"was loaded ({self.loaded.version}); load it again")
            self.pending.model_dir = store.root
            try:
                report = self.engine.commit(self.pending, store)
            finally:
                self.pending = None
        self.last_report = report
        raise_if_rejected(report, store)
        self.load_model(target)
        return report["version"]

    @staticmethod
    def _check_rejects(rejects) -> None:
        if rejects:
            r = rejects[0]
            raise SourceError(f"{len(rejects)} items of new_data are unusable; item {r.line}: {r.reason}")
