"""The speed benchmarks run end to end in a CI-safe tiny mode and produce their tables.

Nothing here asserts a timing (timings belong in BENCHMARKS.md, from the full runs): only
that each benchmark still runs the code paths it measures and reports every row and column.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, tmp_path: Path, *extra: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--tiny", "--work", str(tmp_path),
                          "--write", str(tmp_path / "BENCHMARKS.md"), *extra], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")


def _table(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_speed_benchmark_tiny_run_writes_its_section(tmp_path):
    md = _run("speed.py", tmp_path)
    assert md.count("## Speed at the design document's size (issue 13)") == 1
    assert "Command: `python benchmarks/speed.py --tiny" in md
    loops = _table(md, "| model | parameters | measured over | retain")
    assert len(loops) == 3 and loops[2][:3] == ["tiny", "0.0M", "1 epoch(s)"] and len(loops[2]) == len(loops[0])
    precision = _table(md, "| model | measured over | fp32")
    assert precision[2][0] == "tiny" and re.fullmatch(r"[+-]\d+\.\d\d%", precision[2][7])
    scoring = _table(md, "| model | items | tokens | precision | N = 8,192 s")
    assert scoring[2][0] == "tiny" and len(scoring[2]) == len(scoring[0]) == 10
    assert all(re.fullmatch(r"[\d.,]+", cell) for cell in scoring[2][4:])
    update = _table(md, "| model | process wall | startup | import")
    assert update[2][0] == "tiny" and len(update[2]) == len(update[0]) == 15
    assert all(re.fullmatch(r"[\d.,]+%?|-", cell) for cell in update[2][1:])
    assert "Seconds per validator (medians): tiny: finite" in md
    assert re.search(r"\*\*Fixed seconds\*\* \(tiny model.*update - import = [+-]\d+\.\d s\*\*; dry run \*\*\d", md)


def test_growth_benchmark_tiny_run_writes_its_section(tmp_path):
    md = _run("growth.py", tmp_path)
    assert md.count("## A year of daily versions (issue 13)") == 1
    rows = _table(md, "| versions | update s")
    assert [r[0] for r in rows[2:]] == ["3", "8"] and all(len(r) == 8 for r in rows)
    for heads in (r"from the same head version \(version 8's, grafted onto the directory at version 3",
                  r"each from its own head version"):
        assert re.search(r"The same update on the directory at version 3 and at version 8, alternately, "
                         + heads + r".*\*\*\d+\.\d\dx\*\*; epochs trained \d", md)
    assert re.search(r"\d+ of \d+ tensors are identical", md) and "7 updates, 0 rejected" in md
    # Measured again on the kept directories: the section is replaced, with the same rows.
    again = _run("growth.py", tmp_path, "--compare-only")
    assert again.count("## A year of daily versions (issue 13)") == 1 and "--compare-only" in again
    assert [r[0] for r in _table(again, "| versions | update s")[2:]] == ["3", "8"]


def test_precision_benchmark_tiny_run_writes_its_section(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "precision.py"), "--tiny", "--work", str(tmp_path),
                          "--write", str(tmp_path / "BENCHMARKS.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    md = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert md.count("## precision: auto, measured (issue 21)") == 1
    assert "Command: `python benchmarks/precision.py --tiny" in md and "load average" in md
    rows = _table(md, "| model | parameters | measured over | rounds | fp32 tokens/s")
    assert len(rows) == 3 and rows[2][0] == "tiny" and len(rows[2]) == len(rows[0]) == 13
    assert re.fullmatch(r"(fp32|bf16) x1", rows[2][7])  # what auto chose
    assert all(re.fullmatch(r"[\d.,]+", cell) for cell in rows[2][3:7] + rows[2][8:])
