"""A progress bar on stderr: one redrawn line on a terminal, one line per step elsewhere (a CI
log keeps every step, with the time it started)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 28


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = time.monotonic()

    def step(self, label: str) -> None:
        """Say that the step ``label`` starts now."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if self.tty:
            filled = WIDTH * self.done // max(1, self.total)
            bar = "#" * filled + "-" * (WIDTH - filled)
            self.stream.write(f"\r\x1b[K[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}")
        else:
            self.stream.write(f"[{self.done + 1}/{self.total} {elapsed:.0f}s] {label}\n")
        self.stream.flush()
        self.done += 1

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
