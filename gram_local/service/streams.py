"""The service's long answers: a judgment's reasoning as server-sent events, a batch as JSONL lines.

Both are async generators a streaming response drains. When the client goes away the response
cancels the generator, and its `finally` cancels the work still in flight, so the engine frees
those slots at its next step instead of judging for nobody.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gram_local.backend import Backend
from gram_local.batch.records import error_record, ok_record
from gram_local.batch.run import task_program
from gram_local.batch.tasks import Task, TaskDefaults
from gram_local.errors import GramLocalError
from gram_local.judge import timings_of
from gram_local.results import JudgeResult
from gram_local.runner import ProgramFuture
from gram_local.service.bodies import JudgeCall
from gram_local.service.worker import JudgeWorker, Ticket

if TYPE_CHECKING:
    pass


def error_body(error: BaseException) -> dict[str, Any]:
    """The JSON of every error the service returns: its class name, its message, and its numbers."""
    detail: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    for key in ("n_tokens", "limit", "retry_after", "seconds"):
        value = getattr(error, key, None)
        if isinstance(value, (int, float)):
            detail[key] = value
    return {"error": detail}


class Stopwatch:
    """The backend's work and the wall time while one request ran (shared with requests beside it,
    as in `Judge.run`)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.started = time.perf_counter()
        self.before = backend.stats.snapshot()

    def stamp(self, result: JudgeResult) -> JudgeResult:
        result.timings = timings_of(self.backend.stats.since(self.before), time.perf_counter() - self.started)
        return result


def own_tokens(result: Any) -> int:
    """Think tokens the request's own judgments generated (for its log line)."""
    return sum(j.think_tokens for j in getattr(result, "judgments", []))


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    """One event; the JSON is ASCII so no line separator in a text (U+2028) can split its line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class ThinkQueue:
    """Think text from the engine thread to the event loop, merged per judgment between two sends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def __call__(self, index: int, text: str) -> None:
        if not text:
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, text))
        except RuntimeError:  # the loop has closed (the service is stopping): nobody reads this
            pass

    def drain(self, first: tuple[int, str] | None = None) -> dict[int, str]:
        merged: dict[int, str] = {first[0]: first[1]} if first else {}
        while not self.queue.empty():
            index, text = self.queue.get_nowait()
            merged[index] = merged.get(index, "") + text
        return merged


async def judge_events(worker: JudgeWorker, call: JudgeCall, future: ProgramFuture[Any], thinks: ThinkQueue,
                       watch: Stopwatch, ticket: Ticket, deadline: float | None, log: dict[str, Any]) -> AsyncIterator[bytes]:
    """`think` events ({index, order, delta}) while the model reasons, then `result`, or `error`."""
    outcome = asyncio.ensure_future(worker.outcome(future, deadline=deadline))
    try:
        while True:
            getter = asyncio.ensure_future(thinks.queue.get())
            await asyncio.wait({getter, outcome}, return_when=asyncio.FIRST_COMPLETED)
            first = None
            if getter.done():
                first = getter.result()
            else:
                getter.cancel()
            # Decide "last round" before draining: the outcome may finish while a `yield` below
            # waits on a slow client, and text queued meanwhile must still go out before the verdict.
            finished = outcome.done()
            if finished:
                # Text the engine thread handed over just before the end may still sit in the
                # loop's callback queue: let those callbacks run, then send it before the verdict.
                await asyncio.sleep(0)
            for index, delta in sorted(thinks.drain(first).items()):
                yield sse("think", {"index": index, "order": call.order_of(index), "delta": delta})
            if finished:
                break
        error = outcome.exception()
        if error is None:
            result = watch.stamp(outcome.result())
            log["tokens"] = own_tokens(result)
            log["outcome"] = "ok"
            yield sse("result", result.to_dict())
        else:
            log["outcome"] = type(error).__name__
            yield sse("error", error_body(error))
    finally:
        outcome.cancel()
        if not future.done():
            future.cancel()
        ticket.release()


def _line(record: Mapping[str, Any]) -> bytes:
    """One JSONL record, ASCII: a client splitting on any line break (U+2028 too) still gets whole records."""
    return (json.dumps(record) + "\n").encode()


async def batch_lines(worker: JudgeWorker, tasks: Sequence[Task], defaults: TaskDefaults, *, in_flight: int,
                      deadline: float | None, ticket: Ticket, log: dict[str, Any]) -> AsyncIterator[bytes]:
    """One record per task as it finishes (the records of `gram-local batch`); at most `in_flight`
    tasks in the engine at once; a task's failure is its error record, and the others go on."""
    judge = worker.judge
    settings = {**judge.settings_record(), "batch": defaults.as_dict()}
    running: dict[asyncio.Future[Any], tuple[Task, Stopwatch, ProgramFuture[Any]]] = {}
    counts = {"ok": 0, "error": 0}
    log["tokens"] = 0

    async def start(task: Task) -> None:
        watch = Stopwatch(judge.backend)
        future = await asyncio.to_thread(worker.start, task_program(judge, task))
        running[asyncio.ensure_future(worker.outcome(future, deadline=deadline))] = (task, watch, future)

    valid: list[Task] = []
    try:
        for task in tasks:
            if task.error is None:
                valid.append(task)
            else:
                counts["error"] += 1
                yield _line(error_record(task, task.error, settings))
        queue = iter(valid)
        exhausted = False
        while True:
            while not exhausted and len(running) < max(in_flight, 1):
                upcoming = next(queue, None)
                if upcoming is None:
                    exhausted = True
                else:
                    await start(upcoming)
            if not running:
                break
            done, _ = await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                item, watch, _ = running.pop(finished)
                error = finished.exception()
                if error is None:
                    result = watch.stamp(finished.result())
                    log["tokens"] += own_tokens(result)
                    counts["ok"] += 1
                    yield _line(ok_record(item, result, settings))
                else:
                    counts["error"] += 1
                    failure = error if isinstance(error, GramLocalError) else GramLocalError(str(error))
                    yield _line(error_record(item, failure, settings))
        log["outcome"] = f"{counts['ok']} ok, {counts['error']} failed"
    finally:
        for waiter, (_, _, future) in running.items():
            waiter.cancel()
            future.cancel()
        ticket.release()
