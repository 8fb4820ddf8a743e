"""What the CLI shows: a rich renderer of the engine's events (``core/hookspecs.py``).

The engine knows no terminal; it emits ``step_started``/``step_finished``,
``training_progress``, ``epoch_ended``, ``verdicts_given``, ``advice_given`` and
``warning_raised``. ``ConsoleRenderer`` is a plugin with hookimpls for them,
registered by the CLI for the length of a run (not under ``--quiet``; under
``--json`` it writes to stderr, so stdout holds the JSON object alone).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from retain.core.quality.advice import epoch_line, fmt_number
from retain.core.hookspecs import hookimpl
from retain.core.wording import percent, plural

UNLIMITED = 100_000  # the width of a console that is not a terminal: no line is ever wrapped
PROGRESS_SECONDS = 30.0  # not on a terminal: a progress line at least this often (RETAIN_PROGRESS_SECONDS)


class RetainConsole(Console):
    """A rich Console whose tables never cut a cell (``WholeTable``)."""

    def print(self, *objects, **kwargs):
        super().print(*(WholeTable(o) if isinstance(o, Table) else o for o in objects), **kwargs)


def make_console(stderr: bool = False) -> RetainConsole:
    """The console every command prints through.

    On a terminal: the terminal's width; a table too wide for it switches to one block per
    row, so no number is cut (``7.…``). Anywhere else (a log file, a pipe): no hard wraps at
    all, whatever COLUMNS says: every line is whole, tables take the width they need.
    (``TTY_COMPATIBLE=1`` makes rich treat any output as a terminal.)
    """
    console = RetainConsole(stderr=stderr, highlight=False)
    if console.is_terminal:
        return console
    return RetainConsole(stderr=stderr, highlight=False, soft_wrap=True, width=UNLIMITED)


def _text(cell) -> Text:
    if isinstance(cell, Text):
        return cell
    return Text.from_markup(cell) if isinstance(cell, str) else Text(str(cell))


class WholeTable:
    """A rich Table that keeps every cell whole: the grid when it fits the width at its
    natural size, otherwise one block per row: the first cell, then ``header: value``
    pairs flowed across the width (a pair is never split, long text wraps between words).

    Columns of prose should set ``max_width`` (they then wrap inside the grid), so that the
    grid is kept on wide terminals; not on a terminal, no column wraps: a row is one line."""

    def __init__(self, table: Table):
        self.table = table

    def natural_width(self, console: Console, options) -> int:
        return Measurement.get(console, options.update_width(UNLIMITED), self.table).maximum

    def __rich_measure__(self, console, options) -> Measurement:
        return Measurement.get(console, options, self.table)

    def __rich_console__(self, console, options):
        if options.max_width >= UNLIMITED:  # a log file: one physical line per row, prose unwrapped
            for column in self.table.columns:
                column.max_width = None
        if self.natural_width(console, options) <= options.max_width:
            yield self.table
            return
        t, width = self.table, options.max_width
        if t.title:
            yield Text.assemble(_text(t.title), style="bold")
        headers = [_text(c.header).plain for c in t.columns]
        cells = [list(c.cells) for c in t.columns]
        for i in range(t.row_count):
            row = [_text(col[i]) for col in cells]
            yield Text.assemble(row[0], style="bold")
            pairs = [Text.assemble((f"{h}: ", "dim"), value) for h, value in zip(headers[1:], row[1:])
                     if value.plain.strip()]
            line = Text()
            for pair in [*pairs, None]:
                if line and (pair is None or len(line) + 3 + len(pair) > width - 2):
                    for part in line.wrap(console, width - 2):  # a pair wider than the line wraps
                        yield Text("  ") + part
                    line = Text()
                if pair is not None:
                    line.append_text(Text("   ") if line else Text()).append_text(pair)
        if not t.row_count:
            yield Text("  (none)")
        if t.caption:
            yield Text.assemble(_text(t.caption), style="dim")


def delta(before: float | None, after: float | None, *thresholds: float) -> str:
    """`` (+1.7%)``: the relative change, with the digits that tell it from each threshold a
    verdict compares it with (the line and the verdict below it never disagree)."""
    if before is None or after is None or before == 0:
        return ""
    return f" ({percent((after - before) / before, *thresholds)})"


def thresholds(verdicts: list[dict], validator: str, *keys: str, sign: float = 1.0) -> list[float]:
    """The thresholds ``validator``'s verdict compared a change with (from its numbers)."""
    numbers = next((v.get("numbers") or {} for v in verdicts if v["validator"] == validator), {})
    return [sign * numbers[k] for k in keys if isinstance(numbers.get(k), (int, float))]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class ConsoleRenderer:
    """The update cycle's eight numbered steps, the epoch lines, the gate's verdicts, advice."""

    STATUS_COLOR = {"pass": "green", "warn": "yellow", "fail": "red"}

    def __init__(self, console, progress: bool | None = None, log_every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.progress_enabled = console.is_terminal if progress is None else progress
        self.progress = None
        self.task = None
        self.previous: float | None = None
        # Not on a terminal (a log file): plain progress lines instead of the bar (``ProgressLines``)
        if log_every is None:
            log_every = float(os.environ.get("RETAIN_PROGRESS_SECONDS") or PROGRESS_SECONDS)
        self.lines = None if self.progress_enabled else ProgressLines(self.say, log_every, clock)

    @classmethod
    def for_terminal(cls, stderr: bool = False) -> "ConsoleRenderer":
        return cls(make_console(stderr=stderr))

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    # --- events ------------------------------------------------------------------------------
    @hookimpl
    def warning_raised(self, run, message):
        from rich.markup import escape

        self.say(f"[yellow]warning:[/] {escape(message)}")  # its brackets are text (dedupers=[exact,...])

    @hookimpl
    def step_started(self, run, step):
        if step != "train":
            return
        s = run.settings
        if run.kind == "import":
            self.say(f"[bold]6. Record the base data[/] ({', '.join(x.name for x in run.strategies)}): "
                     "one pass, weights unchanged")
            return
        label = "Full training" if run.full else "Fine-tune"
        how = "from scratch" if run.full else (", ".join(x.name for x in run.strategies) or "no strategy")
        source = getattr(s, "learning_rate_from", "")  # a search trial's settings may not say
        source = f" ({source})" if source and not run.full else ""
        cut = getattr(s, "epochs_from", "")
        cut = f" ({cut})" if cut and not run.full else ""
        self.say(f"[bold]6. {label}[/] ({how}): {plural(s.epochs, 'epoch')}{cut}, lr {s.learning_rate:g}{source}, "
                 f"batch {s.batch_size}")
        self.previous = None

    def _start_progress(self, epochs: int) -> None:
        # Started by the first training step, not with the step: until then (the training stack
        # may still be importing) there is nothing to show, and no loss yet.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("  epoch {task.fields[epoch]}/{task.fields[of]}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("train", total=None, epoch=1, of=epochs, loss="-")
        self.progress.start()  # after add_task: its refresh thread draws the task's fields
        self.window: list[float] = []

    @hookimpl
    def training_progress(self, run, epoch, epochs, step, steps, loss, tokens):
        if not self.progress_enabled:
            self.lines.step(epoch, epochs, step, steps, loss, tokens)
            return
        if self.progress is None:
            self._start_progress(epochs)
        self.window = (self.window + [loss])[-20:]
        self.progress.update(self.task, total=steps, completed=step, epoch=epoch, of=epochs,
                             loss=f"{sum(self.window) / len(self.window):.3f}")

    @hookimpl
    def epoch_ended(self, run, epoch, loss):
        line = "  " + epoch_line(epoch, run.settings.epochs, loss, self.previous)
        line = line.replace("  loss rose:", "  [yellow]loss rose:", 1) + ("[/]" if "loss rose" in line else "")
        self.previous = loss
        self.say(line)
        if self.progress is not None:
            self.window = []
            # reset() replaces the task's fields: all of them again, or the bar cannot be drawn
            self.progress.reset(self.task, total=None, epoch=min(epoch + 1, run.settings.epochs),
                                of=run.settings.epochs, loss="-")
            if epoch == run.settings.epochs:
                self.progress.stop()
                self.progress = None

    @hookimpl
    def step_finished(self, run, step, info, seconds):
        if step == "train" and self.progress is not None:
            self.progress.stop()
            self.progress = None
        show = getattr(self, f"show_{step}", None)
        if show is not None:
            show(run, info)

    @hookimpl
    def advice_given(self, run, assessment):
        self.say("[bold]Full retrain or fine-tune?[/]")
        print_assessment(self.console, assessment)

    # --- one line (or a few) per step ------------------------------------------------------------
    def show_load(self, run, info: dict[str, Any]) -> None:
        if info.get("source"):
            self.say(f"[bold]1. Import model[/]: {info['source']} ({info['family']}, "
                     f"{info['parameters'] / 1e6:.2f}M parameters)")
        elif info["version"] is None:
            self.say("[bold]1. Load model[/]: none, training from scratch (random init)")
        elif info["parameters"] is None:  # a dry run reads no weights
            self.say(f"[bold]1. Load model[/]: version {info['version']}")
        else:
            self.say(f"[bold]1. Load model[/]: version {info['version']} "
                     f"({info['parameters'] / 1e6:.2f}M parameters)")

    def show_collect(self, run, info: dict[str, Any]) -> None:
        what = "base data (--data)" if run.kind == "import" else "new data"
        msg = f"[bold]2. Collect {what}[/]: {plural(info['items'], 'item')}"
        if info["rejected"]:
            where = f"see {info['rejects_file']}" if info["rejects_file"] else "not written: dry run"
            msg += f" ({info['rejected']} rejected, {where})"
        self.say(msg)

    def show_preprocess(self, run, info: dict[str, Any]) -> None:
        self.say(f"[bold]3. Preprocess[/]: {plural(info['items'], 'item')}"
                 + (f" ({info['rejected']} rejected)" if info["rejected"] else ""))

    def show_dedupe(self, run, info: dict[str, Any]) -> None:
        n = info["contaminating"]
        held = f", {n} of them {'a held-out item' if n == 1 else 'held-out items'}" if n else ""
        self.say(f"[bold]4. Skip duplicates[/]: {info['duplicates']}{held} ({plural(info['items'], 'item')} left)")

    def show_holdout(self, run, info: dict[str, Any]) -> None:
        if info["train"] == 0 and run.kind == "import":  # steps 5-6 record base data: there is none
            self.say("  no base data: nothing to record (retention is measured once updates hold items out)")
        elif info["train"] == 0:
            self.say("[green]Nothing new to learn[/]: the model is unchanged.")

    def show_tokenize(self, run, info: dict[str, Any]) -> None:
        self.say(f"[bold]5. Tokenize[/]: {plural(info['items'], 'item')} -> {plural(info['sequences'], 'sequence')}, "
                 f"{plural(info['tokens'], 'token')}"
                 + (f" ({plural(info['held_out'], 'item')} held out)" if info["held_out"] else ""))
        total = run.parameters.get("total")
        if total and info.get("trainable_parameters") not in (None, total):
            self.say(f"  trainable: {info['trainable_parameters']:,} of {total:,} parameters "
                     f"({100 * info['trainable_parameters'] / total:.2f}%)")

    def show_precision(self, run, info: dict[str, Any]) -> None:
        if info.get("asked") == "auto":  # an explicit precision is used as asked: nothing to say
            took = f"; {info['seconds']:.1f}s to measure" if info.get("seconds") else ""
            self.say(f"  precision: {info['chose']} ({info['why']}{took})")

    def show_train(self, run, info: dict[str, Any]) -> None:
        stop = info.get("early_stopping")
        if not stop or not stop["epochs"]:
            return
        trained = len(stop["epochs"])
        why = f"; stopped: {stop['stopped']}" if stop["stopped"] else ""
        kept = ("the last" if stop["best_epoch"] == trained else f"the best, epoch {stop['best_epoch']}")
        self.say(f"  kept {kept} of {plural(trained, 'epoch')} (held-out new items' loss "
                 f"{' -> '.join(fmt(e['new_loss']) for e in stop['epochs'])}){why}")

    def show_validate(self, run, info: dict[str, Any]) -> None:
        m = info["metrics"]
        rb, ra, nb, na = (m["retention_loss_before"], m["retention_loss_after"], m["new_loss_before"],
                          m["new_loss_after"])
        self.say("[bold]7. Validate[/]:")
        if run.full:
            self.say(f"  held-out base items ({m['retention_items']}): loss {fmt(rb)} (random init) -> {fmt(ra)}")
        else:
            verdicts = info["verdicts"]
            step = thresholds(verdicts, "retention", "max_increase", "warn_increase")
            self.say(f"  retention, previously learned held-out items ({m['retention_items']}): "
                     f"loss {fmt(rb)} -> {fmt(ra)}{delta(rb, ra, *step)}")
            if m.get("drift_loss_after") is not None:
                base, db, da = m["drift_loss_baseline"], m["drift_loss_before"], m["drift_loss_after"]
                limits = thresholds(verdicts, "retention", "max_drift", "retrain_drift")
                was = f"{fmt(db)}{delta(base, db, *limits)} before this update, " if db is not None else ""
                self.say(f"  cumulative, since full training {m['drift_since']} ({m['drift_items']} of its "
                         f"held-out items): loss {fmt(base)} then; {was}{fmt(da)}{delta(base, da, *limits)} now")
            self.say(f"  learning, held-out new items ({m['new_holdout_items']}): "
                     f"loss {fmt(nb)} -> {fmt(na)}{delta(nb, na, *thresholds(verdicts, 'learning', 'min_drop', sign=-1))}")
        for v in info["verdicts"]:
            self.say(f"  [{self.STATUS_COLOR[v['status']]}]{v['status']}[/] {v['validator']}: {v['reason']}")
        for step in info["next_steps"]:
            self.say(f"  [bold]next step[/] ({', '.join(step['validators']) or 'engine'}): {step['step']}")

    def show_trial(self, result: dict, search: dict) -> None:
        """``retain update --auto``: one line per trial as it ends (the search's callback)."""
        if len(search["trials"]) == 1:
            self.say(f"[bold]6. Search (--auto)[/]: trials within {search['budget_seconds']:.1f}s, all they cost "
                     f"({search['budget']:g} of full training {search['full_training']}'s "
                     f"{search['full_training_seconds']:.1f}s of training; the configured recipe runs whole)")
        t = search["trials"][-1]
        left = search["budget_seconds"] - search["spent_seconds"]
        if t["error"]:
            self.say(f"  trial {t['number']}: [red]failed[/] ({t['error']})")
            return
        verdict = "[green]accepted[/]" if t["accepted"] else f"[red]rejected[/] ({', '.join(t['failed'])})"
        self.say(f"  trial {t['number']}: {t['describe']}: new items' loss {fmt(t['new_loss_before'])} -> "
                 f"{fmt(t['new_loss_after'])}, old{delta(t['retention_loss_before'], t['retention_loss_after'])}"
                 f"; {verdict}; {cost(t)} ({max(0.0, left):.1f}s left)")

    def show_search(self, search: dict) -> None:
        """``retain update --auto``: every trial, the winner, and whether it only confirmed the default."""
        from rich import box
        from rich.table import Table

        table = Table(title=f"--auto: {plural(len(search['trials']), 'trial')}, {search['spent_seconds']:.1f}s of "
                      f"{search['budget_seconds']:.1f}s", box=box.SIMPLE_HEAD)
        for col in ("trial", "recipe", "epochs", "new loss", "old", "since full", "gate", "train s", "all s"):
            table.add_column(col)
        for t in search["trials"]:
            gate = ("[red]error[/]" if t["error"] else "[green]accepted[/]" if t["accepted"]
                    else f"[red]rejected[/]: {', '.join(t['failed'])}")
            mark = "*" if t["number"] == search.get("winner") else ""
            drift = "-" if t.get("drift_after") is None else f"{100 * t['drift_after']:+.1f}%"
            table.add_row(f"{mark}{t['number']}", t["describe"], f"{t['epochs_trained']} (kept {t['best_epoch']})",
                          fmt(t["new_loss_after"]), delta(t["retention_loss_before"], t["retention_loss_after"]).strip(
                              " ()") or "-", drift, gate, f"{t['seconds']:.1f}",
                          f"{t.get('cost_seconds', t['seconds']):.1f}")
        self.console.print(table)
        if search.get("winner") is not None:
            confirmed = (" (the configured recipe: the search only confirmed the default, no other trial beat "
                         "it within the budget)" if search.get("confirmed_default") else "")
            self.say(f"  winner (*): trial {search['winner']}, {search['describe']}{confirmed}")
            if search.get("note"):
                self.say(f"  {search['note']}")

    def show_search_plan(self, search: dict) -> None:
        """``retain update --auto --dry-run``: what the search would cover, nothing trained."""
        about = "" if search["estimated_trials"] is None else f"about {search['estimated_trials']} of "
        trials = plural(search["max_trials"], "trial")
        self.say(f"[bold]6. Search (--auto)[/]: would run {about}at most {trials} within "
                 f"{search['budget_seconds']:.1f}s of training ({search['budget']:g} of full training "
                 f"{search['full_training']}'s {search['full_training_seconds']:.1f}s)")
        space = search["space"]
        low, high = space["learning_rate"]
        self.say(f"  searching: {', '.join(space['strategies'])}; lr {fmt_number(low)} to {fmt_number(high)}; "
                 f"{space['epochs'][0]} to {space['epochs'][1]} epochs; replay shares "
                 f"{', '.join(f'{s:g}' for s in space['replay_shares'])}")

        def took(seconds: float | None) -> str:
            return "" if seconds is None else f": about {seconds:.1f}s"

        for number, trial in enumerate(search["prior"]):
            shared = trial.get("shares_training_of")
            cost = (f": trial {shared}'s training before averaging, judged (no training of its own)"
                    if shared is not None else took(trial["estimated_seconds"]))
            self.say(f"  trial {number} (prior): {trial['describe']}{cost}")
        self.say(f"  then the sampler's recipes{took(search['sampled_estimated_seconds'])} on average")

    def show_save(self, run, info: dict[str, Any]) -> None:
        if run.search and run.search["trials"]:
            self.show_search(run.search)
        elif run.search and "prior" in run.search:
            self.show_search_plan(run.search)
        if info["status"] == "dry_run":
            self.say(f"[bold]Dry run[/]: an update would fine-tune on {info['train']} items "
                     f"({info['held_out']} held out); nothing was trained or written "
                     "(--check trains and validates without saving)")
        elif info["status"] == "check":
            verdict = "accept" if info["accepted"] else "[red]reject[/]"
            self.say(f"[bold]8. Save[/]: skipped (--check); the gate would {verdict} this update")
        elif info["status"] == "accepted" and run.kind == "import":
            self.say("[bold]7. Validate[/]: no gate for an import (the gate compares a model with its parent)")
            self.say(f"[bold]8. Save[/]: the imported model is version {info['version']}, now current")
        elif info["status"] == "accepted":
            self.say(f"[bold]8. Save[/]: version {info['version']} is now current")
        else:
            self.say(f"[bold red]8. Save[/]: version {info['version']} kept as [red]rejected[/]; "
                     f"current stays {run.parent}")


class ProgressLines:
    """Training progress as plain lines, for a log file (stdout not a terminal: no bar).

    A line at least every ``every`` seconds, and at every tenth of an epoch when the epoch
    takes longer than ``every`` (projected from its pace): an epoch shorter than that gets
    none, its epoch line comes soon enough. Each line says where the training is, the
    epoch's mean loss so far, the tokens per second since the last line, and when the epoch
    and the training (the epochs planned: early stopping may end it sooner) will end."""

    def __init__(self, say: Callable[[str], None], every: float, clock: Callable[[], float] = time.monotonic):
        self.say, self.every, self.clock = say, every, clock
        self.epoch = None

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, tokens: int | None) -> None:
        now = self.clock()
        if epoch != self.epoch:  # a new epoch: its pace and mean start over
            self.epoch, self.epoch_started, self.last = epoch, now, now
            self.loss_sum, self.tokens, self.tenth = 0.0, 0, 0
            if epoch == 1 or not hasattr(self, "started"):
                self.started = now
            self.done_before = (epoch - 1) * steps  # steps of the epochs before, for the ETA
        elif tokens:  # (not the first step's: it ran before the clock started)
            self.tokens += tokens
        self.loss_sum += loss
        tenth = 10 * step // steps
        long_epoch = (now - self.epoch_started) * steps / step > self.every
        due = now - self.last >= self.every or (tenth > self.tenth and long_epoch)
        self.tenth = tenth
        if not due or step == steps:  # the epoch's own line follows its last step
            return
        self.say(self.line(epoch, epochs, step, steps, now))
        self.last, self.tokens = now, 0

    def line(self, epoch: int, epochs: int, step: int, steps: int, now: float) -> str:
        since = max(now - self.last, 1e-9)
        per_step = (now - self.started) / (self.done_before + step)  # the training's pace so far
        epoch_left = (steps - step) * per_step
        training_left = epoch_left + (epochs - epoch) * steps * per_step
        rate = f", {self.tokens / since:,.0f} tokens/s" if self.tokens else ""
        ends = f"epoch ends in {duration(epoch_left)}"
        if epoch < epochs:
            ends += f", training in {duration(training_left)}"
        loss = self.loss_sum / step
        return (f"  epoch {epoch}/{epochs}, step {step:,}/{steps:,} ({100 * step / steps:.0f}%): "
                f"loss {loss:.4f}{rate}; {ends}")


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: an ETA, as precise as it is worth."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def print_assessment(console, assessment) -> None:
    """``retain status``: each retrain check, then the one-line summary."""
    for c in assessment.checks:
        mark = "[red]retrain[/]" if c.retrain else "[green]ok[/]     "
        console.print(f"  {mark} {c.name}: {c.reason}", highlight=False)
    color = "bold red" if assessment.retrain else "bold green"
    console.print(f"[{color}]{assessment.summary}[/]", highlight=False)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


