"""The pluggy plugin manager and the registry of what plugins register.

Every registration is checked against its kind's contract (``core/contracts.py``) once all
plugins have registered: a factory that is a class, or a function annotated with the class
it returns, must have every method of the protocol (a model family's ``create`` and ``load``,
when annotated, must make a class with every method of ``LanguageModel``). A factory that
cannot be seen through (a lambda) is checked on the object it returns, when first built.
Either way the ``PluginError`` names the plugin and what is missing, before any call fails.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, is_dataclass, MISSING
from typing import Any, Callable

import pluggy

from retain.core import contracts, hookspecs
from retain.core.config import Config, plugin_options
from retain.core.errors import ConfigError, PluginError
from retain.core.learning.strategy import Strategy

KINDS = ("sources", "preprocessors", "dedupers", "strategies", "validators", "models", "scenarios", "loggers")
_SINGULAR = {"sources": "source", "preprocessors": "preprocessor", "dedupers": "deduper",
             "strategies": "strategy", "validators": "validator", "models": "model family",
             "scenarios": "scenario", "loggers": "logger"}
# The keywords beyond name/factory/options/description each kind understands.
EXTRA_KEYWORDS = {"sources": {"suffixes", "folder_markers"}}
# What the object each kind's factory returns must provide.
CONTRACTS: dict[str, type] = {
    "sources": contracts.Source, "preprocessors": contracts.Preprocessor, "dedupers": contracts.Deduper,
    "strategies": Strategy, "validators": contracts.Validator, "models": contracts.ModelFamily,
    "scenarios": contracts.Scenario, "loggers": contracts.Logger}
# The family methods that make a LanguageModel (a return annotation on them is checked too).
MAKES_MODELS = ("create", "load", "renew", "import_model")


@dataclass
class Registration:
    kind: str
    name: str
    factory: Callable[[Any], Any]
    options: type | None
    description: str
    plugin: str
    extra: dict = field(default_factory=dict)

    def option_defaults(self) -> dict[str, Any]:
        if self.options is None or not is_dataclass(self.options):
            return {}
        out = {}
        for f in fields(self.options):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
        return out


class Registry:
    """Everything plugins registered, by kind and name.

    Built once per plugin manager (``Registry.of(pm)``): the registration hooks
    run once per process, not once per engine or command.
    """

    @classmethod
    def of(cls, pm: pluggy.PluginManager) -> "Registry":
        registry = getattr(pm, "_retain_registry", None)
        if registry is None:
            registry = cls(pm)
            pm._retain_registry = registry  # type: ignore[attr-defined]
        return registry

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.by_kind: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        for kind in KINDS:
            hook = getattr(pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                impl.function(register=self._registrar(kind, plugin_name))
        for table in self.by_kind.values():  # once all registered: a name taken twice is said first
            for reg in table.values():
                self._check_factory(reg)

    def _check_factory(self, reg: Registration) -> None:
        made = contracts.produced_class(reg.factory)
        if made is None:
            return
        _refuse(reg, f"its factory's class {made.__name__}", contracts.missing(CONTRACTS[reg.kind], made),
                CONTRACTS[reg.kind])
        for method in MAKES_MODELS if reg.kind == "models" else ():
            model = contracts.produced_class(getattr(made, method)) if hasattr(made, method) else None
            if model is not None:
                _refuse(reg, f"{made.__name__}.{method} makes {model.__name__}, which",
                        contracts.missing(contracts.LanguageModel, model), contracts.LanguageModel)

    def check_model(self, family: str, lm: Any) -> Any:
        """``lm``, the model ``family`` made, if it has what a ``LanguageModel`` must (PluginError)."""
        _refuse(self.get("models", family), f"the model it made ({type(lm).__name__})",
                contracts.missing(contracts.LanguageModel, lm), contracts.LanguageModel)
        return lm

    def _registrar(self, kind: str, plugin_name: str):
        def register(name: str, factory: Callable, *, options: type | None = None,
                     description: str = "", **extra: Any) -> None:
            table = self.by_kind[kind]
            unknown = sorted(set(extra) - EXTRA_KEYWORDS.get(kind, set()))
            if unknown:
                allowed = sorted({"options", "description"} | EXTRA_KEYWORDS.get(kind, set()))
                raise PluginError(f"plugin '{plugin_name}' registered {_SINGULAR[kind]} '{name}' with "
                                  f"unknown keyword(s) {', '.join(unknown)} (a {_SINGULAR[kind]} takes: "
                                  f"{', '.join(allowed)})")
            if name in table:
                raise PluginError(f"{_SINGULAR[kind]} '{name}' is registered twice: by "
                                  f"'{table[name].plugin}' and by '{plugin_name}'")
            if not description:
                doc = inspect.getdoc(factory) or ""
                description = doc.splitlines()[0] if doc else ""
            table[name] = Registration(kind, name, factory, options, description, plugin_name, extra)
        return register

    def get(self, kind: str, name: str, key: str = "") -> Registration:
        """``name``'s registration; ``key``: the config key that named it, for the error."""
        table = self.by_kind[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            where = f" in config key '{key}'" if key else ""
            raise PluginError(f"unknown {_SINGULAR[kind]} '{name}'{where} (known: {known}); "
                              "`retain plugins` lists what is installed")
        return table[name]

    def check_config(self, config: Config) -> None:
        """Every plugin the config names is installed and every ``options.<name>`` block fits
        its plugin's options, before any work starts (PluginError / ConfigError)."""
        for kind, names in (("dedupers", config.dedupers), ("preprocessors", config.preprocessors),
                            ("validators", config.validators), ("strategies", config.fine_tuning.strategy),
                            ("strategies", config.full_training.record), ("models", [config.model.family])):
            for name in names:
                self.get(kind, name)
        for name in config.loggers:
            self.get("loggers", name, key="loggers")
        for name in config.options:
            regs = [table[name] for table in self.by_kind.values() if name in table]
            if not regs:
                known = ", ".join(sorted({n for table in self.by_kind.values() for n in table}))
                raise ConfigError(f"config key 'options.{name}': no installed plugin is named "
                                  f"'{name}' (installed: {known})")
            # One name may be several kinds of plugin (the "text" source and scenario): the
            # options are for those that take options.
            for reg in [r for r in regs if r.options is not None] or regs[:1]:
                plugin_options(config, name, reg.options)

    def build(self, kind: str, name: str, config: Config | None) -> Any:
        """An instance from ``name``'s factory, with its options from ``config`` (defaults
        when ``config`` is None)."""
        reg = self.get(kind, name)
        if config is None:
            opts = reg.options() if reg.options is not None else None
        else:
            opts = plugin_options(config, name, reg.options)
        try:
            obj = reg.factory(opts)
        except Exception as exc:  # a third-party factory failing is the plugin's error
            raise PluginError(f"{_SINGULAR[kind]} '{name}' (from plugin '{reg.plugin}') failed to "
                              f"start: {type(exc).__name__}: {exc}") from exc
        if getattr(obj, "name", None) in (None, ""):
            try:
                obj.name = name
            except AttributeError:
                pass
        _refuse(reg, f"what its factory built ({type(obj).__name__})", contracts.missing(CONTRACTS[kind], obj),
                CONTRACTS[kind])
        return obj


def _refuse(reg: Registration, what: str, absent: list[str], contract: type) -> None:
    if absent:
        raise PluginError(f"plugin '{reg.plugin}' registered {_SINGULAR[reg.kind]} '{reg.name}', but {what} "
                          f"has no {', '.join(absent)} (required by retain.plugin.{contract.__name__})")


_DEFAULT: pluggy.PluginManager | None = None


def default_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager with every installed plugin, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = make_plugin_manager()
    return _DEFAULT


def make_plugin_manager(load_entrypoints: bool = True, extra_plugins: list | None = None) -> pluggy.PluginManager:
    """A new plugin manager with the hookspecs, entry-point plugins and ``extra_plugins``
    (``default_plugin_manager()`` is the shared one)."""
    pm = pluggy.PluginManager("retain")
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints("retain")
        except Exception as exc:
            raise PluginError(f"a plugin in the 'retain' entry-point group failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
    for plugin in extra_plugins or []:
        pm.register(plugin)
    return pm


def source_streams(reg: Registration) -> bool:
    """Whether a source streams (reads in bounded pieces, as the contract asks): its ``streams``
    attribute, True unless it says otherwise (``streams = False``: it holds a whole location)."""
    made = contracts.produced_class(reg.factory)
    return bool(getattr(made if made is not None else reg.factory, "streams", True))


def describe_plugins(pm: pluggy.PluginManager) -> list[dict]:
    """Name, package, hooks and registrations of every plugin (for ``retain plugins``)."""
    dists = {id(p): d for p, d in pm.list_plugin_distinfo()}
    registry = Registry.of(pm)
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        dist = dists.get(id(plugin))
        package = f"{dist.project_name} {dist.version}" if dist else "(registered in code)"
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        provides = [f"{_SINGULAR[r.kind]}:{r.name}" for kind in KINDS
                    for r in registry.by_kind[kind].values() if r.plugin == name]
        streams = {r.name: source_streams(r) for r in registry.by_kind["sources"].values() if r.plugin == name}
        out.append({"name": name, "package": package, "hooks": hooks, "provides": provides,
                    **({"streams": streams} if streams else {})})
    return sorted(out, key=lambda d: (d["package"], d["name"]))
