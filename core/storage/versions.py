"""The versions of a model directory: history, rollback, validation and sampling on demand, prune.

Versions are immutable once renamed into place (prune aside); what the model *is* is the
chain CURRENT -> parent -> ... (see ``store``). So a rollback is only a new
CURRENT, and the ledger and the retention set follow it by themselves.

Prune keeps the last N accepted versions whole, plus the current one (and, if
asked, every full training). What a kept version's chain needs stays as a
*stub*: its manifest (parent, metrics), ``holdout.jsonl`` (the retention set and
the drift baseline), report and tokenizer, and its ledger rows (what counts as
already learned); only the weights, strategy state and stored retention set
go. A kept version that holds only adapter weights (the ``lora`` strategy's)
keeps the version it builds on whole too. ``prune.keep_last`` in the config
prunes after every saved version. Rejected versions newer than the newest
accepted one (the current streak, which ``retain status`` counts) are also
kept as stubs. Everything else is deleted, ledger rows included. (A stub
keeps any other file too, e.g. a deduper's index that its chain may read.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from retain.core.runtime import interrupts
from retain.core.errors import ModelError
from retain.core.storage.report import REPORT, parse_report
from retain.core.storage.retention import RETENTION
from retain.core.storage.store import MANIFEST, PRUNE_INTENT, PRUNED_PREFIX, ModelStore, atomic_write_text, fault_point, now_iso, summarize


def normalize_version(name: str) -> str:
    """"3" -> "0003"; other names pass through."""
    return f"{int(name):04d}" if name.isdigit() else name


def require_model(store: ModelStore) -> None:
    """A directory holding neither CURRENT nor a version is not a model: its ModelError (and how
    to train one), before a writing command takes the lock, which would create ``.lock`` there."""
    if not store.exists() and not store.versions():
        store.current()


# --- history ---------------------------------------------------------------------------

def history(store: ModelStore) -> list[dict]:
    """One row per version, oldest first: what happened, what it learned, what the gate said."""
    require_model(store)
    current = store.current() if store.exists() else None
    chain = set(store.chain(current)) if current else set()
    rows = []
    for version in store.versions():
        try:
            m = store.manifest(version)
        except ModelError as exc:
            rows.append({"version": version, "status": "unreadable", "error": str(exc)})
            continue
        counts, metrics = m.get("counts", {}), m.get("metrics", {})
        verdicts = m.get("verdicts", [])
        # An import learned nothing: its pass over base data only recorded the strategies' state.
        imported = m.get("kind") == "import"
        rows.append({
            "version": version, "parent": m.get("parent"), "created_at": m.get("created_at"),
            "kind": m.get("kind"), "status": m.get("status"), "current": version == current,
            "in_current_chain": version in chain, "pruned": "pruned" in m,
            "items_learned": 0 if imported else counts.get("trained", 0), "items_held_out": counts.get("holdout", 0),
            "items_recorded": counts.get("trained", 0) if imported else 0,
            "metrics": {k: metrics.get(k) for k in ("retention_loss_before", "retention_loss_after",
                                                    "new_loss_before", "new_loss_after")},
            "failed": [v["validator"] for v in verdicts if v.get("status") == "fail"],
            "warned": [v["validator"] for v in verdicts if v.get("status") == "warn"],
            "learning_rate": None if imported else _learning_rate(store, version, m),
            "strategies": m.get("strategies", []),
            # retain update --auto: which recipe won, out of how many trials, in what budget
            "search": m.get("search"),
        })
    return rows


def _learning_rate(store: ModelStore, version: str, manifest: dict) -> float | None:
    """The rate the run trained at (a strategy may have changed the configured one)."""
    from retain.core.learning.strategy import TrainSettings

    try:
        settings = _settings(store, version, manifest, TrainSettings)
    except ModelError:
        return None
    return settings.learning_rate if settings is not None else None


# --- rollback ----------------------------------------------------------------------------

class Switched(NamedTuple):
    """What ``rollback`` did: ``previous`` is None when CURRENT was unusable, and
    ``repaired`` then says what was wrong with it."""

    previous: str | None
    current: str
    repaired: str | None = None


def rollback(store: ModelStore, target: str | None = None, wait: float = 0.0,
             warn: Callable[[str], None] | None = None, pm: Any = None) -> Switched:
    """Make ``target`` (default: the parent of current) current, atomically, under the lock.

    Only accepted, unpruned versions whose files match their checksums qualify. A CURRENT
    that is unreadable or names a rejected, incomplete or missing version is repaired by
    naming ``target``; the checks read the manifests, never the index (a cache). ``warn``
    hears what ``recover`` did first (a lost ledger rebuilt, a prune finished). Once the lock
    is released, a switch is told to the plugins of ``pm`` (default: every installed one)
    and to the loggers the model's config chose: the ``rolled_back`` event."""
    switched = _switch(store, target, wait, warn)
    if switched.previous != switched.current:
        announce_rollback(store, switched, pm, warn)
    return switched


