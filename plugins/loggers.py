"""Built-in loggers: every writing run (train, update, import) reported to a tracker.

    mlflow       a run per training, update or import in one experiment per model directory;
                 the versions mirrored onto MLflow's Model Registry (pip install 'retain[mlflow]')
    tensorboard  a SummaryWriter under the model directory (pip install 'retain[tensorboard]')

Chosen with ``loggers: [mlflow, tensorboard]`` in the config or ``--log-to mlflow,tensorboard``.
Both log the same names, one scheme (``docs/tracking.md``): Avalanche's path-like keys,
``epoch/...`` with the epoch as step, everything else with the version number as step, so a
year of daily versions plots as curves. The scheme is here, in plain Python; the trackers'
own code is in ``mlflow_logger.py`` and ``tensorboard_logger.py``, imported only when chosen
(``import retain`` and a run without loggers never import mlflow or tensorboard).

The version folder's ``report.json`` stays the source of truth: a logger that fails is a
warning (``core/loggers.py``), never a failed update.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from typing import Any

from retain.core.errors import ConfigError
from retain.core.hookspecs import hookimpl

# The report's metrics (``run.metrics``) under the scheme's names; any other number of them
# is logged as ``metrics/<key>``.
METRIC_NAMES = {
    "retention_loss_before": "retention/loss/before", "retention_loss_after": "retention/loss/after",
    "new_loss_before": "learning/loss/before", "new_loss_after": "learning/loss/after",
    "retention_items": "retention/items", "new_holdout_items": "learning/items",
    "drift_loss_baseline": "drift/loss/baseline", "drift_loss_before": "drift/loss/before",
    "drift_loss_after": "drift/loss/after", "drift_before": "drift/before", "drift_after": "drift/after",
    "drift_items": "drift/items",
    # the same losses as drift/loss/after and drift/loss/baseline, under the gate's older names
    "base_holdout_loss": None, "base_holdout_baseline": None, "base_holdout_items": None,
}
# early stopping's record of each epoch (``report["early_stopping"]["epochs"]``)
EPOCH_NAMES = {"new_loss": "epoch/learning/loss", "retention_loss": "epoch/retention/loss"}
STATUS_VALUES = {"pass": 1.0, "warn": 0.5, "fail": 0.0}


def version_step(version: str | None) -> int:
    """The version's number, the step of everything logged per version ("0003" -> 3)."""
    return int(version) if version and version.isdigit() else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _key(*parts: str) -> str:
    """A path-like name every tracker accepts (MLflow: letters, digits, ``_-./`` and spaces):
    a plugin's own names (a validator's numbers) may hold anything."""
    return "/".join(re.sub(r"[^\w\-. ]", "_", str(part)) for part in parts)


def version_scalars(report: dict) -> dict[str, float]:
    """What a saved version is measured by, as ``{name: value}`` (step: ``version_step``)."""
    out: dict[str, float] = {}
    for key, value in (report.get("metrics") or {}).items():
        name = METRIC_NAMES.get(key, _key("metrics", key))
        if name is not None and _number(value) is not None:
            out[name] = _number(value)
    for verdict in report.get("verdicts") or []:
        out[_key("validator", verdict["validator"], "status")] = STATUS_VALUES.get(verdict.get("status"), 0.0)
        for key, value in (verdict.get("numbers") or {}).items():
            if _number(value) is not None:
                out[_key("validator", verdict["validator"], key)] = _number(value)
    for key, value in (report.get("counts") or {}).items():
        if _number(value) is not None:
            out[_key("counts", key)] = _number(value)
    for step, seconds in (report.get("timings") or {}).items():
        if _number(seconds) is not None:
            out[_key("time", step)] = _number(seconds)
    if report.get("status") in ("accepted", "rejected"):
        out["gate/accepted"] = 1.0 if report["status"] == "accepted" else 0.0
    return out


def epoch_scalars(report: dict, train_loss_logged: bool = True) -> list[tuple[str, float, int]]:
    """The held-out losses early stopping measured after each epoch: ``(name, value, epoch)``;
    ``epoch/train_loss`` too unless it was logged live, as each epoch ended (a search's
    trials train in processes of their own)."""
    out = [] if train_loss_logged else [("epoch/train_loss", float(loss), epoch)
                                        for epoch, loss in enumerate(report.get("epoch_losses") or [], 1)]
    for row in (report.get("early_stopping") or {}).get("epochs") or []:
        for key, name in EPOCH_NAMES.items():
            if _number(row.get(key)) is not None:
                out.append((name, _number(row[key]), int(row["epoch"])))
    return out


def params(report: dict) -> dict[str, str]:
    """The recipe and the counts: what the run was asked to do, and on what."""
    settings = report.get("settings") or {}
    search = report.get("search") or {}
    out = {"kind": report.get("kind"), "parent": report.get("parent") or "-",
           "strategies": ",".join(report.get("strategies") or []) or "-",
           "recipe": search.get("describe") or ",".join(report.get("strategies") or []) or "-",
           "precision": (report.get("precision") or {}).get("chose")}
    out.update({key: settings.get(key) for key in ("learning_rate", "learning_rate_from", "epochs", "batch_size",
                                                    "max_seq_length", "schedule", "warmup_fraction",
                                                    "warmup_steps", "weight_decay", "grad_clip")
                if key in settings})
    out.update({_key("counts", key): value for key, value in (report.get("counts") or {}).items()})
    return {key: str(value) for key, value in out.items() if value is not None}


def tags(report: dict) -> dict[str, str]:
    """The version, what the gate said, and each validator's verdict."""
    out = {"retain.version": report.get("version"), "retain.status": report.get("status"),
           "retain.kind": report.get("kind"), "retain.parent": report.get("parent") or "-",
           "retain.run": report.get("run")}
    out.update({_key("verdict", v["validator"]): v.get("status") for v in report.get("verdicts") or []})
    return {key: str(value) for key, value in out.items() if value is not None}


# --- the two trackers -----------------------------------------------------------------------

@dataclass
class MlflowOptions:
    # "" : MLFLOW_TRACKING_URI if set, else a SQLite store in the model directory
    # (sqlite:///DIR/mlflow.db, artifacts in DIR/mlflow-artifacts)
    tracking_uri: str = ""
    experiment: str = ""        # "": the model directory's absolute path (one experiment per directory)
    registered_model: str = ""  # "": the model directory's name
    register: bool = True       # mirror accepted versions onto the Model Registry, alias champion on current


@dataclass
class TensorboardOptions:
    log_dir: str = ""           # "": DIR/tensorboard


def _needs(module: str, extra: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"the {name} logger needs {module}: pip install 'retain[{extra}]'")


def mlflow_logger(options: MlflowOptions):
    """MLflow: a run per training, update or import; versions mirrored onto the Model Registry."""
    _needs("mlflow", "mlflow", "mlflow")
    from retain.plugins.mlflow_logger import MlflowLogger

    return MlflowLogger(options)


def tensorboard_logger(options: TensorboardOptions):
    """TensorBoard: the same scalars, in event files under the model directory."""
    _needs("tensorboard", "tensorboard", "tensorboard")
    from retain.plugins.tensorboard_logger import TensorboardLogger

    return TensorboardLogger(options)


@hookimpl
def register_loggers(register):
    register("mlflow", mlflow_logger, options=MlflowOptions)
    register("tensorboard", tensorboard_logger, options=TensorboardOptions)
