"""``retain update --auto``: a budgeted search for the update's recipe, then one normal save.

The parent process takes the lock, ingests the new data once (collect,
preprocess, dedupe, hold out) and scores the parent version once on the
retention set and the held-out new items. Then trials run, each a candidate
update with one recipe (``tune/space.py``) in a process of its own
(``tune/trial.py``), judged by the configured validators. Optuna's TPE sampler
proposes the recipes after the prior (the configured recipe, its weights
before averaging judged from the same training, and the design document's
common-issues remedies, each from the best recipe so far).

The budget is a share (``--budget``, default ``tune.budget`` 0.1) of the last
full training's measured training time (``timings.train`` in its manifest),
and it counts what a trial really costs: from its submission to its result,
as the search's clock sees it (the process start, loading the parent, training,
scoring the held-out sets, the generation checks, saving the candidate), not
only its training seconds. The first trial is the configured recipe run as
``retain update`` runs it, whatever the budget (a squeezed default would be
worse than no search); the others get as their time limit
(``fine_tuning.max_seconds``: the schedule is squeezed into the steps that fit,
it stops in time and keeps its best epoch) nine tenths of what is left after
the overhead the latest trial showed (its cost beyond its training), and no
trial starts once what is left is less than that overhead plus one epoch of the
cheapest trial so far. With ``tune.jobs`` above 1 the costs of trials
running at once add up (trial-seconds, like CPU time).

The winner is the trial the gate accepted with the lowest held-out new-item
loss among those that kept the old domain within ``tune.max_drift`` (1%: the
issue-25 target for a month of days) of the last full training, or within
the configured recipe's own drift if that is higher: the gate allows 5% in
all, and a search judged one update at a time must not spend the next days'
drift budget today (the default's drift is what a day can spend indefinitely,
BENCHMARKS.md "A month of daily updates"). It is committed through ``core/storage/commit.py`` like any update (ledger,
lock, atomic rename), with every trial in its report (``report["search"]``)
and the winning recipe in its manifest; ``search["confirmed_default"]`` says when
the winner is the configured recipe (the first trial): the search then only
confirmed the default, and the report says so (and, in ``search["note"]``,
when the budget held no training beyond the default's). When no trial passes the gate, the
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
import time
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
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=jobs, mp_context=start_trial_server(), max_tasks_per_child=1)


def start_trial_server():
    """The trials' process context; on Linux its fork server is started now, in the background.
    The search calls this before it ingests and scores, so the server's imports (torch,
    avalanche-lib: seconds, paid by the first trial before) overlap the parent's own work."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["retain.tune.trial", "retain.core.learning.training"])
    forkserver.ensure_running()  # returns at once: the server imports while the caller goes on
    return context


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
                on_trial: Callable[[dict, dict], None] | None = None,
                clock: Callable[[], float] = time.monotonic) -> dict:
    """One ``retain update --auto``; returns the update's report (``report["search"]``: the trials).

    ``dry_run`` trains nothing: what the update would learn and what the search would cover
    (``plan_search``). ``check`` searches and writes nothing: the winner is judged, not saved
    (``UpdateRejected``, exit 10, if the gate would reject it).
    ``executor``: where trials run (default: ``default_executor(tune.jobs)``, shut down after).
    ``on_trial(result, search)``: called as each trial ends (the CLI prints a line).
    ``clock``: what a trial's cost is measured with (seconds; tests pass a fake one).
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
    if executor is None:
        start_trial_server()  # its imports overlap ingest and measure (below)
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
                results = run_search(run, engine, search, executor, on_trial, clock)
                report = commit_winner(run, engine, store, search, results, check)
        cycle.release_scratch(run)  # the winner's version holds the shard; without one (or --check), none does
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

    recipes = space.prior(config)
    sibling = space.shares_training(recipes[0])  # judged from trial 0's training: no time of its own
    prior = [{"recipe": r.to_json(), "describe": r.describe(), "shares_training_of": 0 if r == sibling else None,
              "estimated_seconds": 0.0 if r == sibling else estimate(r.epochs, 1 / (1 - r.replay_share))}
             for r in recipes]
    mean_epochs = (1 + tune.max_epochs) / 2  # the sampler's recipes, on average
    sampled = estimate(mean_epochs, sum(1 / (1 - s) for s in shares) / len(shares))
    plan = {"space": {"strategies": mixes, "learning_rate": [tune.min_learning_rate, tune.max_learning_rate],
                      "epochs": [1, tune.max_epochs], "replay_shares": shares},
            "prior": prior, "sampled_estimated_seconds": sampled, "max_trials": tune.max_trials,
            "jobs": tune.jobs, "estimated_trials": None}
    if rate is not None:
        queue = [(p["estimated_seconds"], p["recipe"]["epochs"]) for p in prior if p["shares_training_of"] is None]
        free = len(prior) - len(queue)
        plan["estimated_trials"] = free + trials_that_fit(queue, (sampled, mean_epochs), search["budget_seconds"],
                                                          tune.max_trials - free)
    return plan


def trials_that_fit(prior: list[tuple[float, float]], sampled: tuple[float, float], budget: float,
                    max_trials: int) -> int:
    """How many trials ``run_search`` would start, one at a time, if each took its estimated
    (seconds, epochs): the first runs whole, the others are cut at their time limit, none
    starts without an epoch's time left."""
    left, ran = budget, []
    for seconds, epochs in itertools.islice(itertools.chain(prior, itertools.repeat(sampled)), max_trials):
        if not startable(left, ran):
            break
        left -= seconds if not ran else min(seconds, SAFETY * left)
        ran.append({"seconds": seconds, "epoch_losses": [None] * max(1, round(epochs))})  # as startable reads it
    return len(ran)


