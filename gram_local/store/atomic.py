"""Files that appear whole or not at all, and the leftovers of work that never finished.

Everything the store writes goes through a temporary name and one rename, so a reader (or a crash)
sees the old file or the new one, never half of either. Work folders and orphaned files are swept
only once they are stale: a younger one may belong to a pull still running in another process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["STALE_SECONDS", "staging", "sweep_stale", "write_atomic"]

STALE_SECONDS = 3600.0


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, keeping the old file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sweep_stale(paths: Iterable[Path], *, max_age: float = STALE_SECONDS) -> None:
    """Remove the files and folders among `paths` older than `max_age` seconds; errors are ignored."""
    now = time.time()
    for p in paths:
        try:
            if now - p.lstat().st_mtime < max_age:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A private work folder under `root`, removed on exit; stale ones left by crashes go first.

    `root` should be on the store's filesystem, so finished files are renamed into place, not copied.
    """
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root.iterdir())
    work = Path(tempfile.mkdtemp(dir=root, prefix="work-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
