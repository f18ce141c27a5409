"""What a person reads on the terminal: log lines, and one progress display per phase (reading
prompts, generating with a model, scoring, logging to MLflow).

On a terminal a phase is a live bar (rich): done / total, rate, time left. Elsewhere (CI, a pipe
into `tee`) it is a plain line at most every PLAIN_EVERY_S seconds, and none for a phase that
ends sooner. `darkroom` configures the console once per command (`configure`); code used as a
library gets a console that prints log lines and shows no progress.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

PLAIN_EVERY_S = 5.0
RATE_WINDOW_S = 60.0  # the rate is measured over the last minute of progress


@dataclass
class Phase:
    """One phase's progress: `advance` it as work is done."""

    console: Console
    name: str
    total: int | None
    unit: str
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    task: Any = None  # the rich task, when live
    samples: deque = field(default_factory=deque)  # (time, done) of recent advances

    def advance(self, count: int = 1) -> None:
        """Count `count` more units done."""
        self.done += count
        now = time.monotonic()
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        self.console._advanced(self, count)

    def rate(self) -> float | None:
        """Units per second over the last minute of advances (not counting the wait for the
        first: starting actors is not a rate); None until there are two."""
        if len(self.samples) < 2 or self.samples[-1][0] <= self.samples[0][0]:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0)

    def counts(self) -> str:
        """done/total unit (percent), rate, time left: what a bar shows beside it."""
        rate = self.rate()
        speed = "" if rate is None else f", {rate:.1f} {self.unit}/s"
        if self.total is None:
            return f"{self.done} {self.unit}{speed}" if self.done else ""
        eta = "?" if not rate else _clock((self.total - self.done) / rate)
        return (f"{self.done}/{self.total} {self.unit} "
                f"({100 * self.done // max(self.total, 1)}%){speed}, ETA {eta}")

    def line(self) -> str:
        """The plain progress line: the phase's name and its counts."""
        return f"{self.name}: {self.counts() or 'working'}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Console:
    """Log lines and phases for one command. `live`: bars on a terminal (default: when the
    stream is one and not `verbose`); `progress` False: no progress at all (library use)."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False,
                 live: bool | None = None, progress: bool = True) -> None:
        self.stream = stream
        self.verbose = verbose
        self.progress = progress
        out = self._out()
        self.live = (progress and not verbose and _is_terminal(out)) if live is None else live
        self._bars: Any = None  # rich Progress while a phase is open
        self._open: list[Phase] = []
        self._last_line = 0.0

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def log(self, line: str) -> None:
        """Print a line (above the bars while they are shown), at once."""
        if self._bars is not None:
            self._bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        out = self._out()
        out.write(f"{line}\n")
        out.flush()

    def detail(self, line: str) -> None:
        """A line shown only with --verbose (per-file writes, and the like)."""
        if self.verbose:
            self.log(line)

    @contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "rows") -> Iterator[Phase]:
        """A phase's progress display for the body."""
        phase = Phase(self, name, total, unit)
        self._open.append(phase)
        if self.progress and self.live:
            if self._bars is None:
                self._bars = _bars(self._out())
                self._bars.start()
            phase.task = self._bars.add_task(name, total=total, phase=phase)
        try:
            yield phase
        finally:
            self._open.remove(phase)
            if self._bars is not None:
                self._bars.update(phase.task, completed=phase.done)  # its final count stays
                if not self._open:
                    self._bars.stop()
                    self._bars = None

    def _advanced(self, phase: Phase, count: int) -> None:
        if not self.progress:
            return
        if self._bars is not None and phase.task is not None:
            self._bars.advance(phase.task, count)
            return
        now = time.monotonic()
        if now - max(self._last_line, phase.started) >= PLAIN_EVERY_S:
            self._last_line = now
            self.log(phase.line())


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def _bars(stream: TextIO) -> Any:
    """A rich Progress on `stream`: name, bar, then the phase's own counts (`Phase.counts`)."""
    from rich.console import Console as RichConsole
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Counts(ProgressColumn):
        def render(self, task) -> Text:
            return Text(task.fields["phase"].counts())

    return Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=30), TimeElapsedColumn(),
        Counts(), console=RichConsole(file=stream), transient=False, refresh_per_second=4,
        redirect_stdout=True, redirect_stderr=True,
    )


_current = Console(progress=False)


def configure(*, verbose: bool = False, stream: TextIO | None = None,
              live: bool | None = None) -> Console:
    """The console of this command: bars on a terminal, plain lines elsewhere."""
    global _current
    _current = Console(stream, verbose=verbose, live=live)
    return _current


def current() -> Console:
    """The console `configure` set up (no progress display until it is called)."""
    return _current
