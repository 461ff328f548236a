"""The one thread that runs the model for every client of the service, and the awaitable view of it.

Handlers never decode: they start a program on the judge's runner (rendering and the context check
run then, off the event loop) and await its future. The engine thread pumps the runner while any
program is active, so requests from all clients share the engine's continuous batching: one that
arrives while others decode joins them at the next step. Cancelling a future (a client gone, a
deadline passed) cancels its generations, and the engine frees their slots at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gram_local.config import RETRY_AFTER
from gram_local.errors import Cancelled, DeadlineExceededError, ServiceBusyError
from gram_local.runner import Program, ProgramFuture

if TYPE_CHECKING:
    from gram_local.judge import Judge

R = TypeVar("R")
_PUMP_TIMEOUT = 0.25


class Ticket:
    """One admitted request's place in the queue; given back once, however the request ends."""

    def __init__(self, worker: JudgeWorker) -> None:
        self._worker = worker
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._worker._release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class JudgeWorker:
    """Runs one judge's programs on an engine thread; admits at most `max_queue` requests at once."""

    def __init__(self, judge: Judge, *, max_queue: int) -> None:
        self.judge = judge
        self.runner = judge.runner
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._watched: list[tuple[ProgramFuture[Any], Callable[[], None]]] = []
        self._admitted = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="gram-local-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ admission

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self) -> Ticket:
        """A place in the queue, or ServiceBusyError (503 + Retry-After) when it is full."""
        with self._cond:
            if self._stopping:
                raise ServiceBusyError("the service is stopping", RETRY_AFTER)
            if self._admitted >= self.max_queue:
                raise ServiceBusyError(f"the queue is full ({self.max_queue} requests); retry later", RETRY_AFTER)
            self._admitted += 1
        return Ticket(self)

    def _release(self) -> None:
        with self._cond:
            self._admitted -= 1

    # ------------------------------------------------------------ programs

    def start(self, program: Program[R]) -> ProgramFuture[R]:
        """Start a program (in the calling thread: it renders and checks its prompts now)."""
        return self.runner.start(program)

    def watch(self, future: ProgramFuture[Any], on_done: Callable[[], None]) -> None:
        """Call `on_done` (from the engine thread, or now) once the future has its outcome."""
        with self._cond:
            if not future.done():
                self._watched.append((future, on_done))
                self._cond.notify_all()
                return
        on_done()

    async def outcome(self, future: ProgramFuture[R], *, deadline: float | None = None) -> R:
        """Await a started program without blocking the event loop; cancel its work if the awaiting
        task is cancelled (the client went away) or the deadline passes."""
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def resolve() -> None:
            if not finished.done():
                finished.set_result(None)

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        self.watch(future, wake)
        try:
            await asyncio.wait_for(asyncio.shield(finished), timeout=deadline)
        except asyncio.TimeoutError:
            future.cancel()
            raise DeadlineExceededError(deadline or 0.0) from None
        except BaseException:
            future.cancel()
            raise
        if self._stopping and isinstance(future.error, Cancelled):
            raise ServiceBusyError("the service stopped before this request finished; retry once it is back", RETRY_AFTER)
        return future.result()

    async def run(self, program: Program[R], *, deadline: float | None = None) -> R:
        """Start a program off the event loop and await its result."""
        future = await asyncio.to_thread(self.start, program)
        result = await self.outcome(future, deadline=deadline)
        return result

    # ------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._watched and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._watched:
                    return
            self.runner.pump(_PUMP_TIMEOUT)
            self._notify_finished()

    def _notify_finished(self) -> None:
        with self._cond:
            done: list[tuple[ProgramFuture[Any], Callable[[], None]]] = []
            waiting: list[tuple[ProgramFuture[Any], Callable[[], None]]] = []
            for watched in self._watched:
                (done if watched[0].done() else waiting).append(watched)
            self._watched = waiting
        for _, on_done in done:
            on_done()

    def cancel_all(self) -> None:
        """Cancel every program in flight (their slots are freed at the next step)."""
        with self._cond:
            futures = [f for f, _ in self._watched]
        for future in futures:
            future.cancel()

    def wind_down(self) -> None:
        """Admit nothing more and cancel what is in flight: its clients get a 503 (a stream, an
        `error` event) instead of a connection cut off."""
        with self._cond:
            self._stopping = True
        self.cancel_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is left and end the engine thread (the judge stays open)."""
        self.wind_down()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
