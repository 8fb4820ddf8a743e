"""What ``retain compare`` leaves behind: a terminal table, results.json, results.csv and a PNG.

The figure has two line plots over the stream (per strategy: the metric on
old data, i.e. the experiences before the current one, or for text the base
model's held-out items, and on the new experience just learned) and one heat map of R per strategy. Its labels are
read back from the figure objects and recorded in the results, so what the
picture shows can be checked without looking at it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

PLOT = "compare.png"


def _columns(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(key, header, format, higher_is_better) per table column; None: not ranked."""
    hib = results["scenario"]["higher_is_better"]
    metric = results["scenario"]["metric"]
    cols = [("average_final", "final avg", ".3f", hib), ("final_old", "old", ".3f", hib),
            ("final_new", "new", ".3f", hib)]
    if metric == "loss":
        cols += [("final_perplexity", "ppl", ".1f", False), ("old_rise", "old rise", "+.3f", False)]
    cols += [("forgetting", "forget", "+.3f", False), ("bwt", "BWT", "+.3f", True),
             ("fwt", "FWT", "+.3f", True), ("train_seconds", "train s", ".1f", False),
             ("wall_seconds", "wall s", ".1f", False), ("peak_rss_mib", "peak MiB", ".0f", False)]
    if metric == "loss":  # text: what an update trains and what its version weighs
        cols += [("trainable_parameters", "trained params", ",.0f", None),
                 ("version_mib", "MiB/version", ".3f", False)]
    return cols


def _value(res: dict, key: str):
    if key in ("average_final", "forgetting", "bwt", "fwt"):
        return (res.get("metrics") or {}).get(key)
    return res.get(key)


def rows(results: dict) -> list[dict]:
    """One flat row per strategy (the CSV)."""
    out = []
    for label in results["strategies"]:
        res = results["results"][label]
        row = {"strategy": label, "supported": res.get("supported", False)}
        for key, *_ in _columns(results):
            row[key] = _value(res, key) if row["supported"] else None
        row["note"] = res.get("reason", "")
        out.append(row)
    return out


def table(results: dict):
    from rich.table import Table

    sc = results["scenario"]
    title = (f"retain compare: {sc['name']}" + (f" ({sc['setting']}-incremental)" if sc.get("setting") else "")
             + f", {len(sc['experiences'])} experiences, seed {results['seed']}")
    metric = sc["metric"] + (" (lower is better)" if sc["metric"] == "loss" else "")
    caption = (f"{metric} after the whole stream: averaged over all experiences (final avg), "
               "the ones before the last (old) and the last (new)")
    if sc["metric"] == "loss":
        caption += "; old: the base model's held-out items (old rise: since before the stream)"
    caption += "; best per column in bold green"
    for r in rows(results):
        if not r["supported"]:
            caption += f"\nn/a {r['strategy']}: {r['note']}"
    for note in results.get("notes") or []:
        if "nothing new to learn" in note:  # numbers that measure no training: under the table too
            caption += f"\nnote: {note}"
    t = Table(title=title, caption=caption)
    cols = _columns(results)
    t.add_column("strategy", no_wrap=True)
    for _, header, _, _ in cols:
        t.add_column(header, justify="right")
    data = rows(results)
    best = {}
    for key, _, _, hib in cols:
        values = [r[key] for r in data if r[key] is not None and r["supported"]]
        if hib is not None and values:
            best[key] = max(values) if hib else min(values)
    for r in data:
        cells = []
        for key, _, fmt, _ in cols:
            v = r[key]
            if v is None:
                cells.append("-" if r["supported"] else "n/a")
            else:
                s = format(v, fmt)
                cells.append(f"[bold green]{s}[/]" if key in best and v == best[key] else s)
        t.add_row(r["strategy"] if r["supported"] else f"[dim]{r['strategy']}[/]", *cells)
    return t


def markdown(results: dict) -> str:
    """The table as Markdown (for BENCHMARKS.md and the like), best per column in bold."""
    cols = _columns(results)
    data = rows(results)
    best = {}
    for key, _, _, hib in cols:
        values = [r[key] for r in data if r[key] is not None]
        if hib is not None and values:
            best[key] = max(values) if hib else min(values)
    lines = ["| strategy | " + " | ".join(h for _, h, _, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in data:
        cells = []
        for key, _, fmt, _ in cols:
            v = r[key]
            cell = "n/a" if not r["supported"] else "-" if v is None else format(v, fmt)
            cells.append(f"**{cell}**" if v is not None and v == best.get(key) else cell)
        lines.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: dict):
    """The matplotlib figure (Agg): old/new metric over the stream, and R as a heat map per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = results["scenario"]
    labels = [s for s in results["strategies"] if results["results"][s].get("supported")]
    names = [e["name"] for e in sc["experiences"]]
    n = max(1, len(labels))
    fig = plt.figure(figsize=(max(11.0, 3.2 * n), 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 2 * n)
    ax_old = fig.add_subplot(grid[0, :n])
    ax_new = fig.add_subplot(grid[0, n:])
    for label in labels:
        res = results["results"][label]
        stages = list(range(len(res["new"])))
        for ax, values in ((ax_old, res["old"]), (ax_new, res["new"])):
            points = [(i, v) for i, v in zip(stages, values) if v is not None]
            ax.plot([i for i, _ in points], [v for _, v in points], marker="o", label=label)
    metric = sc["metric"]
    old_what = "old data (the base model's held-out items)" if metric == "loss" else "old data (experiences before)"
    for ax, what in ((ax_old, old_what), (ax_new, "new data (experience just learned)")):
        ax.set_title(f"{metric} on {what}")
        ax.set_xlabel("after training on")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel(metric + (" (lower is better)" if metric == "loss" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    values = [v for s in labels for row in results["results"][s]["R"] for v in row]
    vmin, vmax = (min(values), max(values)) if values else (0, 1)
    cmap = "viridis" if sc["higher_is_better"] else "viridis_r"
    image = None
    for k, label in enumerate(labels):
        ax = fig.add_subplot(grid[1, 2 * k:2 * k + 2])
        R = results["results"][label]["R"]
        image = ax.imshow(R, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(f"R: {label}")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(names)), names, fontsize="x-small")
        ax.set_xlabel("tested on")
        if k == 0:
            ax.set_ylabel("after training on")
        for i, row in enumerate(R):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white")
    if image is not None:
        fig.colorbar(image, ax=fig.axes[2:], shrink=0.8, label=metric)
    return fig


def figure_labels(fig) -> dict:
    """Legend entries and titles, read from the figure objects."""
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    return {"legend": sorted(set(legends)), "titles": [ax.get_title() for ax in fig.axes if ax.get_title()]}


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(results: dict, out_dir: Path) -> dict:
    """results.json, results.csv and compare.png in ``out_dir``; returns their paths."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = figure(results)
    results["plot"] = {"file": PLOT, **figure_labels(fig)}
    _atomic(out_dir / PLOT, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    buf = io.StringIO()
    data = rows(results)
    writer = csv.DictWriter(buf, fieldnames=list(data[0]))
    writer.writeheader()
    writer.writerows(data)
    _atomic(out_dir / "results.csv", lambda f: f.write(buf.getvalue().encode("utf-8")))
    text = json.dumps(results, indent=2, default=str)
    _atomic(out_dir / "results.json", lambda f: f.write(text.encode("utf-8")))
    return {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "plot": out_dir / PLOT}