def run_search(run, engine, search: dict, executor: Executor | None, on_trial,
               clock: Callable[[], float] = time.monotonic) -> list[dict]:
    """Trials until the budget, ``tune.max_trials`` or the prior and sampler run out."""
    import optuna

    config = engine.config
    tune = config.tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    prior = space.prior(config)
    sibling = space.shares_training(prior[0])  # judged from the first trial's own training
    tried = [r for r in (sibling,) if r is not None]
    remedies = len(prior) - 1 - len(tried)  # remedies still to run, each from the best recipe so far
    scratch = Path(tempfile.mkdtemp(prefix="retain-auto-"))
    search.update(spent_seconds=0.0, trials=[], scratch=str(scratch))
    own = executor is None
    executor = executor or default_executor(tune.jobs)
    # What every trial goes on from, once: a corpus's items as a file in the scratch folder, not listed
    measured = run.measured().to_json(scratch)
    pending: dict[Any, tuple] = {}  # future -> (trial, its time limit, the seconds it reserved, started)
    results: list[dict] = []
    broken = False
    try:
        while not broken or pending:
            while not broken and len(pending) < tune.jobs and len(results) + len(pending) < tune.max_trials:
                reserved = sum(share for _, _, share, _ in pending.values())
                left = search["budget_seconds"] - search["spent_seconds"] - reserved
                if not startable(left, results):
                    break
                # Enqueued one at a time, when it starts: trials number in order, each remedy from the best so far.
                if not results and not pending:
                    study.enqueue_trial(prior[0].to_json())
                elif remedies > 0 and (remedy := next_remedy(results, tried, config)) is not None:
                    study.enqueue_trial(remedy.to_json())
                    remedies -= 1
                trial = study.ask()
                recipe = space.suggest(trial, config)
                tried.append(recipe)
                share = left / (tune.jobs - len(pending))
                # The configured recipe runs as `retain update` runs it; the others within what is left.
                limit = None if trial.number == 0 else SAFETY * max(0.0, share - overhead(results))
                spec = trial_spec(run, engine, recipe, trial.number, limit,
                                  scratch / f"trial-{trial.number:03d}", measured)
                if trial.number == 0 and sibling is not None:
                    spec["unaveraged"] = sibling.to_json()
                try:
                    pending[executor.submit(run_trial, spec)] = (trial, limit, share, clock())
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
                trial, limit, _, started = pending.pop(future)
                result = finished(future, trial, limit)
                result["cost_seconds"] = clock() - started  # what the trial cost, all of it
                search["spent_seconds"] += result["cost_seconds"]
                shared = result.pop("unaveraged", None)
                for one in [result, *([same_training(study, trial, result, shared)] if shared else [])]:
                    results.append(one)
                    search["trials"].append(summary(one))
                    if one is result:
                        if result.get("error"):
                            study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        else:
                            study.tell(trial, objective(result))
                    if on_trial is not None:
                        on_trial(one, search)
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    return results


