"""The ``text`` scenario of ``retain compare``: a base model, then updates of new text.

- one experience per ``--data`` source (a file or a folder), each split into
  items to train on and held-out items to test on;
- or, with ``--daily N``, the new data cut into days of N items, a share of
  them duplicates (of base items, earlier days, or the same day; some
  case/spacing variants), as in the design document's daily updates ("45
  items, 12 duplicates skipped").

Experience 0 is the base model itself: its held-out items are the old domain's
test data. Each strategy runs on a private copy of the base model through
``Engine.update`` exactly as ``retain update`` would (``full_retrain``:
``Engine.train`` on the base data plus every experience so far), so strategy
state persists between updates the way it does for users.

Streams are plain data: built once in the parent process and handed to every
worker, so all strategies see the same bytes; ``fingerprint`` hashes what each
worker received.
"""

from __future__ import annotations

import copy
import hashlib
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.core.config import Config, apply_override, build, load_config, parse_override
from retain.core.errors import ConfigError, SourceError
from retain.core.data.items import Item

FULL_RETRAIN = "full_retrain"
FULL_RETRAIN_KEEP = "full_retrain_keep"  # keeps the base model's tokenizer (full_training.tokenizer: keep)
BASELINES = (FULL_RETRAIN, FULL_RETRAIN_KEEP)


@dataclass
class TextExperience:
    name: str
    train: list[Item]
    test: list[Item]
    injected_duplicates: int = 0


@dataclass
class TextStream:
    """Experience 0 is the base model itself (its held-out items are the test data)."""

    name: str                      # "text" or "daily"
    experiences: list[TextExperience]
    base_items: list[Item] = field(default_factory=list)  # full_retrain's base data (may be empty)
    rejected: int = 0              # input records the sources or preprocessors refused
    base_model: str = ""           # the model directory every strategy starts from
    notes: list[str] = field(default_factory=list)

    metric = "loss"
    higher_is_better = False
    old_is_base = True             # "old" is experience 0's column: the base model's domain
    fwt_from = 2                   # experience 0 is the reference itself: FWT of the first update is 0

    def fingerprints(self) -> dict[str, dict[str, str]]:
        hashes = {e.name: {"train": fingerprint(e.train), "test": fingerprint(e.test)} for e in self.experiences}
        hashes["base"]["train"] = fingerprint(self.base_items)  # what full_retrain retrains on
        return hashes

    def describe(self) -> list[dict]:
        return [{"name": e.name, "train": len(e.train), "test": len(e.test),
                 "injected_duplicates": e.injected_duplicates} for e in self.experiences]


# --- the stream ----------------------------------------------------------------------------------

def fingerprint(*parts: Any) -> str:
    """sha256 over texts, items or arrays: what a worker actually trains and tests on."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (list, tuple)):
            for x in part:
                h.update((x.text if isinstance(x, Item) else str(x)).encode("utf-8"))
                h.update(b"\x00")
        elif hasattr(part, "tobytes"):
            h.update(str(part.dtype).encode() + str(part.shape).encode() + part.tobytes())
        else:
            h.update(str(part).encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()


def split_test(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, test): a seeded sample held out, at least one item of each when there are two."""
    n = len(items)
    k = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    chosen = set(random.Random(seed).sample(range(n), k)) if k else set()
    return ([it for i, it in enumerate(items) if i not in chosen],
            [it for i, it in enumerate(items) if i in chosen])


def _variant(text: str) -> str:
    """The same item to the exact deduper: another case and spacing."""
    return "  " + text.upper().replace(" ", "   ")


def text_stream(groups: list[tuple[str, list[Item]]], *, test_fraction: float, seed: int) -> list[TextExperience]:
    """One experience per (name, items) group, each split into train and held-out test items."""
    out = []
    for k, (name, items) in enumerate(groups):
        train, test = split_test(items, test_fraction, seed + k)
        if not train or not test:
            raise SourceError(f"experience '{name}' has {len(items)} usable items: need at least 2 "
                              "(some to train on, some held out to test on)")
        out.append(TextExperience(name, train, test))
    return out


