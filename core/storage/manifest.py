"""A version's ``manifest.json``, typed: what it holds, and what every retain so far has written.

The schema version is ``format``. Every manifest written so far is format 1: the first (the
foundation's) wrote the fields of the first group below; later releases added the optional
ones of the second group, so an older manifest lacks them and still reads. Fields a later
retain adds are kept as they are (``extra="allow"``), never refused: the format changes only
when a field changes meaning. A manifest that does not fit is one ``ModelError`` naming the
version and the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from retain.core.errors import ModelError

FORMAT = 1
MANIFEST = "manifest.json"


def _version_name(name: str) -> str:
    """A sibling folder's name: not empty, no path, not a hidden or temporary entry."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid version name {name!r}")
    return name


VersionName = Annotated[str, AfterValidator(_version_name)]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    # Written by every format-1 manifest.
    format: Literal[1]
    files: dict[str, str]            # each file of the version (relative path) -> its sha256
    version: str | None = None
    parent: VersionName | None = None
    kind: str | None = None          # full_training, fine_tuning, import
    status: str | None = None        # accepted, rejected
    created_at: str | None = None
    architecture: dict[str, Any] | None = None
    config: dict[str, Any] | None = None   # the config the version was made with (Config.to_dict)
    counts: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    epoch_losses: list[Any] = []
    verdicts: list[dict[str, Any]] = []
    strategies: list[str] = []
    timings: dict[str, Any] = {}
    data_hash: str | None = None
    run: str | None = None
    replaces: Any = None
    # Added since: absent from older manifests.
    model: dict[str, Any] | None = None    # the model family's entry (before families: architecture only)
    settings: dict[str, Any] | None = None  # the TrainSettings the run trained with
    precision: str | None = None
    precision_choice: dict[str, Any] | None = None  # precision: auto's choice (asked, chose, why, ...)
    source: dict[str, Any] | None = None    # an import's origin
    search: dict[str, Any] | None = None    # --auto: the winning recipe
    retention: dict[str, Any] | None = None  # the retention pool kept with the version
    holdout_scored: dict[str, Any] | None = None
    shared_with_parent: list[str] = []      # files hard-linked to the parent's identical ones
    pruned: dict[str, Any] | None = None    # a stub: when prune removed its weights, and which files

    @property
    def builds_on(self) -> str | None:
        """The version an adapter-only version's weights apply to."""
        builds_on = (self.model or {}).get("builds_on")
        return builds_on if isinstance(builds_on, str) else None


def read_manifest(data: Any, version: str) -> Manifest:
    """``data`` (a parsed manifest.json) as a ``Manifest``, or the ``ModelError`` saying what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"version {version}: unknown manifest format")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = error["loc"][0]
        if field == "files":
            raise ModelError(f"version {version}: {MANIFEST} has no valid file checksums") from None
        if field == "parent":
            raise ModelError(f"version {version}: {MANIFEST} names an invalid parent {data['parent']!r}") from None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        raise ModelError(f"version {version}: {MANIFEST} field '{where}' is invalid ({error['msg']}, "
                         f"got {type(error['input']).__name__})") from None