def next_remedy(results: list[dict], tried: list, config: Config):
    """The first common-issues remedy not tried yet, from the best recipe so far (the winner's
    rule), then from the configured one; None when none is left."""
    best = winner(results, config.tune.max_drift)
    bases = [space.Recipe(**best["recipe"])] if best is not None and best["accepted"] else []
    for base in [*bases, space.configured(config)]:
        for recipe in space.remedies(base, config):
            if recipe not in tried:
                return recipe
    return None


def same_training(study, trial, result: dict, shared: dict) -> dict:
    """The candidate a trial judged from its own training (its weights before averaging): a
    trial of the study of its own, told to the sampler, that cost no training (its seconds:
    the extra scoring, already in the trial's cost)."""
    import optuna

    shared.update(shares_training_of=result["number"], cost_seconds=shared["wall_seconds"], seconds=0.0)
    try:
        study.add_trial(optuna.trial.create_trial(params=shared["recipe"], distributions=trial.distributions,
                                                  value=objective(shared)))
        shared["number"] = study.trials[-1].number
    except ValueError:  # a configured value outside the sampler's range: a result, not a study trial
        shared["number"] = max(t.number for t in study.trials) + 1
    return shared


def trained(results: list[dict]) -> list[dict]:
    """The trials that trained (not the candidates judged from another trial's training)."""
    return [r for r in results if "shares_training_of" not in r]


def overhead(results: list[dict]) -> float:
    """What the latest trial cost beyond its training (process start, loading, scoring, checks).
    The latest: the first trial's may include the pool's start, which the next ones skip."""
    costs = [max(0.0, r["cost_seconds"] - r["seconds"]) for r in trained(results) if "cost_seconds" in r]
    return costs[-1] if costs else 0.0


def startable(left: float, results: list[dict]) -> bool:
    """Start another trial? Always the first; then only with the overhead and at least one
    epoch of the cheapest trial so far left in the budget."""
    if not results:
        return left > 0
    per_epoch = [r["seconds"] / max(1, len(r["epoch_losses"])) for r in trained(results) if r.get("epoch_losses")]
    return left >= overhead(results) + (min(per_epoch) if per_epoch else 0.0) and left > 0


