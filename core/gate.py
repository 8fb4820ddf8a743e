"""Step 7, the quality gate: every configured validator judges the candidate.

Any ``fail`` rejects it (the version is kept as rejected, CURRENT stays);
the remedies of failing and warning validators become the report's next steps.
"""

from __future__ import annotations

from .advice import next_steps
from .config import Config
from .errors import PluginError
from .pluginmanager import Registry
from .validation import Evidence, Verdict


def run_validators(registry: Registry, config: Config, evidence: Evidence) -> list[Verdict]:
    """The verdicts of ``config.validators``, in order; a validator that raises is a PluginError."""
    verdicts = []
    for name in config.validators:
        validator = registry.build("validators", name, config)
        try:
            verdict = validator.validate(evidence)
        except Exception as exc:
            raise PluginError(f"validator '{name}' failed: {type(exc).__name__}: {exc}") from exc
        verdict.validator = verdict.validator or name
        verdicts.append(verdict)
    return verdicts


def failed(verdicts: list[Verdict]) -> list[str]:
    return [v.validator for v in verdicts if v.status == "fail"]


def judge(registry: Registry, config: Config, evidence: Evidence,
          oom_retries: list[dict] | None = None) -> tuple[list[Verdict], list[dict]]:
    """(verdicts, next steps) for a candidate."""
    verdicts = run_validators(registry, config, evidence)
    return verdicts, next_steps(verdicts, oom_retries)
