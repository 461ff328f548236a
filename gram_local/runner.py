"""Runs judge operations over a backend, many at once, without threads.

An operation is a *program*: a generator that yields the generations it needs next (`Ask`s) and is
sent what came out, until it returns its result. A ranking yields one round of comparisons at a
time; a compare yields once. The runner submits what programs ask for, lets the backend make
progress, and resumes each program when all of its generations have ended. Because every program
lives in the one runner, any caller waiting on any result moves all of them forward: a suspended
`compare_many` iterator and a new `compare` share the running batch instead of blocking each other.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gram_local.backend import Backend, Generation, GenerationRequest, RequestHandle, RequestState, TextCallback
from gram_local.errors import Cancelled, GramLocalError

R = TypeVar("R")


@dataclass
class Ask:
    """One generation a program needs, with an optional live view of its think text."""

    request: GenerationRequest
    on_text: TextCallback | None = None


Program = Generator[list[Ask], list[Generation], R]


class ProgramFuture(Generic[R]):
    """The eventual result of a program (or the error that ended it)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self.error: BaseException | None = None
        self.handles: list[RequestHandle] = []
        self.cancelled = False

    def done(self) -> bool:
        return self._done.is_set()

    def set_result(self, value: R) -> None:
        self._value = value
        self._done.set()

    def set_error(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    def result(self) -> R:
        if not self.done():
            raise RuntimeError("the program has not finished")
        if self.error is not None:
            raise self.error
        return self._value  # type: ignore[no-any-return]  # done without an error: set_result stored an R

    def outcome(self) -> R | BaseException:
        """The result, or the error that ended the program (for loops that go on after one)."""
        return self.error if self.error is not None else self._value

    def cancel(self) -> None:
        """Stop the program: its generations now, and it asks for no more (a ranking's next round)."""
        self.cancelled = True
        for handle in self.handles:
            handle.cancel()


@dataclass
class _Active:
    program: Program[Any]
    future: ProgramFuture[Any]
    handles: list[RequestHandle] = field(default_factory=list)


class Runner:
    """Drives programs over one backend. Thread-safe: any thread may start programs and pump."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.RLock()
        self._active: list[_Active] = []

    def start(self, program: Program[R]) -> ProgramFuture[R]:
        """Start a program: it runs up to its first request now (bad input fails it at once)."""
        future: ProgramFuture[R] = ProgramFuture()
        with self._lock:
            self._resume(_Active(program, future), None)
        return future

    def _resume(self, active: _Active, generations: list[Generation] | None) -> None:
        while True:
            try:
                asks = next(active.program) if generations is None else active.program.send(generations)
            except StopIteration as done:
                active.future.set_result(done.value)
                return
            except Exception as exc:  # noqa: BLE001 - the program's own error ends only that program
                active.future.set_error(exc)
                return
            if asks:
                break
            generations = []
        if active.future.cancelled:
            active.program.close()
            active.future.set_error(Cancelled("the program was cancelled"))
            return
        handles: list[RequestHandle] = []
        try:
            for ask in asks:
                handles.append(self.backend.submit(ask.request, on_text=ask.on_text))
        except Exception as exc:  # noqa: BLE001
            for handle in handles:
                handle.cancel()
            active.program.close()
            active.future.set_error(exc)
            return
        active.handles = handles
        active.future.handles = handles
        if active.future.cancelled:  # cancelled while these were being submitted
            for handle in handles:
                handle.cancel()
        self._active.append(active)

    def _collect(self) -> bool:
        """Resume every program whose generations have all ended; whether any was."""
        with self._lock:
            ready = [a for a in self._active if all(h.done() for h in a.handles)]
            for active in ready:
                self._active.remove(active)
            for active in ready:
                error = _failure(active.handles)
                if error is not None:
                    active.program.close()
                    active.future.set_error(error)
                else:
                    self._resume(active, [h.generation for h in active.handles if h.generation is not None])
        return bool(ready)

    def pump(self, timeout: float | None = None) -> None:
        """Resume what can be resumed; otherwise let the backend make progress (one step)."""
        if self._collect():
            return
        with self._lock:
            idle = not self._active
        if not idle:
            self.backend._advance(timeout)
            self._collect()

    def wait(self, future: ProgramFuture[Any]) -> None:
        try:
            while not future.done():
                self.pump()
        except BaseException:
            future.cancel()
            raise

    def run(self, program: Program[R]) -> R:
        future = self.start(program)
        self.wait(future)
        return future.result()

    def run_many(self, programs: Iterable[Program[R]], *, in_flight: int) -> Iterator[list[tuple[int, R | BaseException]]]:
        """(index, result or error) for each program, in the order they finish, grouped by the
        step that finished them; at most `in_flight` programs are started ahead of their results
        being taken."""
        source = enumerate(programs)
        started: list[tuple[int, ProgramFuture[R]]] = []
        exhausted = False
        try:
            while True:
                while not exhausted and len(started) < max(in_flight, 1):
                    try:
                        index, program = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    started.append((index, self.start(program)))
                if not started:
                    return
                finished = [(i, f) for i, f in started if f.done()]
                if not finished:
                    self.pump()
                    continue
                for item in finished:
                    started.remove(item)
                yield [(i, f.outcome()) for i, f in finished]
        finally:
            for _, future in started:
                future.cancel()

    def cancel_all(self) -> None:
        with self._lock:
            for active in self._active:
                for handle in active.handles:
                    handle.cancel()


def _failure(handles: list[RequestHandle]) -> BaseException | None:
    for handle in handles:
        if handle.state is RequestState.CANCELLED:
            return Cancelled("a generation was cancelled")
        if handle.error is not None:
            error = handle.error
            return error if isinstance(error, BaseException) else GramLocalError(str(error))
    return None
