"""The ``mlflow`` logger: a run per training, update or import, and the Model Registry mirrored.

One experiment per model directory; in it one MLflow run per writing retain run, opened
when training starts (or, for an import without data, when its version is saved): the
recipe and counts as params, ``epoch/train_loss`` live with the epoch as step, then, once
the version is saved, every number of its report with the version number as step, the
gate's verdicts and the version as tags, and ``report.json`` (and any plot or page beside
it in the version folder) as artifacts. Names: ``plugins/loggers.py``, ``docs/tracking.md``.

The Model Registry mirrors the version registry: each accepted version becomes a model
version whose source is the version folder itself (no weights uploaded a second time),
tagged ``retain.version``, and the alias ``champion`` follows CURRENT, through updates,
retrains and ``retain rollback`` (the ``rolled_back`` event).

Where: ``options.mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store in
the model directory (``sqlite:///DIR/mlflow.db``; MLflow's file store is deprecated), with
artifacts in ``DIR/mlflow-artifacts``. A server that does not answer is given a few seconds
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` default to 2 and 10
here unless set), then the logger fails once, as a warning, and the run goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from retain.plugins.loggers import (MlflowOptions, epoch_scalars, params, tags, version_scalars,
                                    version_step)

CHAMPION = "champion"
VERSION_TAG = "retain.version"
BATCH = 100


class MlflowLogger:
    """One retain run (or one rollback) reported to MLflow."""

    def __init__(self, options: MlflowOptions):
        self.options = options
        self.client: Any = None
        self.model_dir: Path | None = None
        self.run_id: str | None = None
        self.epochs_logged = False  # live, as each epoch ended (not when the training ran elsewhere: --auto)

    # --- where ------------------------------------------------------------------------------
    def _connect(self, model_dir: Path) -> Any:
        if self.client is None:
            # a server that is down costs seconds, not MLflow's minutes of retries (the user's own
            # settings win)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            for name in ("mlflow.store.db.utils", "alembic"):  # "creating tables" is not news to the user
                logging.getLogger(name).setLevel(logging.WARNING)
            from mlflow import MlflowClient

            self.model_dir = Path(model_dir).resolve()
            uri = self.tracking_uri(self.model_dir)
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self.client

    def tracking_uri(self, model_dir: Path) -> str:
        return (self.options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{model_dir / 'mlflow.db'}")

    def _local_store(self) -> bool:
        return not (self.options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))

    def _experiment_id(self) -> str:
        name = self.options.experiment or str(self.model_dir)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.model_dir / "mlflow-artifacts").as_uri() if self._local_store() else None
        return self.client.create_experiment(name, artifact_location=location)

    def _registered_model(self) -> str:
        return self.options.registered_model or self.model_dir.name.replace(":", "_")

    # --- the run --------------------------------------------------------------------------
    def _start(self, run: Any) -> None:
        """The MLflow run of ``run``: the one it already has (``ModelTrainer.fine_tune`` trains,
        ``save_model`` saves, each in a run of the engine's), else a new one."""
        if self.run_id is not None or not run.writes:
            return
        client = self._connect(run.model_dir)
        experiment = self._experiment_id()
        found = client.search_runs([experiment], f"tags.`retain.run` = '{run.id}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.epochs_logged = bool(client.get_metric_history(self.run_id, "epoch/train_loss"))
            return
        created = client.create_run(experiment, run_name=f"{run.kind} {run.id}",
                                    tags={"retain.run": run.id, "retain.kind": run.kind,
                                          "retain.model_dir": str(self.model_dir)})
        self.run_id = created.info.run_id

    def update_started(self, run):
        self._start(run)

    def epoch_ended(self, run, epoch, loss):
        if self.run_id is not None:
            self.client.log_metric(self.run_id, "epoch/train_loss", float(loss), step=int(epoch))
            self.epochs_logged = True

    def update_finished(self, run, report):
        """The version is saved: its numbers, verdicts and report; the registry if accepted."""
        self._start(run)
        if self.run_id is None:  # a run that writes nothing
            return
        from mlflow.entities import Metric, Param, RunTag

        version, now = report.get("version"), _millis()
        step = version_step(version)
        metrics = [Metric(name, value, now, step) for name, value in version_scalars(report).items()]
        metrics += [Metric(name, value, now, epoch) for name, value, epoch in epoch_scalars(report, self.epochs_logged)]
        entries = [*metrics, *(Param(k, v[:6000]) for k, v in params(report).items()),
                   *(RunTag(k, v) for k, v in tags(report).items())]
        for start in range(0, len(entries), BATCH):  # MLflow takes at most 100 params or tags a call
            batch = entries[start:start + BATCH]
            self.client.log_batch(self.run_id, metrics=[e for e in batch if isinstance(e, Metric)],
                                  params=[e for e in batch if isinstance(e, Param)],
                                  tags=[e for e in batch if isinstance(e, RunTag)])
        folder = self.model_dir / "versions" / version if version else None  # the store's layout
        for path in sorted(folder.iterdir()) if folder is not None and folder.is_dir() else []:
            if path.name == "report.json" or path.suffix in (".png", ".svg", ".html"):
                self.client.log_artifact(self.run_id, str(path))
        finished, self.run_id = self.run_id, None
        self.client.update_run(finished, status="FINISHED", name=f"{version} {run.kind} {report.get('status')}")
        if self.options.register and report.get("status") == "accepted":
            self._champion(self._model_version(version, run_id=finished))

    def close(self, error):
        if self.run_id is not None:  # the command ended before the version was saved
            self.client.set_terminated(self.run_id, status="FAILED" if error is not None else "FINISHED")
            self.run_id = None

    # --- the registry -----------------------------------------------------------------------
    def _model_version(self, version: str, run_id: str | None = None) -> str:
        """The registered model version mirroring ``version``: found by its tag, else created
        with the version folder as its source."""
        name = self._registered_model()
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=f"retain model directory {self.model_dir}")
        for found in self.client.search_model_versions(f"name = '{name}'"):
            if found.tags.get(VERSION_TAG) == version:
                return found.version
        run_id = run_id or self._run_of(version)
        made = self.client.create_model_version(name, source=str(self.model_dir / "versions" / version),
                                                run_id=run_id, tags={VERSION_TAG: version})
        return made.version

    def _run_of(self, version: str) -> str | None:
        """The MLflow run that saved ``version``, if this experiment has it."""
        found = self.client.search_runs([self._experiment_id()], f"tags.`{VERSION_TAG}` = '{version}'",
                                        max_results=1)
        return found[0].info.run_id if found else None

    def _champion(self, model_version: str) -> None:
        self.client.set_registered_model_alias(self._registered_model(), CHAMPION, model_version)

    def rolled_back(self, model_dir, previous, current, repaired):
        """``retain rollback``: the alias ``champion`` moves to the model version of ``current``."""
        if not self.options.register:
            return
        self._connect(model_dir)
        self._champion(self._model_version(current))


def _millis() -> int:
    import time

    return int(time.time() * 1000)
