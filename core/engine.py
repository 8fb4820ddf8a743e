"""The engine: what each command runs of the update cycle (``core/cycle.py``), with its options.

    train    load nothing, ingest all data, prepare, measure, train, gate, commit
    update   the same from the current version, on new data only (``--check``: commit
             nothing; ``--dry-run``: ``cycle.plan``, load and ingest only); ``advise`` after
    import   load the model made elsewhere, ingest its base data, prepare; no gate; commit

The stages are ``core/cycle.py``'s; this module holds the options: the model directory's
lock, recovery after a crash, several processes (rank 0 alone writes), rejection as an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from retain.core import cycle
from retain.core.config import Config
from retain.core.errors import ConfigError, ModelError, RetainError
from retain.core.quality.gate import raise_if_rejected
from retain.core.data.items import Item
from retain.core.pluginmanager import Registry, default_plugin_manager
from retain.core.run import FINE_TUNING, FULL_TRAINING, IMPORT, Run
from retain.core.storage.store import ModelStore
from retain.core.wording import plural
from retain.core.runtime.world import SOLO, World


class Engine:
    def __init__(self, config: Config, *, pm=None, listeners: tuple | list = (), device: str | None = None,
                 strict: bool = False, world: World = SOLO, allow_empty: bool = False):
        """``listeners``: objects with event hookimpls (a renderer), registered while a run lasts.
        ``world``: the processes the run spans (``core/runtime/world.py``), made where the run starts.
        ``allow_empty``: ``--data`` that gives no usable item is a warning, not a ``SourceError``."""
        pm = pm or default_plugin_manager()
        registry = Registry.of(pm)
        registry.check_config(config)  # unknown plugin names and options fail here, early
        self.setup = cycle.Setup(config, pm, registry, world, world.device or device or config.device,
                                 strict, allow_empty, tuple(listeners))
        self.config, self.pm, self.registry, self.world = config, pm, registry, world
        self.device_name = self.setup.device_name  # a rank's own GPU, else the one asked for

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
            return self._on_every_rank(FULL_TRAINING, data, store, items=items)
        return self._new_lineage(FULL_TRAINING, data, store, items)

    def import_model(self, source: str | Path, model_dir: str | Path, data: list[str] = (), *,
                     items: list[Item] | None = None) -> dict:
        """A model made elsewhere (``core/storage/imports.py``) becomes the next version (0001 in a new dir),
        through the same steps and commit as a training. With base ``data`` (or ``items``) its
        held-out items are the retention set and the strategies record their state from it."""
        return self._new_lineage(IMPORT, list(data), ModelStore(model_dir), items, Path(source), judged=False)

    def _new_lineage(self, kind: str, data: list[str], store: ModelStore, items: list[Item] | None,
                     source: Path | None = None, judged: bool = True) -> dict:
        """A training or an import: version 0001 of a new lineage, replacing what was current.
        The ledger is closed when the run ends: no -wal/-shm left behind."""
        with store.undone_if_failed(), cycle.listening(self.setup), store.lock(), contextlib.closing(store.ledger):
            cycle.recover(self.setup, store)
            replaces = store.current() if store.exists() else None
            run = cycle.candidate(self.setup, kind, data, store, None, items=items, source=source)
            report = cycle.commit(self.setup, run, store, replaces=replaces)
        return raise_if_rejected(report, store) if judged else report.to_json()

    def update(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None,
               dry_run: bool = False, check: bool = False, wait: float = 0.0, advise: bool = False) -> dict:
        """One fine-tuning cycle on new data only; a new version, current if the gate accepts it.
        ``dry_run``: what the update would learn (collect, preprocess, dedupe, hold out) and
        nothing more: no model loaded, nothing trained, nothing written (``cycle.plan``).
        ``check``: train and validate, write nothing; rejected by the gate raises as usual.
        ``advise`` ends with the full-retrain assessment (``advice_given``, report["retrain"])."""
        writes = not (dry_run or check)
        # A read-only mount serves a dry run or a check; rank 0 alone writes (``core/runtime/world.py``).
        store = ModelStore(model_dir, read_only=not writes or not self.world.is_writer)
        store.current()  # a clear error before anything else if there is no model
        if self.world.distributed:
            if dry_run or check:
                raise ConfigError("--dry-run and --check run in one process: drop --nproc (or torchrun)")
            return self._on_every_rank(FINE_TUNING, data, store, items=items, wait=wait, advise=advise)
        # The ledger is closed when the run ends (a dry run's or check's before the advice).
        with cycle.listening(self.setup), (store.lock(wait=wait) if writes else contextlib.nullcontext()), \
                contextlib.closing(store.ledger):
            if writes:
                cycle.recover(self.setup, store)
            try:
                run = (self.plan(data, store, items=items) if dry_run else
                       cycle.candidate(self.setup, FINE_TUNING, data, store, store.current(), items=items,
                                       writes=not check))
            finally:
                if not writes:
                    store.ledger.close()
            if dry_run or (check and run.trained):
                report = cycle.not_saved(self.setup, run, "dry_run" if dry_run else "check")
            else:
                report = cycle.commit(self.setup, run, store)  # nothing trained: "nothing_new"
            if advise:
                report = cycle.advise(self.setup, run, store, report)
        return raise_if_rejected(report, store)

    def plan(self, data: list[str], store: ModelStore, items: list[Item] | None = None) -> Run:
        """``update --dry-run``'s stages: load (the manifest only) and ingest (``cycle.plan``)."""
        return cycle.plan(self.setup, data, store, items)

    def _on_every_rank(self, kind: str, data: list[str], store: ModelStore, *, items: list[Item] | None = None,
                       wait: float = 0.0, advise: bool = False) -> dict:
        """``train`` or ``update`` as one of several torchrun processes (``core/runtime/world.py``).

        Every rank runs the cycle on the same data; rank 0 holds the lock from start to end,
        validates, and alone saves, after all ranks have finished training: a rank that died
        fails that meeting and nothing is committed. The lock goes with rank 0's process."""
        world = self.world
        with cycle.listening(self.setup), self._writer_lock(store, wait), contextlib.closing(store.ledger):
            if world.is_writer:
                cycle.recover(self.setup, store)
            world.barrier("reading the model directory")  # rank 0 has tidied up after a crash
            replaces = store.current() if kind == FULL_TRAINING and store.exists() else None
            base = store.current() if kind == FINE_TUNING else None
            run = cycle.candidate(self.setup, kind, data, store, base, items=items)
            with cycle.scratch_removed_on_failure(run):  # a rank that died fails this meeting
                world.barrier("the save")
            report = cycle.commit(self.setup, run, store, replaces=replaces) if world.is_writer else cycle.unsaved_rank(run)
            report = report.model_copy(update=world.broadcast({"version": report.version, "status": report.status}))
            if advise and world.is_writer:
                report = cycle.advise(self.setup, run, store, report)
        return raise_if_rejected(report, store)

    @contextlib.contextmanager
    def _writer_lock(self, store: ModelStore, wait: float) -> Iterator[None]:
        """Rank 0 takes the model directory's lock for the whole run; if it cannot, every rank
        ends with its error."""
        with contextlib.ExitStack() as stack:
            error = None
            if self.world.is_writer:
                try:
                    stack.enter_context(store.lock(wait=wait))
                except RetainError as exc:
                    error = exc
            self.world.agree(error)
            yield
