"""Progress on the command line: a bar on a terminal (rich), periodic lines otherwise.

Both go to stderr, so stdout carries only results (an archive id, a JSON document).
On a terminal the bar shows the share done, bytes done of the total in binary units
(KiB, MiB, GiB), the rate and the time left; when stderr is not a terminal (a log, CI)
a plain line is written every ``interval`` seconds (10 by default) and at the end, so
that a log is not flooded with redraws. Callbacks may come often; the display is redrawn
at most every ``interval`` seconds (0.2 on a terminal). rich is imported only when a
bar is drawn, so no command pays for it at start-up.

A display is a context manager: leaving it (also through an exception) stops the bar
and gives the terminal back its cursor; :meth:`ProgressDisplay.finish` draws the final
state first.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressDisplay:
    """A ``(done, total)`` callback that shows progress of one named operation."""

    def __init__(
        self,
        what: str,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float | None = None,
        enabled: bool = True,
        unit: str = "bytes",
    ) -> None:
        self.what = what
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = 0.0
        self._done = self._total = 0
        self._bar: Any = None  # rich.progress.Progress once drawn
        self._task: Any = None
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw()

    def line(self) -> str:
        """The progress as one line of text (what a log gets)."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self._done / elapsed
        share = self._done / self._total if self._total else 1.0
        if self.unit == "bytes":
            return (
                f"{self.what}: {human_bytes(self._done)} of {human_bytes(self._total)}"
                f" ({share:.0%}), {human_bytes(rate)}/s"
            )
        return f"{self.what}: {self._done} of {self._total} {self.unit} ({share:.0%})"

    def _draw(self) -> None:
        if not self.tty:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            return
        if self._bar is None:
            self._bar = _rich_bar(self.stream, self.unit)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self._total or None)
        self._bar.update(self._task, completed=self._done, total=self._total or None)
        self._bar.refresh()

    def finish(self) -> None:
        """Draw the final state and end the display (once: a second call does nothing)."""
        if self.enabled and not self._finished:
            self._draw()
        self._finished = True
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _rich_bar(stream: TextIO, unit: str) -> Any:
    """A rich Progress drawing on ``stream``, refreshed only when we say (no thread)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class BinaryRate(ProgressColumn):
        """Bytes per second in binary units (rich's own column is decimal)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-" if speed is None else f"{human_bytes(speed)}/s")

    amounts: list[Any]
    if unit == "bytes":
        amounts = [DownloadColumn(binary_units=True), BinaryRate()]
    else:
        amounts = [MofNCompleteColumn(), TextColumn(unit)]
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        *amounts,
        TimeRemainingColumn(),
        console=Console(file=stream, force_terminal=True),
        auto_refresh=False,
    )
