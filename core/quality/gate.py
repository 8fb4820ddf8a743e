"""Step 7, the quality gate: every configured validator judges the candidate.

Any ``fail`` rejects it (the version is kept as rejected, CURRENT stays);
the remedies of failing and warning validators become the report's next steps.
"""

from __future__ import annotations

import time

from retain.core.quality.advice import next_steps
from retain.core.config import Config
from retain.core.errors import PluginError, UpdateRejected
from retain.core.pluginmanager import Registry
from retain.core.quality.validation import Evidence, Verdict
from retain.core.storage.report import UpdateReport


def judge_epoch(registry: Registry, config: Config, run, last: bool) -> tuple:
    """Early stopping's look at the model after an epoch: its scores and the verdicts of the
    validators that judge every epoch; after an epoch but the ``last``, on the part of the
    retention set the budget buys (``run.judged_items``)."""
    from retain.core.quality import evaluation

    scores = evaluation.score_candidate(run, None if last else run.judged_items)  # None: all
    _, evidence = evaluation.candidate_evidence(run, scores)
    return scores, run_validators(registry, config, evidence, each_epoch=True)


def run_validators(registry: Registry, config: Config, evidence: Evidence,
                   each_epoch: bool = False) -> list[Verdict]:
    """The verdicts of ``config.validators``, in order, each with its ``seconds``; a validator
    that raises is a PluginError. ``each_epoch``: early stopping's look after an epoch, which
    skips the validators that say ``each_epoch = False`` (they cost like a pass of training:
    the gate runs them once, on the epoch kept)."""
    verdicts = []
    for name in config.validators:
        validator = registry.build("validators", name, config)
        if each_epoch and not getattr(validator, "each_epoch", True):
            continue
        started = time.perf_counter()
        try:
            verdict = validator.validate(evidence)
        except Exception as exc:
            raise PluginError(f"validator '{name}' failed: {type(exc).__name__}: {exc}") from exc
        verdict.validator = verdict.validator or name
        verdict.seconds = time.perf_counter() - started
        verdicts.append(verdict)
    return verdicts


def failed(verdicts: list[Verdict]) -> list[str]:
    return [v.validator for v in verdicts if v.status == "fail"]


def judge(registry: Registry, config: Config, evidence: Evidence,
          oom_retries: list[dict] | None = None) -> tuple[list[Verdict], list[dict]]:
    """(verdicts, next steps) for a candidate."""
    verdicts = run_validators(registry, config, evidence)
    return verdicts, next_steps(verdicts, oom_retries)


def raise_if_rejected(report: UpdateReport, store) -> dict:
    """The gate's rejection as ``UpdateRejected`` (exit 10), once everything is said and saved;
    else the report as JSON, what the engine's callers get (the CLI prints it, the library returns it)."""
    out = report.to_json()
    failed_names = ", ".join(v.validator for v in report.verdicts if v.status == "fail")
    if report.status == "rejected":
        raise UpdateRejected(f"update rejected by the quality gate (failed: {failed_names}); report in "
                             f"{store.versions_dir / report.version / 'report.json'}; current model "
                             f"unchanged (version {report.parent})", out)
    if report.status == "check" and report.gate == "rejected":
        raise UpdateRejected(f"check: the quality gate would reject this update (failed: {failed_names}); "
                             "nothing was written", out)
    return out
