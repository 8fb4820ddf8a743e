"""``retain update --auto``: a budgeted search for the update's recipe, then one normal save.

The parent process takes the lock, ingests the new data once (collect,
preprocess, dedupe, hold out) and scores the parent version once on the
retention set and the held-out new items. Then trials run, each a candidate
update with one recipe (``tune/space.py``) in a process of its own
(``tune/trial.py``), judged by the configured validators. Optuna's TPE sampler
proposes the recipes after the prior (the configured recipe and the design
document's common-issues remedies).

The budget is a share (``--budget``, default ``tune.budget`` 0.1) of the last
full training's measured training time (``timings.train`` in its manifest);
the trials' training seconds are summed against it. Each trial gets nine
tenths of what is left as its time limit (``fine_tuning.max_seconds``: its
schedule is squeezed into the steps that fit, it stops in time and keeps its
best epoch), and no trial starts once what is left is less than one epoch of
the cheapest trial so far.

The winner is the trial the gate accepted with the lowest held-out new-item
loss; it is committed through ``core/storage/commit.py`` like any update (ledger,
lock, atomic rename), with every trial in its report (``report["search"]``)
and the winning recipe in its manifest; ``search["confirmed_default"]`` says when
the winner is the configured recipe (the first trial): the search then only
confirmed the default, and the report says so. When no trial passes the gate, the
best one is saved as a rejected version and CURRENT stays, as for any
rejected update (exit 10).

The trials run on an executor (``concurrent.futures.Executor``: ``submit(fn,
spec)`` returning a future); the default is a pool of fresh processes, one per
trial. Trial input and output are plain data, so another executor (Ray) fits.

``--dry-run`` trains nothing: the data is read as ``retain update --dry-run``
reads it, and the plan says what the search would cover (``plan_search``).
``--check`` runs the search and saves nothing: the winner is reported as
``retain update --check`` reports its candidate.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import shutil
import tempfile
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, wait
from pathlib import Path
from typing import Any, Callable

from retain.core.config import Config, apply_override, build, parse_override
from retain.core.errors import ConfigError, RetainError
from retain.core.storage.store import ModelStore

from . import space
from .trial import run_trial

SAFETY = 0.9         # a trial's time limit is this share of what is left: room for a slow last step
FAILED_PENALTY = 10.0  # nats added to a rejected trial's objective: the sampler learns to avoid it


def default_executor(jobs: int) -> Executor:
    """A pool of fresh processes, one per trial. On Linux they fork from a server that has
    imported the training stack once (forkserver), so no trial pays avalanche-lib's import."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["retain.tune.trial", "retain.core.learning.training"])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1)


def budget_seconds(store: ModelStore, fraction: float) -> tuple[float, str]:
    """(seconds the trials may train, the full training they are measured against)."""
    from retain.core.quality.retrain import last_full_training

    root, _ = last_full_training(store, store.chain(store.current()))
    seconds = store.manifest(root).get("timings", {}).get("train") if root else None
    if not seconds:
        raise ConfigError("--auto budgets its trials as a share of the last full training's measured training "
                          f"time, and {store.root} records none (no full training in the current chain); "
                          "update without --auto, or retrain with `retain train`")
    return fraction * float(seconds), root


