"""The engine: the update cycle, step by step. Plugins own only their step.

    1 load model  2 collect new data  3 skip duplicates  4 preprocess
    5 tokenize    6 fine-tune         7 validate         8 save

``retain train`` runs the same steps from a random init on all data.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .advice import next_steps
from .config import Config
from .errors import ModelError, PluginError, SourceError, UpdateRejected
from .items import Item, Reject
from .known import HOLDOUT as HELD_OUT_MATCH, KnownItems
from .plugin_errors import reports_plugin_errors
from .pluginmanager import Registry, make_plugin_manager
from .retry import retry_halving_batch
from .store import HOLDOUT, TOKENIZER, WEIGHTS, ModelStore, now_iso
from .strategy import TrainSettings
from .validation import Evidence, Verdict


class Output:
    """Where the engine's human-readable lines go (rich console, or nowhere)."""

    def __init__(self, console=None, progress: bool = True):
        self.console = console
        self.progress = progress and console is not None

    def step(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def warn(self, text: str) -> None:
        self.step(f"[yellow]warning:[/] {text}")


@dataclass
class Run:
    """What hooks see: the run's config, model directory, model and counts so far."""

    id: str
    kind: str
    config: Config
    model_dir: Path
    parent: str | None
    device: Any = None
    model: Any = None
    tokenizer: Any = None
    counts: dict[str, int] = field(default_factory=dict)
    settings: TrainSettings | None = None
    items: list[Item] = field(default_factory=list)  # what this run trains on (replay keeps some)


@dataclass
class LoadedModel:
    version: str
    manifest: dict
    model: Any
    tokenizer: Any
    tokenizer_json: str


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device(name)


def load_version(store: ModelStore, version: str | None = None, device=None) -> LoadedModel:
    """Load a version's weights and tokenizer, verifying checksums. No pickle anywhere."""
    from .model import Architecture, TransformerModel, load_tokenizer

    version = version or store.current()
    manifest = store.manifest(version)
    try:
        arch = Architecture(**manifest["architecture"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"version {version}: manifest has no valid architecture ({exc})") from None
    tensors = store.read_tensors(version, WEIGHTS, manifest)
    tok_json = store.read_text(version, TOKENIZER, manifest)
    try:
        model = TransformerModel(arch)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"version {version}: manifest has no valid architecture ({exc})") from None
    try:
        model.load_saved_state(tensors)
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"version {version}: weights do not fit the architecture "
                         f"({str(exc).splitlines()[0]})") from None
    try:
        tokenizer = load_tokenizer(tok_json)
    except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
        raise ModelError(f"version {version}: {TOKENIZER} is not a valid tokenizer ({exc})") from None
    if device is not None:
        model.to(device)
    return LoadedModel(version, manifest, model, tokenizer, tok_json)


# --- data steps -------------------------------------------------------------

def parse_data_spec(spec: str, registry: Registry) -> tuple[str, str]:
    """``NAME:LOCATION`` or a path whose suffix (or folder-ness) picks the source."""
    name, sep, rest = spec.partition(":")
    if sep and name in registry.by_kind["sources"] and len(name) > 1:
        return name, rest
    path = Path(spec)
    if path.is_dir():
        return "text", spec
    suffix = path.suffix.lower()
    for reg in registry.by_kind["sources"].values():
        if suffix and suffix in reg.extra.get("suffixes", ()):
            return reg.name, spec
    if not path.exists():
        raise SourceError(f"data source not found: {spec}")
    known = ", ".join(f"{r.name} ({' '.join(r.extra.get('suffixes', ())) or 'NAME:...'})"
                      for r in registry.by_kind["sources"].values())
    raise SourceError(f"cannot tell the format of {spec}; prefix it with a source name "
                      f"(e.g. jsonl:{spec}). Sources: {known}")


