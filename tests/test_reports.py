"""What a person watches: history --plot, the HTML page of an update, progress lines in a log."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl
from synthetic import write_versions

runner = CliRunner()


def _sets(extra=()):
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


# --- retain history --plot -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sixty(tmp_path_factory):
    """60 versions: full trainings 1 and 31, rejections 9, 17, 22-24 (3 in a row), 45; version 27
    trained after a rollback to 25; CURRENT rolled back to 58 at the end."""
    root = tmp_path_factory.mktemp("sixty") / "model"
    write_versions(root, 60, current=58)
    return root


def test_history_plot_png_and_svg_with_the_marks(sixty, tmp_path):
    from retain.report.plots import history_figure, history_series

    for name, magic in (("h.png", b"\x89PNG"), ("h.svg", b"<svg")):
        r = runner.invoke(app, ["history", "--model", str(sixty), "--plot", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        data = (tmp_path / name).read_bytes()
        assert magic in data[:400] and len(data) > 20_000
    assert "*0058" in r.stdout  # the table is printed as before
    series = history_series(ModelStore(sixty, read_only=True))
    rows = series["versions"]
    assert len(rows) == 60 and series["current"] == "0058"
    assert series["rejected"] == [9, 17, 22, 23, 24, 45]
    assert series["full_trainings"] == [1, 31]
    assert [(r["x"], r["to"]) for r in series["rollbacks"]] == [(26.5, "0025"), (60.5, "0058")]
    assert series["thresholds"] == {"max_drift": 0.05, "retrain_drift": 0.04, "max_new_items": 1000,
                                    "max_rejected_in_row": 3}
    by = {r["version"]: r for r in rows}
    assert by["0031"]["drift"] == 0.0 and by["0031"]["new_items"] == 0  # a full training starts over
    # its chain since 0001: 0002-0025 less the 5 rejected, then 0027-0030 (0026 was rolled back)
    assert by["0030"]["new_items"] == 20 * (19 + 4)
    assert by["0027"]["new_items"] == by["0025"]["new_items"] + 20  # counted along its chain, after the rollback
    assert all(isinstance(r["retention"], float) for r in rows)
    assert all(isinstance(r["learning"], float) for r in rows if r["kind"] == "fine_tuning")
    fig = history_figure(series)
    labels = {t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()}
    assert {"rollback", "full training (or import)", "rejected by the gate (its candidate)",
            "gate rejects above 5%", "retrain advised above 4%", "retrain advised above 1,000 items",
            "3+ rejected in a row: retrain advised"} <= labels
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"to 0025", "to 0058"} <= texts  # where each rollback went


def test_history_plot_of_a_year_has_no_per_point_marks(tmp_path):
    from retain.report.plots import history_figure, history_series

    store = write_versions(tmp_path / "year", 365, full_at=(1, 120, 240), rejected=tuple(range(5, 365, 13)),
                           rollback_before={})
    series = history_series(store)
    assert len(series["versions"]) == 365
    fig = history_figure(series)
    lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata()) > 100]
    assert lines and all(line.get_marker() in (None, "None", "") for line in lines)
    assert all(not ax.texts for ax in fig.axes)  # no label per point (no rollback here either)


def test_history_plot_refuses_another_extension(sixty, tmp_path):
    r = runner.invoke(app, ["history", "--model", str(sixty), "--plot", str(tmp_path / "h.jpg")])
    assert r.exit_code == 2 and ".png or .svg" in r.output
    assert not (tmp_path / "h.jpg").exists()


# --- retain report / update --report -------------------------------------------------------------

SCRIPT = '<script>alert("pwned")</script> is text here, never markup'


@pytest.fixture(scope="module")
def reported(tmp_path_factory, _base_model, new_texts):
    """A model whose update 0002 wrote its page (--report): duplicates (one of them a <script>),
    rejected records, samples."""
    root = tmp_path_factory.mktemp("reported")
    model = root / "model"
    shutil.copytree(_base_model, model)
    data = write_jsonl(root / "new.jsonl", [SCRIPT, *new_texts[:24], SCRIPT, new_texts[0]])
    with open(data, "a", encoding="utf-8") as f:
        f.write('{"body": "no text field"}\nnot json at all <b>\n')
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(model), "--report", *_sets()])
    assert r.exit_code == 0, r.output
    assert f"report: {model / 'versions' / '0002' / 'report.html'}" in r.stdout
    return model


def test_update_report_writes_the_page_beside_the_version(reported):
    page = (reported / "versions" / "0002" / "report.html").read_text(encoding="utf-8")
    for heading in ("The eight steps", "Skipped duplicates (2)", "Rejected records (2)",
                    "The gate: each validator's verdict", "Before and after", "What the model says", "Epochs",
                    "Fine-tune or fully retrain?"):
        assert heading in page, heading
    for step in ("Load model", "Collect new data", "Preprocess", "Skip duplicates", "Tokenize", "Fine-tune",
                 "Validate", "Save"):
        assert f"<b>{step}</b>" in page
    assert "<script" not in page and "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "not json at all &lt;b&gt;" in page  # a reject's excerpt, escaped too
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    for validator in ("finite", "retention", "learning", "generation"):
        assert f"<b>{validator}</b>" in page
    # the version is what it was: report.html is beside its files, not one of them
    store = ModelStore(reported, read_only=True)
    manifest = store.manifest("0002")
    assert "report.html" not in manifest["files"]
    from retain.core.storage.models import load_version

    assert load_version(store, "0002").version == "0002"  # every listed file matches its checksum


def test_report_json_records_what_the_page_needs_bounded(reported):
    report = json.loads((reported / "versions" / "0002" / "report.json").read_text())
    assert report["rejects"]["count"] == 2 and len(report["rejects"]["kinds"]) == 2
    assert {r["line"] for r in report["rejects"]["first"]} == {28, 29}
    assert report["skipped"][0]["excerpt"] == SCRIPT  # the first duplicates' text, at most 200 characters
    samples = report["samples"]
    assert samples["prompts"] and len(samples["before"]) == len(samples["after"]) == len(samples["prompts"])
    assert samples["before"] != samples["after"]  # the same seed, another model


def test_report_command_on_an_older_version_and_a_page_with_little_recorded(reported, sixty, tmp_path):
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", "--model", str(reported), "--version", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    assert "Version 0001" in page and "full training" in page
    assert "about the current version, 0002, not this one" in page
    # a report.json with counts and metrics only (as older versions wrote less): still a page
    r = runner.invoke(app, ["report", "--model", str(sixty), "--version", "0045", "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    assert "rejected" in page and "no samples recorded" in page and "no epoch trained" in page
    r = runner.invoke(app, ["report", "--model", str(sixty), "--version", "0099", "--out", str(out)])
    assert r.exit_code == 5 and "no version 0099" in r.output


def test_the_page_renders_in_headless_chromium(reported, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    import matplotlib.image

    shot = tmp_path / "page.png"
    page = reported / "versions" / "0002" / "report.html"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1400, 1100)
    ink = (pixels[..., :3].mean(axis=2) < 0.5).mean()  # dark pixels: text and lines were drawn
    assert 0.005 < ink < 0.5
    green = ((pixels[..., 1] > 0.4) & (pixels[..., 0] < 0.2)).any()  # the "accepted" badge
    assert green


# --- progress lines in a log ---------------------------------------------------------------------

def test_progress_lines_every_interval_and_tenth_of_a_long_epoch():
    from retain.render import ProgressLines

    clock, lines = [0.0], []
    progress = ProgressLines(lines.append, 30.0, lambda: clock[0])
    for step in range(1, 1001):  # an epoch of 1,000 steps at 1 s each: a line each 10% (100 s)...
        clock[0] += 1.0
        progress.step(1, 2, step, 1000, 2.5, 512)
    steps = [int(re.search(r"step (\d+)/", x).group(1)) for x in lines]
    assert max(b - a for a, b in zip([1, *steps], steps)) <= 30  # ... and at least every 30 s (the clock starts at step 1)
    assert {100, 200, 300, 400, 500, 600, 700, 800, 900} <= set(steps) and steps[-1] < 1000  # the last: the epoch line
    assert re.fullmatch(r"  epoch 1/2, step 31/1,000 \(3%\): loss 2\.5000, 512 tokens/s; "
                        r"epoch ends in 15m38s, training in 31m45s", lines[0]), lines[0]
    lines.clear()
    progress = ProgressLines(lines.append, 30.0, lambda: clock[0])
    for step in range(1, 101):  # an epoch of 20 s: its epoch line comes soon enough
        clock[0] += 0.2
        progress.step(1, 1, step, 100, 2.5, 512)
    assert lines == []
    progress = ProgressLines(lines.append, 1000.0, lambda: clock[0])
    for step in range(1, 101):  # 10% of an epoch comes before the interval: one line each
        clock[0] += 20
        progress.step(1, 1, step, 100, 2.5, 512)
    assert [int(re.search(r"\((\d+)%\)", x).group(1)) for x in lines] == [10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_a_non_terminal_update_logs_progress_lines(base_model, new_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_PROGRESS_SECONDS", "0.001")
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:40])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--batch-size", "1", "--epochs", "1",
                            *_sets()])
    assert r.exit_code == 0, r.output
    progress = [line for line in r.stdout.splitlines() if line.startswith("  epoch 1/1, step ")]
    assert len(progress) >= 5, r.stdout
    for line in progress:
        assert re.fullmatch(r"  epoch 1/1, step \d+/\d+ \(\d+%\): loss \d+\.\d{4}(, [\d,]+ tokens/s)?; "
                            r"epoch ends in \d+(s|m\d\ds)", line), line
    assert any("tokens/s" in line for line in progress)
    assert r.stdout.index(progress[-1]) < r.stdout.index("Epoch 1/1: Loss=")  # then the epoch's own line


def test_a_terminal_keeps_the_bar_and_no_lines():
    from io import StringIO

    from rich.console import Console

    from retain.render import ConsoleRenderer

    out = StringIO()
    renderer = ConsoleRenderer(Console(file=out, force_terminal=True, width=100), log_every=0.0)
    run = SimpleNamespace(settings=SimpleNamespace(epochs=1))
    for step in range(1, 5):
        renderer.training_progress(run=run, epoch=1, epochs=1, step=step, steps=4, loss=2.0, tokens=64)
    assert renderer.progress is not None and renderer.lines is None
    renderer.progress.stop()
    assert "epoch 1/1, step" not in out.getvalue()


def test_update_report_of_a_rejected_update_and_a_page_that_fails(base_model, new_texts, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20])
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--report", "--lr", "5", *_sets()])
    assert r.exit_code == 10, r.output  # rejected: its page is beside it all the same
    page = (base_model / "versions" / "0002" / "report.html").read_text(encoding="utf-8")
    assert "badge rejected" in page and "<span class=fail>fail</span>" in page
    assert (base_model / "CURRENT").read_text().strip() == "0001"

    import retain.report.page as page_module

    def broken(*args, **kwargs):
        raise RuntimeError("the page could not be drawn")

    monkeypatch.setattr(page_module, "render", broken)
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), "--report", *_sets()])
    assert r.exit_code == 0, r.output  # a page is never a failed update
    assert "warning: report.html not written (RuntimeError: the page could not be drawn); version 0003 is " \
        "saved as accepted" in r.output
    assert (base_model / "CURRENT").read_text().strip() == "0003"
    assert not (base_model / "versions" / "0003" / "report.html").exists()
    assert not list((base_model / "versions" / "0003").glob(".report.html.*"))  # no half-written file


def test_a_page_write_cut_short_is_removed_by_recover(reported, tmp_path):
    # A kill between writing the page's temporary file and its rename leaves `.report.html.tmp-PID`
    # in the version folder; the next writer's recover removes it, and the version still loads.
    model = tmp_path / "model"
    shutil.copytree(reported, model)
    left = model / "versions" / "0002" / ".report.html.tmp-12345"
    left.write_text("<html>half")
    store = ModelStore(model)
    with store.lock():
        store.recover()
    assert not left.exists()
    assert (model / "versions" / "0002" / "report.html").exists()
    from retain.core.storage.models import load_version

    assert load_version(store, "0002").version == "0002"