def trial_spec(run, engine, recipe: space.Recipe, number: int, limit: float | None, scratch: Path,
               measured: dict) -> dict:
    """Everything a trial needs, as plain data (``limit`` None: the config's own time limit;
    ``measured``: ``run.measured().to_json(...)``, the stage result the trial goes on from)."""
    import torch

    data = copy.deepcopy(run.config.to_dict())
    for text in [*space.overrides(recipe, engine.config),
                 *([f"fine_tuning.max_seconds={limit!r}"] if limit is not None else [])]:
        key, value = parse_override(text)
        apply_override(data, key, value)
    build(Config, data)  # a recipe that does not make a valid config fails here, not in a worker

    jobs = max(1, engine.config.tune.jobs)
    return {
        "number": number, "recipe": recipe.to_json(), "config": data, "model_dir": str(run.model_dir),
        "parent": run.parent, "device": engine.device_name, "threads": max(1, torch.get_num_threads() // jobs),
        **measured,
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


def finished(future, trial, limit: float | None) -> dict:
    """A trial's result; a trial that raised is a failed trial, not a failed search."""
    try:
        return future.result()
    except RetainError as exc:
        error = str(exc)
    except Exception as exc:  # a bug or a crash in the worker: reported, the search goes on
        error = f"{type(exc).__name__}: {exc}"
    return finished_with(trial, limit, error)


def finished_with(trial, limit: float | None, error: str) -> dict:
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


def described(result: dict) -> str:
    """A trial's recipe in words, and the epochs it trained where a strategy (replay's work budget)
    cut those the recipe asked for."""
    if result.get("error"):
        return ""
    describe = space.Recipe(**result["recipe"]).describe()
    settings = result.get("settings") or {}
    if settings.get("epochs_from") and settings.get("epochs") != result["recipe"]["epochs"]:
        describe += f"; trained {settings['epochs']} epochs ({settings['epochs_from']})"
    return describe


def summary(result: dict) -> dict:
    """One trial's line in the report: recipe, numbers, verdict."""
    m = result.get("metrics", {})
    failed = [v["validator"] for v in result.get("verdicts", []) if v["status"] == "fail"]
    return {"number": result["number"], "recipe": result["recipe"], "describe": described(result),
            "timings": result.get("timings"),
            "accepted": result["accepted"], "failed": failed, "error": result.get("error"),
            "seconds": result["seconds"], "cost_seconds": result.get("cost_seconds", result["seconds"]),
            "limit_seconds": result.get("limit_seconds"),
            "epochs_trained": len(result.get("epoch_losses", [])),
            "best_epoch": (result.get("early_stopping") or {}).get("best_epoch"),
            "new_loss_before": m.get("new_loss_before"), "new_loss_after": m.get("new_loss_after"),
            "retention_loss_before": m.get("retention_loss_before"),
            "retention_loss_after": m.get("retention_loss_after"), "drift_after": m.get("drift_after"),
            "pid": result.get("pid"), "shares_training_of": result.get("shares_training_of")}


def winner(results: list[dict], max_drift: float = 0.01) -> dict | None:
    """The accepted trial with the best objective among those that kept the old domain: its
    drift since the last full training at most ``max_drift`` (``tune.max_drift``) or the
    configured recipe's (trial 0), whichever is higher; else the best of those that ran
    (rejected)."""
    ran = [r for r in results if not r.get("error")]
    if not ran:
        return None
    default = next((r for r in ran if r["number"] == 0 and r["accepted"]), None)
    allowed = max(max_drift, drift(default) or 0.0)

    def kept_the_old_domain(r: dict) -> bool:
        return r is default or (drift(r) or 0.0) <= allowed

    return min(ran, key=lambda r: (not r["accepted"], not kept_the_old_domain(r), objective(r)))


def drift(result: dict | None) -> float | None:
    """A trial's rise of the old domain's loss since the last full training (``drift_after``:
    0.01 is 1% worse); without that reference, its rise over the parent's."""
    m = (result or {}).get("metrics") or {}
    if m.get("drift_after") is not None:
        return float(m["drift_after"])
    before, after = m.get("retention_loss_before"), m.get("retention_loss_after")
    return None if not before or after is None else after / before - 1


def commit_winner(run, engine, store: ModelStore, search: dict, results: list[dict], check: bool):
    """The winning candidate, saved through ``core/storage/commit.py`` like any update's (``check``: judged,
    not saved, as ``retain update --check`` reports a candidate)."""
    from retain.core import cycle
    from retain.core.errors import UpdateRejected

    best = winner(results, engine.config.tune.max_drift)
    try:
        if best is None:
            errors = "; ".join(r["error"] for r in results if r.get("error"))
            raise UpdateRejected(f"--auto: no trial produced a candidate ({errors or 'the budget allowed none'}); "
                                 "the current model is unchanged", run.report().model_copy(update={"search": search}).to_json())
        search["winner"] = best["number"]
        search["recipe"] = best["recipe"]
        search["describe"] = described(best)
        # The search's first trial is the configured recipe: its winning is a confirmation, not a find.
        search["confirmed_default"] = best["number"] == 0
        if len(trained(results)) == 1:  # what the search could try beyond the default was what it gave for free
            search["note"] = (f"the budget ({search['budget_seconds']:.1f}s) held no training beyond the configured "
                              f"recipe's (it cost {results[0].get('cost_seconds', 0.0):.1f}s)"
                              + ("; its weights before averaging were judged too" if len(results) > 1 else ""))
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
    for text in space.overrides(space.Recipe(**result["recipe"]), engine.config):
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
