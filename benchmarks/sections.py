"""BENCHMARKS.md sections: a benchmark's ``--write`` replaces its own section where it stands."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts at ``heading`` (up to the next ``## ``) with ``text``,
    or append ``text`` when the file has no such section yet."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = old.find(heading)
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8")
        return
    end = old.find("\n## ", start + len(heading))
    after = "\n" + old[end + 1:] if end >= 0 else ""
    path.write_text(old[:start] + text.rstrip("\n") + "\n" + after, encoding="utf-8")
