"""Output files that appear only when complete, and scratch files that never outlive a run."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fresh_path(folder: Path, stem: str, suffix: str) -> Path:
    """Create an empty file with an unused hidden name in `folder` (mode 0666 less the umask)."""
    while True:
        path = folder / f".{stem}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


@contextmanager
def staged_output(final: Path) -> Iterator[Path]:
    """A temporary name beside `final`, renamed onto it only if the block completes.

    Same folder, so the rename is atomic: readers see the old file or the whole new one, never a
    half-written GGUF, and an interrupted run leaves no partial output behind.
    """
    tmp = _fresh_path(final.parent, final.name, ".partial")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def scratch_file(folder: Path, stem: str, suffix: str) -> Iterator[Path]:
    """A temporary file in `folder` that is removed however the block ends."""
    tmp = _fresh_path(folder, stem, suffix)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
