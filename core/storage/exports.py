"""``retain export``: a version as a serving stack loads it.

    --format hf   a directory that ``AutoModelForCausalLM.from_pretrained(OUT)`` and
                  ``AutoTokenizer.from_pretrained(OUT)`` load: an hf model as it is, the
                  built-in gpt as transformers' GPT-2; LoRA adapters merged (loading a
                  version merges them)

The family writes the files (its optional ``export``) into a temporary folder
beside ``OUT``, renamed into place when complete: ``OUT`` is never half written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from retain.core.contracts import ExportsModels
from retain.core.errors import ConfigError, ModelError, UsageError
from retain.core.storage.models import family, load_version, model_entry
from retain.core.pluginmanager import Registry
from retain.core.storage.versions import normalize_version
from retain.core.storage.store import ModelStore, now_iso

FORMATS = ("hf",)
RECEIPT = "retain_export.json"  # where the export came from: model directory, version, manifest


def export_version(store: ModelStore, version: str | None, fmt: str, out: Path, registry: Registry) -> dict:
    """Write ``version`` (default: current) of ``store`` to ``out`` in ``fmt``; returns what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not empty; export into a new directory")
    version = normalize_version(version) if version else store.current()
    manifest = store.manifest(version)
    if manifest.get("status") != "accepted":
        raise ModelError(f"version {version} was {manifest.get('status')} by the quality gate; export an "
                         "accepted version")
    entry = model_entry(manifest)
    fam = family(registry, entry["family"])
    if not isinstance(fam, ExportsModels):
        raise ModelError(f"version {version} is a '{entry['family']}' model, and that family cannot export "
                         f"(it has no export): its architecture is code retain does not know")
    lm = load_version(store, version, registry=registry).lm
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fam.export(lm, tmp, fmt)
        receipt = {"model_dir": str(store.root.resolve()), "version": version, "family": entry["family"],
                   "format": fmt, "adapter_merged": bool(entry.get("adapter")), "exported_at": now_iso(),
                   "manifest_sha256": _manifest_digest(store, version)}
        (tmp / RECEIPT).write_text(json.dumps(receipt, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**receipt, "out": str(out), "files": sorted(p.name for p in out.iterdir())}


def _manifest_digest(store: ModelStore, version: str) -> str:
    from retain.core.storage.store import MANIFEST, sha256_file

    return sha256_file(store.versions_dir / version / MANIFEST)
