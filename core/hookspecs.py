"""Every hook a retain plugin can implement. Each docstring is the plugin author's manual.

A plugin is a module (or object) with functions marked ``@hookimpl``, exposed
through the ``retain`` entry-point group in its package metadata::

    [project.entry-points.retain]
    my_plugin = "my_package.plugin"

The built-in sources, dedupers, preprocessors, validators and strategies are
registered exactly this way, so ``retain plugins`` lists them beside yours.

Registration hooks receive a ``register`` callable, so one plugin can add
several things::

    from retain import hookimpl

    @hookimpl
    def register_sources(register):
        register("sqlite", SqliteSource, options=SqliteOptions,
                 description="rows of a SQLite table", suffixes=(".db", ".sqlite"))

``register(name, factory, *, options=None, description="", **extra)``:

- ``name``: what users write in config or on the command line.
- ``factory``: called as ``factory(options)`` with an instance of ``options``
  (a dataclass whose fields are the plugin's settings, filled from
  ``config.options[name]`` and type-checked), or ``factory(None)`` if it has none.
- ``description``: one line for ``retain plugins`` / ``retain strategies``.

Lifecycle and training hooks receive a ``run`` (``retain.core.engine.Run``):
the config, the model directory, the model being trained, the counts so far,
the items it trains on (``run.items``), the version it starts from
(``run.parent``, None for a full training) and ``run.kind``
(``"full_training"`` or ``"fine_tuning"``).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("retain")
hookimpl = pluggy.HookimplMarker("retain")


@hookspec
def register_sources(register):
    """Add data sources: where new items come from.

    ``register(name, factory, options=..., description=..., suffixes=(...))``.
    The factory returns an object with ``read(location: str)`` that yields
    ``retain.Item`` for each usable record and ``retain.Reject`` (with a reason
    and the file/line) for each unusable one; never drop a record silently.
    ``suffixes`` lets ``--data notes.db`` pick your source by file extension;
    ``--data NAME:LOCATION`` always picks it by name. Raise
    ``retain.SourceError`` when the location itself cannot be read.
    """


@hookspec
def register_preprocessors(register):
    """Add preprocessors: per-item cleaning run after deduplication.

    The factory returns a callable ``process(item) -> Item | Reject``: return
    ``item.with_text(new_text)`` to change it, the item unchanged to keep it,
    or ``Reject.of(item, "reason")`` to drop it with a reason that lands in the
    rejects file. Preprocessors run in the order of ``config.preprocessors``.
    """


@hookspec
def register_dedupers(register):
    """Add dedupers: what counts as "already seen".

    The factory returns an object with
    ``find_duplicates(items, known) -> dict[int, str]``, mapping the index of
    each duplicate in ``items`` to a reason (e.g. which earlier item it
    matches). ``known(hashes) -> {hash: (version, role)}`` looks hashes up in
    the model's ledger (items the current model learned or holds out; role
    ``"holdout"`` marks validation/retention items, which must never be
    trained on); ``known.ledger`` and ``known.chain`` give a deduper with an
    index of its own the ledger database and the versions that count. A reason
    may be a ``retain.core.known.Duplicate`` (a string that also says which
    item matched); the report counts matches of kind ``"holdout"`` as
    ``contaminating``. An optional ``remember(items, version, writer)`` lets a
    deduper persist an index for the new version (``writer.store.ledger``):
    tag rows with ``version`` and call ``ledger.mark_version(version)`` in the
    same transaction, so they count only once the version is in CURRENT's
    chain and are dropped if it is never finished. Dedupers run in the order
    of ``config.dedupers``.
    """


@hookspec
def register_strategies(register):
    """Add anti-forgetting strategies, chosen with ``fine_tuning.strategy``.

    The factory returns a ``retain.Strategy`` subclass instance. During the
    run the strategy object is itself registered as a plugin, so it may
    implement ``training_penalty`` and the lifecycle hooks. It may also return
    avalanche-lib plugins from ``avalanche_plugins()``, adjust learning rate,
    epochs and schedule in ``configure(settings)``, and carry state to the next
    update through ``state_dict()`` / ``load_state_dict()`` (tensors and JSON,
    saved inside the model version; a strategy never writes files itself).
    ``retain train`` runs the configured strategies as the model's first
    experience (without ``configure``; ``run.parent`` is None), so their state
    from the base data is there for the first update.
    """


@hookspec
def register_validators(register):
    """Add validators: checks that decide whether a candidate model is good enough.

    The factory returns an object with ``validate(evidence) -> Verdict``, where
    ``evidence`` (``retain.Evidence``) holds the before/after losses on retention
    and new held-out items (means and, for retention, per-item tensors), epoch
    losses, the candidate model and its tokenizer, the run's ``settings``
    (learning rate, epochs, batch size) and ``timings``, and ``Verdict`` is
    ``retain.Verdict(status="pass"|"warn"|"fail", reason=..., numbers={...},
    remedy=...)``. Any ``fail`` rejects the candidate: it is kept as a rejected
    version, CURRENT stays, and ``retain update`` exits 10. ``remedy`` is the
    next step for the report; ``retain.core.advice`` builds the seed's remedies
    with this run's numbers (``lower_lr(evidence.settings)``, ...). Thresholds
    belong in the options dataclass. Validators run in the order of
    ``config.validators``; ``examples/perplexity-ceiling`` is a complete one.
    """


@hookspec
def training_penalty(run, model, inputs, targets, logits):
    """Return an extra loss term (a scalar tensor) for this training step, or None.

    Called once per minibatch after the forward pass; the engine adds every
    returned term to the task loss before the backward pass. Used by
    regularization strategies (L2 to previous weights, distillation, ...).
    """


@hookspec
def update_started(run):
    """Called when a training or update run starts, after the model is loaded."""


@hookspec
def epoch_ended(run, epoch, loss):
    """Called after each epoch with its 1-based number and mean training loss."""


@hookspec
def update_finished(run, report):
    """Called when a run ends with its report (a dict: counts, losses, metrics,
    version, timings). Not called when the run failed."""
