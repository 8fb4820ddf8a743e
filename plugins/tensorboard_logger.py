"""The ``tensorboard`` logger: the same scalars as ``mlflow``, in event files under the model directory.

Two kinds of TensorBoard run, so that both read as curves (``tensorboard --logdir DIR/tensorboard``):

    DIR/tensorboard/versions/                       one point per saved version, the version
                                                    number as step: retention/loss/after, ...
    DIR/tensorboard/runs/<UTC time>-<kind>-<run>/   one retain run's epochs, the epoch as step:
                                                    epoch/train_loss (live), epoch/learning/loss

The verdicts and the version are text summaries (``version/verdicts``) at the version's step.
Names: ``plugins/loggers.py``, ``docs/tracking.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from retain.plugins.loggers import TensorboardOptions, epoch_scalars, tags, version_scalars, version_step


class TensorboardLogger:
    """One retain run written as TensorBoard events."""

    def __init__(self, options: TensorboardOptions):
        self.options = options
        self.run_writer: Any = None
        self.epochs_logged = False  # live, as each epoch ended (not when the training ran elsewhere: --auto)

    def _root(self, model_dir: Path) -> Path:
        return Path(self.options.log_dir) if self.options.log_dir else Path(model_dir) / "tensorboard"

    def _writer(self, folder: Path) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(folder))

    def _run_writer(self, run: Any) -> Any:
        """The writer of ``run``'s folder: the one it already has (``ModelTrainer.fine_tune``
        trains, ``save_model`` saves, each in a run of the engine's), else a new one."""
        if self.run_writer is None and run.writes:
            runs = self._root(run.model_dir) / "runs"
            had = sorted(runs.glob(f"*-{run.kind}-{run.id}"))
            now = time.time()  # to the millisecond: a train and an update can start in the same second
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
            self.epochs_logged = bool(had)
            self.run_writer = self._writer(had[0] if had else runs / f"{stamp}-{run.kind}-{run.id}")
        return self.run_writer

    def update_started(self, run):
        self._run_writer(run)

    def epoch_ended(self, run, epoch, loss):
        if self.run_writer is not None:
            self.run_writer.add_scalar("epoch/train_loss", float(loss), int(epoch))
            self.epochs_logged = True

    def update_finished(self, run, report):
        writer = self._run_writer(run)
        if writer is None:  # a run that writes nothing
            return
        for name, value, epoch in epoch_scalars(report, self.epochs_logged):
            writer.add_scalar(name, value, epoch)
        step = version_step(report.get("version"))
        versions = self._writer(self._root(run.model_dir) / "versions")
        try:
            for name, value in version_scalars(report).items():
                versions.add_scalar(name, value, step)
            lines = [f"{key}: {value}" for key, value in tags(report).items()]
            versions.add_text("version/verdicts", "  \n".join(lines), step)
        finally:
            versions.close()

    def close(self, error):
        if self.run_writer is not None:
            self.run_writer.close()
            self.run_writer = None