def daily_stream(items: list[Item], per_day: int, dup_share: float, *, test_fraction: float, seed: int,
                 base_items: list[Item] | None = None, days: int | None = None) -> list[TextExperience]:
    """Days of ``per_day`` items, ``round(per_day * dup_share)`` of them duplicates.

    Duplicates copy (exactly, or as a case/spacing variant) items already
    trained on: base items, earlier days' items, or this day's own. Held-out
    test items are never copied, so no test item is ever trained on.
    """
    if per_day < 2:
        raise ConfigError(f"--daily must be >= 2 items per day, got {per_day}")
    if not 0 <= dup_share < 1:
        raise ConfigError(f"--dup-share must be in [0, 1), got {dup_share}")
    n_dupes = int(round(per_day * dup_share))
    fresh_per_day = per_day - n_dupes
    n_days = len(items) // fresh_per_day
    if days is not None:
        n_days = min(n_days, days)
    if n_days < 1:
        raise SourceError(f"--daily {per_day} with --dup-share {dup_share} needs {fresh_per_day} new "
                          f"items per day; the data has {len(items)}")
    rng = random.Random(seed)
    seen: list[Item] = list(base_items or [])
    out = []
    for d in range(n_days):
        fresh = items[d * fresh_per_day:(d + 1) * fresh_per_day]
        train, test = split_test(fresh, test_fraction, seed + d)
        pool = seen + train
        dupes = []
        for i in range(n_dupes):
            src = rng.choice(pool)
            text = _variant(src.text) if i % 2 else src.text
            dupes.append(Item(text, "daily-duplicate", src.file, src.line, {"duplicate_of": src.origin}))
        day = train + dupes
        rng.shuffle(day)
        out.append(TextExperience(f"day{d + 1}", day, test, injected_duplicates=n_dupes))
        seen += train
    return out


# --- the scenario: build the stream (parent process), run one strategy (worker) ----------------------

def scenario_config(request, base: dict | None, extra: list[str]) -> Config:
    """The config every strategy runs with: ``--config``, or the base model's own (so that
    full_retrain rebuilds the same model), with ``--set`` overrides and the seed."""
    overrides = [*extra, *request.overrides, f"seed={request.seed}"]
    if request.config is not None or base is None:
        return load_config(request.config, overrides)
    data = copy.deepcopy(base)
    for item in overrides:
        key, value = parse_override(item)
        apply_override(data, key, value)
    return build(Config, data)


def clean_items(specs: list[str], registry, config: Config) -> tuple[list[Item], int]:
    from retain.core.data.ingest import collect, preprocess

    items, rejects = collect(specs, registry, config)
    clean, pre_rejects = preprocess(items, registry, config)
    return clean, len(rejects) + len(pre_rejects)