# --- the tables of the listing commands (plugins, strategies, history, validate) ------------------

def plugins_table(rows: list[dict]) -> Table:
    """``retain plugins``: each registered plugin, its package, hooks and what it provides."""
    table = Table(title="retain plugins")
    table.add_column("plugin", no_wrap=True)
    table.add_column("package", no_wrap=True)
    table.add_column("hooks", max_width=24)
    table.add_column("provides", max_width=40)
    for r in rows:
        batch = [f"source:{name}" for name, streams in r.get("streams", {}).items() if not streams]
        provides = [f"{p} (does not stream)" if p in batch else p for p in r["provides"]]
        table.add_row(r["name"], r["package"], ", ".join(r["hooks"]), ", ".join(provides))
    return table


def strategies_table(rows: list[dict]) -> Table:
    """``retain strategies``: name, description, option defaults."""
    table = Table(title="strategies (fine_tuning.strategy, or --strategy a,b)")
    table.add_column("name", no_wrap=True)
    table.add_column("description", max_width=48)
    table.add_column("options (defaults)", max_width=36)
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        table.add_row(r["name"], r["description"], opts)
    return table


def recipe(row: dict) -> str:
    """The strategies a version trained with; for --auto, the recipe that won its search."""
    search = row.get("search")
    if search:
        return f"auto ({plural(search['trials'], 'trial')}): {search['describe']}"
    return ",".join(row.get("strategies") or []) or "-"


