"""What is installed and how it is configured: ``plugins``, ``strategies``, ``config``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import app, handle_errors, _console, _emit_json, ConfigOpt, json_option


@app.command()
@handle_errors
def plugins(json_out: bool = json_option("the list of plugins (name, package, hooks, provides, and for "
                                         "sources whether each streams)", "array")):
    """List every registered plugin, its package and the hooks it implements; a source that does not
    stream (it holds a whole location in memory) is marked so."""
    from retain.core.pluginmanager import default_plugin_manager, describe_plugins

    rows = describe_plugins(default_plugin_manager())
    if json_out:
        _emit_json(rows)
        return
    from retain.render import plugins_table

    _console(False).print(plugins_table(rows))


@app.command()
@handle_errors
def strategies(json_out: bool = json_option("the list of strategies (name, description, option defaults, "
                                            "plugin)", "array")):
    """List the anti-forgetting strategies with their options and defaults."""
    from retain.core.pluginmanager import Registry, default_plugin_manager

    regs = Registry.of(default_plugin_manager()).by_kind["strategies"].values()
    rows = [{"name": r.name, "description": r.description, "options": r.option_defaults(),
             "plugin": r.plugin} for r in sorted(regs, key=lambda r: r.name)]
    if json_out:
        _emit_json(rows)
        return
    from retain.render import strategies_table

    _console(False).print(strategies_table(rows))



@app.command("config")
@handle_errors
def show_config(config: Optional[Path] = ConfigOpt,
                set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
                model: Optional[Path] = typer.Option(None, "--model", "-m", help="Show this model's stored "
                                                     "config (its current version's), not a file's."),
                json_out: bool = json_option("the configuration")):
    """Print the effective configuration (after overrides), as YAML, checked as `retain update` checks it.

    Every key and type, and every plugin it names (dedupers, preprocessors, validators, strategies, the
    model family, options.<name>) must be installed and take those options. `retain config > config.yaml`
    writes a file to start from."""
    from retain.core.config import config_from_dict, load_config
    from retain.core.pluginmanager import Registry, default_plugin_manager

    if model is not None and config is not None:
        raise typer.BadParameter("give --config or --model, not both", param_hint="--model")
    if model is not None:
        from retain.core.storage.store import ModelStore

        store = ModelStore(model)
        cfg = config_from_dict(store.manifest(store.current()).get("config") or {}, set_)
    else:
        cfg = load_config(config, set_)
    Registry.of(default_plugin_manager()).check_config(cfg)
    if json_out:
        _emit_json(cfg.to_dict())
        return
    import yaml

    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
