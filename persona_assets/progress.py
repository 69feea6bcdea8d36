"""Progress of long steps: lines in the run's log at intervals (the UI shows them), and a live terminal
display while `persona run` runs in a terminal.

The logic that loops (ICM, training, generation) takes a plain callback ``(done, total, fields)`` and knows
nothing of either; a ``Tracker`` is that callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

# A long step logs a line at most this often, so a run of hours keeps a readable log.
LOG_EVERY_S = 10.0


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _fields_text(fields: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


class Tracker:
    """Reports ``done`` of ``total`` for ``label``: a log line on the first update, then at most every
    ``every_s`` seconds, and on the last (unless ``log_last`` is off: a total that grows call by call has
    many 'last' updates); every update to the live display when one is on."""

    def __init__(
        self,
        log: Callable[[str], None],
        label: str,
        total: int,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        log_last: bool = True,
    ):
        self.log, self.label, self.total, self.every_s, self.clock = log, label, total, every_s, clock
        self.log_last = log_last
        self.started = clock()
        self.logged_at: float | None = None
        self.first_done: int | None = None

    def line(self, done: int, fields: dict, now: float) -> str:
        """``label: done/total (pct), fields, elapsed, ETA`` (the ETA from the rate since the first update, so
        a resumed search does not count the iterations it skipped)."""
        percent = 100 * done / self.total if self.total else 100.0
        parts = [f"{self.label}: {done}/{self.total} ({percent:.0f}%)"]
        if fields:
            parts.append(_fields_text(fields))
        elapsed = now - self.started
        parts.append(f"elapsed {_duration(elapsed)}")
        progressed = done - (self.first_done or 0)
        if 0 < done < self.total and progressed > 0 and elapsed > 0:
            parts.append(f"ETA {_duration(elapsed / progressed * (self.total - done))}")
        return ", ".join(parts)

    def __call__(self, done: int, total: int | None = None, fields: dict | None = None) -> None:
        if total is not None:
            self.total = total
        if self.first_done is None:
            self.first_done = done
        now = self.clock()
        fields = fields or {}
        if _live is not None:
            _live.step(self.label, done, self.total, _fields_text(fields))
        due = self.logged_at is None or now - self.logged_at >= self.every_s
        due = due or (self.log_last and done >= self.total)
        if due:
            self.log(self.line(done, fields, now))
            self.logged_at = now


class LiveDisplay:
    """One line for the run in progress and one for its step's progress; silent when the console is not a
    terminal (a CI log or a pipe gets the plain lines the runner prints)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            disable=not self.console.is_terminal,
            transient=True,
        )
        self.run_task: TaskID | None = None
        self.step_task: TaskID | None = None
        self.step_label = ""

    def run(self, index: int, total: int, what: str) -> None:
        if self.run_task is None:
            self.run_task = self.progress.add_task("runs", total=total, detail="")
        self.progress.update(
            self.run_task, completed=index, description=f"run {index + 1}/{total}", detail=what
        )
        self._drop_step()

    def step(self, label: str, done: int, total: int, detail: str) -> None:
        if label != self.step_label:
            self._drop_step()
            self.step_task = self.progress.add_task(label, total=total, detail="")
            self.step_label = label
        self.progress.update(self.step_task, completed=done, total=total, detail=detail)

    def _drop_step(self) -> None:
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
        self.step_task, self.step_label = None, ""


_live: LiveDisplay | None = None


@contextmanager
def live_display(console: Console | None = None) -> Iterator[LiveDisplay]:
    """Show live progress for the duration of the block (what ``persona run`` wraps its runs in)."""
    global _live
    display = LiveDisplay(console)
    _live = display
    try:
        with display.progress:
            yield display
    finally:
        _live = None


def live_run(index: int, total: int, what: str) -> None:
    """Tell the live display, if one is on, which run has started."""
    if _live is not None:
        _live.run(index, total, what)