def history_table(rows: list[dict], title: str) -> Table:
    """``retain history``: one row per version (``core/versions.history``), * on the current one."""
    from rich import box

    def loss(before, after):
        return "-" if before is None or after is None else f"{before:.3f} → {after:.3f}"

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("version", "parent", "kind"):
        table.add_column(col, no_wrap=True)
    table.add_column("gate", min_width=10)
    for col in ("lr", "learned"):
        table.add_column(col, no_wrap=True)
    table.add_column("recipe", min_width=8)
    for col in ("old items' loss", "new items' loss"):
        table.add_column(col, min_width=7)
    table.add_column("created (UTC)", min_width=10)
    for r in rows:
        if r["status"] == "unreadable":
            table.add_row(r["version"], "", "", f"[red]unreadable[/] {r['error']}", "", "", "", "", "", "")
            continue
        m = r["metrics"]
        status = {"accepted": "[green]accepted[/]", "rejected": "[red]rejected[/]"}.get(r["status"], r["status"])
        if r["failed"]:
            status += f": {', '.join(r['failed'])}"
        elif r["warned"]:
            status += f" (warn: {', '.join(r['warned'])})"
        if r["pruned"]:
            status += " [dim](pruned)[/]"
        kind = {"full_training": "full", "fine_tuning": "update", "import": "import"}.get(r["kind"], r["kind"] or "")
        imported = r["kind"] == "import"  # learned nothing, at no rate: its base data was only recorded
        table.add_row(("*" if r["current"] else "") + r["version"], r["parent"] or "-", kind, status,
                      f"{r['learning_rate']:g}" if r["learning_rate"] is not None else "-",
                      "-" if imported else str(r["items_learned"]),
                      "-" if imported else recipe(r), loss(m["retention_loss_before"], m["retention_loss_after"]),
                      loss(m["new_loss_before"], m["new_loss_after"]),
                      (r["created_at"] or "")[:16].replace("T", " "))
    return table