def auto_update(engine, data: list[str], model_dir: str | Path, *, budget: float | None = None,
                items=None, executor: Executor | None = None, dry_run: bool = False, check: bool = False,
                wait_lock: float = 0.0, advise: bool = False,
                on_trial: Callable[[dict, dict], None] | None = None) -> dict:
    """One ``retain update --auto``; returns the update's report (``report["search"]``: the trials).

    ``dry_run`` trains nothing: what the update would learn and what the search would cover
    (``plan_search``). ``check`` searches and writes nothing: the winner is judged, not saved
    (``UpdateRejected``, exit 10, if the gate would reject it).
    ``executor``: where trials run (default: ``default_executor(tune.jobs)``, shut down after).
    ``on_trial(result, search)``: called as each trial ends (the CLI prints a line).
    """
    from retain.core import cycle
    from retain.core.quality.gate import raise_if_rejected
    from retain.core.run import FINE_TUNING

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("--auto searches with Optuna, which is not installed: pip install 'retain[auto]'") from None
    if dry_run and check:
        raise ConfigError("--dry-run trains nothing, --check trains and validates: pick one")
    config = engine.config
    fraction = config.tune.budget if budget is None else budget
    if not 0 < fraction:
        raise ConfigError(f"--budget must be > 0 (a share of the full training's time), got {fraction}")
    store = ModelStore(model_dir, read_only=dry_run)  # a dry run writes nothing
    store.current()
    seconds, root = budget_seconds(store, fraction)
    search = {"budget": fraction, "budget_seconds": seconds, "full_training": root,
              "full_training_seconds": seconds / fraction}
    if dry_run:
        return plan_search(engine, store, data, items, search, advise)
    # The cycle's stages up to measure, once; each trial goes on from their results.
    setup = engine.setup
    with cycle.listening(setup), (contextlib.nullcontext() if check else store.lock(wait=wait_lock)):
        if not check:
            cycle.recover(setup, store)
        run = cycle.load(setup, FINE_TUNING, store, store.current(), writes=not check)
        with cycle.scratch_removed_on_failure(run):  # the items' token shard, until the winner keeps it
            with cycle.strategies_registered(setup, run):
                cycle.ingest(setup, run, store, data, items)
                if run.items:
                    cycle.prepare(setup, run, store)  # the per-item cap, before the trials get the items
                    cycle.measure(setup, run, store)
            if check:
                store.ledger.close()
            if not run.items:
                report = run.report()
            else:
                results = run_search(run, engine, search, executor, on_trial)
                report = commit_winner(run, engine, store, search, results, check)
        if advise:
            report = cycle.advise(setup, run, store, report)
    return raise_if_rejected(report, store)


def plan_search(engine, store: ModelStore, data: list[str], items, search: dict, advise: bool) -> dict:
    """``--auto --dry-run``: what the update would learn (``cycle.plan``: no weights loaded,
    nothing trained or written) and what the search would cover: its space, the prior's recipes
    with their estimated training time, and about how many trials fit the budget."""
    from retain.core import cycle

    setup = engine.setup
    with cycle.listening(setup), contextlib.closing(store.ledger):
        try:
            run = cycle.plan(setup, data, store, items)
        finally:
            store.ledger.close()
        search["trials"] = []
        if run.items:
            search.update(search_plan(engine.config, store, run.items, search))
        run.search = search
        report = cycle.not_saved(setup, run, "dry_run")
        if advise:
            report = cycle.advise(setup, run, store, report)
    return report.to_json()


def search_plan(config: Config, store: ModelStore, items: list, search: dict) -> dict:
    """The space, the prior's recipes in the order they run, and the estimated trials: a
    trial's training time is its bytes x epochs (with its replayed share) at the full
    training's measured seconds per byte and epoch; ``None`` where that was not recorded."""
    tune = config.tune
    mixes, shares = space.choices(config)
    manifest = store.manifest(search["full_training"])
    size, epochs = manifest.get("counts", {}).get("bytes"), len(manifest.get("epoch_losses") or [])
    rate = search["full_training_seconds"] / (size * epochs) if size and epochs else None
    new_bytes = sum(len(item.text.encode("utf-8")) for item in items)

    def estimate(epochs: float, replay_factor: float) -> float | None:
        return None if rate is None else rate * new_bytes * epochs * replay_factor

    prior = [{"recipe": r.to_json(), "describe": r.describe(),
              "estimated_seconds": estimate(r.epochs, 1 / (1 - r.replay_share))} for r in space.prior(config)]
    mean_epochs = (1 + tune.max_epochs) / 2  # the sampler's recipes, on average
    sampled = estimate(mean_epochs, sum(1 / (1 - s) for s in shares) / len(shares))
    plan = {"space": {"strategies": mixes, "learning_rate": [tune.min_learning_rate, tune.max_learning_rate],
                      "epochs": [1, tune.max_epochs], "replay_shares": shares},
            "prior": prior, "sampled_estimated_seconds": sampled, "max_trials": tune.max_trials,
            "jobs": tune.jobs, "estimated_trials": None}
    if rate is not None:
        queue = [(p["estimated_seconds"], p["recipe"]["epochs"]) for p in prior]
        plan["estimated_trials"] = trials_that_fit(queue, (sampled, mean_epochs), search["budget_seconds"],
                                                   tune.max_trials)
    return plan