def announce_rollback(store: ModelStore, switched: Switched, pm: Any = None,
                      warn: Callable[[str], None] | None = None) -> None:
    """``rolled_back``, heard by the plugins and by the loggers of the config the previous
    version was made with (the new current's when there was none). A listener failing is a
    warning: the rollback is done."""
    from retain.core.loggers import rollback_loggers
    from retain.core.pluginmanager import Registry, default_plugin_manager

    pm = pm or default_plugin_manager()

    def told(run: Any, message: str) -> None:
        if warn is not None:
            warn(message)

    stored = [_stored_config(store, v) for v in (switched.previous, switched.current) if v is not None]
    loggers = rollback_loggers(Registry.of(pm), stored, told)
    if loggers:
        pm.register(loggers)
    try:
        pm.hook.rolled_back(model_dir=store.root, previous=switched.previous, current=switched.current,
                            repaired=switched.repaired)
    except Exception as exc:  # the switch is on disk: a listener cannot undo it
        told(None, f"a plugin failed in rolled_back ({type(exc).__name__}: {exc}); version "
                   f"{switched.current} is current")
    finally:
        loggers.close(None)
        if loggers:
            pm.unregister(loggers)


def _stored_config(store: ModelStore, version: str) -> dict | None:
    try:
        return store.manifest(version).get("config")
    except ModelError:
        return None


def _switch(store: ModelStore, target: str | None, wait: float, warn: Callable[[str], None] | None) -> Switched:
    require_model(store)
    with store.lock(wait=wait), contextlib.closing(store.ledger):
        _recover(store, warn)
        try:
            current, broken = store.current(), None
        except ModelError as exc:
            if target is None or not store.versions():
                raise
            current, broken = None, str(exc)
        if target is None:
            target = store.manifest(current).get("parent")
            if target is None:
                raise ModelError(f"version {current} starts its lineage (a full training or an import): no parent to roll back to; "
                                 "name a version: retain rollback --model DIR VERSION")
        target = normalize_version(target)
        if target not in store.versions():
            raise ModelError(f"no version {target} in {store.root} (versions: {', '.join(store.versions())})")
        _check_rollback_target(store, target)
        if target != current:
            store.set_current(target)
            interrupts.set_outcome(f"the rollback had finished: version {target} is current (was {current})")
        return Switched(current, target, broken)


def _recover(store: ModelStore, warn: Callable[[str], None] | None) -> None:
    """``store.recover``, each note told at once: a later error does not hide what was done."""
    for note in store.recover():
        if warn is not None:
            warn(note)


def _check_rollback_target(store: ModelStore, target: str) -> None:
    m = store.manifest(target)
    if m.get("status") != "accepted":
        raise ModelError(f"version {target} was {m.get('status')} by the quality gate; only accepted "
                         "versions can become current")
    if "pruned" in m:
        raise ModelError(f"version {target} was pruned ({m['pruned'].get('at')}): its weights are gone")
    for rel in m.get("files", {}):
        store.verified_path(target, rel, m)  # refuses a truncated or modified file
    base = summarize(m)["builds_on"]
    if base is not None:  # adapter weights alone: the full weights they apply to must be there
        bm = store.manifest(base)
        if "pruned" in bm:
            raise ModelError(f"version {target} builds on version {base}, whose weights were pruned")
        for rel in bm.get("files", {}):
            store.verified_path(base, rel, bm)


# --- validation on demand ------------------------------------------------------------------