def collect(specs: list[str], registry: Registry, config: Config) -> tuple[list[Item], list[Reject]]:
    items: list[Item] = []
    rejects: list[Reject] = []
    for spec in specs:
        name, location = parse_data_spec(spec, registry)
        source = registry.build("sources", name, config)
        try:
            for record in source.read(location):
                (items if isinstance(record, Item) else rejects).append(record)
        except SourceError:
            raise
        except Exception as exc:
            raise PluginError(f"source '{name}' failed on {location}: {type(exc).__name__}: {exc}") from exc
    return items, rejects


def python_items(data: Iterable[Any], field_name: str = "text") -> tuple[list[Item], list[Reject]]:
    """Items from Python values: strings, or dicts with a ``text`` field."""
    items, rejects = [], []
    for i, value in enumerate(data, 1):
        text = value.get(field_name) if isinstance(value, dict) else value
        if isinstance(text, str) and text.strip():
            meta = {k: v for k, v in value.items() if k != field_name} if isinstance(value, dict) else {}
            items.append(Item(text, "python", "<python>", i, meta))
        else:
            rejects.append(Reject(f"expected a non-empty string or a dict with a '{field_name}' string",
                                  "python", "<python>", i, repr(value)[:200]))
    return items, rejects


def build_dedupers(registry: Registry, config: Config) -> list[tuple[str, Any]]:
    """The configured dedupers, in order: built once, used to find duplicates and to remember."""
    return [(name, registry.build("dedupers", name, config)) for name in config.dedupers]


def dedupe(items: list[Item], dedupers: list[tuple[str, Any]], known) -> tuple[list[Item], list[dict]]:
    """Run the dedupers; return kept items and a record of each skipped one."""
    skipped: list[dict] = []
    for name, deduper in dedupers:
        try:
            dupes = deduper.find_duplicates(items, known)
        except Exception as exc:
            raise PluginError(f"deduper '{name}' failed: {type(exc).__name__}: {exc}") from exc
        skipped += [{"deduper": name, "origin": items[i].origin, "reason": str(reason),
                     **getattr(reason, "details", {})} for i, reason in sorted(dupes.items())]
        items = [it for i, it in enumerate(items) if i not in dupes]
    return items, skipped


