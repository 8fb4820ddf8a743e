"""``python -m retain.cli``: the command line, as the ``retain`` console script runs it."""

from retain.cli import main

main()
