"""The progress display: a rich bar in human units on a terminal, plain periodic lines
otherwise, and the terminal given back (cursor shown) when the operation fails."""

from __future__ import annotations

import io

import pytest

from vmguard.cli.progress import ProgressDisplay

pytestmark = pytest.mark.unit

MiB = 1 << 20


def test_a_terminal_gets_a_bar_with_binary_units() -> None:
    out = io.StringIO()
    display = ProgressDisplay("backup vm1", stream=out, tty=True, interval=0)
    with display:
        for done in range(0, 65 * MiB, 16 * MiB):
            display(done, 64 * MiB)
        display.finish()
    text = out.getvalue()
    assert "backup vm1" in text and "64.0/64.0 MiB" in text, text
    assert "━" in text  # rich's bar
    assert "\x1b[?25h" in text  # the cursor is shown again


def test_no_terminal_gets_lines_every_interval_and_a_last_one() -> None:
    out = io.StringIO()
    display = ProgressDisplay("restore", stream=out, tty=False, interval=3600)
    display(0, 8 * MiB)  # the first call draws; later ones wait for the interval
    display(4 * MiB, 8 * MiB)
    display.finish()
    display.finish()  # once only
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "restore: 0 B of 8.0 MiB (0%)",
        "restore: 4.0 MiB of 8.0 MiB (50%)",
    ]
    assert "\x1b" not in out.getvalue()


def test_a_failure_stops_the_bar() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), ProgressDisplay("x", stream=out, tty=True) as display:
        display(1, 2)
        raise RuntimeError("the transfer failed")
    assert out.getvalue().rstrip().endswith("\x1b[?25h"), repr(out.getvalue()[-40:])