def print_validation(console, result: dict) -> None:
    """``retain validate``: the version against its parent, each verdict, the next steps."""
    m = result["metrics"]
    console.print(f"version {result['version']} vs its parent {result['parent']}: old items "
                  f"({m['retention_items']}) loss {m['retention_loss_before']:.4f} -> "
                  f"{m['retention_loss_after']:.4f}; new items ({m['new_holdout_items']}) loss "
                  f"{m['new_loss_before']:.4f} -> {m['new_loss_after']:.4f}", highlight=False)
    if result["already_learned"]:
        console.print(f"[yellow]warning:[/] {result['already_learned']} of the {result['items']} items "
                      "were trained on or held out by this version's chain: not a fair held-out test")
    for v in result["verdicts"]:
        color = {"pass": "green", "warn": "yellow", "fail": "red"}[v["status"]]
        console.print(f"  [{color}]{v['status']}[/] {v['validator']}: {v['reason']}", highlight=False)
    for step in result["next_steps"]:
        console.print(f"  [bold]next step[/]: {step['step']}", highlight=False)


def cost(trial: dict) -> str:
    """An --auto trial's seconds: its training and all it cost (a candidate judged from another
    trial's training trained nothing: its scoring is in that trial's cost)."""
    if trial.get("shares_training_of") is not None:
        return f"trial {trial['shares_training_of']}'s training, unaveraged: {trial['cost_seconds']:.1f}s to judge"
    return f"{trial['seconds']:.1f}s training, {trial.get('cost_seconds', trial['seconds']):.1f}s in all"
