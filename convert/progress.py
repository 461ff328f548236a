"""How the converter reports its progress: it calls back, and the command line draws it
(`gram_local.cli.display.StageProgress`); library code never writes to the terminal."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, float, float, str], None]
"""`(stage, done, total, unit)`: "converting" counts bytes written, "quantizing to Q4_K_M" counts
tensors; each stage's calls end with `done == total`."""
