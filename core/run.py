"""The run: one training or update, the state that flows through the cycle's stages.

Each stage (``core/cycle.py``, its work in ``core/data/ingest.py``, ``core/storage/models.py``,
``core/quality/evaluation.py``, ``core/learning/training.py``, ``core/quality/gate.py``, ``core/storage/commit.py``)
reads what the stages before it filled in, adds its own part and returns its small typed
result (``Measured``, below, is the one a search's trials receive). Hooks and strategies receive a
read-only view of it (``RunView``): a plugin changes the run by returning what it
changes (``Strategy.configure`` a wrapped model, ``Strategy.counts`` its counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from retain.core.config import Config
from retain.core.data.items import Item, Reject
from retain.core.learning.strategy import Strategy, TrainSettings
from retain.core.quality.validation import Verdict

if TYPE_CHECKING:
    from retain.core.contracts import LanguageModel
    from retain.core.quality.drift import Baseline
    from retain.core.quality.evaluation import Scores
    from retain.core.learning.lm import Rows
    from retain.core.storage.models import LoadedVersion
    from retain.core.storage.report import UpdateReport
    from retain.core.storage.retention import RetentionSet

FULL_TRAINING, FINE_TUNING, IMPORT = "full_training", "fine_tuning", "import"


@dataclass
class Run:
    """One run of the update cycle (or of a full training)."""

    id: str                            # short random id, also in the rejects file and report
    kind: str                          # FULL_TRAINING, FINE_TUNING or IMPORT
    config: Config
    model_dir: Path
    parent: str | None                 # the version it starts from; None for a full training
    device: Any = None                 # torch.device the model trains on
    precision: str = "fp32"            # "fp32" or "bf16" (autocast), resolved from config.precision
    precision_choice: dict[str, Any] | None = None  # asked, chose, why (core/runtime/precision.py), once tokenized
    writes: bool = True                # False: write nothing at all (a plan, a check, a search's trial)
    base: "LoadedVersion | None" = None  # the loaded parent version (updates)
    origin: dict[str, Any] | None = None  # an import: where the model came from (path, sha256, format)
    tokenizer_from: "LanguageModel | None" = None  # full training with tokenizer: keep: the model before

    # ingest: collect, preprocess, dedupe, hold out
    rejects: list[Reject] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)   # one entry per duplicate: deduper, origin, why
    items: list[Item] = field(default_factory=list)     # what this run trains on
    holdout: list[Item] = field(default_factory=list)   # kept aside, never trained on
    counts: dict[str, int] = field(default_factory=dict)

    # the model and how it trains
    lm: "LanguageModel | None" = None
    strategies: list[Strategy] = field(default_factory=list)
    settings: TrainSettings | None = None
    rows: "Rows | None" = None         # the training rows of ``items``
    parameters: dict[str, int] = field(default_factory=dict)  # "total", "trainable" (after configure)

    # measurements and the gate's decision
    retention: "RetentionSet | None" = None  # the parent's retention pool (core/storage/retention.py)
    drift: "Baseline | None" = None    # updates: the last full training's held-out items, the drift reference
    retention_texts: list[str] = field(default_factory=list)  # old items, never trained on
    judged_items: int | None = None    # how many of them early stopping scores after an epoch but the last (None: all)
    new_texts: list[str] = field(default_factory=list)        # this run's held-out new items
    recent_texts: list[str] = field(default_factory=list)     # earlier updates' held-out new items (learning pool)
    before: "Scores | None" = None
    after: "Scores | None" = None
    early_stopping: dict[str, Any] | None = None  # updates: each epoch judged, the one kept
    search: dict[str, Any] | None = None  # how the settings were chosen, when a search chose them
    epoch_losses: list[float] = field(default_factory=list)
    oom_retries: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    next_steps: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)   # seconds per step
    samples: dict[str, Any] | None = None  # the gate's prompts, sampled before and after (retain report)

    @property
    def full(self) -> bool:
        return self.kind == FULL_TRAINING

    @property
    def new_lineage(self) -> bool:
        """A full training or an import: the model's first version. Its held-out items are the
        base data's (the retention set), and the strategies record rather than steer."""
        return self.kind in (FULL_TRAINING, IMPORT)

    @property
    def model(self):
        """The torch module being trained (``run.lm.module``), or None before it exists."""
        return self.lm.module if self.lm is not None else None

    @property
    def tokenizer(self):
        """The model's tokenizer object, for families that have one (None otherwise)."""
        return getattr(self.lm, "tokenizer", None)

    @property
    def accepted(self) -> bool:
        return not any(v.status == "fail" for v in self.verdicts)

    @property
    def trained(self) -> bool:
        """There is a model to save: trained on items, or imported (with or without base data)."""
        return self.lm is not None and (bool(self.items) or self.kind == IMPORT)

    def measured(self) -> "Measured":
        """What the steps up to ``evaluate_before`` established, as a stage result (the items as
        they are: a view of the run's spool is not read into memory, ``core/data/spool.py``)."""
        return Measured(self.items, tuple(self.holdout), dict(self.counts), tuple(self.retention_texts),
                        tuple(self.new_texts), self.judged_items, self.before, tuple(self.recent_texts))

    def take(self, measured: "Measured") -> None:
        """Go on from ``measured``: the steps up to ``evaluate_before`` ran elsewhere (a search
        measured once; each of its trials trains and is judged from there)."""
        items = measured.items
        self.items = items if hasattr(items, "spool") else list(items)  # a spool's view stays one
        self.holdout, self.counts = list(measured.holdout), dict(measured.counts)
        self.retention_texts, self.new_texts = list(measured.retention_texts), list(measured.new_texts)
        self.judged_items, self.before = measured.judged_items, measured.before
        self.recent_texts = list(measured.recent_texts)

    def view(self) -> "RunView":
        """What hooks and strategies see: this run, read-only."""
        return RunView(self)

    def report(self) -> "UpdateReport":
        """What ``retain update --json`` prints and ``report.json`` keeps (``core/storage/report.py``),
        before the save: no version yet."""
        from dataclasses import asdict

        from retain.core.data.ingest import rejects_summary
        from retain.core.storage.report import UpdateReport

        return UpdateReport.model_validate({
            "run": self.id, "kind": self.kind, "model_dir": str(self.model_dir), "parent": self.parent,
            "counts": dict(self.counts), "skipped": self.skipped[:1000], "rejects": rejects_summary(self.rejects),
            "samples": self.samples,
            "epoch_losses": list(self.epoch_losses), "metrics": dict(self.metrics),
            "verdicts": [v.to_json() for v in self.verdicts], "next_steps": list(self.next_steps),
            "oom_retries": list(self.oom_retries), "timings": dict(self.timings),
            "settings": asdict(self.settings) if self.settings is not None else None,
            "strategies": [s.name for s in self.strategies], "parameters": dict(self.parameters),
            "source": self.origin,
            "early_stopping": self.early_stopping,
            "search": self.search,
            "precision": self.precision_choice,
            "version": None, "status": None if self.trained else "nothing_new",
        })


