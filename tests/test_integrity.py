"""Integrity: a damaged or disguised model file is refused with a clear ModelError,
never loaded, never executed, and never a traceback from the CLI (exit code 5)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.storage.models import load_version
from retain.core.errors import ModelError
from retain.core.storage.store import ModelStore, sha256_file

V1 = Path("versions") / "0001"


class _Trap:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rehash(model: Path, rel: str) -> None:
    """Make the manifest's checksum match the (replaced) file, so only later checks can object."""
    manifest_path = model / V1 / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][rel] = sha256_file(model / V1 / rel)
    manifest_path.write_text(json.dumps(manifest))


def _truncate(model, marker):
    weights = model / V1 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _tamper(model, marker):
    weights = model / V1 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))


def _missing_file(model, marker):
    (model / V1 / "tokenizer.json").unlink()


def _pickle_as_weights(model, marker):
    (model / V1 / "model.safetensors").write_bytes(pickle.dumps({"tok_emb.weight": _Trap(marker)}))
    _rehash(model, "model.safetensors")


def _torch_save_as_weights(model, marker):
    import torch

    torch.save({"tok_emb.weight": torch.zeros(3), "trap": _Trap(marker)}, model / V1 / "model.safetensors")
    _rehash(model, "model.safetensors")


def _wrong_tensors(model, marker):
    import torch
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(2)}, str(model / V1 / "model.safetensors"))
    _rehash(model, "model.safetensors")


def _garbage_tokenizer(model, marker):
    (model / V1 / "tokenizer.json").write_bytes(b"\xff\xfe not a tokenizer")
    _rehash(model, "tokenizer.json")


def _manifest_not_json(model, marker):
    (model / V1 / "manifest.json").write_text("{ truncated")


def _manifest_files_wrong_shape(model, marker):
    path = model / V1 / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = ["model.safetensors"]
    path.write_text(json.dumps(manifest))


DAMAGE = {
    "truncated weights": (_truncate, "does not match its checksum"),
    "tampered weights": (_tamper, "does not match its checksum"),
    "manifest names a missing file": (_missing_file, "tokenizer.json is listed in the manifest but missing"),
    "pickle as weights": (_pickle_as_weights, "holds a pickle, not safetensors"),
    "torch.save zip as weights": (_torch_save_as_weights, "holds a zip archive"),
    "safetensors of other tensors": (_wrong_tensors, "weights do not fit the architecture"),
    "garbage tokenizer": (_garbage_tokenizer, "tokenizer.json is not UTF-8"),
    "manifest not JSON": (_manifest_not_json, "manifest.json is not valid JSON"),
    "manifest files not a mapping": (_manifest_files_wrong_shape, "no valid file checksums"),
}


def test_the_pickle_trap_would_be_noticed(tmp_path):
    import torch

    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()
    marker.unlink()
    torch.save({"trap": _Trap(marker)}, tmp_path / "w.pt")
    torch.load(tmp_path / "w.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_is_refused_with_a_clear_error(damage, base_model, tmp_path):
    marker = tmp_path / "pickle-was-executed"
    breaks, message = DAMAGE[damage]
    breaks(base_model, marker)
    with pytest.raises(ModelError, match=message):
        load_version(ModelStore(base_model))
    assert not marker.exists()

    data = tmp_path / "new.jsonl"
    data.write_text('{"text": "some new text to learn"}\n')
    result = CliRunner().invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--device", "cpu"])
    assert result.exit_code == 5, result.output
    assert "error:" in result.output and message.split(",")[0] in result.output.replace("\n", " ")
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not marker.exists()
    assert ModelStore(base_model).versions() == ["0001"]
