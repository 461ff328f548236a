"""What the CLI shows on the terminal while the model works: the reasoning live, or a progress line.

Library code never prints; it calls back (`on_think`, batch progress), and this module draws.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

PROGRESS_DELAY = 2.0
"""Seconds before a progress line appears: quick judgments stay silent."""


class ThinkDisplay:
    """The `on_think` callback of the judging commands.

    With `stream`, the think text of every judgment goes to stderr as it is generated, a whole line
    at a time, each line labelled with its judgment (`[AB]`, `[BA]`, `[vote 3]`...). Otherwise, on
    a terminal, a progress line (think tokens so far of the budget, tokens/s) after a couple of
    seconds. Off a terminal and without `stream`, nothing.
    """

    def __init__(self, labels: list[str] | None, *, budget: int, stream: bool, out: IO[str] | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.labels = labels
        self.stream = stream
        self._lines: dict[int, str] = {}
        self._bar: Any = None
        if not stream and self.out.isatty() and budget > 0:
            total = budget * len(labels) if labels else None
            self._bar = tqdm(total=total, unit="tok", desc="thinking", delay=PROGRESS_DELAY, file=self.out,
                             leave=False, dynamic_ncols=True)

    def _label(self, index: int) -> str:
        if self.labels and index < len(self.labels):
            return self.labels[index]
        return str(index)

    def __call__(self, index: int, text: str) -> None:
        if self._bar is not None:
            self._bar.update(1)
        if not self.stream or not text:
            return
        buffered = self._lines.get(index, "") + text
        *complete, rest = buffered.split("\n")
        for line in complete:
            self.out.write(f"[{self._label(index)}] {line}\n")
        self._lines[index] = rest
        if complete:
            self.out.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for index, rest in sorted(self._lines.items()):
            if rest:
                self.out.write(f"[{self._label(index)}] {rest}\n")
        self._lines.clear()
        self.out.flush()

    def __enter__(self) -> ThinkDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchProgress:
    """Progress of a batch on stderr: a bar with rate and ETA on a terminal, a plain line every so
    often otherwise (so logs of unattended jobs show it too)."""

    def __init__(self, out: IO[str] | None = None, *, tty: bool | None = None, interval: float = 30.0,
                 label: str = "gram-local batch", backend: Any = None) -> None:
        self.out = out if out is not None else sys.stderr
        # A remote backend: the line also shows its requests in flight and failed attempts.
        self.backend = backend if getattr(backend, "remote", False) else None
        self.tty = self.out.isatty() if tty is None else tty
        self.interval = interval
        self.label = label
        self.failed = 0
        self._bar: Any = None

    def start(self, total: int, skipped: int) -> None:
        if skipped:
            self.out.write(f"{self.label}: {skipped} task(s) already done in OUT; {total} to judge\n")
        elif not self.tty:
            self.out.write(f"{self.label}: {total} task(s) to judge\n")
        self.out.flush()
        self._bar = tqdm(
            total=total, unit="task", file=self.out if self.tty else _Lines(self.out), dynamic_ncols=self.tty, desc=self.label,
            mininterval=0.2 if self.tty else self.interval, disable=False,
            bar_format=None if self.tty else "{desc}: {n_fmt}/{total_fmt} ({percentage:.1f}%) {rate_fmt} ETA {remaining}{postfix}",
        )

    def advance(self, ok: bool) -> None:
        if not ok:
            self.failed += 1
        parts = [f"{self.failed} failed"] if self.failed else []
        if self.backend is not None:
            parts.append(f"{self.backend.in_flight()} in flight, {self.backend.stats.errors} request errors")
        if self._bar is not None:
            if parts:
                self._bar.set_postfix_str(", ".join(parts), refresh=False)
            self._bar.update(1)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _Lines:
    """A file for tqdm off a terminal: each redraw becomes its own line, so logs read top to bottom."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.out.write(text + "\n")

    def flush(self) -> None:
        self.out.flush()


class StageProgress:
    """The converter's stages as bars on stderr (`convert.progress.ProgressCallback`): one tqdm bar
    per stage, bytes shown in GB."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: float, total: float, unit: str) -> None:
        scale, shown, digits = (1e-9, "GB", 2) if unit == "bytes" else (1.0, unit, 0)
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total * scale, desc=stage, file=self.out, mininterval=0.1,
                             bar_format=f"{{desc}} {{percentage:3.0f}}% |{{bar:30}}| {{n:.{digits}f}}/{{total:.{digits}f}} "
                                        f"{shown} {{elapsed}}")
        self._bar.total = total * scale
        self._bar.update(done * scale - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stage = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