class RunView:
    """A run as plugins see it: every attribute reads through to the run, none can be set.
    A plugin that changes the run returns what it changes; the cycle puts it in place."""

    __slots__ = ("_run",)

    def __init__(self, run: Run):
        object.__setattr__(self, "_run", run)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_run"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the run is read-only to plugins (run.{name}): return what you change "
                             "(Strategy.configure returns the model it wraps, Strategy.counts its counts)")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __repr__(self) -> str:
        return f"RunView({object.__getattribute__(self, '_run').id})"


@dataclass(frozen=True)
class Measured:
    """The stage result of ingest and ``evaluate_before``: the items to train on and those held
    out, the counts, the texts a candidate is judged on (``judged_items``: early stopping's part
    of the retention set) and the starting model's losses on them. A search's trial receives
    it as JSON (``to_json``/``from_json``) and trains and is judged from it alone."""

    items: Sequence[Item]
    holdout: tuple[Item, ...]
    counts: dict[str, int]
    retention_texts: tuple[str, ...]
    new_texts: tuple[str, ...]
    judged_items: int | None
    before: "Scores | None"
    recent_texts: tuple[str, ...] = ()  # the learning pool's earlier items (their losses: ``before.recent``)

    def to_json(self, folder: Path | None = None) -> dict[str, Any]:
        """As plain data. With ``folder``, items a spool holds on disk (past its memory part,
        ``core/data/spool.py``: a corpus, not a day's data) are not listed: they are written to
        a file there (``items_file``), which ``from_json`` reads back into a spool of its own."""
        def items(its):
            return [{"text": it.text, "source": it.source, "file": it.file, "line": it.line, "meta": it.meta}
                    for it in its]

        spool = getattr(self.items, "spool", None)
        if folder is not None and spool is not None and spool.on_disk:
            from retain.core.data.spool import write_records

            path = Path(folder) / "items.records"
            write_records(self.items, path)
            listed = {"items_file": str(path)}
        else:
            listed = {"items": items(self.items)}

        def losses(t):
            return None if t is None else t.tolist()
        before = None if self.before is None else {"retention": losses(self.before.retention),
                                                   "new": losses(self.before.new), "recent": losses(self.before.recent)}
        return {**listed, "holdout": items(self.holdout), "counts": dict(self.counts),
                "retention_texts": list(self.retention_texts), "new_texts": list(self.new_texts),
                "judged_items": self.judged_items, "before": before, "recent_texts": list(self.recent_texts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Measured":
        before = data["before"]
        if before is not None:
            import torch

            from retain.core.quality.evaluation import Scores

            def tensor(k):
                return torch.tensor(before[k], dtype=torch.float64) if before.get(k) is not None else None
            before = Scores(tensor("retention"), tensor("new"), recent=tensor("recent"))
        if "items_file" in data:
            from retain.core.data.spool import read_records

            items = read_records(data["items_file"]).view()
        else:
            items = tuple(Item(**d) for d in data["items"])
        return cls(items, tuple(Item(**d) for d in data["holdout"]),
                   dict(data["counts"]), tuple(data["retention_texts"]), tuple(data["new_texts"]),
                   data.get("judged_items"), before, tuple(data.get("recent_texts", ())))