def validate_version(engine: Any, store: ModelStore, version: str | None, data: list[str]) -> dict:
    """Run the configured validators on ``version`` (default: current) against its parent,
    with the items of ``data`` as held-out new items. Reads only.

    The cycle's stages (``core/cycle.py``) with options: every usable item of ``data``
    (``ingest``, neither deduped nor held out), both versions scored as the update scored,
    and the ``gate``; nobody follows a validation, so no step is announced."""
    import dataclasses
    import uuid

    from retain.core import cycle
    from retain.core.data.spool import batched
    from retain.core.errors import SourceError
    from retain.core.storage.models import load_version, resolve_device, resolve_precision
    from retain.core.run import FINE_TUNING, Run
    from retain.core.learning.strategy import TrainSettings

    setup = dataclasses.replace(engine.setup, announces=False)
    version = normalize_version(version) if version else store.current()
    manifest = store.manifest(version)
    parent = manifest.get("parent")
    if parent is None:
        raise ModelError(f"version {version} starts its lineage (a full training or an import): it has no parent to compare with; "
                         "validate one of its updates")
    device = resolve_device(setup.device_name)
    cand = load_version(store, version, device, setup.registry)
    base = load_version(store, parent, device, setup.registry)
    # Scored as the update scored (auto was measured then, on its model), else by rule.
    recorded = manifest.get("precision") if setup.config.precision == "auto" else None
    precision = recorded if recorded in ("fp32", "bf16") else resolve_precision(setup.config.precision, device)
    run = Run(uuid.uuid4().hex[:12], FINE_TUNING, setup.config, store.root, parent=parent, device=device,
              precision=precision, writes=False, base=base)
    run.lm, run.settings = cand.lm, _settings(store, version, manifest, TrainSettings)
    # A view of the run's spool (core/data/spool.py): read a batch at a time, never listed.
    items = cycle.ingest(setup, run, store, data, None, all_usable=True).items
    # What the gate's evidence says of the update: its epochs and timings, not this reading's.
    run.epoch_losses, run.timings = list(manifest.get("epoch_losses", [])), dict(manifest.get("timings", {}))
    if not items:
        raise SourceError("no usable items in --data to validate with")
    chain = store.chain(version)
    store.check_ledger(chain)
    seen: set[str] = set()  # only what the version learned: none, for the data it is meant to be given
    for batch in batched(items):
        seen.update(store.ledger.find([it.hash for it in batch], chain))
    store.ledger.close()
    _score_as_the_update(run, store, manifest, base, items)
    judged = cycle.gate(setup, run, None)
    return {"version": version, "parent": parent, "metrics": judged.metrics,
            "verdicts": [v.to_json() for v in judged.verdicts], "next_steps": judged.next_steps,
            "passed": judged.accepted, "items": len(items), "rejected": len(run.rejects),
            "already_learned": len(seen)}


def _score_as_the_update(run, store: ModelStore, manifest: dict, base, items) -> None:
    """The parent's and the candidate's losses (``run.before``, ``run.after``) on the retention
    items the update scored (else the parent's whole pool) and the texts of ``items``, a batch at
    a time (``core/data/spool.py``): the first batch in one pass with the retention items, as an
    update scores its held-out items (a day's data is one batch), each later one on its own."""
    import torch

    from retain.core.data.spool import Texts, batched
    from retain.core.storage import retention
    from retain.core.quality.evaluation import measure, scoring_key

    cfg = run.config
    kept = retention.load(store, run.parent, cfg.validation.eval_max_items, cfg.seed)
    scored = manifest.get("metrics", {}).get("retention_items")  # what the update scored, else the pool
    k = scored if isinstance(scored, int) else len(kept.items)
    run.retention_texts, run.new_texts = kept.texts[:k], Texts(items)
    seq_len = min(cfg.fine_tuning.max_seq_length, run.lm.context)
    stored = kept.losses(scoring_key(seq_len, run.precision, run.device))[:k]
    more: list = []  # (before, after) losses of each later batch
    for n, batch in enumerate(batched(items)):
        texts = [it.text for it in batch]
        if n == 0:
            run.before = measure(base.lm, run.retention_texts, texts, seq_len, run.device, run.precision, stored)
            run.after = measure(run.lm, run.retention_texts, texts, seq_len, run.device, run.precision)
        else:
            more.append([measure(lm, [], texts, seq_len, run.device, run.precision).new for lm in (base.lm, run.lm)])
    if more:
        run.before.new = torch.cat([run.before.new, *(b for b, _ in more)])
        run.after.new = torch.cat([run.after.new, *(a for _, a in more)])


def _settings(store: ModelStore, version: str, manifest: dict, cls) -> Any:
    """The run's TrainSettings (from its manifest, or its report for older versions), for
    remedies with this run's numbers."""
    if isinstance(manifest.get("settings"), dict):
        try:
            return cls(**manifest["settings"])
        except TypeError:
            pass
    if REPORT in manifest.get("files", {}):
        # A damaged report is a ModelError naming the field; history shows no rate for that version and goes on.
        report = parse_report(store.verified_path(version, REPORT, manifest).read_text(encoding="utf-8"), version)
        if report.settings is not None:
            try:
                return cls(**report.settings)
            except TypeError:
                pass
    block = manifest.get("config", {}).get("fine_tuning", {})
    try:
        return cls(block["learning_rate"], block["epochs"], block["batch_size"], block["max_seq_length"])
    except KeyError:
        return None


