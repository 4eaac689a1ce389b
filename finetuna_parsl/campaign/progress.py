"""Progress display: a one-line bar on a terminal, periodic plain lines in logs and CI."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .driver import Progress


class ProgressLine:
    """Call with a Progress after every change; prints at most every `interval` seconds off a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 10.0, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.width = width
        self._last_print = 0.0
        self._last_text = ""
        self._closed = False  # the finished line is written (a terminal's bar ends with it)
        self.start = time.monotonic()

    def text(self, p: Progress) -> str:
        finished = p.done + p.failed
        filled = int(self.width * finished / p.total) if p.total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.start
        this_run = p.parent_calls - p.resumed_parent_calls
        resumed = f" ({this_run} this run)" if p.resumed_parent_calls else ""
        return (
            f"{self.label} [{bar}] {finished}/{p.total} done={p.done} running={p.running} "
            f"failed={p.failed} parent_calls={p.parent_calls}{resumed} {elapsed:.0f}s"
        )

    def __call__(self, p: Progress) -> None:
        text = self.text(p)
        finished = p.done + p.failed == p.total
        if self.tty:
            if self._closed:  # the campaign reports once more after the last system: the bar is already done
                return
            self.stream.write("\r" + text + ("\n" if finished else ""))
            self.stream.flush()
            self._closed = finished
            return
        now = time.monotonic()
        core = text.rsplit(" ", 1)[0]
        if core != self._last_text and (finished or now - self._last_print >= self.interval):
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = now
            self._last_text = core
