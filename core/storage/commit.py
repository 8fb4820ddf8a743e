"""Step 8, save: the candidate becomes a version, written atomically, and current if accepted.

The version is written into a temporary folder (weights through the model's
family, the trained items' token shard (``core/data/shards.py``), held-out items,
each strategy's state, the dedupers' indexes, the report), its ledger rows are added, and the folder is renamed into place; only
then does CURRENT move, and only for an accepted candidate. A crash anywhere
before that leaves the current model as it was (``ModelStore.recover`` tidies).
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

from retain.core.runtime import interrupts
from retain.core.quality.evaluation import held_out_rows, kept_retention, scoring
from retain.core.storage.report import REPORT, UpdateReport
from retain.core.storage.retention import LEARNING_POOL, RETENTION, pool_to_keep
from retain.core.run import Run
from retain.core.storage.store import HOLDOUT, ModelStore, now_iso
from retain.core.learning.strategy import write_state


def commit(run: Run, store: ModelStore, dedupers: list[tuple[str, Any]],
           replaces: str | None = None) -> UpdateReport:
    """Write ``run``'s candidate as the next version; return the report with version and status."""
    from retain.core.data.shards import keep_in_version  # numpy and torch: not for a command that trains nothing
    started = time.perf_counter()
    report = run.report()
    status = "accepted" if run.accepted else "rejected"
    store.check_free_space(version_bytes(run), "the new version")
    writer = store.begin_version(parent=run.parent)
    try:
        entry = run.lm.save(writer)
        keep_in_version(run.rows, writer)  # the trained items' tokens, and the chain's by hard link
        held = held_out_rows(run)  # with the candidate's loss on each: a drift baseline, a retention seed
        if held:
            writer.write_text(HOLDOUT, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held))
        kept = kept_retention(run, writer.name, held)
        writer.write_text(RETENTION, kept.to_jsonl())
        if not run.new_lineage:  # the next update's learning pool, read from this one file
            writer.write_text(LEARNING_POOL, pool_to_keep(run.new_texts, run.recent_texts,
                                                          run.config.validation.learning_pool))
        for strategy in run.strategies:  # state_dict() is taken here, before update_finished
            write_state(writer, strategy)
        for _, deduper in dedupers:
            if hasattr(deduper, "remember"):
                deduper.remember(run.items + run.holdout, writer.name, writer)
        run.timings["save"] = time.perf_counter() - started
        # The file says which version it reports on.
        report = report.model_copy(update=dict(timings=dict(run.timings), replaces=replaces, version=writer.name,
                                                status=status))
        writer.write_json(REPORT, report.to_json())
        # Ledger rows first: they count only once CURRENT's chain includes this version. The items
        # are read and hashed once (a corpus's spool is read from disk): the version's own copy
        # of its rows, what a lost ledger is rebuilt from, is read back from the ledger.
        store.ledger.add(writer.name, ledger_rows(run))
        writer.write_ledger_record(store.ledger.rows(writer.name))
        final_manifest = {**manifest(run, report, entry, status, store.ledger.data_hash(writer.name)),
                          "retention": kept.manifest_entry(),
                          "holdout_scored": scoring(run) if held else None}
    except BaseException:
        writer.abandon()
        raise
    # The version goes into place and CURRENT follows as one step a Ctrl-C does not split.
    with interrupts.shielded():
        try:
            writer.finish(final_manifest)
        except BaseException:
            writer.abandon()
            raise
        if status == "accepted":
            try:
                store.set_current(writer.name)
            except BaseException:  # CURRENT could not move (a full disk): the version goes too
                writer.withdraw()
                raise
            interrupts.set_outcome(f"the run had finished: version {writer.name} is current"
                                   + (f" (retain rollback returns to {run.parent})" if run.parent else ""))
        else:
            interrupts.set_outcome(f"the run had finished: version {writer.name} was kept as rejected; "
                                   f"{interrupts.UNCHANGED}")
    return report


def ledger_rows(run: Run) -> Iterator[tuple[str, str, str, str]]:
    """(hash, role, source, origin) of every trained and held-out item, read in order: a
    spool's items are never all in memory (``core/data/spool.py``)."""
    for role, items in (("train", run.items), ("holdout", run.holdout)):
        for item in items:
            yield item.hash, role, item.source, item.origin


def version_bytes(run: Run) -> int:
    """What the version will take on disk, at least: the weights training changed (frozen
    ones may be shared with the parent, or not saved at all), the held-out items, and a
    margin for the manifest, the report and the ledger's rows. Strategy state comes on top."""
    from retain.core.data.shards import shard_bytes

    weights = sum(p.numel() * p.element_size() for p in run.lm.module.parameters() if p.requires_grad)
    held = sum(len(it.text.encode("utf-8", "surrogatepass")) for it in run.holdout)
    return weights + 2 * held + 256 * (len(run.items) + len(run.holdout)) + (64 << 10) + shard_bytes(run.rows)


def manifest(run: Run, report: UpdateReport, entry: dict, status: str, trained_hash: str) -> dict:
    report = report.to_json()
    return {
        "parent": run.parent, "created_at": now_iso(), "kind": run.kind, "status": status,
        "model": entry, "architecture": entry.get("architecture"), "config": run.config.to_dict(),
        "counts": report["counts"], "metrics": report["metrics"], "epoch_losses": report["epoch_losses"],
        "verdicts": report["verdicts"], "strategies": report["strategies"], "timings": report["timings"],
        "data_hash": trained_hash, "run": run.id, "replaces": report.get("replaces"),
        "settings": report.get("settings"), "precision": run.precision,
        "precision_choice": run.precision_choice,
        **({"source": run.origin} if run.origin else {}),
        "search": search_summary(report.get("search")),
    }


def search_summary(search: dict | None) -> dict | None:
    """What the manifest keeps of a search (``--auto``): the winning recipe, not every trial."""
    if not search:
        return None
    keep = ("budget", "budget_seconds", "spent_seconds", "full_training", "winner", "recipe", "describe")
    return {**{k: search.get(k) for k in keep}, "trials": len(search.get("trials", []))}