# --- sampling on demand ---------------------------------------------------------------------

def sample_version(store: ModelStore, version: str | None, prompts: list[str], *, max_new_tokens: int,
                   temperature: float, seed: int, device: Any = None, registry: Any = None) -> dict:
    """``retain generate``: one continuation per prompt from ``version`` (default: current),
    through its family's ``LanguageModel.generate``. Reads only. A rejected version may be
    sampled on purpose (to see what the gate refused): a ``note`` says so. A pruned one, or
    one whose adapter weights build on a pruned version, is refused: its weights are gone."""
    from retain.core.storage.models import load_version

    version = normalize_version(version) if version else store.current()
    if version not in store.versions():
        raise ModelError(f"no version {version} in {store.root} (versions: {', '.join(store.versions()) or 'none'})")
    manifest = store.manifest(version)
    if "pruned" in manifest:
        raise ModelError(f"version {version} was pruned ({manifest['pruned'].get('at')}): its weights are gone; "
                         "sample a version `retain history` shows unpruned")
    base = summarize(manifest)["builds_on"]
    if base is not None and "pruned" in store.manifest(base):
        raise ModelError(f"version {version} builds on version {base}, whose weights were pruned")
    note = None
    if manifest.get("status") != "accepted":
        note = f"version {version} was {manifest.get('status')} by the quality gate (sampled on purpose)"
    lm = load_version(store, version, device, registry).lm
    samples = lm.generate(list(prompts), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return {"version": version, "status": manifest.get("status"), "family": lm.family,
            "seed": seed, "temperature": temperature, "max_new_tokens": max_new_tokens,
            "samples": [{"prompt": s.prompt, "text": s.text} for s in samples],
            **({"note": note} if note else {})}


# --- prune ------------------------------------------------------------------------------------

@dataclass
class PrunePlan:
    keep: list[str] = field(default_factory=list)     # whole
    stub: list[str] = field(default_factory=list)     # weights and strategy state removed
    delete: list[str] = field(default_factory=list)   # gone, ledger rows too

    def to_json(self) -> dict:
        return {"keep": self.keep, "stub": self.stub, "delete": self.delete}


def plan_prune(store: ModelStore, keep_last: int, keep_full_trainings: bool = False) -> PrunePlan:
    """The last ``keep_last`` accepted versions of the current chain stay whole: what a plain
    ``rollback`` walks back to (a branch a rollback abandoned does not count, however new).
    ``keep_full_trainings``: every accepted full training stays whole too (a retrain's
    starting point, and the drift baseline of its updates).

    The plan is made from the versions' summaries (the index, a cache), then checked against
    the manifests: the versions it keeps and stubs (what decides a stub: statuses, kinds, the
    keep window), and when it deletes anything every version (the parent links decide what a
    kept chain needs). Any disagreement and the plan is made again from the manifests alone:
    a damaged index never deletes what the current chain needs."""
    if keep_last < 1:
        raise ModelError("--keep must be at least 1")
    current = store.current()
    versions = store.versions()
    plan = _plan(store, {v: store.summary(v) for v in versions}, current, keep_last, keep_full_trainings)
    checked = versions if plan.delete else plan.keep + plan.stub
    if any(store.summary(v) != store.summary_from_manifest(v) for v in checked):
        store.forget_chains()  # the walks remembered from the index may be wrong too
        plan = _plan(store, {v: store.summary_from_manifest(v) for v in versions}, current, keep_last,
                     keep_full_trainings)
    return plan


def _plan(store: ModelStore, summaries: dict[str, dict], current: str, keep_last: int,
          keep_full_trainings: bool) -> PrunePlan:
    accepted = [v for v, m in summaries.items() if m["status"] == "accepted" and not m["pruned"]]
    on_chain, name = [], current  # walked on these summaries: the replan must not read the index
    while name in summaries and name not in on_chain:
        on_chain.append(name)
        name = summaries[name]["parent"]
    on_chain = [v for v in on_chain if v in accepted]
    keep = set(on_chain[:keep_last]) | {current}
    if keep_full_trainings:
        keep |= {v for v in accepted if summaries[v]["kind"] == "full_training"}
    keep |= {b for v in list(keep) if (b := summaries[v]["builds_on"]) is not None and b in summaries}
    # The chains of the kept versions share their ancestors: walk each only down to where a
    # chain walked before joins it (one pass over the directory, not one per kept version).
    needed: set[str] = set()
    for v in keep:
        name: str | None = v
        while name and name not in needed:
            needed.add(name)
            name = (summaries.get(name) or store.summary_from_manifest(name))["parent"]
    newest_accepted = max(accepted) if accepted else ""
    streak = {v for v, m in summaries.items() if m["status"] == "rejected" and v > newest_accepted}
    plan = PrunePlan()
    for v, m in summaries.items():
        if v in keep:
            plan.keep.append(v)
        elif v in needed or v in streak:
            if not m["pruned"]:
                plan.stub.append(v)
        else:
            plan.delete.append(v)
    return plan


def prune(store: ModelStore, keep_last: int, writes: bool = True, wait: float = 0.0,
          keep_full_trainings: bool = False, warn: Callable[[str], None] | None = None) -> PrunePlan:
    """Apply ``plan_prune`` under the lock (``retain prune``). Without ``writes`` (``--dry-run``)
    it reads only: no lock taken, nothing recovered, the ledger not opened. ``warn``: as ``rollback``'s."""
    if not writes:
        return plan_prune(store, keep_last, keep_full_trainings)
    require_model(store)
    with store.lock(wait=wait), contextlib.closing(store.ledger):
        _recover(store, warn)
        plan = plan_prune(store, keep_last, keep_full_trainings)
        with interrupts.shielded():  # a Ctrl-C acts once the prune is done: no half-removed version
            apply_prune(store, plan)
            store.save_index()
            interrupts.set_outcome(f"the prune had finished ({len(plan.stub)} stubbed, "
                                   f"{len(plan.delete)} deleted); the current model is unchanged")
        return plan


def auto_prune(store: ModelStore, config) -> PrunePlan | None:
    """The configured keep policy (``prune.keep_last``, 0: off), after a version is saved;
    the caller holds the lock."""
    policy = config.prune
    if policy.keep_last < 1:
        return None
    plan = plan_prune(store, policy.keep_last, policy.keep_full_trainings)
    apply_prune(store, plan)
    return plan


def apply_prune(store: ModelStore, plan: PrunePlan) -> None:
    """Resumable: the plan is written down first (``PRUNE_INTENT``); a stub's manifest is
    rewritten (atomically) before its files go, and ``recover`` removes the files a stub's
    manifest no longer lists; a deleted version is first renamed to a ``.tmp-pruned-`` name,
    and ``recover`` finishes deleting it, its ledger rows included. A version's ledger rows
    go only here, with the version. The caller holds the lock."""
    if not plan.stub and not plan.delete:
        return
    intent = store.versions_dir / PRUNE_INTENT
    atomic_write_text(intent, json.dumps({"stub": plan.stub, "delete": plan.delete}))
    for v in plan.stub:
        _strip(store, v)
    if plan.delete:
        store.forget_chains()  # a walk remembered through a deleted version would outlive it
    for v in plan.delete:
        doomed = store.versions_dir / f"{PRUNED_PREFIX}{v}-{os.getpid()}"
        os.rename(store.versions_dir / v, doomed)
        fault_point("pruned-renamed")  # test-only: killed before its rows and files go
        store.ledger.forget([v])
        shutil.rmtree(doomed)
    intent.unlink()


def _strip(store: ModelStore, version: str) -> None:
    path = store.versions_dir / version / MANIFEST
    m = json.loads(path.read_text(encoding="utf-8"))
    files = m.get("files", {})
    removed = sorted(rel for rel in files if _heavy(rel))
    m["files"] = {rel: digest for rel, digest in files.items() if not _heavy(rel)}
    m["pruned"] = {"at": now_iso(), "removed": removed}
    atomic_write_text(path, json.dumps(m, indent=2, sort_keys=True))
    fault_point("stubbed")  # test-only: killed between the manifest and the files
    for rel in removed:
        (store.versions_dir / version / rel).unlink(missing_ok=True)
    strategy_dir = store.versions_dir / version / "strategy"
    if strategy_dir.is_dir() and not any(strategy_dir.iterdir()):
        strategy_dir.rmdir()


def _heavy(rel: str) -> bool:
    """What only loading the version itself, or updating from it, needs: its weights
    (safetensors, whatever the family names them), strategy state, and the retention set
    its updates would read (a stub is never a parent again)."""
    return rel.endswith(".safetensors") or rel.startswith("strategy/") or rel == RETENTION
