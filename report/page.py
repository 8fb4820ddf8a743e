"""One update as one HTML page: ``retain report`` and ``retain update --report``.

Self-contained: inline CSS, the plot embedded as a base64 PNG, no script, nothing fetched,
so it opens anywhere (a mail attachment, an artifact store, a browser offline). Everything
comes from the version's ``report.json`` and manifest; every text from a user, a data file
or a plugin is escaped (``html.escape``). A version saved before reports recorded rejects,
duplicate excerpts or generation samples still renders: the rejects are read from the
model's ``rejects.jsonl`` by the run's id, what is missing is said.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from retain.core.errors import ModelError, RetainError
from retain.core.hookspecs import hookimpl
from retain.core.storage.report import REPORT, parse_report
from retain.core.storage.store import ModelStore, atomic_write_bytes

PAGE = "report.html"  # its name in a version's folder (retain update --report)
ROWS_SHOWN = 50       # of the skipped duplicates (the report keeps up to 1,000)
KEPT = 20             # rejects read back from rejects.jsonl for an older report

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.5em;margin:0 0 4px} h2{font-size:1.15em;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin:0 0 12px} table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:.93em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1a7f37;font-weight:600} .warn{color:#9a6700;font-weight:600} .fail{color:#cf222e;font-weight:600}
.badge{display:inline-block;padding:1px 10px;border-radius:12px;color:#fff;font-weight:600}
.accepted{background:#1a7f37} .rejected{background:#cf222e} .other{background:#57606a}
pre,code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace} pre{white-space:pre-wrap;word-break:break-word;margin:0}
.note{color:#57606a;font-size:.92em} .kv{display:inline-block;margin-right:12px;white-space:nowrap} img{max-width:100%;height:auto}
ol.steps{padding-left:1.4em} ol.steps li{margin:2px 0}
"""


