"""The pictures: a model's versions over time (``retain history --plot``) and one update's epochs.

``history_series`` is what ``history_figure`` draws, as data (tests check it, not pixels):
per version, oldest first, the held-out losses of the old domain (retention: items learned
before) and of the new one (learning: the update's own held-out items), the cumulative drift
since the last full training, and the new items since it; which versions the gate rejected,
which are full trainings (or imports), and where a rollback happened. No event records a
rollback: it is read from the parents, a version whose parent is not the newest accepted
version before it was trained after a rollback to that parent (and CURRENT naming an older
version than the newest accepted one is a rollback after the last). Thresholds are the
gate's (``retention``: ``max_drift``) and the retrain advice's (``retrain.*``: drift, new
items, rejections in a row), as the newest version recorded them.

Readable on a year of daily versions: lines without a label per point, markers only for
the few that matter (rejections), full trainings and rollbacks as vertical lines.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from retain.core.errors import ModelError, UsageError
from retain.core.storage.store import ROOT_KINDS, ModelStore, atomic_write_bytes

FORMATS = {".png": "png", ".svg": "svg"}
MARKERS_UP_TO = 90  # more versions than this: lines alone, a marker per point would be a smear
ROLLBACKS_NAMED = 12  # more rollbacks than this: lines alone, their names would overlap


def history_series(store: ModelStore) -> dict[str, Any]:
    """Every readable version's numbers and marks, oldest first (see the module's docstring)."""
    from retain.core.config import RetrainConfig

    rows, manifests = [], {}
    for version in store.versions():
        try:
            manifests[version] = store.manifest(version)
        except ModelError:  # `retain history` lists it as unreadable; nothing to draw
            continue
    since: dict[str, int] = {}  # new items (learned and held out) since the last full training
    for number, (version, m) in enumerate(manifests.items()):
        counts, metrics = m.get("counts", {}), m.get("metrics", {})
        root = m.get("kind") in ROOT_KINDS
        new = 0 if root else int(counts.get("trained", 0)) + int(counts.get("holdout", 0))
        since[version] = new + (0 if root else since.get(m.get("parent") or "", 0))
        rows.append({"version": version, "x": _x(version, number), "kind": m.get("kind"),
                     "status": m.get("status"), "parent": m.get("parent"), "created_at": m.get("created_at"),
                     "retention": metrics.get("retention_loss_after"), "learning": metrics.get("new_loss_after"),
                     "drift": 0.0 if root else metrics.get("drift_after"), "new_items": since[version]})
    current = store.current_name()
    newest = next(iter(reversed(manifests.values())), {})
    retrain = RetrainConfig(**{k: v for k, v in ((newest.get("config") or {}).get("retrain") or {}).items()
                               if k in RetrainConfig.model_fields})
    return {"versions": rows, "current": current,
            "rejected": [r["x"] for r in rows if r["status"] == "rejected"],
            "full_trainings": [r["x"] for r in rows if r["kind"] in ROOT_KINDS and r["status"] == "accepted"],
            "rollbacks": _rollbacks(rows, current),
            "thresholds": {"max_drift": _gate_drift(manifests.values()),
                           "retrain_drift": retrain.max_retention_drift,
                           "max_new_items": retrain.max_new_items,
                           "max_rejected_in_row": retrain.max_rejected_in_row}}


def _x(version: str, number: int) -> float:
    return float(int(version)) if version.isdigit() else float(number + 1)


def _rollbacks(rows: list[dict], current: str | None) -> list[dict]:
    """Where CURRENT was moved back: before the version trained from it, or after the last."""
    found, head = [], None
    by_name = {r["version"]: r for r in rows}
    for r in rows:
        parent = r["parent"]
        if r["kind"] not in ROOT_KINDS and head is not None and parent != head and parent in by_name:
            found.append({"x": r["x"] - 0.5, "to": parent, "from": head})
            head = parent  # what CURRENT named from then on
        if r["status"] == "accepted":
            head = r["version"]
    if current in by_name and head is not None and current != head:
        found.append({"x": rows[-1]["x"] + 0.5, "to": current, "from": head})
    return found


def _gate_drift(manifests) -> float | None:
    """The ``retention`` validator's ``max_drift``, as the newest version that recorded it."""
    for m in reversed(list(manifests)):
        for v in m.get("verdicts", []):
            value = (v.get("numbers") or {}).get("max_drift") if v.get("validator") == "retention" else None
            if isinstance(value, (int, float)):
                return float(value)
    return None