class TextScenario:
    """A base model's held-out items, then updates of new text (files, or --daily days)."""

    @staticmethod
    def preload() -> None:
        import retain.core.learning.training  # noqa: F401  (avalanche-lib: seconds to import)

    def build(self, request, registry) -> tuple[TextStream, Config]:
        from retain.core.quality.evaluation import retention_texts
        from retain.core.storage.store import ModelStore

        if request.model is None:
            raise ConfigError("a text compare needs the base model: --model BASE")
        if not request.data:
            raise ConfigError("a text compare needs new data: --data (one per experience, or with --daily N)")
        store = ModelStore(request.model)
        version = store.current()
        extra = [f"fine_tuning.epochs={request.epochs}"] if request.epochs else []
        config = scenario_config(request, store.manifest(version).get("config"), extra)
        if not request.gate:
            # compare measures what each strategy does to the model; a gate that rejected, say,
            # naive's updates would keep the base model and hide the very forgetting measured.
            config.validators = []
        fraction = 0.2 if request.test_fraction is None else request.test_fraction
        if not 0 < fraction < 1:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {fraction}")
        held = retention_texts(store, store.chain(version), config.validation.eval_max_items, request.seed)
        if not held:
            raise SourceError(f"the base model in {request.model} holds no held-out items to measure forgetting "
                              "on; train it with validation.retention_fraction > 0")
        base_test = [Item(text, "holdout", "", None) for text in held]
        base_items, rejected = clean_items(request.base_data, registry, config) if request.base_data else ([], 0)
        # The base model's test items are never trained on, not even by full_retrain.
        base_items = [it for it in base_items if it.hash not in {t.hash for t in base_test}]
        experiences, r = self._experiences(request, registry, config, fraction, base_items)
        tested = {it.hash for e in experiences for it in e.test}
        base_items = [it for it in base_items if it.hash not in tested]
        stream = TextStream("daily" if request.daily is not None else "text",
                            [TextExperience("base", [], base_test), *experiences], base_items, rejected + r,
                            base_model=str(request.model))
        if set(BASELINES) & set(request.strategies) and not stream.base_items:
            raise ConfigError(f"{FULL_RETRAIN} (and {FULL_RETRAIN_KEEP}) retrain from scratch on the base data plus the new "
                              "data: pass the base model's training data with --base-data")
        files = store.manifest(version).get("files", {})
        recorded = {rel.split("/")[1].rsplit(".", 1)[0] for rel in files if rel.startswith("strategy/")}
        stream.notes = self._stateless_base_notes(request.strategies, registry, config, recorded)
        return stream, config

    @staticmethod
    def _experiences(request, registry, config, fraction, base_items):
        if request.daily is not None:
            new, rejected = clean_items(request.data, registry, config)
            return daily_stream(new, request.daily, request.dup_share, test_fraction=fraction, seed=request.seed,
                                base_items=base_items, days=request.days), rejected
        groups, rejected = [], 0
        for spec in request.data:
            items, r = clean_items([spec], registry, config)
            rejected += r
            groups.append((Path(spec.split(":", 1)[-1]).stem or spec, items))
        return text_stream(groups, test_fraction=fraction, seed=request.seed), rejected

    @staticmethod
    def _stateless_base_notes(labels: list[str], registry, config: Config, recorded: set[str]) -> list[str]:
        """``recorded``: the strategies whose state the base version keeps."""
        from retain.core.learning.strategy import Strategy

        from retain.compare.run import parse_label

        stateless = []
        for label in labels:
            for part in parse_label(label)[0]:
                if part in BASELINES or part in recorded:
                    continue
                built = registry.build("strategies", part, config)
                if type(built).state_dict is not Strategy.state_dict:
                    stateless.append(part)
        if not stateless:
            return []
        names = ",".join(dict.fromkeys(stateless))
        return [f"the base model was trained without {names} among its strategies, so they start without "
                f"the base's state (replay buffer, importances); `retain train --strategy {names}` records it"]

    def run(self, names: list[str], stream: TextStream, config: Config, seed: int, scratch: Path) -> dict:
        """One strategy (or full_retrain) over the whole stream, on a private copy of the base model."""
        from retain.core.engine import Engine
        from retain.core.errors import UpdateRejected
        from retain.core.quality.evaluation import score_texts
        from retain.core.storage.models import load_version, resolve_device
        from retain.core.storage.store import ModelStore

        model_dir = scratch / "model"
        shutil.copytree(stream.base_model, model_dir, ignore=shutil.ignore_patterns(".lock"))
        full = names[0] in BASELINES
        cfg = copy.deepcopy(config)
        if full:
            cfg.full_training.tokenizer = "keep" if names[0] == FULL_RETRAIN_KEEP else "new"
        cfg.validation.holdout_fraction = 0.0  # compare holds out its own test items, before the engine
        cfg.loggers = []  # runs on a scratch copy, not the model's history: no tracker hears them
        if full:
            cfg.validation.retention_fraction = 0.0  # and base data's test items are already removed
        else:
            cfg.fine_tuning.strategy = list(names)
        device = resolve_device(cfg.device)
        tests = [[it.text for it in e.test] for e in stream.experiences]

        def evaluate() -> list[float]:
            lm = load_version(ModelStore(model_dir), device=device).lm
            seq = min(cfg.fine_tuning.max_seq_length, lm.context)
            return [float(score_texts(lm, texts, seq, device).mean()) for texts in tests]

        rows, stages, train_seconds = [evaluate()], [], 0.0
        for i, exp in enumerate(stream.experiences[1:], 1):
            t0 = time.perf_counter()
            engine = Engine(cfg)
            stage: dict[str, Any] = {"experience": exp.name}
            try:
                if full:
                    items = stream.base_items + [it for e in stream.experiences[1:i + 1] for it in e.train]
                    report = engine.train([], model_dir, items=items)
                else:
                    report = engine.update([], model_dir, items=exp.train)
                stage["status"] = report.get("status") or "trained"
                stage["verdicts"] = {v["validator"]: v["status"] for v in report.get("verdicts", [])}
                stage["trainable_parameters"] = (report.get("parameters") or {}).get("trainable")
                if report.get("version"):
                    stage["trained_hash"] = ModelStore(model_dir).manifest(report["version"]).get("data_hash")
                    own = f"{report['version']}."  # earlier versions' token shards are hard links to theirs
                    stage["version_bytes"] = sum(p.stat().st_size for p in
                                                 (model_dir / "versions" / report["version"]).rglob("*") if p.is_file()
                                                 and (p.parent.name != "shards" or p.name.startswith(own)))
                stage.update(trained=report["counts"]["trained"], duplicates=report["counts"]["duplicates"])
            except UpdateRejected as exc:  # the gate kept the previous model, as it would for a user
                stage.update(status="rejected", reason=str(exc),
                             verdicts={v["validator"]: v["status"] for v in (exc.report or {}).get("verdicts", [])})
            stage["seconds"] = time.perf_counter() - t0
            train_seconds += stage["seconds"]
            stages.append(stage)
            rows.append(evaluate())
        return {"supported": True, "R": rows, "initial": rows[0], "stages": stages, "train_seconds": train_seconds}
