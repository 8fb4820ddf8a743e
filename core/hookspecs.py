"""Every hook a retain plugin can implement. Each docstring is the plugin author's contract
for the hook; what the objects a factory returns must provide is written once, as the
protocols of ``core/contracts.py`` (all of it importable from ``retain.plugin``).

A plugin is a module (or object) with functions marked ``@hookimpl``, exposed
through the ``retain`` entry-point group in its package metadata::

    [project.entry-points.retain]
    my_plugin = "my_package.plugin"

The built-in sources, preprocessors, dedupers, validators, model families,
strategies and compare scenarios are registered exactly this way, so
``retain plugins`` lists them beside yours. ``docs/plugins.md`` is the full
reference: the objects, the order of a run, examples.

**Registration hooks** receive a ``register`` callable, so one plugin can add
several things::

    from retain.plugin import hookimpl

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
- ``extra``: only the keywords a kind defines (sources: ``suffixes``, ``folder_markers``); any
  other keyword is an error naming the plugin, never silently ignored.

The objects factories return are described by the protocols ``Source``,
``Preprocessor``, ``Deduper``, ``Validator``, ``ModelFamily``/``LanguageModel``,
``Scenario`` and by the ``Strategy`` base class. Once every plugin has
registered, each registration is checked against its protocol: a factory
that is a class missing a required method is a ``PluginError`` naming the
plugin and the method (a factory function is checked on what it returns,
when it is first built).

**Run hooks** receive a ``run`` (``retain.plugin.Run``): the config, the
model directory, the version it starts from (``run.parent``, None for a full
training), ``run.kind`` (``"full_training"``, ``"fine_tuning"`` or ``"import"``:
``FULL_TRAINING``, ``FINE_TUNING``, ``IMPORT``), the items
it trains on (``run.items``: a sequence read from the run's item spool, ``core/data/spool.py``;
iterate it, do not list it: a corpus is not all in memory), the model (``run.lm``, a ``LanguageModel``;
``run.model`` is its ``torch.nn.Module``), ``run.settings`` and the counts so
far. It is a read-only view (``RunView``): setting an attribute raises. In a run they fire in this order (``STEPS`` lists the steps)::

    step_started/step_finished("load")        model loaded (update) or none (training)
    step_started/step_finished("collect")     sources read
    step_*("preprocess"), step_*("dedupe"), step_*("holdout")
    step_*("tokenize")                        model created (training) and rows built
    step_*("precision")                       precision: auto decided (measured, cached or by rule)
    step_*("evaluate_before")                 held-out losses of the starting model
    step_*("import")                          the rest of the training stack's import
    step_started("train")
      update_started
      training_penalty, training_progress     per batch
      epoch_ended                             per epoch
    step_finished("train")
    step_started/step_finished("validate")    verdicts_given in between
    step_started("save")                      strategies' state_dict() taken, version written
    step_finished("save")                     CURRENT moved (or the version kept as rejected)
    update_finished                           after the version is saved
    advice_given                              `retain update`: fine-tune or fully retrain?

Outside a run, ``rolled_back`` says that ``retain rollback`` moved CURRENT.

Event hooks (``step_*``, ``training_progress``, ``epoch_ended``,
``verdicts_given``, ``advice_given``, ``warning_raised``, ``rolled_back``) only
observe: the CLI's terminal output and ``--json`` are built from them, and so are
the trackers (``register_loggers``: ``mlflow``, ``tensorboard``). Their return
values are ignored.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("retain")
hookimpl = pluggy.HookimplMarker("retain")

# The steps a run announces (``step_started``/``step_finished``), in order.
STEPS = ("load", "collect", "preprocess", "dedupe", "holdout", "tokenize", "precision", "evaluate_before",
         "import", "train", "validate", "save")


# --- registration ------------------------------------------------------------------------

@hookspec
def register_sources(register):
    """Add data sources: where new items come from. The factory returns a ``Source``.

    ``register(name, factory, options=..., description=..., suffixes=(...))``.
    ``read(location)`` yields an ``Item`` for each usable record and a ``Reject``
    (with a reason and the file/line) for each unusable one; never drop a record
    silently. ``suffixes`` lets ``--data notes.db`` (and the files of a ``--data``
    folder) pick your source by file extension (the longest registered suffix wins);
    ``folder_markers`` lets a folder holding one of those files be read whole by
    your source; ``--data NAME:LOCATION`` always picks it by name. Raise
    ``SourceError`` when the location itself cannot be read. Stream: yield records
    as they are read, a bounded batch at a time; a source that cannot says so with
    a class attribute ``streams = False`` (``retain plugins`` shows it).
    """


@hookspec
def register_preprocessors(register):
    """Add preprocessors: per-item cleaning. The factory returns a ``Preprocessor``.

    Called with each item: return ``item.with_text(new_text)`` to change it, the item unchanged to keep it,
    or ``Reject.of(item, "reason")`` to drop it with a reason that lands in the
    rejects file. Preprocessors run in the order of ``config.preprocessors``,
    right after the sources and *before* deduplication: what is compared, and
    what the ledger remembers, is the cleaned text.
    """


@hookspec
def register_dedupers(register):
    """Add dedupers: what counts as "already seen". The factory returns a ``Deduper``.

    ``find_duplicates(items, known)`` maps the index of each duplicate in
    ``items`` (preprocessed) to a reason (e.g. which earlier item it matches).
    ``known(hashes) -> {hash: (version, role)}`` looks hashes up in the model's
    ledger (items the current model learned or holds out; role ``"holdout"``
    marks validation/retention items, which must never be trained on);
    ``known.ledger`` and ``known.chain`` give a deduper with an index of its own
    the ledger database and the versions that count. A reason may be a
    ``Duplicate`` (a string that also says which item matched); the report
    counts matches of kind ``"holdout"`` as ``contaminating``. A deduper that is
    also ``RemembersItems`` persists an index for each new version. Dedupers run
    in the order of ``config.dedupers``.

    A run calls ``find_duplicates`` once per batch of its items (``core/data/spool.py``:
    memory bounded by the batch), in order, with the same ``known`` for every batch of
    the run; ``known.in_run(hashes) -> {hash: origin}`` gives the items earlier batches
    kept, so a copy two batches apart is found as one within a batch (``exact`` does);
    state of a deduper's own across batches is keyed on ``known`` (``minhash``).
    ``remember`` gets the items as a sequence read from disk: iterate it once.
    """


@hookspec
def register_strategies(register):
    """Add anti-forgetting strategies, chosen with ``fine_tuning.strategy``.

    The factory returns a ``Strategy`` (subclass) instance, built afresh
    for every run. During the run the strategy object is itself registered as
    a plugin (from the start of the run until after ``update_finished``), so
    it may implement ``training_penalty`` and the run hooks with
    ``@hookimpl`` methods. It may also return avalanche-lib plugins from
    ``avalanche_plugins(run)``, adjust learning rate, epochs and schedule in
    ``configure(settings, run)``, and carry state to the next update through
    ``state_dict()`` / ``load_state_dict()`` (tensors and JSON, saved inside
    the model version; a strategy never writes files itself).
    ``load_state_dict`` is called right after the strategy is built, with the
    parent version's state (empty for a full training); ``state_dict`` when the
    new version is written (inside step "save", before ``update_finished``).
    ``retain train`` runs the configured strategies as the model's first
    experience (without ``configure``; ``run.parent`` is None), so their state
    from the base data is there for the first update.
    """


@hookspec
def register_validators(register):
    """Add validators: checks that decide whether a candidate model is good enough.
    The factory returns a ``Validator``.

    ``validate(evidence)`` judges an ``Evidence`` (the before/after losses on
    retention and new held-out items, means and per-item tensors, epoch losses,
    the candidate ``LanguageModel``, the run's ``settings`` and ``timings``) and
    returns a ``Verdict(status="pass"|"warn"|"fail", reason=..., numbers={...},
    remedy=...)``. Any ``fail`` rejects the candidate: it is kept as a rejected
    version, CURRENT stays, and ``retain update`` exits 10. ``remedy`` is the next
    step for the report; ``lower_lr(evidence.settings)``, ``raise_lr``,
    ``fewer_epochs`` build the design document's remedies with this run's numbers.
    Thresholds belong in the options dataclass. Validators run in the order of
    ``config.validators``; ``examples/perplexity-ceiling`` is a complete one.

    Early stopping also asks every validator after each epoch of an update, with
    the evidence so far; a validator whose check costs like a pass of training
    sets the class attribute ``each_epoch = False`` (the built-in
    ``generation`` does) and is then asked only by the gate, on the epoch kept.
    """


@hookspec
def register_models(register):
    """Add model families: kinds of model retain can train, load and save, chosen
    with ``model.family``. The factory returns a ``ModelFamily``.

    ``create`` (a full training's random init), ``load`` (a saved version back,
    from its checksum-verified files and its manifest's ``model`` entry) and
    ``architecture_from_config`` are required, and return a ``LanguageModel``:
    the torch module, ``encode``, ``token_losses``, ``generate``,
    ``architecture()`` and ``save(writer)``. Weights are written and read as
    safetensors only. Optional: ``renew`` (``RenewsModels``, for
    ``full_training.tokenizer: keep``), ``import_model`` (``ImportsModels``, for
    ``retain import``), ``export`` (``ExportsModels``, for ``retain export``).
    Decorate ``load`` with ``loads_adapters`` to load the ``lora`` strategy's
    adapter-only versions. The built-in ``gpt``, ``hf`` and ``python`` families
    (``retain.plugins.models``) and ``examples/retain-bigram-family`` are
    complete examples.
    """


@hookspec
def register_scenarios(register):
    """Add ``retain compare`` scenarios (``--scenario NAME``): streams of experiences on
    which strategies are compared. The factory returns a ``Scenario``.

    ``build(request, registry)`` makes the stream once, in the parent process;
    ``run(names, stream, config, seed, scratch)`` runs one strategy composition
    over it in a worker process, so the stream must be picklable. See
    ``retain.compare.digits`` for a complete one.
    """


@hookspec
def register_loggers(register):
    """Add loggers: trackers a run reports to, chosen with ``loggers: [...]`` in the config
    (or ``--log-to a,b``). The factory returns a ``Logger``, built afresh for each run.

    A logger hears the event hooks (``update_started``, ``step_finished``, ``epoch_ended``,
    ``verdicts_given``, ``update_finished``, ``warning_raised``, ``rolled_back``, ...): it has a
    method of the hook's name for each it wants, taking any of the hook's arguments by name
    (``@hookimpl`` marks are allowed, not needed). ``close(error)`` ends its run: ``error`` is
    the exception that ended the command, or None. A logger that raises is told once as a
    warning and hears nothing more in that run: the version and its report are never
    affected. The built-in ``mlflow`` and ``tensorboard`` (``retain.plugins.loggers``) are
    complete examples; ``docs/tracking.md`` names the metrics they log.
    """


# --- training ------------------------------------------------------------------------------

@hookspec
def training_penalty(run, model, inputs, targets, logits):
    """Return an extra loss term (a scalar tensor) for this training step, or None.

    Called once per minibatch after the forward pass; the engine adds every
    returned term to the task loss before the backward pass. Used by
    regularization strategies (L2 to previous weights, distillation, ...).
    """


@hookspec
def update_started(run):
    """Called when training starts, after the model is loaded and the rows are built."""


@hookspec
def update_finished(run, report):
    """Called after the new version is saved (accepted or rejected), with the run's
    report as JSON (a dict, ``UpdateReport.to_json()``: what ``--json`` prints and
    report.json holds, with its ``schema_version``; the listener's own copy). Not
    called when the run failed or saved nothing. An exception raised here is
    reported as a warning: the version is saved and stays what it is."""


# --- events: what the CLI renders; observers only --------------------------------------------

@hookspec
def step_started(run, step):
    """A step of the run begins: ``"load"``, ``"collect"``, ``"preprocess"``, ``"dedupe"``,
    ``"holdout"``, ``"tokenize"``, ``"precision"``, ``"evaluate_before"``, ``"import"``, ``"train"``,
    ``"validate"``, ``"save"`` (``STEPS``). A dry run has only load (the manifest), collect,
    preprocess, dedupe, holdout and save; an import (``run.kind == "import"``) has no
    validate, and without base data goes from load to save."""


@hookspec
def step_finished(run, step, info, seconds):
    """A step ended. ``info`` is a dict of what it did, by step:

    - load: ``version`` (None: training from scratch), ``parameters``
    - collect: ``items``, ``rejected``, ``rejects_file`` (None in a dry run)
    - preprocess: ``items`` (kept), ``rejected``
    - dedupe: ``duplicates``, ``contaminating``, ``items`` (left)
    - holdout: ``train``, ``held_out`` (``train`` 0: nothing new to learn, the run ends)
    - tokenize: ``items``, ``sequences``, ``tokens``, ``held_out``
    - precision: ``asked``, ``chose``, ``why``, ``speedup``, ``batch``, ``cached``, ``seconds``
    - evaluate_before: ``retention_items`` (scored), ``new_items``, ``retention_stored`` (of
      them, read from the parent version instead of scored); an update also ``retention_pool``
    - import: ``module``, ``import_seconds`` (the whole import, in its background thread),
      ``overlapped``; the step's own seconds are what the run still waited for
    - train: ``epoch_losses``, ``oom_retries``
    - validate: ``metrics``, ``verdicts`` (dicts, each with its ``seconds``), ``next_steps``
    - save: ``version``, ``status`` (``"accepted"``, ``"rejected"``; ``"dry_run"`` or
      ``"check"`` with ``version`` None: nothing written), ``current``, ``pruned`` (the keep
      policy's plan, or None)
    """


@hookspec
def training_progress(run, epoch, epochs, step, steps, loss, tokens):
    """After each training batch: 1-based epoch and step, their totals, the batch's loss and
    the tokens it trained on (target positions, on this process: a throughput to report)."""


@hookspec
def epoch_ended(run, epoch, loss):
    """Called after each epoch with its 1-based number and mean training loss."""


@hookspec
def verdicts_given(run, verdicts, next_steps):
    """The validators' ``Verdict``s for the candidate and the next steps they advise."""


@hookspec
def advice_given(run, assessment):
    """After ``retain update``: whether to keep fine-tuning or fully retrain
    (an ``Assessment``: its ``checks`` and ``summary``)."""


@hookspec
def warning_raised(run, message):
    """Something the user should know that does not stop the run (``run`` may be None)."""


@hookspec
def rolled_back(model_dir, previous, current, repaired):
    """``retain rollback`` made ``current`` the current version of ``model_dir`` (a ``Path``),
    in place of ``previous`` (None when CURRENT was broken; ``repaired`` then says what was
    wrong with it, else None). Called once CURRENT is on disk and the lock released, not
    when the version asked for was already current. The loggers heard are those the config
    of ``previous`` chose (else ``current``'s); an exception here is a warning: the rollback
    has happened and stays."""
