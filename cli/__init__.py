"""The ``retain`` command line. User errors become one red line and an exit code here, only here.

One module per command group, in the order ``retain --help`` lists them:

- ``cycle.py``: train, update, import, export, demo (the update cycle and what goes in and out)
- ``plugins.py``: plugins, strategies, config (what is installed, how it is configured)
- ``compare.py``: compare (strategies side by side)
- ``versions.py``: status, history, report, rollback, validate, generate, prune (the version store)

``common.py`` holds what every command shares (the app, ``handle_errors``, the options);
tables and event rendering live in ``retain/render.py``; Ctrl-C and the process's ending in
``retain/launch.py``.
"""

from __future__ import annotations

from .common import app, handle_errors  # noqa: F401  (the app every group registers on)
from . import cycle, plugins, compare, versions  # noqa: E402,F401  (registers their commands, in this order)


def main() -> None:
    from retain.launch import Ending, install, quiet_library_warnings, quiet_when_stdout_closes

    install()  # already done by the console script; here for `python -m retain.cli`
    quiet_library_warnings()
    quiet_when_stdout_closes()
    Ending().run(app)
