"""A run's report, typed: what ``retain update --json`` prints and a version's ``report.json`` keeps.

``Run.report()`` makes one; the stages after it add their part with ``model_copy(update=...)``
(the save its ``version``, ``status`` and ``replaces``, the keep policy ``pruned``, a check
``gate``, the advice ``retrain``). ``to_json()`` is the report as printed and written: the
keys the run set, in this order, and ``schema_version`` first. A key no stage set (a report
that saved nothing has no ``replaces``) is left out, as before the report was typed.

The schema version is ``schema_version``: every report written so far is version 1. Reports
before it was written (retain up to 1fceb46) lack it, and the oldest lack the fields marked
"since" below (``rejects``, ``samples``, ``precision``): they read, with the default. Keys this
retain does not know (a newer retain's, a third-party writer's) are kept as they are
(``extra="allow"``: ``model_extra``) and written back unchanged, never refused; a newer
``schema_version`` is refused by name. What a plugin fills in (a validator's ``numbers``, a
strategy's ``counts``, a deduper's ``skipped`` details) stays open: its odd value must never
fail the save of a trained run. A report on disk is read strictly (a string is not a number);
one that does not fit is one ``ModelError`` naming the version and the field (``read_report``):
``retain report`` stops with it, ``retain history`` leaves that version's learning rate out and goes on.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from retain.core.errors import ModelError

SCHEMA_VERSION = 1
REPORT = "report.json"

Scalar = bool | int | float | str | None  # a union keeps each value's own type (True stays True)


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class RejectKind(_Part):
    kind: str
    count: int


class Rejects(_Part):
    """How many records were rejected, by kind, and the first few whole (``ingest.rejects_summary``)."""

    count: int
    kinds: list[RejectKind] = []
    first: list[dict[str, Any]] = []   # Reject.to_json: reason, source, file, line, excerpt


class Samples(_Part):
    """The gate's prompts, generated from before and after (``evaluation.sample_generation``)."""

    prompts: list[str] = []
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    before: list[str] | None = None
    after: list[str] | None = None
    before_error: str | None = None
    after_error: str | None = None


class VerdictEntry(_Part):
    """One validator's verdict (``Verdict.to_json``). What a validator plugin fills in is open
    (``numbers``, its own; ``reason``, ``remedy``): its odd value never fails a trained run's save."""

    validator: str
    status: str                        # pass, warn, fail
    reason: str | None = ""
    numbers: dict[str, Any] = {}
    remedy: str | None = ""
    seconds: float | None = None


class NextStep(_Part):
    step: str
    validators: list[str] = []
    status: str | None = None


class EpochJudged(_Part):
    """Early stopping's record of one epoch (``early_stopping.Epoch``)."""

    epoch: int
    new_loss: float | None = None
    retention_loss: float | None = None
    passed: bool | None = None
    failed: list[str] = []
    train_loss: float | None = None
    retention_items: int | None = None


class EarlyStopping(_Part):
    epochs: list[EpochJudged] = []
    best_epoch: int | None = None
    stopped: str = ""


class PrecisionChoice(_Part):
    """``precision: auto``'s choice (``core/runtime/precision.py``), or the precision asked for."""

    asked: str
    chose: str
    why: str = ""
    speedup: float | None = None       # fp32 step time / bf16 step time, where measured
    batch: list[int] | None = None     # the measured batch: rows x tokens
    cached: str | None = None
    seconds: float = 0.0


class UpdateReport(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    # Written by every report (Run.report), in this order; those marked "since" are absent from
    # the oldest ones.
    run: str | None = None             # the run's id, also in rejects.jsonl
    kind: str | None = None            # full_training, fine_tuning, import
    model_dir: str | None = None
    parent: str | None = None
    counts: dict[str, Any] = {}   # collected, new, trained, holdout, tokens, bytes; open: a strategy adds its own
    skipped: list[dict[str, Any]] = []    # the duplicates (up to 1,000): deduper, origin, reason, a deduper's own
    rejects: Rejects | None = None        # since: the rejected records (older: read back from rejects.jsonl)
    samples: Samples | None = None        # since: generations before and after
    epoch_losses: list[float] = []
    metrics: dict[str, Scalar] = {}       # losses before/after, items scored, drift: open to validators
    verdicts: list[VerdictEntry] = []
    next_steps: list[NextStep] = []
    oom_retries: list[dict[str, Any]] = []  # each out-of-memory retry: batch sizes, the step
    timings: dict[str, float] = {}        # seconds per step
    settings: dict[str, Any] | None = None  # the TrainSettings trained with (strategies add fields)
    strategies: list[str] = []
    parameters: dict[str, int] = {}       # total, trainable
    source: dict[str, Any] | None = None  # an import's origin: path, format, family, sha256
    early_stopping: EarlyStopping | None = None
    search: dict[str, Any] | None = None  # --auto: budget, trials, winner, recipe (or the plan)
    precision: PrecisionChoice | None = None  # since
    version: str | None = None
    status: str | None = None             # accepted, rejected, nothing_new, dry_run, check
    # Set by the stages after Run.report, only where they ran.
    replaces: str | None = None           # commit of a new lineage: the version it replaced
    pruned: dict[str, Any] | None = None  # the keep policy's pruning after the save
    gate: Literal["accepted", "rejected"] | None = None  # a check: what the gate would do
    retrain: dict[str, Any] | None = None  # advise: full retrain or fine-tune (or its error)

    def to_json(self) -> dict[str, Any]:
        """The report as ``--json`` prints it and ``report.json`` keeps it."""
        return {"schema_version": SCHEMA_VERSION, **self.model_dump(exclude_unset=True)}


def read_report(data: Any, version: str) -> UpdateReport:
    """``data`` (a parsed report.json) as an ``UpdateReport``, or the ``ModelError`` saying what is wrong.
    Strict: JSON's types as written (a string is not a number)."""
    if not isinstance(data, dict):
        raise ModelError(f"version {version}: {REPORT} is not an object")
    schema = data.get("schema_version", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ModelError(f"version {version}: {REPORT} has schema version {schema!r}, which this retain cannot "
                         f"read (it reads {SCHEMA_VERSION}): a newer retain wrote it")
    try:
        return UpdateReport.model_validate({k: v for k, v in data.items() if k != "schema_version"}, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in _in_data(data, error["loc"])).lstrip(".")
        raise ModelError(f"version {version}: {REPORT} field '{where}' is invalid ({error['msg']}, "
                         f"got {type(error['input']).__name__})") from None


def _in_data(data: Any, loc: tuple) -> list:
    """The part of an error's location that is in the report, and a missing key of an object in it
    (pydantic adds a union member's name, ``metrics.drift_after.bool``: not the report's)."""
    path = []
    for key in loc:
        found = isinstance(data, dict) and key in data or isinstance(data, list) and isinstance(key, int)
        if not found:
            return path + [key] if isinstance(data, dict) else path
        path.append(key)
        data = data[key]
    return path


def parse_report(text: str, version: str) -> UpdateReport:
    """A version's report.json as written (``read_report``); text that is not JSON is a ``ModelError`` too."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"version {version}: {REPORT} is not valid JSON ({exc})") from None
    return read_report(data, version)
