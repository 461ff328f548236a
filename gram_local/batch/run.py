"""Running a batch: every selected task not yet done in OUT, one durable record per finished task."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gram_local.batch.outfile import Appender, OutLock, fsync_dir, prepare
from gram_local.batch.records import error_record, ok_record
from gram_local.batch.tasks import Task, TaskDefaults, dedupe, read_tasks, select
from gram_local.config import DEFAULT_RANK_METHOD, DEFAULT_VOTES
from gram_local.errors import BatchOutputError, BatchUsageError, InputError

if TYPE_CHECKING:
    from gram_local.judge import Judge
    from gram_local.runner import Program


class BatchProgress(Protocol):
    """What a batch reports while it runs (the CLI draws it; library code never prints)."""

    def start(self, total: int, skipped: int) -> None: ...
    def advance(self, ok: bool) -> None: ...
    def finish(self) -> None: ...


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


def refuse_same_file(source: str | Path | None, out: Path) -> None:
    """OUT (or the OUT.new of a forced run) must never be the input, through links of any kind."""
    if source is None or str(source) == "-":
        return
    for candidate in (out, out.with_name(out.name + ".new")):
        try:
            same = os.path.samefile(source, candidate)
        except OSError:  # one of them does not exist yet
            same = False
        if same:
            raise BatchUsageError(f"OUT is the input file ({candidate} is {source}); choose another -o")


def run_batch(
    judge: Judge,
    tasks: Sequence[Task] | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    defaults: TaskDefaults | None = None,
    in_flight: int | None = None,
    progress: BatchProgress | None = None,
    extra_settings: Mapping[str, Any] | None = None,
    source: str | Path | None = None,
) -> BatchSummary:
    """Judge every selected task not yet done in OUT, appending one durable record per task.

    Tasks run together over the judge's backend (`in_flight` at a time, default its `parallel`),
    and records are written in the order they finish. With `force`, the run writes to OUT.new
    (continuing it if a forced run with these settings was cut short) and renames it over OUT only
    once every selected task has a record. A KeyboardInterrupt stops the run after the last finished
    record; the summary says so (exit 130). Runtime failures (anything but a row's InputError)
    propagate: what was written stays. `source` is the input's path when `tasks` were read already.
    """
    out_path = Path(out)
    defaults = TaskDefaults() if defaults is None else defaults
    if isinstance(tasks, (str, Path)):
        source = tasks
    refuse_same_file(source, out_path)
    all_tasks = read_tasks(tasks) if isinstance(tasks, (str, Path)) else list(tasks)
    summary = BatchSummary(out=str(out_path))
    resolved = dedupe([t.resolved(defaults) for t in all_tasks], summary.notes)
    all_keys = {t.key for t in resolved}
    selection = select(resolved, shard=shard, limit=limit)
    selected = {t.key: t for t in selection}
    settings = {**judge.settings_record(), "batch": defaults.as_dict(), **(extra_settings or {})}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    target = out_path.with_name(out_path.name + ".new") if force else out_path
    with OutLock(out_path):
        prepared = prepare(target, selected, all_keys, settings, reset_on_mismatch=force)
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
        try:
            appender = Appender(target)
        except OSError as exc:
            raise BatchOutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            _judge_all(judge, pending, appender, settings, summary, progress, in_flight)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            appender.close()
            summary.seconds = time.monotonic() - started
            if progress is not None:
                progress.finish()
        if force and not summary.interrupted:
            os.replace(target, out_path)
            fsync_dir(out_path.parent)
        elif force:
            summary.notes.append(
                f"{out_path.name} is unchanged; the forced run's results so far are in {target.name}: "
                "rerun with --force to continue it"
            )
    return summary


def _judge_all(
    judge: Judge,
    pending: Sequence[Task],
    appender: Appender,
    settings: Mapping[str, Any],
    summary: BatchSummary,
    progress: BatchProgress | None,
    in_flight: int | None,
) -> None:
    def write(record: dict[str, Any]) -> None:
        ok = record["status"] == "ok"

        def count() -> None:
            summary.judged += 1
            summary.failed += not ok
            summary.remaining -= 1

        try:
            appender.write(record, then=count)
        except OSError as exc:  # disk full, quota, a vanished mount: what was written stays
            raise BatchOutputError(
                f"cannot write {appender.path}: {exc.strerror or exc}; the {summary.judged} record(s) written "
                "before it are kept: once it can be written (space, quota, a file-size limit), rerun the same command to resume"
            ) from exc
        if progress is not None:
            progress.advance(ok)

    valid: list[Task] = []
    for task in pending:
        if task.error is not None:
            write(error_record(task, task.error, settings))
        else:
            valid.append(task)

    for index, outcome in judge.run_many(_programs(judge, valid), in_flight=in_flight):
        task = valid[index]
        if isinstance(outcome, InputError):
            write(error_record(task, outcome, settings))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            write(ok_record(task, outcome, settings))


def _programs(judge: Judge, tasks: Sequence[Task]) -> Iterator[Program[Any]]:
    """One program per task, made only when the runner has room for it (memory stays flat)."""
    for task in tasks:
        yield task_program(judge, task)


def task_program(judge: Judge, task: Task) -> Program[Any]:
    """The judge program of one (resolved) batch task: a batch file and the service run the same."""
    if task.op == "vote":
        return judge.vote_program(task.question, task.a or "", task.b or "", k=task.votes or DEFAULT_VOTES)
    if task.op == "rank":
        return judge.rank_program(task.question, list(task.responses or ()), method=task.method or DEFAULT_RANK_METHOD,
                                  swap=bool(task.swap))
    if task.op == "best-of-n":
        return judge.best_of_n_program(task.question, list(task.responses or ()), swap=bool(task.swap))
    return judge.compare_program(task.question, task.a or "", task.b or "", swap=bool(task.swap))