# --- drawing -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def history_figure(series: dict[str, Any], title: str = ""):
    """Three panels over the versions: held-out losses; cumulative drift; new items since the
    last full training. Each with the marks and the thresholds that apply to it."""
    plt = _pyplot()
    rows = series["versions"]
    fig, (ax_loss, ax_drift, ax_items) = plt.subplots(3, 1, figsize=(13, 8.6), sharex=True, layout="constrained",
                                                      gridspec_kw={"height_ratios": [3, 2, 1.6]})
    accepted = [r for r in rows if r["status"] == "accepted"]
    rejected = [r for r in rows if r["status"] == "rejected"]
    marker = "o" if len(rows) <= MARKERS_UP_TO else None
    for key, color, label in (("retention", "tab:blue", "old domain (retention held-out items)"),
                              ("learning", "tab:green", "new domain (each update's held-out new items)")):
        _line(ax_loss, accepted, key, color, label, marker)
    _rejected(ax_loss, rejected, ("retention", "learning"))
    ax_loss.set_ylabel("held-out loss\n(lower is better)")
    _line(ax_drift, accepted, "drift", "tab:purple", "cumulative drift since the last full training", marker,
          scale=100, break_at_roots=True)
    _rejected(ax_drift, rejected, ("drift",), scale=100)
    t = series["thresholds"]
    if t.get("max_drift") is not None:
        ax_drift.axhline(100 * t["max_drift"], color="tab:red", linestyle="--", linewidth=1,
                         label=f"gate rejects above {100 * t['max_drift']:g}%")
    ax_drift.axhline(100 * t["retrain_drift"], color="tab:orange", linestyle="--", linewidth=1,
                     label=f"retrain advised above {100 * t['retrain_drift']:g}%")
    ax_drift.axhline(0, color="0.6", linewidth=0.6)
    ax_drift.set_ylabel("old domain's loss\nsince full training (%)")
    _line(ax_items, accepted, "new_items", "tab:brown", "new items since the last full training", None, step=True,
          break_at_roots=True)
    ax_items.axhline(t["max_new_items"], color="tab:orange", linestyle="--", linewidth=1,
                     label=f"retrain advised above {t['max_new_items']:,} items")
    _rejection_streaks(ax_items, rows, t["max_rejected_in_row"])
    ax_items.set_ylabel("new items")
    ax_items.set_xlabel("version")
    for ax in (ax_loss, ax_drift, ax_items):
        _version_marks(ax, series)
        ax.grid(alpha=0.25)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.005, 1), borderaxespad=0)  # off the lines
    _rollback_targets(ax_loss, series)
    from matplotlib.ticker import MaxNLocator

    ax_items.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=16))
    if rows:
        right = max([rows[-1]["x"], *(r["x"] for r in series["rollbacks"])])
        ax_items.set_xlim(rows[0]["x"] - 1, right + 1.5)  # room for the last rollback's name
    counted = f"{len(rows)} versions: {len(accepted)} accepted, {len(rejected)} rejected"
    fig.suptitle(f"{title}: {counted}" if title else counted)
    return fig


