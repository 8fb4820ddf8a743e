"""The design document's manual API::

    from retain import ModelTrainer

    trainer = ModelTrainer('config.yaml')
    trainer.load_model('models/my-model')
    trainer.fine_tune(new_data, epochs=3, lr=0.0001)
    trainer.save_model('models/my-model')   # or trainer.discard(): nothing written

A thin layer over the cycle (``core/cycle.py``): ``fine_tune`` runs every stage but the
commit (``cycle.candidate``) and returns the report with the gate's verdict
(``report["gate"]``), ``save_model`` the commit, ``discard`` drops the fine-tune and
reloads the version it started from. It checks what the command line checks: ``epochs``,
``lr`` and ``strategy`` are config values (a ``ConfigError`` for ``lr=nan`` or ``epochs=-1``)
and hold for that call only; a path that is not a model is a ``ModelError``. With ``verbose``
the CLI's renderer prints the steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

from retain.core import cycle
from retain.core.config import Config, load_config, with_values
from retain.core.engine import Engine
from retain.core.errors import ModelError, SourceError
from retain.core.quality.gate import raise_if_rejected
from retain.core.data.ingest import python_items
from retain.core.storage.models import LoadedVersion, load_version
from retain.core.run import FINE_TUNING, Run
from retain.core.storage.store import ModelStore
from retain.core.learning.strategy import UPDATE_LEARNING_RATE_KEYS
from retain.core.runtime.world import World, join


class ModelTrainer:
    def __init__(self, config: str | Path | Config | None = None, *, device: str | None = None,
                 verbose: bool = True, overrides: list[str] | None = None, pm=None, world: World | None = None):
        """``config``: a YAML path (``retain config > config.yaml`` writes the defaults to start
        from), a ``Config``, or None for the embedded defaults. ``world``: the processes the
        runs span (``core/runtime/world.py``); by default this one, or the ranks of torchrun when it
        started this program (their process group is joined here)."""
        self.config = config if isinstance(config, Config) else load_config(config, overrides)
        self.world = world if world is not None else join(device or self.config.device)
        self.listeners = []
        if verbose:
            from retain.render import ConsoleRenderer
            self.listeners.append(ConsoleRenderer.for_terminal())
        self.pm, self.device = pm, device
        self.engine = self._engine(self.config)
        self.path: Path | None = None
        self.loaded: LoadedVersion | None = None
        self.pending: Run | None = None
        self.pending_engine: Engine | None = None
        self.last_report: dict | None = None

    def _engine(self, config: Config) -> Engine:
        return Engine(config, pm=self.pm, device=self.device, listeners=self.listeners, world=self.world)

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

    def train(self, data: Iterable[Any] | str, path: str | Path, *, epochs: int | None = None,
              lr: float | None = None, force: bool = False) -> dict:
        """Full training from scratch on ``data`` (strings or dicts); saves into ``path``.
        ``epochs`` and ``lr`` hold for this call only."""
        config = with_values(self.config, {"full_training.epochs": epochs, "full_training.learning_rate": lr})
        items, rejects = python_items(_as_items(data))
        self._check_rejects(rejects)
        report = self._engine(config).train([], path, items=items, force=force)
        self.load_model(path)
        self.last_report = report
        return report

    def fine_tune(self, new_data: Iterable[Any] | str, epochs: int | None = None, lr: float | None = None,
                  strategy: list[str] | str | None = None) -> dict:
        """One update cycle on ``new_data`` (strings, or dicts with a ``text`` field; a single
        string is one item). ``epochs``, ``lr`` and ``strategy`` hold for this call only.

        The fine-tuned model stays in memory until ``save_model``. Returns the report: counts,
        epoch losses, before/after metrics, the verdicts, and ``gate``: "accepted", or
        "rejected" (``save_model`` will then keep it as a rejected version and raise
        ``UpdateRejected``), or None when there was nothing new to learn.
        """
        if self.loaded is None or self.path is None:
            raise ModelError("no model loaded: call load_model(path) first")
        if self.pending is not None:
            raise ModelError("this trainer holds an unsaved fine-tune: call save_model() first")
        if isinstance(strategy, str):
            strategy = [s.strip() for s in strategy.split(",") if s.strip()]
        rates = dict.fromkeys(UPDATE_LEARNING_RATE_KEYS, lr)  # every strategy's: the rate asked for is used
        config = with_values(self.config, {"fine_tuning.epochs": epochs, **rates, "fine_tuning.strategy": strategy})
        engine = self._engine(config) if config != self.config else self.engine
        items, rejects = python_items(_as_items(new_data))
        self._check_rejects(rejects)
        with cycle.listening(engine.setup):
            run = cycle.candidate(engine.setup, FINE_TUNING, [], ModelStore(self.path), self.loaded, items=items)
        self.pending, self.pending_engine = (run, engine) if run.trained else (None, None)
        gate = ("accepted" if run.accepted else "rejected") if run.trained else None
        self.last_report = run.report().model_copy(update={"gate": gate}).to_json()
        return self.last_report

    def save_model(self, path: str | Path | None = None) -> str | None:
        """Save the fine-tuned model as a new version of ``path`` (default: where it was loaded).

        Saving to a new directory first copies the loaded model directory there,
        so the copy keeps its history and ledger. Returns the version name.
        """
        if self.pending is None or self.pending_engine is None:
            raise ModelError("nothing to save: fine_tune() has not produced a new model")
        target = Path(path) if path is not None else self.path
        assert self.path is not None and self.loaded is not None
        store, engine = ModelStore(target), self.pending_engine  # (a file: ModelError)
        if target.resolve() != self.path.resolve():
            if target.exists() and any(target.iterdir()):
                raise ModelError(f"{target} is not empty; save into the loaded model directory "
                                 f"({self.path}) or into a new one")
            shutil.copytree(self.path, target, ignore=shutil.ignore_patterns(".lock"), dirs_exist_ok=True)
        with cycle.listening(engine.setup), store.lock():
            cycle.recover(engine.setup, store)  # its notes are warnings (a lost ledger rebuilt, a prune finished)
            if store.current() != self.loaded.version:
                raise ModelError(f"{target} moved to version {store.current()} since this model "
                                 f"was loaded ({self.loaded.version}); load it again")
            self.pending.model_dir = store.root
            try:
                report = cycle.commit(engine.setup, self.pending, store)
            finally:
                self.pending, self.pending_engine = None, None
        self.last_report = report.to_json()
        raise_if_rejected(report, store)
        self.load_model(target)
        return report.version

    def discard(self) -> "ModelTrainer":
        """Drop the fine-tune ``fine_tune`` produced, writing nothing (not even the rejected
        version ``save_model`` would keep): the trainer holds the version it had loaded again,
        as it is on disk (training changed the loaded model's weights in place)."""
        if self.pending is None or self.loaded is None or self.path is None:
            raise ModelError("nothing to discard: fine_tune() has not produced a new model")
        cycle.release_scratch(self.pending)  # its token shard's scratch folder
        self.pending, self.pending_engine = None, None
        self.loaded = load_version(ModelStore(self.path), self.loaded.version, registry=self.engine.registry)
        return self

    @staticmethod
    def _check_rejects(rejects) -> None:
        if rejects:
            r = rejects[0]
            raise SourceError(f"{len(rejects)} items of new_data are unusable; item {r.line}: {r.reason}")


def _as_items(data: Iterable[Any] | str) -> Iterable[Any]:
    """A bare string is one item, not a sequence of one-character items."""
    return [data] if isinstance(data, (str, dict)) else data
