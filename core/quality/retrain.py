"""When to stop fine-tuning and train from scratch: the design document's "Full retrain when".

    Major data changes (> 1,000 items)  -> items learned since the last full training
    (and its cost)                      -> the updates since then cost more than a retrain
                                           on the base and their data would
    Architecture changes                -> what the config explicitly asks of the model
                                           (model.*) vs what made it (its manifest)
    Quality degradation                 -> retention drift since the last full training,
                                           or the gate rejecting update after update
    A vocabulary that does not fit      -> new data needs markedly more tokens per byte
                                           than the base data (core/data/vocabulary.py)

An imported model (``retain import``) counts as a full training here: it is
where the lineage starts.

``assess`` looks at a model directory and says which of these hold, with the
numbers, for ``retain status`` and the end of ``retain update``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from retain.core.config import Config
from retain.core.errors import ModelError, RetainError
from retain.core.pluginmanager import Registry, default_plugin_manager
from retain.core.storage.store import HOLDOUT, ROOT_KINDS, ModelStore
from retain.core.wording import percent, plural


@dataclass
class Check:
    name: str
    retrain: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    brief: str = ""  # a few words for the one-line summary


@dataclass
class Assessment:
    model_dir: str
    current: str
    last_full_training: str | None
    checks: list[Check]

    @property
    def retrain(self) -> bool:
        return any(c.retrain for c in self.checks)

    @property
    def summary(self) -> str:
        if self.retrain:
            why = "; ".join(c.reason for c in self.checks if c.retrain)
            return (f"Full retrain recommended: {why}. Train from scratch on all data: "
                    f"retain train --model {self.model_dir} --data ...")
        return "Fine-tuning is fine: " + ", ".join(c.brief or c.reason for c in self.checks) + "."

    def to_json(self) -> dict:
        return {"retrain": self.retrain, "summary": self.summary, "current": self.current,
                "last_full_training": self.last_full_training,
                "checks": [asdict(c) for c in self.checks]}


def last_full_training(store: ModelStore, chain: list[str]) -> tuple[str | None, list[str]]:
    """(the newest full training or import in ``chain``, the fine-tunes after it, newest first)."""
    since = []
    for version in chain:
        if store.summary(version)["kind"] in ROOT_KINDS:
            return version, since
        since.append(version)
    return None, since


def assess(store: ModelStore, config: Config, pending_items: int = 0, device: str | None = None,
           registry: Registry | None = None, pending_text: dict[str, int] | None = None) -> Assessment:
    """``pending_text``: {"tokens", "bytes"} of pending data under the current tokenizer."""
    from retain.core.data.vocabulary import drift as vocabulary_drift

    registry = registry or Registry.of(default_plugin_manager())
    current = store.current()
    chain = store.chain(current)
    root, since = last_full_training(store, chain)
    checks = [
        _new_items(store, config, since, pending_items),
        _architecture(store, config, current, root, registry),
        _retention_drift(store, config, current, root, device, registry),
        vocabulary_drift(store, root, since, pending_text, config.retrain.max_token_drift),
        _rejections(store, config),
        _update_work(store, config, root, since),
    ]
    return Assessment(str(store.root), current, root, checks)


def _new_items(store: ModelStore, config: Config, since: list[str], pending: int) -> Check:
    """New items since the last full training: those learned (trained on, what `retain history`
    counts as learned) and those held out to measure learning; both are new data."""
    learned = held = 0
    for version in since:
        counts = store.summary(version)["counts"]
        learned += int(counts.get("trained", 0))
        held += int(counts.get("holdout", 0))
    limit = config.retrain.max_new_items
    total = learned + held + pending
    numbers = {"new_since_full_training": learned + held, "learned": learned, "held_out": held,
               "pending": pending, "updates": len(since), "threshold": limit}
    what = (f"{plural(learned + held, 'new item')} in {plural(len(since), 'update')} since the last full "
            f"training ({learned:,} learned, {held:,} held out)")
    if pending:
        what += f", {pending:,} more pending"
    if total > limit:
        return Check("new_items", True, f"{what}: {total:,} is more than {limit:,} "
                     "(a major data change)", numbers)
    return Check("new_items", False, f"{what} ({total:,}, at most {limit:,})", numbers,
                 f"{plural(total, 'new item')} since the last full training (retrain above {limit:,})")


def token_steps(counts: dict, epochs: int) -> int:
    """A training's work: its tokens times the epochs it ran, plus the tokens it replayed
    (``counts`` as a report or a summary keeps them). Machine-independent, unlike its seconds."""
    return int(counts.get("tokens", 0)) * epochs + int(counts.get("replay_tokens", 0))


def update_work(store: ModelStore, since: list[str]) -> tuple[int, int]:
    """(token-steps, new tokens) of the updates ``since``."""
    steps = tokens = 0
    for version in since:
        summary = store.summary(version)
        steps += token_steps(summary["counts"], summary.get("epochs", 0))
        tokens += int(summary["counts"].get("tokens", 0))
    return steps, tokens


def _update_work(store: ModelStore, config: Config, root: str | None, since: list[str]) -> Check:
    """What the updates since the last full training cost, against a retrain on its data and
    theirs at ``full_training.epochs``: past ``retrain.max_update_work`` retrains, training from
    scratch is the cheaper way to keep learning (where the days outweigh the base, replay makes a
    month of updates cost more than one retrain: BENCHMARKS.md, "A month of daily updates")."""
    limit = config.retrain.max_update_work
    base = int(store.summary(root)["counts"].get("tokens", 0)) if root is not None else 0
    if not since or not base or not limit:
        return Check("update_work", False, "no update since the last full training to weigh"
                     if not since else "the updates' work is not weighed", {}, "no update work to weigh yet")
    steps, tokens = update_work(store, since)
    retrain = config.full_training.epochs * (base + tokens)
    share = steps / retrain
    numbers = {"token_steps": steps, "retrain_token_steps": retrain, "share": round(share, 4), "threshold": limit}
    what = (f"the {plural(len(since), 'update')} since the last full training cost {share:.2f}x a retrain on "
            f"its data and theirs ({steps:,} token-steps against {retrain:,} at {config.full_training.epochs} "
            "epochs)")
    if share > limit:
        return Check("update_work", True, f"{what}: training from scratch is now the cheaper way on", numbers)
    return Check("update_work", False, f"{what}, at most {limit:g}x", numbers,
                 f"updates at {share:.2f}x a retrain's work (retrain above {limit:g}x)")


def _architecture(store: ModelStore, config: Config, current: str, root: str | None,
                  registry: Registry) -> Check:
    """Does the config ask for another model than the one trained? Only what it asks explicitly
    (its file's keys, --set): the rest comes from the model's manifest. Compared in the family's
    own terms with what made the model (the last full training's config: a tokenizer trained
    on a small corpus can end below the vocabulary size asked for)."""
    from retain.core.config import build
    from retain.core.storage.models import family, model_entry

    entry = model_entry(store.manifest(current))
    if config.asks("model.family") and config.model.family != entry["family"]:
        return Check("architecture", True, f"the config asks for a '{config.model.family}' model; this one is "
                     f"'{entry['family']}': a fine-tune cannot change it", {})
    fam = family(registry, entry["family"])
    wanted = fam.architecture_from_config(config)
    if not wanted:
        return Check("architecture", False, f"the config does not ask for another model: a '{entry['family']}' "
                     "model, architecture and tokenizer from its manifest", {}, "architecture unchanged")
    root_config = store.manifest(root).get("config") if root else None
    try:
        asked = fam.architecture_from_config(build(Config, root_config)) if root_config else None
    except RetainError:  # a config of an older retain: compare with the weights' architecture
        asked = None
    have = {k: (asked or entry.get("architecture", {})).get(k) for k in wanted}
    diff = {k: (have[k], wanted[k]) for k in wanted if have[k] != wanted[k]}
    numbers = {"model": have, "config": wanted}
    if diff:
        changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
        what = "tokenizer" if set(diff) == {"vocab_size"} else "architecture"
        return Check("architecture", True, f"the config changes the {what} ({changes}); "
                     "a fine-tune cannot change it", numbers)
    return Check("architecture", False, "config and model agree on architecture and tokenizer", numbers,
                 "architecture and tokenizer unchanged")


def _retention_drift(store: ModelStore, config: Config, current: str, root: str | None,
                     device: str | None, registry: Registry) -> Check:
    limit = config.retrain.max_retention_drift
    if root is None:
        return Check("retention_drift", False, "no full training in the chain to compare with", {})
    manifest = store.manifest(root)
    baseline = manifest.get("metrics", {}).get("retention_loss_after")
    if baseline is None or HOLDOUT not in manifest.get("files", {}):
        if manifest.get("kind") == "import":
            return Check("retention_drift", False, f"version {root} was imported without base data: retention "
                         "is not yet measured against the base domain (updates measure it on earlier "
                         "updates' held-out items; `retain import ... --data BASE` records a base sample)",
                         {}, "retention not yet measured against the base domain")
        return Check("retention_drift", False, f"version {root} kept no held-out base items: "
                     "drift not measured", {})
    stored = store.manifest(current).get("metrics", {})
    items = None
    if current == root:
        now = baseline
    elif isinstance(stored.get("base_holdout_loss"), (int, float)):  # measured by the update: no model to load
        now, baseline = float(stored["base_holdout_loss"]), float(stored["base_holdout_baseline"])
        items = stored.get("base_holdout_items")
    else:  # a version from before updates stored it
        now = _holdout_loss(store, current, root, config, device, registry)
    drift = (now - baseline) / baseline if baseline else 0.0
    numbers = {"loss_after_full_training": baseline, "loss_now": now, "drift": drift, "threshold": limit,
               "full_training": root, "items": items}
    what = (f"held-out base items' loss{f' (on {items} of them)' if items else ''} {baseline:.4f} right after "
            f"the full training ({root}), {now:.4f} now ({percent(drift, limit)})")
    if drift > limit:
        return Check("retention_drift", True, f"{what}: drifted more than {percent(limit, signed=False)} "
                     "(quality degradation, even if each update passed)", numbers)
    return Check("retention_drift", False, f"{what}, within {percent(limit, signed=False)}", numbers,
                 f"retention {percent(drift, limit)} since the full training "
                 f"(retrain above {percent(limit)})")


def _holdout_loss(store: ModelStore, version: str, root: str, config: Config, device: str | None,
                  registry: Registry) -> float:
    """Mean loss of ``version`` on the full training's held-out items, scored as the
    full training scored them (every item, the model's whole context)."""
    from retain.core.quality.evaluation import score_texts
    from retain.core.storage.models import load_version, resolve_device

    loaded = load_version(store, version, device=resolve_device(device or config.device), registry=registry)
    texts = [r["text"] for r in store.read_jsonl(root, HOLDOUT)]
    return float(score_texts(loaded.lm, texts, loaded.lm.context).mean())


def _rejections(store: ModelStore, config: Config) -> Check:
    limit = config.retrain.max_rejected_in_row
    streak: list[str] = []
    for version in reversed(store.versions()):
        try:
            status = store.summary(version)["status"]
        except ModelError:  # an unreadable version says nothing about the gate
            continue
        if status != "rejected":
            break
        streak.append(version)
    numbers = {"rejected_in_row": len(streak), "versions": streak[::-1], "threshold": limit}
    if len(streak) >= limit:
        return Check("rejections", True, f"the gate rejected the last {plural(len(streak), 'update')} "
                     f"({', '.join(streak[::-1])}): fine-tuning no longer works from this model", numbers)
    if streak:
        return Check("rejections", False, f"the gate rejected the last {plural(len(streak), 'update')}, "
                     f"fewer than {limit} in a row", numbers,
                     f"{plural(len(streak), 'update')} rejected in a row (retrain at {limit})")
    return Check("rejections", False, "the newest version passed the gate", numbers,
                 "the newest version passed the gate")
