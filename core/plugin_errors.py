"""Name the third-party plugin behind an exception that escapes an update.

The cycle wraps the steps it calls plugins for (sources, dedupers,
preprocessors, validators) itself; hooks (``training_penalty``,
``epoch_ended``, ...) and optional methods such as ``remember`` run deep
inside pluggy or avalanche-lib, so an exception from them is traced back
here to the plugin whose code raised it. Exceptions from retain's own code
are bugs and keep their traceback.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable

from retain.core.errors import PluginError, RetainError

_OWN = "retain."


def _owners(pm, registry=None) -> tuple[dict[int, str], dict[str, str]]:
    """Plugin objects by id, and plugin names by the module their code lives in."""
    by_object: dict[int, str] = {}
    by_module: dict[str, str] = {}
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        by_object[id(plugin)] = name
        by_module.setdefault(module, name)
    for table in (registry.by_kind.values() if registry is not None else ()):
        for reg in table.values():  # what a plugin's factories build lives in their modules
            by_module.setdefault(getattr(reg.factory, "__module__", None) or "", reg.plugin)
    return by_object, by_module


def blame(exc: BaseException, pm, registry=None) -> str | None:
    """The name of the plugin whose code raised ``exc`` (innermost frame first), or None."""
    by_object, by_module = _owners(pm, registry)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_OWN) or module == "retain":
            continue
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in by_object:
            return by_object[id(owner)]
        if module in by_module:
            return by_module[module]
    return None


def reports_plugin_errors(method: Callable) -> Callable:
    """Decorator of a cycle stage (``core/cycle.py``; its first argument has the plugin manager,
    ``pm``, and the ``registry``): an exception raised by a plugin becomes a PluginError naming it."""

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any):
        try:
            return method(self, *args, **kwargs)
        except RetainError:
            raise
        except Exception as exc:
            from retain.core.learning.retry import out_of_memory_error

            oom = out_of_memory_error(exc, "during the run")
            if oom is not None:
                raise oom from None
            name = blame(exc, self.pm, getattr(self, "registry", None))
            if name is None:
                raise
            raise PluginError(f"plugin '{name}' failed during the run: {type(exc).__name__}: {exc}") from exc

    return wrapper
