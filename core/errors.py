"""User-facing errors. Each maps to one documented exit code in ``retain.cli``.

Raise these for anything the user can fix (a config key, a path, a plugin name);
anything else is a bug and keeps its traceback.
"""


class RetainError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code = 1
    kind = "internal"  # the "kind" of the --json error object


class UsageError(RetainError):
    """The command line itself is wrong (a ``--set`` without ``=``, an ``--out`` that is not
    empty): what click reports for a bad option, from code that runs after parsing."""

    exit_code = 2  # click's exit code for a command-line usage error
    kind = "usage"


class ConfigError(RetainError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""

    exit_code = 3
    kind = "config"


class SourceError(RetainError):
    """Input data cannot be read (missing file, unknown format, strict rejects), or was read
    and gave no usable item (every record rejected, or none at all) without ``--allow-empty``."""

    exit_code = 4
    kind = "data"


class ModelError(RetainError):
    """No model, or a model directory that cannot be loaded safely."""

    exit_code = 5
    kind = "model"


class PluginError(RetainError):
    """An unknown plugin name, or a plugin that failed while running."""

    exit_code = 6
    kind = "plugin"


class LockedError(RetainError):
    """Another process is writing to this model directory."""

    exit_code = 7
    kind = "locked"


class UpdateRejected(RetainError):
    """The quality gate rejected the candidate; the current model was kept.

    ``report`` is the run's report (verdicts, next steps), for ``--json``.
    """

    exit_code = 10
    kind = "rejected"

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


class OutOfMemory(RetainError):
    """Training ran out of memory even after halving the batch size down to 1."""

    exit_code = 11
    kind = "out_of_memory"


class StorageError(RetainError):
    """The model directory's disk refused a write or a read: full (ENOSPC), over quota
    (EDQUOT), read-only (EROFS) or failing (EIO). Whatever was being written was undone or left
    for ``recover``; the current model is unchanged."""

    exit_code = 12
    kind = "storage"


class Interrupted(RetainError):
    """Ctrl-C (SIGINT): the run stopped; what it left is what a kill leaves, tidied."""

    exit_code = 130  # 128 + SIGINT, what shells report for a process ended by Ctrl-C
    kind = "interrupted"


USAGE = UsageError.exit_code

EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: please report it with the traceback)",
    USAGE: "command-line usage error",
    ConfigError.exit_code: "invalid configuration",
    SourceError.exit_code: "input data cannot be read, or holds no usable item (--allow-empty: exit 0)",
    ModelError.exit_code: "model missing or unloadable",
    PluginError.exit_code: "unknown or failing plugin",
    LockedError.exit_code: "model directory locked by another writer",
    UpdateRejected.exit_code: "update rejected by the quality gate (current model kept); "
                              "also `retain validate` when a validator fails",
    OutOfMemory.exit_code: "out of memory even at batch size 1",
    StorageError.exit_code: "the disk refused a write (full, over quota, read-only) or failed; "
                            "the current model is unchanged",
    Interrupted.exit_code: "interrupted (Ctrl-C); the current model is unchanged",
}


def error_object(code: int, kind: str, message: str) -> dict:
    """What ``--json`` prints on stdout for a failed command (alone, or inside its report)."""
    return {"error": {"code": code, "kind": kind, "message": message}}