def preprocess(items: list[Item], registry: Registry, config: Config) -> tuple[list[Item], list[Reject]]:
    rejects: list[Reject] = []
    for name in config.preprocessors:
        process = registry.build("preprocessors", name, config)
        kept = []
        for item in items:
            try:
                out = process(item)
            except Exception as exc:
                raise PluginError(f"preprocessor '{name}' failed on {item.origin}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            (kept if isinstance(out, Item) else rejects).append(out)
        items = kept
    return items, rejects


def split_holdout(items: list[Item], fraction: float, cap: int, seed: int, minimum: int = 0) -> tuple[list[Item], list[Item]]:
    """(train, held out): a seeded random sample kept aside, never trained on."""
    n = len(items)
    k = min(cap, int(round(n * fraction)))
    if fraction > 0 and n >= 10:
        k = max(k, 1, minimum)
    if k <= 0 or k >= n:
        return items, []
    chosen = set(random.Random(seed).sample(range(n), k))
    return ([it for i, it in enumerate(items) if i not in chosen],
            [it for i, it in enumerate(items) if i in chosen])


def _sample(items: list, cap: int, seed: int) -> list:
    if len(items) <= cap:
        return items
    return random.Random(seed).sample(items, cap)


# --- the engine ---------------------------------------------------------------

@dataclass
class Candidate:
    """A trained model not yet saved: what ``commit`` turns into a version."""

    run: Run
    model: Any
    tokenizer_json: str
    trained: list[Item]
    holdout: list[Item]
    strategies: list
    report: dict
    verdicts: list[Verdict]

    @property
    def accepted(self) -> bool:
        return not any(v.status == "fail" for v in self.verdicts)


class Engine:
    def __init__(self, config: Config, *, output: Output | None = None, pm=None,
                 device: str | None = None, strict: bool = False):
        self.config = config
        self.out = output or Output()
        self.pm = pm or make_plugin_manager()
        self.registry = Registry(self.pm)
        self.registry.check_config(config)  # unknown plugin names and options fail here, early
        self.device_name = device or config.device
        self.strict = strict

    @functools.cached_property
    def dedupers(self) -> list[tuple[str, Any]]:
        return build_dedupers(self.registry, self.config)

    # public entry points ------------------------------------------------------
    def train(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None) -> dict:
        """Full training from a random init on all data; saves version 1 (or the next one)."""
        store = ModelStore(model_dir)
        with store.lock():
            store.recover()
            cand = self.prepare("full_training", data, store, loaded=None, items=items)
            # A full retrain starts a new lineage; remember which model it replaced.
            cand.report["replaces"] = store.current() if store.exists() else None
            return self.commit(cand, store)

    def update(self, data: list[str], model_dir: str | Path, *, items: list[Item] | None = None,
               dry_run: bool = False, wait: float = 0.0) -> dict:
        """One fine-tuning cycle on new data only; saves a new version if the gate accepts it."""
        store = ModelStore(model_dir)
        store.current()  # a clear error before anything else if there is no model
        if dry_run:
            return self._dry_run(data, store, items)
        with store.lock(wait=wait):
            notes = store.recover()
            for note in notes:
                self.out.warn(f"recovered from an interrupted run: {note}")
            loaded = load_version(store, device=None)
            cand = self.prepare("fine_tuning", data, store, loaded=loaded, items=items)
            if cand.report["counts"]["trained"] == 0:
                return cand.report
            return self.commit(cand, store)

    def _dry_run(self, data: list[str], store: ModelStore, items: list[Item] | None) -> dict:
        """Everything but the save, and it writes nothing at all: no lock taken, no recovery,
        no rejects lines, no version, no ledger rows. The gate still decides (exit code 10)."""
        try:
            cand = self.prepare("fine_tuning", data, store, loaded=load_version(store), items=items,
                                dry_run=True)
        finally:
            store.ledger.close()
        report = cand.report
        if cand.model is None:
            return report
        report["status"] = "dry_run"
        report["gate"] = "accepted" if cand.accepted else "rejected"
        if not cand.accepted:
            failed = ", ".join(v.validator for v in cand.verdicts if v.status == "fail")
            raise UpdateRejected(f"dry run: the quality gate would reject this update (failed: {failed}); "
                                 "nothing was written", report)
        self.out.step("[bold]8. Save[/]: skipped (dry run); the gate would accept this update")
        return report

    # the cycle ------------------------------------------------------------------
    @reports_plugin_errors
    def prepare(self, kind: str, data: list[str], store: ModelStore, loaded: LoadedModel | None,
                items: list[Item] | None = None, run_id: str | None = None,
                dry_run: bool = False) -> Candidate:
        import torch

        from .model import Architecture, TransformerModel, encode_texts, per_text_loss, train_tokenizer

        cfg = self.config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        full = kind == "full_training"
        block = cfg.full_training if full else cfg.fine_tuning
        run = Run(run_id or uuid.uuid4().hex[:12], kind, cfg, store.root,
                  parent=loaded.version if loaded else None)
        run.device = resolve_device(self.device_name)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        # A full training is the first experience of the strategies the updates will use: they do
        # not steer it (configure is skipped) but record what the first update needs from the
        # base data (replay buffer, Fisher importances), saved with the version like any state.
        strategies = [self.registry.build("strategies", n, cfg) for n in cfg.fine_tuning.strategy]
        if loaded is not None:
            self.out.step(f"[bold]1. Load model[/]: version {loaded.version} "
                          f"({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M parameters)")
            for s in strategies:
                s.load_state_dict(self._strategy_state(store, loaded, s.name))
        else:
            self.out.step("[bold]1. Load model[/]: none, training from scratch (random init)")
        timings["load"] = time.perf_counter() - t0

        # 2. collect
        t = time.perf_counter()
        if items is not None:
            collected, rejects = list(items), []
        else:
            collected, rejects = collect(data, self.registry, cfg)
        rejects_path = store.append_rejects(rejects, run.id) if rejects and not dry_run else None
        msg = f"[bold]2. Collect new data[/]: {len(collected)} items"
        if rejects:
            where = f"see {rejects_path}" if rejects_path else "not written: dry run"
            msg += f" ({len(rejects)} rejected, {where})"
        self.out.step(msg)
        if rejects and self.strict:
            first = rejects[0]
            raise SourceError(f"{len(rejects)} input records rejected (--strict); first: "
                              f"{first.file}:{first.line}: {first.reason}")
        timings["collect"] = time.perf_counter() - t

        # 3. dedupe
        t = time.perf_counter()
        chain = store.chain(loaded.version) if loaded else []
        known = KnownItems(store.ledger, chain)
        fresh, skipped = dedupe(collected, self.dedupers, known)
        self.out.step(f"[bold]3. Skip duplicates[/]: {len(skipped)}")
        timings["dedupe"] = time.perf_counter() - t

        # 4. preprocess
        t = time.perf_counter()
        clean, pre_rejects = preprocess(fresh, self.registry, cfg)
        if pre_rejects and not dry_run:
            store.append_rejects(pre_rejects, run.id)
        self.out.step(f"[bold]4. Preprocess[/]: {len(clean)} items"
                      + (f" ({len(pre_rejects)} rejected)" if pre_rejects else ""))
        timings["preprocess"] = time.perf_counter() - t

        v = cfg.validation
        if full:
            train_items, holdout = split_holdout(clean, v.retention_fraction, v.retention_max, cfg.seed)
        else:
            train_items, holdout = split_holdout(clean, v.holdout_fraction, v.holdout_max, cfg.seed)
        counts = {"collected": len(collected), "rejected": len(rejects) + len(pre_rejects),
                  "duplicates": len(skipped),
                  "contaminating": sum(s.get("kind") == HELD_OUT_MATCH for s in skipped),
                  "preprocessed": len(clean),
                  "trained": len(train_items), "holdout": len(holdout)}
        run.counts = counts
        run.items = train_items
        report: dict[str, Any] = {
            "run": run.id, "kind": kind, "model_dir": str(store.root), "parent": run.parent,
            "counts": counts, "skipped": skipped[:1000], "epoch_losses": [], "metrics": {},
            "verdicts": [], "version": None, "status": None, "timings": timings,
        }
        if not train_items:
            self.out.step("[green]Nothing new to learn[/]: the model is unchanged.")
            report["status"] = "nothing_new"
            timings["total"] = time.perf_counter() - t0
            return Candidate(run, None, "", [], [], strategies, report, [])

        # 5. tokenize
        t = time.perf_counter()
        if full:
            if len(train_items) < 2:
                raise SourceError("full training needs at least 2 usable items")
            tokenizer = train_tokenizer((it.text for it in train_items), cfg.model.vocab_size)
            tok_json = tokenizer.to_str()
            arch = Architecture.from_config(cfg.model, tokenizer.get_vocab_size(), block.max_seq_length)
            model = TransformerModel(arch)
        else:
            tokenizer, tok_json, model = loaded.tokenizer, loaded.tokenizer_json, loaded.model
        context = model.arch.context
        seq_len = min(block.max_seq_length, context)
        if seq_len < block.max_seq_length:
            self.out.warn(f"max_seq_length {block.max_seq_length} exceeds the model's context "
                          f"{context}; using {context} (a full retrain changes the context)")
        x, y, owner = encode_texts(tokenizer, [it.text for it in train_items], seq_len)
        n_tokens = int((y != -100).sum())
        self.out.step(f"[bold]5. Tokenize[/]: {len(train_items)} items -> {len(x)} sequences, "
                      f"{n_tokens:,} tokens" + (f" ({len(holdout)} items held out)" if holdout else ""))
        timings["tokenize"] = time.perf_counter() - t
        model.to(run.device)
        run.model, run.tokenizer = model, tokenizer

        # before-measurements: retention (old, never trained) and new held-out items
        t = time.perf_counter()
        retention = [] if full else _sample(store.holdout(chain), v.eval_max_items, cfg.seed)
        retention_texts = [r["text"] for r in retention] if not full else [it.text for it in holdout]
        new_texts = [it.text for it in holdout] if not full else []

        def score(texts: list[str]):
            if not texts:
                return None
            ex, ey, eo = encode_texts(tokenizer, texts, seq_len)
            return per_text_loss(model, ex, ey, eo, len(texts), run.device)

        ret_before, new_before = score(retention_texts), score(new_texts)
        timings["evaluate_before"] = time.perf_counter() - t

        # 6. train
        t = time.perf_counter()
        settings = TrainSettings(block.learning_rate, block.epochs, block.batch_size, seq_len)
        if not full:
            for s in strategies:
                s.configure(settings, run)
        run.settings = settings
        label = "Full training" if full else "Fine-tune"
        strat_names = "from scratch" if full else (", ".join(s.name for s in strategies) or "no strategy")
        self.out.step(f"[bold]6. {label}[/] ({strat_names}): {settings.epochs} epochs, "
                      f"lr {settings.learning_rate:g}, batch {settings.batch_size}")
        for s in strategies:
            self.pm.register(s, name=f"strategy:{s.name}:{run.id}")
        oom_retries: list[dict] = []

        def on_oom(failed: int, retry: int, error: str) -> None:
            oom_retries.append({"batch_size": failed, "retry_batch_size": retry, "error": error})
            self.out.warn(f"out of memory at batch_size {failed} ({error}); weights restored, "
                          f"retrying with batch_size {retry}")

        try:
            self.pm.hook.update_started(run=run)
            epoch_losses = retry_halving_batch(
                lambda: self._fit(run, model, x, y, settings, strategies, tokenizer), model, settings, on_oom)
        finally:
            for s in strategies:
                self.pm.unregister(s)
        timings["train"] = time.perf_counter() - t

        # 7. validate
        t = time.perf_counter()
        ret_after, new_after = score(retention_texts), score(new_texts)
        metrics = {
            "retention_loss_before": _mean(ret_before), "retention_loss_after": _mean(ret_after),
            "new_loss_before": _mean(new_before), "new_loss_after": _mean(new_after),
            "retention_items": len(retention_texts), "new_holdout_items": len(new_texts),
        }
        evidence = Evidence(kind, epoch_losses, metrics["retention_loss_before"],
                            metrics["retention_loss_after"], metrics["new_loss_before"],
                            metrics["new_loss_after"], ret_before, ret_after, model, settings,
                            extra=dict(metrics), tokenizer=tokenizer, timings=dict(timings))
        verdicts = self._validate(evidence)
        steps = next_steps(verdicts, oom_retries)
        self._print_validation(metrics, verdicts, full)
        for step in steps:
            self.out.step(f"  [bold]next step[/] ({', '.join(step['validators']) or 'engine'}): {step['step']}")
        timings["validate"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report.update(epoch_losses=epoch_losses, metrics=metrics,
                      verdicts=[vd.to_json() for vd in verdicts], next_steps=steps, oom_retries=oom_retries,
                      settings=asdict(settings), strategies=[s.name for s in strategies])
        return Candidate(run, model, tok_json, train_items, holdout, strategies, report, verdicts)

    @reports_plugin_errors
    def commit(self, cand: Candidate, store: ModelStore) -> dict:
        """8. Save: write the version atomically; move CURRENT only if the gate accepted it."""
        report = cand.report
        if cand.model is None:
            return report
        t = time.perf_counter()
        run = cand.run
        writer = store.begin_version()
        try:
            writer.write_tensors(WEIGHTS, {k: v.cpu() for k, v in cand.model.state_dict_for_save().items()})
            writer.write_text(TOKENIZER, cand.tokenizer_json)
            if cand.holdout:
                writer.write_text(HOLDOUT, "".join(
                    json.dumps({"text": it.text, "hash": it.hash, "origin": it.origin},
                               ensure_ascii=False) + "\n" for it in cand.holdout))
            for s in cand.strategies:
                self._save_strategy_state(writer, s)
            for _, deduper in self.dedupers:
                if hasattr(deduper, "remember"):
                    deduper.remember(cand.trained + cand.holdout, writer.name, writer)
            status = "accepted" if cand.accepted else "rejected"
            report["timings"]["save"] = time.perf_counter() - t
            manifest = {
                "parent": run.parent, "created_at": now_iso(), "kind": run.kind, "status": status,
                "architecture": asdict(cand.model.arch), "config": self.config.to_dict(),
                "counts": report["counts"], "metrics": report["metrics"],
                "epoch_losses": report["epoch_losses"], "verdicts": report["verdicts"],
                "strategies": report.get("strategies", []), "timings": report["timings"],
                "data_hash": _data_hash(cand.trained), "run": run.id,
                "replaces": report.get("replaces"),
            }
            writer.write_json("report.json", report)
            # Ledger rows first: they count only once CURRENT's chain includes this version.
            store.ledger.add(writer.name, [(it.hash, "train", it.source, it.origin) for it in cand.trained]
                             + [(it.hash, "holdout", it.source, it.origin) for it in cand.holdout])
            writer.finish(manifest)
        except BaseException:
            writer.abandon()
            raise
        report["version"] = writer.name
        report["status"] = status
        if status == "accepted":
            store.set_current(writer.name)
            self.out.step(f"[bold]8. Save[/]: version {writer.name} is now current")
        else:
            failed = [v for v in cand.verdicts if v.status == "fail"]
            self.out.step(f"[bold red]8. Save[/]: version {writer.name} kept as [red]rejected[/]; "
                          f"current stays {run.parent}")
        self.pm.hook.update_finished(run=run, report=report)
        if status == "rejected":
            # The reasons and next steps were printed at step 7 and are in the report.
            raise UpdateRejected(f"update rejected by the quality gate (failed: "
                                 f"{', '.join(v.validator for v in failed)}); report in "
                                 f"{store.versions_dir / writer.name / 'report.json'}; current model "
                                 f"unchanged (version {run.parent})", report)
        return report

    # helpers ------------------------------------------------------------------------
    def _fit(self, run: Run, model, x, y, settings: TrainSettings, strategies, tokenizer) -> list[float]:
        from .model import PAD
        from .training import fit

        plugins = [p for s in strategies for p in s.avalanche_plugins(run)]
        hook = self.pm.hook.training_penalty
        steps = -(-len(x) // settings.batch_size)
        progress = None
        if self.out.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            progress = Progress(TextColumn("  epoch {task.fields[epoch]}/{task.fields[of]}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                                TimeRemainingColumn(), console=self.out.console, transient=True)
            progress.start()
            task = progress.add_task("train", total=steps, epoch=1, of=settings.epochs, loss=float("nan"))
        running: list[float] = []
        previous: list[float] = []

        def penalty(m, inputs, targets, logits):
            terms = [t for t in hook(run=run, model=m, inputs=inputs, targets=targets, logits=logits)
                     if t is not None]
            return sum(terms) if terms else None

        def on_step(epoch: int, step: int, loss: float) -> None:
            running.append(loss)
            if progress is not None:
                window = running[-20:]
                progress.update(task, completed=step, epoch=epoch, loss=sum(window) / len(window))

        def on_epoch(epoch: int, loss: float) -> None:
            line = epoch_line(epoch, settings.epochs, loss, previous[-1] if previous else None)
            previous.append(loss)
            if progress is not None:
                progress.console.print(line, highlight=False)
                progress.reset(task, total=steps, epoch=min(epoch + 1, settings.epochs),
                               of=settings.epochs, loss=float("nan"))
            else:
                self.out.step(line)
            self.pm.hook.epoch_ended(run=run, epoch=epoch, loss=loss)

        def continue_stream(template) -> None:
            # Each update is a fresh template, but not the model's first experience: say so, or
            # avalanche plugins that skip the first one (EWC, MAS, GEM) ignore restored state.
            if run.parent is not None:
                template.clock.train_exp_counter = 1

        try:
            return fit(model, x, y, settings, device=run.device, pad_id=tokenizer.token_to_id(PAD),
                       penalty=penalty, extra_plugins=plugins, on_step=on_step, on_epoch=on_epoch,
                       template_hook=continue_stream)
        finally:
            if progress is not None:
                progress.stop()

    def _validate(self, evidence: Evidence) -> list[Verdict]:
        verdicts = []
        for name in self.config.validators:
            validator = self.registry.build("validators", name, self.config)
            try:
                verdict = validator.validate(evidence)
            except Exception as exc:
                raise PluginError(f"validator '{name}' failed: {type(exc).__name__}: {exc}") from exc
            verdict.validator = verdict.validator or name
            verdicts.append(verdict)
        return verdicts

    def _print_validation(self, metrics: dict, verdicts: list[Verdict], full: bool) -> None:
        def fmt(v):
            return "-" if v is None else f"{v:.4f}"
        rb, ra = metrics["retention_loss_before"], metrics["retention_loss_after"]
        nb, na = metrics["new_loss_before"], metrics["new_loss_after"]
        self.out.step("[bold]7. Validate[/]:")
        if full:
            self.out.step(f"  held-out base items ({metrics['retention_items']}): loss "
                          f"{fmt(rb)} (random init) -> {fmt(ra)}")
        else:
            self.out.step(f"  retention, previously learned held-out items ({metrics['retention_items']}): "
                          f"loss {fmt(rb)} -> {fmt(ra)}{_delta(rb, ra)}")
            self.out.step(f"  learning, held-out new items ({metrics['new_holdout_items']}): "
                          f"loss {fmt(nb)} -> {fmt(na)}{_delta(nb, na)}")
        for vd in verdicts:
            color = {"pass": "green", "warn": "yellow", "fail": "red"}[vd.status]
            self.out.step(f"  [{color}]{vd.status}[/] {vd.validator}: {vd.reason}")

    def _strategy_state(self, store: ModelStore, loaded: LoadedModel, name: str) -> dict:
        files = loaded.manifest.get("files", {})
        state: dict[str, Any] = {}
        rel_t, rel_j = f"strategy/{name}.safetensors", f"strategy/{name}.json"
        if rel_t in files:
            state.update(store.read_tensors(loaded.version, rel_t, loaded.manifest))
        if rel_j in files:
            state.update(json.loads(store.verified_path(loaded.version, rel_j, loaded.manifest)
                                    .read_text(encoding="utf-8")))
        return state

    @staticmethod
    def _save_strategy_state(writer, strategy) -> None:
        import torch

        state = strategy.state_dict() or {}
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
        other = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        if tensors:
            writer.write_tensors(f"strategy/{strategy.name}.safetensors", tensors)
        if other:
            writer.write_json(f"strategy/{strategy.name}.json", other)


def epoch_line(epoch: int, epochs: int, loss: float, previous: float | None) -> str:
    """The seed's monitoring line; a rising loss gets the seed's diagnosis."""
    phase = "learning" if epoch == 1 else ("converging" if epoch == epochs else "refining")
    line = f"  Epoch {epoch}/{epochs}: Loss={loss:.4f} ({phase})"
    if previous is not None and loss > previous:
        line += "  [yellow]loss rose: the learning rate is probably too high[/]"
    return line


def _mean(t) -> float | None:
    return None if t is None else float(t.mean())


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return ""
    pct = 100 * (after - before) / before
    return f" ({pct:+.1f}%)"


def _data_hash(items: list[Item]) -> str:
    import hashlib

    h = hashlib.sha256()
    for digest in sorted(it.hash for it in items):
        h.update(digest.encode())
    return h.hexdigest()
