"""Batch judging over JSONL files that never loses finished work.

Why it is built this way: a batch of thousands of pairs runs for hours on machines that sleep, crash
or get killed. So every finished task is appended to OUT as one line and fsync'd before the next one
starts; a rerun reads OUT back, drops a line cut short by a kill, and judges only what is missing.

Input (one task per line):
  comparison   {"id", "question", "a", "b"}                 optional "swap", "votes" (then a vote)
  ranking      {"id", "question", "responses": [...], "op": "rank" | "best-of-n"}   optional "swap",
               and for rank "method" ("sort" | "round-robin")
`op` may also be "compare" or "vote" explicitly. Other fields are ignored, so rows can carry labels.
A row without an id gets `sha256:` + the first 16 hex digits of the SHA-256 of its content
(canonical JSON; the raw line for a row that is not JSON): stable when rows move or the file is
edited elsewhere, unlike a line number, which would silently pair an old result with a new task.

Output (one record per input id, any order):
  {"id", "op", "status": "ok", <the result fields of the single command>, "task_sha256", "run_settings"}
  {"id", "op", "status": "error", "error": {"type", "message"}, "line", "task_sha256", "run_settings"}
`run_settings` is the judge's settings record plus the batch defaults; a rerun whose settings differ
from those of the records in OUT is refused, naming the keys. `task_sha256` identifies the task's
content: a record whose task has changed since is judged again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

from gram_local.errors import BatchUsageError, InputError, SettingsMismatchError

OPS = ("compare", "vote", "rank", "best-of-n")
METHODS = ("sort", "round-robin")
DEFAULT_VOTES = 8
DEFAULT_CHUNK = 8


class Judge(Protocol):
    """The part of gram_local's Judge that a batch uses."""

    def compare(self, question: str, a: str, b: str, *, swap: bool = False) -> Any: ...
    def vote(self, question: str, a: str, b: str, *, k: int = 8) -> Any: ...
    def rank(self, question: str, responses: Sequence[str], *, method: str = "sort", swap: bool = False) -> Any: ...
    def best_of_n(self, question: str, responses: Sequence[str], *, swap: bool = False) -> Any: ...
    def compare_many(self, items: Sequence[tuple[str, str, str]], *, swap: bool = False) -> Iterator[Any]: ...
    def settings_record(self) -> dict[str, Any]: ...