def _line(ax, rows, key, color, label, marker, scale=1.0, step=False, break_at_roots=False) -> None:
    """``break_at_roots``: a gap before each full training, whose numbers start over (a new reference)."""
    points = []
    for r in rows:
        if not isinstance(r.get(key), (int, float)):
            continue
        if break_at_roots and r["kind"] in ROOT_KINDS and points:
            points.append((r["x"] - 0.5, float("nan")))
        points.append((r["x"], scale * r[key]))
    if not points:
        return
    xs, ys = zip(*points)
    if step:
        ax.step(xs, ys, where="post", color=color, label=label, linewidth=1.3)
    else:
        ax.plot(xs, ys, color=color, label=label, linewidth=1.3, marker=marker, markersize=3)


def _rejected(ax, rows, keys, scale=1.0) -> None:
    points = [(r["x"], scale * r[k]) for r in rows for k in keys if isinstance(r.get(k), (int, float))]
    if points:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, marker="x", color="tab:red", s=28, linewidths=1.5, zorder=3,
                   label="rejected by the gate (its candidate)")


def _rejection_streaks(ax, rows, limit: int) -> None:
    """Shade each run of ``limit`` or more rejections in a row: the retrain advice's third test."""
    streak: list[float] = []
    shown = False
    for r in [*rows, None]:
        if r is not None and r["status"] == "rejected":
            streak.append(r["x"])
            continue
        if len(streak) >= limit:
            ax.axvspan(streak[0] - 0.5, streak[-1] + 0.5, color="tab:red", alpha=0.15,
                       label=None if shown else f"{limit}+ rejected in a row: retrain advised")
            shown = True
        streak = []


def _version_marks(ax, series) -> None:
    """Full trainings and rollbacks: vertical lines across every panel (labelled once)."""
    for i, x in enumerate(series["full_trainings"]):
        ax.axvline(x, color="0.35", linestyle="--", linewidth=1, label=None if i else "full training (or import)")
    for i, r in enumerate(series["rollbacks"]):
        ax.axvline(r["x"], color="tab:pink", linestyle=":", linewidth=1.6, label=None if i else "rollback")


def _rollback_targets(ax, series) -> None:
    """Name where each rollback went, along the top panel's upper edge (when they are few)."""
    if len(series["rollbacks"]) > ROLLBACKS_NAMED:
        return
    for r in series["rollbacks"]:
        ax.annotate(f"to {r['to']}", (r["x"], 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", rotation=90, va="top", ha="left", fontsize=8, color="tab:pink")


def epoch_figure(report: dict[str, Any]):
    """One update's epochs: training loss, and what early stopping judged (held-out new items,
    retention items) with the kept epoch marked. None when it trained no epoch."""
    losses = report.get("epoch_losses") or []
    if not losses:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 3.4), layout="constrained")
    epochs = list(range(1, len(losses) + 1))
    ax.plot(epochs, losses, marker="o", color="tab:gray", label="training loss (epoch mean)")
    stop = report.get("early_stopping") or {}
    judged = stop.get("epochs") or []
    for key, color, label in (("new_loss", "tab:green", "held-out new items"),
                              ("retention_loss", "tab:blue", "retention items")):
        points = [(e["epoch"], e[key]) for e in judged if isinstance(e.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), marker="o", color=color, label=label)
    if stop.get("best_epoch"):
        ax.axvline(stop["best_epoch"], color="tab:orange", linestyle="--", label=f"kept: epoch {stop['best_epoch']}")
    ax.set_xticks(epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.25)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # off the lines
    return fig


# --- writing -----------------------------------------------------------------------------------

def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes; the figure is closed."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=100, metadata={"Date": None} if fmt == "svg" else None)
    finally:
        plt.close(fig)
    return buf.getvalue()


def plot_format(path: Path) -> str:
    """``png`` or ``svg``, from the file's suffix; a usage error (exit 2) for another."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path.name}: the plot is written as .png or .svg (by the name's extension)")
    return fmt


def write_history_plot(store: ModelStore, path: Path) -> dict[str, Any]:
    """``retain history --plot PATH``: the picture of every version, as PNG or SVG by the suffix;
    returns the series drawn."""
    fmt = plot_format(path)  # before any work
    series = history_series(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, figure_bytes(history_figure(series, store.root.name), fmt))
    return series
