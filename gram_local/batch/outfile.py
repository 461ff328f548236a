"""OUT on disk: durable appends, a writer lock, and repair of what a killed run left behind.

Every finished task is appended as one line and fsync'd before the next starts; a rerun reads OUT
back, drops a line cut short by a kill, and keeps only what is still valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gram_local.batch.records import is_record, settings_differences
from gram_local.batch.tasks import Task, id_key
from gram_local.errors import BatchUsageError, SettingsMismatchError


@dataclass
class _Line:
    key: str
    status: str
    fingerprint: str | None
    settings: Any
    start: int
    end: int  # exclusive; includes the newline when there is one
    newline: bool = True


@dataclass
class _Scan:
    lines: list[_Line] = field(default_factory=list)
    unreadable: int = 0  # complete lines that are not records
    cut: bool = False  # a last line without its newline that is not a whole record


def _scan(path: Path) -> _Scan:
    scan = _Scan()
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            start, offset = offset, offset + len(raw)
            complete = raw.endswith(b"\n")
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                value = None
            if not is_record(value):
                if complete:
                    scan.unreadable += 1
                else:
                    scan.cut = True
                continue
            # A last line that parses as a whole record lost only its newline: keep it.
            scan.lines.append(
                _Line(
                    key=id_key(value["id"]),
                    status=value["status"],
                    fingerprint=value.get("task_sha256"),
                    settings=value.get("run_settings"),
                    start=start,
                    end=offset,
                    newline=complete,
                )
            )
    return scan


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file survive a power cut (POSIX only; a no-op elsewhere)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """One record, whole: os.write may write less than asked."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a record is written and counted, so an interrupt never cuts a
    line or loses a count; the held signal is acted on right after.

    Held at the Python level: Python runs handlers in the main thread whichever thread the kernel
    delivers to, and llama.cpp's worker threads do not share a signal mask set afterwards.
    (kill -9 cannot be held; the next run repairs what it leaves.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be changed from the main thread, which is also where they run
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


class Appender:
    """Appends records to OUT; each is on disk (fsync) before `write` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(path.parent)

    def write(self, record: Mapping[str, Any], then: Callable[[], None] | None = None) -> None:
        """Write one record; `then` runs inside the same held-signal block, so whatever counts the
        record is never skipped by an interrupt that arrives while it is written."""
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with _signals_deferred():
            _write_all(self.fd, data)
            os.fsync(self.fd)
            if then is not None:
                then()

    def close(self) -> None:
        os.close(self.fd)


class OutLock:
    """Refuses a second batch on the same OUT: two writers would duplicate records.

    The lock file stays after the run (deleting it races with a process opening it); the kernel
    drops the lock itself when the holder dies, kill -9 included.
    """

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(out.name + ".lock")
        self.handle: IO[str] | None = None

    def __enter__(self) -> OutLock:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return self
        self.handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            self.handle = None
            raise BatchUsageError(f"another gram-local batch is writing {self.path.name[:-5]} (lock {self.path})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def _rewrite(path: Path, scan: _Scan, keep: list[_Line]) -> None:
    """Write OUT again with only `keep` lines: to a temp file, fsync'd, then renamed over OUT.

    A kill at any point leaves either the old file or the new one, never a mix.
    """
    tmp = path.with_name(path.name + ".rewrite")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a killed rewrite; we hold the lock, so it is ours
    # O_EXCL (with O_NOFOLLOW where there is one): never write through a link planted at that name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:
        raise BatchUsageError(f"cannot rewrite {path}: {tmp} appeared while it was being written") from None
    with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
        for line in keep:
            src.seek(line.start)
            dst.write(src.read(line.end - line.start))
            if not line.newline:
                dst.write(b"\n")
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class Prepared:
    done: set[str]  # keys of selected tasks with an ok record for the same task
    notes: list[str]


def prepare(
    path: Path,
    selected: Mapping[str, Task],
    all_keys: set[str],
    settings: Mapping[str, Any],
    *,
    reset_on_mismatch: bool,
) -> Prepared:
    """Read OUT back, check its settings, and leave it holding only what the run keeps.

    Kept: ok records (any id) of the current settings, except those of selected tasks whose content
    changed. Dropped: a cut-off last line, unreadable lines, earlier duplicates of an id, and error
    records of selected tasks (about to be retried) or of ids no longer in the input.
    """
    notes: list[str] = []
    if not path.exists():
        return Prepared(set(), notes)
    scan = _scan(path)
    if scan.unreadable and not scan.lines:
        if reset_on_mismatch:
            path.unlink()
            return Prepared(set(), notes)
        raise BatchUsageError(
            f"{path} exists and holds no gram-local batch records; refusing to overwrite it "
            "(choose another -o, or --force to replace it)"
        )
    last: dict[str, _Line] = {}
    for line in scan.lines:
        last[line.key] = line
    for line in last.values():
        if line.status != "ok":
            continue
        differences = settings_differences(line.settings, settings)
        if differences:
            if reset_on_mismatch:
                path.unlink()
                fsync_dir(path.parent)
                return Prepared(set(), [f"{path.name} held results of other settings: started it over"])
            raise SettingsMismatchError(path, differences)

    keep: list[_Line] = []
    done: set[str] = set()
    changed = 0
    for line in scan.lines:
        if last[line.key] is not line:
            continue
        task = selected.get(line.key)
        if line.status == "ok":
            if task is not None and line.fingerprint != task.fingerprint:
                changed += 1
                continue
            keep.append(line)
            if task is not None:
                done.add(line.key)
        elif task is None and line.key in all_keys:
            keep.append(line)  # a failed row outside this run's selection: retried when selected
    if scan.cut:
        notes.append(f"dropped a cut-off last line of {path.name} (the previous run was killed while writing it)")
    if scan.unreadable:
        notes.append(f"dropped {scan.unreadable} unreadable line(s) of {path.name}")
    if changed:
        notes.append(f"{changed} task(s) changed since their result was written: judging them again")
    if len(keep) != len(scan.lines) or scan.cut or scan.unreadable or any(not line.newline for line in keep):
        _rewrite(path, scan, keep)
    return Prepared(done, notes)