# -------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskDefaults:
    """Batch-wide choices for rows that do not set their own (the CLI's --swap, --votes, --method)."""

    swap: bool = False
    votes: int | None = None  # set: rows with a and b and no op become votes of this many samples
    method: str = "sort"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    """One row of a batch. A row that cannot be judged carries `error` and becomes an error record."""

    id: str | int
    op: str | None = None  # None: "compare", or "vote" when votes are set
    question: str = ""
    a: str | None = None
    b: str | None = None
    responses: tuple[str, ...] | None = None
    swap: bool | None = None
    votes: int | None = None
    method: str | None = None
    line: int | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return id_key(self.id)

    def resolved(self, defaults: TaskDefaults) -> Task:
        """The task with the batch defaults filled in: what is actually judged."""
        if self.error is not None:
            return self
        op = self.op
        if op is None:
            op = "vote" if (self.votes or defaults.votes) else "compare"
        if op == "vote":
            return replace(self, op=op, swap=False, votes=self.votes or defaults.votes or DEFAULT_VOTES)
        swap = defaults.swap if self.swap is None else self.swap
        method = (self.method or defaults.method) if op == "rank" else None
        return replace(self, op=op, swap=swap, method=method)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of what decides the result (of a resolved task); the id and line are not part of it."""
        content = {
            "op": self.op,
            "question": self.question,
            "a": self.a,
            "b": self.b,
            "responses": list(self.responses) if self.responses is not None else None,
            "swap": self.swap,
            "votes": self.votes,
            "method": self.method,
            "error": self.error,
        }
        return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


def id_key(task_id: Any) -> str:
    """The index key of an id: its JSON text, so the id 8 and the id "8" stay distinct."""
    return json.dumps(task_id, ensure_ascii=False)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _stable_id(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()[:16]


def parse_tasks(data: bytes) -> list[Task]:
    """Rows of a JSONL file as tasks; blank lines are skipped, bad rows come back with `error` set."""
    tasks: list[Task] = []
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            tasks.append(Task(id=_stable_id(raw.strip()), line=line_no, error=f"line {line_no}: not valid JSON ({exc})"))
            continue
        tasks.append(task_from_row(row, line_no))
    return tasks


def read_tasks(path: str | Path) -> list[Task]:
    """Tasks of a JSONL file, or of standard input for "-"."""
    if str(path) == "-":
        return parse_tasks(sys.stdin.buffer.read())
    try:
        return parse_tasks(Path(path).read_bytes())
    except OSError as exc:
        raise BatchUsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def task_from_row(row: Any, line_no: int | None = None) -> Task:
    where = f"line {line_no}: " if line_no is not None else ""
    if not isinstance(row, dict):
        return Task(id=_stable_id(_canonical(row).encode("utf-8")), line=line_no, error=f"{where}a task must be a JSON object")
    task_id = row.get("id")
    if task_id is None:
        task_id = _stable_id(_canonical(row).encode("utf-8"))
    elif isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or task_id == "":
        bad = _stable_id(_canonical(row).encode("utf-8"))
        return Task(id=bad, line=line_no, error=f"{where}'id' must be a non-empty string or an integer")

    def bad_row(reason: str) -> Task:
        return Task(id=task_id, op=row.get("op") if row.get("op") in OPS else None, line=line_no, error=where + reason)

    op = row.get("op")
    if op is not None and op not in OPS:
        return bad_row(f"'op' must be one of {', '.join(OPS)}, got {op!r}")
    question = row.get("question")
    if not isinstance(question, str):
        return bad_row("missing or non-string 'question'")
    swap = row.get("swap")
    if swap is not None and not isinstance(swap, bool):
        return bad_row("'swap' must be true or false")
    votes = row.get("votes")
    if votes is not None and (isinstance(votes, bool) or not isinstance(votes, int) or votes < 1):
        return bad_row("'votes' must be a positive integer")
    method = row.get("method")
    if method is not None and method not in METHODS:
        return bad_row(f"'method' must be one of {', '.join(METHODS)}")

    if op in ("rank", "best-of-n"):
        responses = row.get("responses")
        if not (isinstance(responses, list) and all(isinstance(r, str) for r in responses)):
            return bad_row("'responses' must be a list of strings")
        if len(responses) < 2:
            return bad_row(f"{op} needs at least 2 responses, got {len(responses)}")
        if votes is not None:
            return bad_row(f"'votes' does not apply to {op}")
        if method is not None and op != "rank":
            return bad_row("'method' applies to rank only")
        return Task(id=task_id, op=op, question=question, responses=tuple(responses), swap=swap, method=method, line=line_no)

    if op is None and "a" not in row and "b" not in row:
        if "responses" in row:
            return bad_row("a task with 'responses' needs 'op': 'rank' or 'best-of-n'")
        return bad_row("a task needs 'a' and 'b', or 'responses' with an 'op'")
    a, b = row.get("a"), row.get("b")
    if not isinstance(a, str) or not isinstance(b, str):
        return bad_row("'a' and 'b' must both be strings")
    if method is not None:
        return bad_row("'method' applies to rank only")
    if op == "compare" and votes is not None:
        return bad_row("'votes' makes a vote, not a compare")
    if (op == "vote" or votes is not None) and swap:
        return bad_row("a vote judges one order: 'swap' cannot be combined with 'votes'")
    return Task(id=task_id, op=op, question=question, a=a, b=b, swap=swap, votes=votes, line=line_no)


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise BatchUsageError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise BatchUsageError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_of(task_id: str | int, count: int) -> int:
    """Stable across machines and Python versions (unlike hash()): SHA-256 of the id's key."""
    digest = hashlib.sha256(id_key(task_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(tasks: Sequence[Task], *, shard: tuple[int, int] | None = None, limit: int | None = None) -> list[Task]:
    """The shard's tasks, then the first `limit` of them, in input order."""
    chosen = [t for t in tasks if shard is None or shard_of(t.id, shard[1]) == shard[0]]
    return chosen if limit is None else chosen[: max(limit, 0)]


def dedupe(tasks: Sequence[Task], notes: list[str] | None = None) -> list[Task]:
    """One task per id. A repeated identical row is judged once; the same id on different rows is refused."""
    first: dict[str, Task] = {}
    out: list[Task] = []
    for task in tasks:
        seen = first.get(task.key)
        if seen is None:
            first[task.key] = task
            out.append(task)
            continue
        if replace(seen, line=None, error=None) == replace(task, line=None, error=None) and (seen.error is None) == (
            task.error is None
        ):
            if notes is not None:
                notes.append(f"line {task.line} repeats line {seen.line} (id {task.id}); judged once")
            continue
        raise BatchUsageError(
            f"id {task.id!r} is used by line {seen.line} and line {task.line} for different tasks; ids must be unique"
        )
    return out


# ------------------------------------------------------------------------------------------ records


def ok_record(task: Task, result: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    body = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return {
        "id": task.id,
        "op": task.op,
        "status": "ok",
        **body,
        "task_sha256": task.fingerprint,
        "run_settings": dict(settings),
    }


def error_record(task: Task, error: str | BaseException, settings: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(error, BaseException):
        detail = {"type": type(error).__name__, "message": str(error)}
    else:
        detail = {"type": "InvalidRow", "message": error}
    return {
        "id": task.id,
        "op": task.op,
        "status": "error",
        "error": detail,
        "line": task.line,
        "task_sha256": task.fingerprint,
        "run_settings": dict(settings),
    }


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and "id" in value and value.get("status") in ("ok", "error")


def load_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """The records of an OUT file by id key (the last one per id wins; a cut-off last line is ignored)."""
    records: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if _is_record(value):
                records[id_key(value["id"])] = value
    return records


# --------------------------------------------------------------------------------------- OUT on disk


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
            if not _is_record(value):
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


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1] if prefix else "": value}


def settings_differences(old: Any, new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two settings records (missing keys show as None)."""
    old_flat = _flatten(old if isinstance(old, dict) else {})
    new_flat = _flatten(dict(new))
    return {
        key: (old_flat.get(key), new_flat.get(key))
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
    }


def _fsync_dir(path: Path) -> None:
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
    """Hold Ctrl-C and SIGTERM while a record is written, so an interrupt never cuts a line.

    (kill -9 cannot be held; the next run repairs what it leaves.)
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Appender:
    """Appends records to OUT; each is on disk (fsync) before `write` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            _fsync_dir(path.parent)

    def write(self, record: Mapping[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with _signals_deferred():
            _write_all(self.fd, data)
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class _Lock:
    """Refuses a second batch on the same OUT: two writers would duplicate records.

    The lock file stays after the run (deleting it races with a process opening it); the kernel
    drops the lock itself when the holder dies, kill -9 included.
    """

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(out.name + ".lock")
        self.handle: IO[str] | None = None

    def __enter__(self) -> _Lock:
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
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for line in keep:
            src.seek(line.start)
            dst.write(src.read(line.end - line.start))
            if not line.newline:
                dst.write(b"\n")
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class _Prepared:
    done: set[str]  # keys of selected tasks with an ok record for the same task
    notes: list[str]


def _prepare(
    path: Path,
    selected: Mapping[str, Task],
    all_keys: set[str],
    settings: Mapping[str, Any],
    *,
    reset_on_mismatch: bool,
) -> _Prepared:
    """Read OUT back, check its settings, and leave it holding only what the run keeps.

    Kept: ok records (any id) of the current settings, except those of selected tasks whose content
    changed. Dropped: a cut-off last line, unreadable lines, earlier duplicates of an id, and error
    records of selected tasks (about to be retried) or of ids no longer in the input.
    """
    notes: list[str] = []
    if not path.exists():
        return _Prepared(set(), notes)
    scan = _scan(path)
    if scan.unreadable and not scan.lines:
        if reset_on_mismatch:
            path.unlink()
            return _Prepared(set(), notes)
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
                _fsync_dir(path.parent)
                return _Prepared(set(), [f"{path.name} held results of other settings: started it over"])
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
    return _Prepared(done, notes)


# -------------------------------------------------------------------------------------------- progress


class Progress:
    """Progress on stderr: a redrawn bar with rate and ETA on a terminal, plain lines every so often otherwise."""

    def __init__(
        self, stream: IO[str] | None = None, *, tty: bool | None = None, interval: float = 30.0, label: str = "gram-local batch"
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.total = self.done = self.failed = 0
        self.started = self.last_print = 0.0

    def start(self, total: int, skipped: int) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.started = self.last_print = time.monotonic()
        if skipped:
            self._line(f"{skipped} task(s) already done in OUT; {total} to judge")
        elif not self.tty:
            self._line(f"{total} task(s) to judge")

    def advance(self, ok: bool, *, settled: bool = True) -> None:
        """Count one finished task; `settled=False` when more of the same burst follow at once
        (a chunk of comparisons finishes together), so rate and ETA are shown after the whole burst."""
        self.done += 1
        self.failed += not ok
        if not settled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.status(now) + "\x1b[K")
            self.stream.flush()
        elif now - self.last_print >= self.interval:
            self.last_print = now
            self._line(self.status(now))

    def finish(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
        elif not self.tty and self.done:
            self._line(self.status(time.monotonic()))
        self.stream.flush()

    def status(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        remaining = self.total - self.done
        share = self.done / self.total if self.total else 1.0
        text = f"{self.done}/{self.total} ({share:.1%})"
        if self.tty:
            width = 20
            filled = int(share * width)
            text = f"[{'#' * filled}{'.' * (width - filled)}] " + text
        if self.done:
            speed = f"{rate:.2f} tasks/s" if rate >= 1 else f"{1 / rate:.1f} s/task"
            text += f"  {speed}  ETA {_duration(remaining / rate) if rate else '?'}"
        if self.failed:
            text += f"  {self.failed} failed"
        return text

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ------------------------------------------------------------------------------------------- running


@dataclass
class BatchSummary:
    out: str
    selected: int = 0  # tasks this run covers (after --shard and --limit)
    skipped: int = 0  # already done in OUT
    judged: int = 0  # finished by this run, ok or failed
    failed: int = 0  # finished by this run as error records
    remaining: int = 0  # not finished (an interrupted run)
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all done; 3 finished with failed rows; 130 interrupted."""
        if self.interrupted:
            return 130
        return 3 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


def run_batch(
    judge: Judge,
    tasks: Sequence[Task] | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    defaults: TaskDefaults = TaskDefaults(),
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    extra_settings: Mapping[str, Any] | None = None,
) -> BatchSummary:
    """Judge every selected task not yet done in OUT, appending one durable record per task.

    With `force`, the run writes to OUT.new (continuing it if a forced run with these settings was
    cut short) and renames it over OUT only once every selected task has a record. A
    KeyboardInterrupt stops the run after the last finished record; the summary says so (exit 130).
    Runtime failures (anything but a row's InputError) propagate: what was written stays.
    """
    out_path = Path(out)
    if chunk_size < 1:
        raise BatchUsageError("the chunk size must be at least 1")
    if not isinstance(tasks, (str, Path)):
        all_tasks = list(tasks)
    else:
        if str(tasks) != "-" and out_path.exists() and Path(tasks).exists() and os.path.samefile(tasks, out_path):
            raise BatchUsageError("OUT is the input file")
        all_tasks = read_tasks(tasks)
    summary = BatchSummary(out=str(out_path))
    resolved = dedupe([t.resolved(defaults) for t in all_tasks], summary.notes)
    all_keys = {t.key for t in resolved}
    selection = select(resolved, shard=shard, limit=limit)
    selected = {t.key: t for t in selection}
    settings = {**judge.settings_record(), "batch": defaults.as_dict(), **(extra_settings or {})}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    target = out_path.with_name(out_path.name + ".new") if force else out_path
    with _Lock(out_path):
        prepared = _prepare(target, selected, all_keys, settings, reset_on_mismatch=force)
        summary.notes.extend(prepared.notes)
        if force and prepared.done:
            summary.notes.append(f"continuing the forced run in {target.name}")
        elif not force and target.with_name(target.name + ".new").exists():
            summary.notes.append(f"{target.name}.new holds an unfinished --force run; rerun with --force to continue it")
        pending = [t for t in selection if t.key not in prepared.done]
        summary.selected = len(selection)
        summary.skipped = len(selection) - len(pending)
        summary.remaining = len(pending)
        started = time.monotonic()
        if progress is not None:
            progress.start(len(pending), summary.skipped)
        appender = _Appender(target)
        try:
            _judge_all(judge, pending, appender, settings, chunk_size, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            appender.close()
            summary.seconds = time.monotonic() - started
            if progress is not None:
                progress.finish()
        if force and not summary.interrupted:
            os.replace(target, out_path)
            _fsync_dir(out_path.parent)
        elif force:
            summary.notes.append(
                f"{out_path.name} is unchanged; the forced run's results so far are in {target.name}: "
                "rerun with --force to continue it"
            )
    return summary


def _judge_all(
    judge: Judge,
    pending: Sequence[Task],
    appender: _Appender,
    settings: Mapping[str, Any],
    chunk_size: int,
    summary: BatchSummary,
    progress: Progress | None,
) -> None:
    def finish(task: Task, outcome: Any, settled: bool = True) -> None:
        if isinstance(outcome, InputError):
            record = error_record(task, outcome, settings)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            record = ok_record(task, outcome, settings)
        appender.write(record)
        ok = record["status"] == "ok"
        summary.judged += 1
        summary.failed += not ok
        summary.remaining -= 1
        if progress is not None:
            progress.advance(ok, settled=settled)

    comparisons: list[Task] = []
    for task in pending:
        if task.error is not None:
            appender.write(error_record(task, task.error, settings))
            summary.judged += 1
            summary.failed += 1
            summary.remaining -= 1
            if progress is not None:
                progress.advance(False)
            continue
        if task.op == "compare":
            comparisons.append(task)
            if len(comparisons) >= chunk_size:
                _compare_chunk(judge, comparisons, finish)
                comparisons = []
            continue
        finish(task, _judge_one(judge, task))
    if comparisons:
        _compare_chunk(judge, comparisons, finish)


def _compare_chunk(judge: Judge, chunk: Sequence[Task], finish: Any) -> None:
    """Plain comparisons go through compare_many so the engine can decode several at once."""
    groups = [[t for t in chunk if bool(t.swap) == swap] for swap in (False, True)]
    for swap, group in zip((False, True), groups):
        if not group:
            continue
        outcomes: Iterable[Any] = judge.compare_many([(t.question, t.a or "", t.b or "") for t in group], swap=swap)
        for n, (task, outcome) in enumerate(zip(group, outcomes, strict=True), start=1):
            finish(task, outcome, settled=n == len(group))


def _judge_one(judge: Judge, task: Task) -> Any:
    try:
        if task.op == "vote":
            return judge.vote(task.question, task.a or "", task.b or "", k=task.votes or DEFAULT_VOTES)
        if task.op == "rank":
            return judge.rank(task.question, list(task.responses or ()), method=task.method or "sort", swap=bool(task.swap))
        if task.op == "best-of-n":
            return judge.best_of_n(task.question, list(task.responses or ()), swap=bool(task.swap))
        return judge.compare(task.question, task.a or "", task.b or "", swap=bool(task.swap))
    except InputError as exc:
        return exc


__all__ = [
    "BatchSummary",
    "BatchUsageError",
    "Progress",
    "SettingsMismatchError",
    "Task",
    "TaskDefaults",
    "load_records",
    "parse_shard",
    "parse_tasks",
    "read_tasks",
    "run_batch",
    "select",
    "shard_of",
]