def trials_that_fit(prior: list[tuple[float, float]], sampled: tuple[float, float], budget: float,
                    max_trials: int) -> int:
    """How many trials ``run_search`` would start, one at a time, if each took its estimated
    (seconds, epochs): each is cut at its time limit, none starts without an epoch's time left."""
    left, ran = budget, []
    for seconds, epochs in itertools.islice(itertools.chain(prior, itertools.repeat(sampled)), max_trials):
        if not startable(left, ran):
            break
        ran.append({"seconds": seconds, "epoch_losses": [None] * max(1, round(epochs))})  # as startable reads it
        left -= min(seconds, SAFETY * left)
    return len(ran)


def run_search(run, engine, search: dict, executor: Executor | None, on_trial) -> list[dict]:
    """Trials until the budget, ``tune.max_trials`` or the prior and sampler run out."""
    import optuna

    config = engine.config
    tune = config.tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    for recipe in space.prior(config):
        study.enqueue_trial(recipe.to_json())
    scratch = Path(tempfile.mkdtemp(prefix="retain-auto-"))
    search.update(spent_seconds=0.0, trials=[], scratch=str(scratch))
    own = executor is None
    executor = executor or default_executor(tune.jobs)
    pending: dict[Any, tuple[Any, float]] = {}
    results: list[dict] = []
    broken = False
    try:
        while not broken or pending:
            while not broken and len(pending) < tune.jobs and len(results) + len(pending) < tune.max_trials:
                reserved = sum(limit for _, limit in pending.values())
                left = search["budget_seconds"] - search["spent_seconds"] - reserved
                if not startable(left, results):
                    break
                trial = study.ask()
                recipe = space.suggest(trial, config)
                limit = SAFETY * left / (tune.jobs - len(pending))
                spec = trial_spec(run, engine, recipe, trial.number, limit,
                                  scratch / f"trial-{trial.number:03d}")
                try:
                    pending[executor.submit(run_trial, spec)] = (trial, spec["limit_seconds"])
                except BrokenExecutor as exc:  # a worker died (killed, out of memory): no more trials
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    results.append(finished_with(trial, spec["limit_seconds"], f"{type(exc).__name__}: {exc}"))
                    search["trials"].append(summary(results[-1]))
                    broken = True
                    break
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                trial, limit = pending.pop(future)
                result = finished(future, trial, limit)
                search["spent_seconds"] += result["seconds"]
                results.append(result)
                search["trials"].append(summary(result))
                if result.get("error"):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, objective(result))
                if on_trial is not None:
                    on_trial(result, search)
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    return results


def startable(left: float, results: list[dict]) -> bool:
    """Start another trial? Always the first; then only with at least one epoch of the
    cheapest trial so far left in the budget."""
    if not results:
        return left > 0
    per_epoch = [r["seconds"] / max(1, len(r["epoch_losses"])) for r in results if r.get("epoch_losses")]
    return left >= (min(per_epoch) if per_epoch else 0.0) and left > 0


