"""The loggers a run reports to (``loggers: [mlflow, tensorboard]``), behind one listener.

Trackers are observers, and fallible ones (a server down, a full disk on another host):
nothing they do may fail an update. ``Loggers`` is registered on the plugin manager for
the length of a run, hears every event hook, and passes each to the loggers that have a
method of the hook's name, with the arguments that method takes. A logger that raises is
told once as a warning and hears nothing more in that run; the version, its report and
the exit code are what they would have been without it. ``close(error)`` ends each
logger's run when the command ends, however it ends.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from retain.core.config import Config
from retain.core.hookspecs import hookimpl


class Loggers:
    """The listener in front of the run's loggers (``name -> logger``)."""

    def __init__(self, loggers: dict[str, Any], warn: Callable[[Any, str], None]):
        """``warn(run, message)``: how a logger's failure is told (the ``warning_raised`` event)."""
        self.loggers = dict(loggers)
        self.warn = warn
        self.failed: set[str] = set()

    @classmethod
    def of(cls, registry: Any, config: Config, warn: Callable[[Any, str], None]) -> "Loggers":
        """A fresh logger for each of ``config.loggers`` (its options from ``config.options``)."""
        return cls({name: registry.build("loggers", name, config) for name in config.loggers}, warn)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _tell(self, hook: str, run: Any, **kwargs: Any) -> None:
        for name, logger in self.loggers.items():
            method = getattr(logger, hook, None)
            if name in self.failed or not callable(method):
                continue
            try:
                method(**_accepted(method, {"run": run, **kwargs}))
            except Exception as exc:  # a tracker never fails the run: said once, then left out
                self._fail(name, hook, exc, run)

    def _fail(self, name: str, where: str, exc: Exception, run: Any) -> None:
        self.failed.add(name)
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.warn(run, f"logger '{name}' failed in {where} ({type(exc).__name__}: {said}); it logs nothing "
                       "more in this run, which goes on: the version and its report.json are unaffected")

    def close(self, error: BaseException | None = None, run: Any = None) -> None:
        """End every logger's run (each told how the command ended), even one that failed."""
        for name, logger in self.loggers.items():
            try:
                logger.close(error)
            except Exception as exc:
                if name not in self.failed:
                    self._fail(name, "close", exc, run)

    # --- the event hooks, passed on ------------------------------------------------------------
    @hookimpl
    def update_started(self, run):
        self._tell("update_started", run)

    @hookimpl
    def step_started(self, run, step):
        self._tell("step_started", run, step=step)

    @hookimpl
    def step_finished(self, run, step, info, seconds):
        self._tell("step_finished", run, step=step, info=info, seconds=seconds)

    @hookimpl
    def training_progress(self, run, epoch, epochs, step, steps, loss):
        self._tell("training_progress", run, epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss)

    @hookimpl
    def epoch_ended(self, run, epoch, loss):
        self._tell("epoch_ended", run, epoch=epoch, loss=loss)

    @hookimpl
    def verdicts_given(self, run, verdicts, next_steps):
        self._tell("verdicts_given", run, verdicts=verdicts, next_steps=next_steps)

    @hookimpl
    def update_finished(self, run, report):
        self._tell("update_finished", run, report=report)

    @hookimpl
    def advice_given(self, run, assessment):
        self._tell("advice_given", run, assessment=assessment)

    @hookimpl
    def warning_raised(self, run, message):
        self._tell("warning_raised", run, message=message)

    @hookimpl
    def rolled_back(self, model_dir, previous, current, repaired):
        self._tell("rolled_back", None, model_dir=model_dir, previous=previous, current=current, repaired=repaired)


def _accepted(method: Callable, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``method`` takes, by name (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return arguments
    return {k: v for k, v in arguments.items() if k in parameters}


def rollback_loggers(registry: Any, stored: list[dict | None], warn: Callable[[Any, str], None]) -> Loggers:
    """The loggers a rollback tells: those of the first config in ``stored`` (the configs the
    versions involved were made with, as their manifests keep them) that reads."""
    from retain.core.config import config_from_dict
    from retain.core.errors import ConfigError, PluginError

    for data in stored:
        if not isinstance(data, dict):
            continue
        try:
            config = config_from_dict(data)
            return Loggers.of(registry, config, warn)
        except (ConfigError, PluginError) as exc:  # a config of another retain, a logger gone
            warn(None, f"the loggers of the model's config cannot be told of the rollback: {exc}")
            return Loggers({}, warn)
    return Loggers({}, warn)
