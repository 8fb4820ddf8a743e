"""`retain demo` runs the whole story on text shipped with Python (tiny size here)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retain.cli import app
from retain.demo import N_DUPES, N_NEW, base_corpus, new_batch
from retain.core.data.items import text_hash

from conftest import TINY


def test_demo_batch_has_the_design_documents_shape():
    base = base_corpus()
    batch = new_batch(base)
    assert len(batch) == N_NEW + N_DUPES == 45
    assert len({text_hash(t) for t in batch}) == N_NEW + 4  # 4 of the dupes were learned by the base


def test_demo_command_end_to_end(tmp_path):
    sets = [a for s in [*TINY, "full_training.epochs=1"] for a in ("--set", s)]
    r = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "demo"), "--json", *sets])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    u = report["update"]["counts"]
    assert (u["collected"], u["preprocessed"], u["duplicates"], u["new"]) == (45, 45, 12, 33)
    assert report["update"]["version"] == "0002"
    assert "Before / after the update" in r.stderr