def trial_spec(run, engine, recipe: space.Recipe, number: int, limit: float, scratch: Path) -> dict:
    """Everything a trial needs, as plain data."""
    import torch

    data = copy.deepcopy(run.config.to_dict())
    for text in [*recipe.overrides(), f"fine_tuning.max_seconds={limit!r}"]:
        key, value = parse_override(text)
        apply_override(data, key, value)
    build(Config, data)  # a recipe that does not make a valid config fails here, not in a worker

    jobs = max(1, engine.config.tune.jobs)
    return {
        "number": number, "recipe": recipe.to_json(), "config": data, "model_dir": str(run.model_dir),
        "parent": run.parent, "device": engine.device_name, "threads": max(1, torch.get_num_threads() // jobs),
        **run.measured().to_json(),  # the stage result the trial goes on from (Measured)
        "evaluate_seconds": run.timings.get("evaluate_before", 0.0), "limit_seconds": limit,
        "scratch": str(scratch), "plugins": plugin_modules(engine.pm),
        "precision": run.precision_choice,  # "before" was scored in it: the trial trains and scores alike
    }


def plugin_modules(pm) -> list[str]:
    """Plugin modules registered in ``pm`` besides the installed entry points (a plugin given
    to ``make_plugin_manager(extra_plugins=...)``): a trial imports them by name, so they
    judge and train there too. Plugin *objects* cannot travel; install them as a package."""
    import types

    installed = {id(plugin) for plugin, _ in pm.list_plugin_distinfo()}
    return [p.__name__ for p in pm.get_plugins()
            if isinstance(p, types.ModuleType) and id(p) not in installed and p.__name__ != "retain.core.hookspecs"]


def finished(future, trial, limit: float) -> dict:
    """A trial's result; a trial that raised is a failed trial, not a failed search."""
    try:
        return future.result()
    except RetainError as exc:
        error = str(exc)
    except Exception as exc:  # a bug or a crash in the worker: reported, the search goes on
        error = f"{type(exc).__name__}: {exc}"
    return finished_with(trial, limit, error)


def finished_with(trial, limit: float, error: str) -> dict:
    return {"number": trial.number, "recipe": dict(trial.params), "accepted": False, "error": error,
            "seconds": 0.0, "limit_seconds": limit, "metrics": {}, "verdicts": [], "epoch_losses": []}


def objective(result: dict) -> float:
    """Lower is better: the held-out new items' loss (training loss without them), plus a
    penalty when the gate rejected the candidate."""
    m = result["metrics"]
    value = m.get("new_loss_after")
    if value is None:
        value = (result["epoch_losses"] or [float("inf")])[-1]
    return float(value) + (0.0 if result["accepted"] else FAILED_PENALTY)


def summary(result: dict) -> dict:
    """One trial's line in the report: recipe, numbers, verdict."""
    m = result.get("metrics", {})
    failed = [v["validator"] for v in result.get("verdicts", []) if v["status"] == "fail"]
    return {"number": result["number"], "recipe": result["recipe"],
            "describe": space.Recipe(**result["recipe"]).describe() if not result.get("error") else "",
            "accepted": result["accepted"], "failed": failed, "error": result.get("error"),
            "seconds": result["seconds"], "limit_seconds": result.get("limit_seconds"),
            "epochs_trained": len(result.get("epoch_losses", [])),
            "best_epoch": (result.get("early_stopping") or {}).get("best_epoch"),
            "new_loss_before": m.get("new_loss_before"), "new_loss_after": m.get("new_loss_after"),
            "retention_loss_before": m.get("retention_loss_before"),
            "retention_loss_after": m.get("retention_loss_after"), "drift_after": m.get("drift_after"),
            "pid": result.get("pid")}


def winner(results: list[dict]) -> dict | None:
    """The accepted trial with the best objective; else the best of those that ran (rejected)."""
    ran = [r for r in results if not r.get("error")]
    if not ran:
        return None
    return min(ran, key=lambda r: (not r["accepted"], objective(r)))


def commit_winner(run, engine, store: ModelStore, search: dict, results: list[dict], check: bool):
    """The winning candidate, saved through ``core/storage/commit.py`` like any update's (``check``: judged,
    not saved, as ``retain update --check`` reports a candidate)."""
    from retain.core import cycle
    from retain.core.errors import UpdateRejected

    best = winner(results)
    try:
        if best is None:
            errors = "; ".join(r["error"] for r in results if r.get("error"))
            raise UpdateRejected(f"--auto: no trial produced a candidate ({errors or 'the budget allowed none'}); "
                                 "the current model is unchanged", run.report().model_copy(update={"search": search}).to_json())
        search["winner"] = best["number"]
        search["recipe"] = best["recipe"]
        search["describe"] = space.Recipe(**best["recipe"]).describe()
        # The search's first trial is the configured recipe: its winning is a confirmation, not a find.
        search["confirmed_default"] = best["recipe"] == space.prior(engine.config)[0].to_json()
        candidate = candidate_run(run, engine, best, search)
        cycle.announce_verdicts(engine.setup, candidate)
        if check:
            return cycle.not_saved(engine.setup, candidate, "check")
        return cycle.commit(engine.setup, candidate, store)
    finally:
        shutil.rmtree(search.pop("scratch"), ignore_errors=True)


def candidate_run(run, engine, result: dict, search: dict):
    """A ``Run`` holding the winning trial's candidate, ready for ``cycle.commit``: what the
    search's own stages found (``run``: its ingest and measure), the winner's weights and the
    stage results its trial sent back (``result``: its training and the gate's decision)."""
    from retain.core.quality import evaluation
    from retain.core.cycle import Judged, Training
    from retain.core.storage.models import load_version
    from retain.core.run import Run
    from retain.core.learning.strategy import TrainSettings, latest_state

    data = copy.deepcopy(run.config.to_dict())
    for text in space.Recipe(**result["recipe"]).overrides():
        key, value = parse_override(text)
        apply_override(data, key, value)
    config = build(Config, data)  # the winner's recipe, without the trial's time limit
    # The candidate is version 0001 of the trial's scratch directory, whose manifest names the
    # parent in the model directory: its weights build on versions there (LoRA), and its strategy
    # state is its own (the trial saved every strategy's), so no chain is walked in the scratch.
    loaded = load_version(ModelStore(result["candidate"]), "0001", device=run.device, registry=engine.registry,
                          ancestors=ModelStore(run.model_dir))
    out = Run(run.id, run.kind, config, run.model_dir, parent=run.parent, device=run.device, base=run.base,
              precision=run.precision, precision_choice=run.precision_choice)
    out.lm = loaded.lm
    out.strategies = [engine.registry.build("strategies", name, config) for name in config.fine_tuning.strategy]
    for strategy in out.strategies:
        strategy.load_state_dict(latest_state(loaded.reader, [loaded.version], strategy.name))
    out.take(run.measured())  # the items, the hold-out, the judged texts, the starting losses
    out.rejects, out.skipped = run.rejects, run.skipped
    out.rows = run.rows  # the items' token shard (the search tokenized them): the version keeps it
    out.retention, out.drift = run.retention, run.drift  # the pool and drift reference the trials used
    out.counts, out.settings = dict(result["counts"]), TrainSettings(**result["settings"])
    # Per-item losses of the winner, which the version stores (its retention pool, its held-out
    # items' losses): the trial's process sent back only their means.
    out.after = evaluation.score_candidate(out)
    training, judged = Training.from_json(result), Judged.from_json(result)
    out.epoch_losses, out.oom_retries, out.early_stopping = (training.epoch_losses, training.oom_retries,
                                                             training.early_stopping)
    out.metrics, out.verdicts, out.next_steps = judged.metrics, list(judged.verdicts), judged.next_steps
    out.timings = {**{k: v for k, v in run.timings.items() if k not in result["timings"]}, **result["timings"],
                   "search": search["spent_seconds"]}
    out.search = {k: v for k, v in search.items() if k != "scratch"}
    return out
