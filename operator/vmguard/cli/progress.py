"""Progress on the command line: a bar on a terminal, periodic lines otherwise.

Both go to stderr, so stdout carries only results (an archive id, a JSON document).
Callbacks may come often; the display is redrawn at most every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR = 30


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

    def __call__(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(final=False)

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self._done / elapsed
        share = self._done / self._total if self._total else 1.0
        if self.unit == "bytes":
            text = (
                f"{self.what}: {human_bytes(self._done)} of {human_bytes(self._total)}"
                f" ({share:.0%}), {human_bytes(rate)}/s"
            )
        else:
            text = f"{self.what}: {self._done} of {self._total} {self.unit} ({share:.0%})"

        if self.tty:
            filled = int(_BAR * share)
            text = f"[{'#' * filled}{'.' * (_BAR - filled)}] " + text
        return text

    def _draw(self, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self._line() + ("\n" if final else ""))
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(final=True)