def e(value: Any) -> str:
    """Any value as HTML text: escaped, always."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def change(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or not before:
        return "-"
    return f"{100 * (after - before) / before:+.1f}%"


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    """A table of cells already made HTML (escape what goes in); ``numeric``: right-aligned columns."""
    numeric = set(numeric)
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- reading ------------------------------------------------------------------------------------

def load(store: ModelStore, version: str | None) -> tuple[str, dict, dict]:
    """(version, its manifest, its report.json); the current version by default."""
    from retain.core.storage.versions import normalize_version

    version = normalize_version(version) if version else store.current()
    if version not in store.versions():
        raise ModelError(f"no version {version} in {store.root} (versions: {', '.join(store.versions())})")
    manifest = store.manifest(version)
    report = {}
    if REPORT in manifest.get("files", {}):  # any report written so far; a wrong type is a ModelError naming it
        report = parse_report(store.read_text(version, REPORT, manifest), version).to_json()
    for key in ("counts", "metrics", "verdicts", "epoch_losses", "strategies", "settings", "timings"):
        report.setdefault(key, manifest.get(key))  # the manifest holds them too
    return version, manifest, report


def rejects(store: ModelStore, report: dict) -> dict | None:
    """The run's rejects: as its report recorded them, or read back from ``rejects.jsonl`` by
    its run id (a report from before they were recorded); None if neither can tell."""
    if report.get("rejects") is not None:
        return report["rejects"]
    path, run = store.root / "rejects.jsonl", report.get("run")
    if not run or not path.is_file():
        return None
    from retain.core.data.ingest import reject_kind

    kinds: Counter = Counter()
    first = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("run") == run:
                kinds[reject_kind(str(row.get("reason", "")))] += 1
                if len(first) < KEPT:
                    first.append(row)
    return {"count": sum(kinds.values()), "kinds": [{"kind": k, "count": n} for k, n in kinds.most_common()],
            "first": first}


def advice(store: ModelStore, manifest: dict) -> dict | None:
    """The retrain advice for the current version, with the thresholds this version's update
    used (its stored config); None when it cannot be assessed (said on the page)."""
    from retain.core.config import Config, build, load_config
    from retain.core.quality.retrain import assess

    try:
        config = build(Config, manifest["config"]) if manifest.get("config") else load_config(None)
    except RetainError:
        config = load_config(None)
    try:
        return assess(store, config).to_json()
    except RetainError as exc:
        return {"error": str(exc)}


# --- the page -----------------------------------------------------------------------------------

def render(store: ModelStore, version: str | None = None) -> str:
    """The page of ``version`` (default: current), as one HTML string."""
    version, manifest, report = load(store, version)
    status = manifest.get("status") or "unknown"
    title = f"retain: version {version} of {store.root.name}"
    kind = {"full_training": "full training", "fine_tuning": "update", "import": "import"}.get(
        manifest.get("kind"), manifest.get("kind"))
    parent = manifest.get("parent")
    sub = (f"{e(kind)} of <code>{e(store.root)}</code>, from version {e(parent or '-')}; "
           f"created {e(manifest.get('created_at'))}; run {e(report.get('run') or manifest.get('run'))}")
    badge = status if status in ("accepted", "rejected") else "other"
    sections = [steps_section(version, manifest, report), duplicates_section(report),
                rejects_section(rejects(store, report), store), verdicts_section(report),
                before_after_section(report), samples_section(report), epochs_section(report),
                advice_section(advice(store, manifest), store, version)]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{e(title)}</title>"
            f"<style>{STYLE}</style></head><body><main>"
            f"<h1>Version {e(version)} <span class='badge {badge}'>{e(status)}</span></h1><p class=sub>{sub}</p>"
            + "".join(sections) + "</main></body></html>\n")


def steps_section(version: str, manifest: dict, report: dict) -> str:
    c, t = report.get("counts") or {}, report.get("timings") or {}
    s = report.get("settings") or {}
    stop = report.get("early_stopping") or {}
    verdicts = report.get("verdicts") or []
    failed = [v["validator"] for v in verdicts if v.get("status") == "fail"]
    params = (report.get("parameters") or {}).get("total")
    trained = len(report.get("epoch_losses") or [])
    kept = f", kept epoch {stop['best_epoch']}" if stop.get("best_epoch") else ""
    how = ", ".join(report.get("strategies") or []) or "no strategy"
    gate = f"failed: {', '.join(failed)}" if failed else f"{len(verdicts)} validators passed or warned"
    steps = [
        ("Load model", f"version {manifest.get('parent') or '- (random init)'}"
                       + (f", {params / 1e6:.2f}M parameters" if params else ""), "load"),
        ("Collect new data", f"{num(c.get('collected'))} items, {num(c.get('rejected', 0))} rejected", "collect"),
        ("Preprocess", f"{num(c.get('preprocessed'))} items", "preprocess"),
        ("Skip duplicates", f"{num(c.get('duplicates', 0))} skipped ({num(c.get('contaminating', 0))} of them "
                            f"held-out items), {num(c.get('new'))} left", "dedupe"),
        ("Tokenize", f"{num(c.get('trained'))} items to train on, {num(c.get('holdout', 0))} held out; "
                     f"{num(c.get('tokens'))} tokens" + (f", {num(c['replay_tokens'])} replayed"
                                                         if c.get("replay_tokens") else ""), "tokenize"),
        ("Fine-tune" if manifest.get("kind") == "fine_tuning" else "Train",
         f"{how}: {trained} of {s.get('epochs', '-')} epochs{kept}, lr {s.get('learning_rate', '-')}, "
         f"batch {s.get('batch_size', '-')}", "train"),
        ("Validate", gate, "validate"),
        ("Save", f"version {version}, {manifest.get('status')}", "save"),
    ]
    items = "".join(f"<li><b>{e(name)}</b>: {e(what)}"
                    + (f" <span class=note>({t[key]:.2f}s)</span>" if isinstance(t.get(key), (int, float)) else "")
                    + "</li>" for name, what, key in steps)
    total = t.get("total")
    took = f"<p class=note>{total:.1f}s in all.</p>" if isinstance(total, (int, float)) else ""
    return f"<h2>The eight steps</h2><ol class=steps>{items}</ol>{took}"


def duplicates_section(report: dict) -> str:
    skipped = report.get("skipped")
    if skipped is None:
        return "<h2>Skipped duplicates</h2><p class=note>not recorded in this version's report</p>"
    count = (report.get("counts") or {}).get("duplicates", len(skipped))
    if not skipped:
        return "<h2>Skipped duplicates</h2><p>none</p>"
    rows = [(f"<code>{e(s.get('origin'))}</code>", f"<pre>{e(s.get('excerpt', ''))}</pre>" if s.get("excerpt")
             else "<span class=note>-</span>", e(s.get("deduper")),
             e(s.get("reason")) + (f"<br><span class=note>matched {e(s['matched'])}"
                                   + (f", version {e(s['version'])}" if s.get("version") else "") + "</span>"
                                   if s.get("matched") else ""))
            for s in skipped[:ROWS_SHOWN]]
    more = f"<p class=note>and {count - ROWS_SHOWN:,} more (report.json)</p>" if count > ROWS_SHOWN else ""
    return (f"<h2>Skipped duplicates ({count:,})</h2>"
            + table(("item", "text (first ones)", "deduper", "what it matched"), rows) + more)


def rejects_section(found: dict | None, store: ModelStore) -> str:
    if found is None:
        return "<h2>Rejected records</h2><p class=note>not recorded for this run</p>"
    if not found["count"]:
        return "<h2>Rejected records</h2><p>none</p>"
    kinds = table(("reason", "records"), [(e(k["kind"]), num(k["count"])) for k in found["kinds"]], numeric=[1])
    first = table(("where", "reason", "record (first 200 characters)"),
                  [(f"<code>{e(r.get('file'))}{':' + e(r['line']) if r.get('line') is not None else ''}</code>",
                    e(r.get("reason")), f"<pre>{e(r.get('excerpt'))}</pre>") for r in found["first"]])
    return (f"<h2>Rejected records ({found['count']:,})</h2>{kinds}<p class=note>the first "
            f"{len(found['first'])}; all of them in <code>{e(store.root / 'rejects.jsonl')}</code></p>{first}")


def verdicts_section(report: dict) -> str:
    verdicts = report.get("verdicts") or []
    if not verdicts:
        return "<h2>The gate</h2><p class=note>no validator judged this version</p>"
    rows = []
    for v in verdicts:
        numbers = " ".join(f"<span class=kv>{e(k)} = {num(x)}</span>" for k, x in sorted((v.get("numbers") or {}).items()))
        status = v.get("status", "")
        rows.append((f"<b>{e(v.get('validator'))}</b>", f"<span class={e(status)}>{e(status)}</span>",
                     e(v.get("reason")), f"<code>{numbers}</code>" if numbers else "-", e(v.get("remedy")) or "-"))
    steps = "".join(f"<li>{e(s.get('step'))} <span class=note>({e(', '.join(s.get('validators') or []))})</span>"
                    "</li>" for s in report.get("next_steps") or [])
    return ("<h2>The gate: each validator's verdict</h2>"
            + table(("validator", "verdict", "why", "numbers", "remedy"), rows)
            + (f"<p><b>Next steps</b></p><ul>{steps}</ul>" if steps else ""))


def before_after_section(report: dict) -> str:
    m = report.get("metrics") or {}
    rows = [("old items (retention), " + num(m.get("retention_items")) + " held-out",
             m.get("retention_loss_before"), m.get("retention_loss_after")),
            ("new items (learning), " + num(m.get("new_holdout_items")) + " held-out",
             m.get("new_loss_before"), m.get("new_loss_after"))]
    if m.get("drift_loss_after") is not None:
        rows.append((f"since full training {m.get('drift_since')} (cumulative drift), "
                     f"{num(m.get('drift_items'))} of its held-out items", m.get("drift_loss_baseline"),
                     m.get("drift_loss_after")))
    cells = [(e(what), num(b), num(a), change(b, a)) for what, b, a in rows]
    return ("<h2>Before and after</h2>" + table(("held-out loss on", "before", "after", "change"), cells, (1, 2, 3))
            + "<p class=note>mean per-token loss on items never trained on; lower is better. "
            "The cumulative row's \"before\" is the full training's own loss on those items.</p>")


def samples_section(report: dict) -> str:
    s = report.get("samples")
    if not s:
        return ("<h2>What the model says</h2><p class=note>no samples recorded (the gate has no generation "
                "validator, or the version was saved before reports recorded them)</p>")
    before, after = s.get("before") or [], s.get("after") or []
    rows = []
    for i, prompt in enumerate(s.get("prompts") or []):
        def cell(texts):
            return f"<pre><b>{e(prompt)}</b>{e(texts[i])}</pre>" if i < len(texts) else "<span class=note>-</span>"
        rows.append((cell(before), cell(after)))
    how = (f"the gate's prompts, {s.get('max_new_tokens')} new tokens, temperature {s.get('temperature')}, "
           f"seed {s.get('seed')}: the same seed on both sides")
    errors = "".join(f"<p class=note>{e(k)}: {e(v)}</p>" for k, v in s.items() if k.endswith("_error"))
    return (f"<h2>What the model says</h2><p class=note>{e(how)}</p>"
            + table(("before (the version it started from)", "after (this version)"), rows) + errors)


def epochs_section(report: dict) -> str:
    from .plots import epoch_figure, figure_bytes

    fig = epoch_figure(report)
    if fig is None:
        return "<h2>Epochs</h2><p class=note>no epoch trained</p>"
    png = base64.b64encode(figure_bytes(fig, "png")).decode("ascii")
    stop = report.get("early_stopping") or {}
    judged = {x["epoch"]: x for x in stop.get("epochs") or []}
    rows = [(str(i), num(loss), num(judged.get(i, {}).get("new_loss")), num(judged.get(i, {}).get("retention_loss")),
             e(", ".join(judged[i].get("failed") or []) or "passed") if i in judged else "-")
            for i, loss in enumerate(report.get("epoch_losses") or [], 1)]
    why = f"<p class=note>stopped: {e(stop['stopped'])}</p>" if stop.get("stopped") else ""
    return (f"<h2>Epochs</h2><img alt='loss per epoch' src='data:image/png;base64,{png}'>"
            + table(("epoch", "training loss", "held-out new items", "retention items", "gate"), rows, (1, 2, 3))
            + why)


def advice_section(found: dict | None, store: ModelStore, version: str) -> str:
    if not found or "error" in found:
        return f"<h2>Fine-tune or fully retrain?</h2><p class=note>not assessed: {e((found or {}).get('error'))}</p>"
    about = ("" if found.get("current") == version else
             f"<p class=note>about the current version, {e(found.get('current'))}, not this one</p>")
    rows = [(f"<span class={'fail' if c['retrain'] else 'pass'}>{'retrain' if c['retrain'] else 'ok'}</span>",
             e(c["name"]), e(c["reason"])) for c in found["checks"]]
    verdict = "fail" if found["retrain"] else "pass"
    return (f"<h2>Fine-tune or fully retrain?</h2>{about}<p class={verdict}>{e(found['summary'])}</p>"
            + table(("", "check", "why"), rows))


# --- writing ------------------------------------------------------------------------------------

def write_page(store: ModelStore, version: str | None, out: Path) -> Path:
    """``retain report``: the page of ``version`` into ``out``, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, render(store, version).encode("utf-8"))
    return out


class PageWriter:
    """``retain update --report``: once the version is saved (``update_finished``), its page
    goes into its folder as ``report.html``, written atomically beside the files the manifest
    lists (not one of them: the version was complete and checksummed before). A failure here
    is a warning, never a failed update, and is caught here: an exception would also keep
    the other listeners of ``update_finished`` (a tracker) from hearing the update."""

    def __init__(self, say=None):
        self.say = say or (lambda line: None)

    @hookimpl
    def update_finished(self, run, report):
        version = report.get("version")
        if not version:  # nothing saved (nothing new, --check)
            return
        from rich.markup import escape

        store = ModelStore(run.model_dir, read_only=True)
        path = store.versions_dir / version / PAGE
        try:
            atomic_write_bytes(path, render(store, version).encode("utf-8"))
        except Exception as exc:
            problem = (f"{PAGE} not written ({type(exc).__name__}: {exc}); version {version} is saved as "
                       f"{report.get('status')}")
            self.say(f"[yellow]warning:[/] {escape(problem)}")
            return
        self.say(f"  report: {escape(str(path))}")
