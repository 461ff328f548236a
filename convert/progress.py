"""A one-line progress bar on stderr; silent unless asked for (by default: only on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def wants_progress(progress: bool | None, stream: TextIO | None = None) -> bool:
    """`None` means: show it when stderr is a terminal, so logs and pipes stay clean."""
    if progress is not None:
        return progress
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Redraws `label  42% [#####     ] 2.7/6.4 GB  31 s` at most ten times a second."""

    def __init__(self, label: str, total: float, *, enabled: bool, unit: str = "GB", scale: float = 1e9) -> None:
        self.label, self.total, self.enabled = label, max(total, 1e-9), enabled
        self.unit, self.scale = unit, scale
        self.done = 0.0
        self._start = time.monotonic()
        self._drawn = 0.0

    def advance(self, amount: float) -> None:
        self.set(self.done + amount)

    def set(self, done: float) -> None:
        self.done = done
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= 0.1 or done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(frac * 30)
        if self.scale == 1:
            amount = f"{self.done:.0f}/{self.total:.0f} {self.unit}"
        else:
            amount = f"{self.done / self.scale:.2f}/{self.total / self.scale:.2f} {self.unit}"
        sys.stderr.write(f"\r{self.label} {frac:4.0%} [{bar:<30}] {amount}  {now - self._start:.0f} s\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()
