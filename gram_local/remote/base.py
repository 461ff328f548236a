"""What every remote backend shares: the local vocabulary, worker threads, the request lifecycle.

Prompts are rendered and tokenized here, with the same GGUF the server runs (loaded vocabulary-only):
a server is sent token ids, never the judged texts as strings (a server parses special-token text in
strings). Each request runs on a worker thread, one per place in flight over all replicas; whoever
waits for a result waits on the backend's condition until some request has ended. A cancelled
request ends at once; its reply, if one comes, is dropped.
"""

from __future__ import annotations

import codecs
import math
import os
import queue
import random
import threading
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gram_local.backend import Backend, Generation, GenerationRequest, RequestHandle, RequestState, SamplerSpec, TextCallback
from gram_local.config import RemoteSettings
from gram_local.engine.native import LlamaModel
from gram_local.engine.vocab import GGUFVocabulary, LlamaVocab
from gram_local.errors import BackendError, Cancelled, ContextOverflowError, InputError
from gram_local.grammar import ANSWER_OPEN, THINK_CLOSE, forced_close_text, reached_answer_slot
from gram_local.remote.http import Lease, ReplicaPool

_CLOSE_GRACE = 2.0
"""Seconds `close` waits for requests in flight before leaving them to finish on their own."""
_WAIT_CAP = 0.25
"""Longest a waiter sleeps before looking again (a safety net under the condition's notifications)."""


@dataclass
class Think:
    """A think reply: the generated ids, why it stopped, and where its prefix stays cached."""

    tokens: list[int]
    stopped: str
    pin: Any = None


def answer_from_pair(sampler: SamplerSpec, logprob_a: float, logprob_b: float) -> str:
    """The letter at the answer slot from A's and B's log-probabilities, as the local engine draws
    it: greedy takes the larger; otherwise temperature, top-p over the pair, a draw seeded by the
    request's seed (the same distribution as llama.cpp's chain, not the same random stream)."""
    if sampler.greedy:
        return "A" if logprob_a >= logprob_b else "B"
    diff = (logprob_b - logprob_a) / sampler.temperature
    p_a = math.exp(-diff) / (1.0 + math.exp(-diff)) if diff > 0 else 1.0 / (1.0 + math.exp(diff))
    first, p_first = ("A", p_a) if p_a >= 0.5 else ("B", 1.0 - p_a)
    if p_first >= sampler.top_p:
        return first
    return "A" if random.Random(sampler.seed).random() < p_a else "B"


def pair_logprobs(top: Iterable[tuple[int, float]], token_a: int, token_b: int) -> tuple[float, float] | None:
    """A's and B's log-probabilities among a server's top candidates; None if either is missing."""
    found = {token: logprob for token, logprob in top if token in (token_a, token_b)}
    if token_a not in found or token_b not in found:
        return None
    return found[token_a], found[token_b]


def check_think_reply(text: str, think: Think, request: GenerationRequest) -> None:
    """A think text must follow the grammar: closed exactly at its end, or cut by the budget with
    no closing inside. Anything else means the server did not apply the grammar."""
    close_at = text.find(THINK_CLOSE)
    if reached_answer_slot(text):
        closed_early = False
    elif close_at >= 0:
        closed_early = not ANSWER_OPEN.startswith(text[close_at + len(THINK_CLOSE):]) or len(think.tokens) < request.max_think_tokens
    else:
        closed_early = len(think.tokens) < request.max_think_tokens
    if closed_early:
        raise BackendError(
            f"the server did not enforce the reply format (the think text stopped with {think.stopped!r} after "
            f"{len(think.tokens)} of {request.max_think_tokens} tokens: {text[-80:]!r}); refusing to read a verdict from it"
        )


class RemoteBackend(GGUFVocabulary, Backend):
    """A backend whose model runs on one or more servers reached over HTTP."""

    remote = True

    def __init__(self, model_path: str | os.PathLike[str], settings: RemoteSettings) -> None:
        super().__init__()
        self.settings = settings
        self.model_path = str(model_path)
        self.model = LlamaModel(self.model_path, vocab_only=True)
        self.vocab = LlamaVocab(self.model)
        self._stats_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: set[RequestHandle] = set()
        self._changed = False
        self._closed = False
        self._workers = threading.Condition()
        self._active = 0
        self.pool = ReplicaPool(settings, on_event=self._count)
        try:
            self._identity, n_ctx_seq = self._connect()
        except BaseException:
            self.pool.close()
            self.model.close()
            raise
        self.n_ctx_seq = n_ctx_seq
        self._vocabulary = self.vocab.facts(n_ctx_train=min(self.n_ctx_train, n_ctx_seq))
        # Daemon threads: a request still waiting on a server never holds up the process's exit.
        self._queue: queue.SimpleQueue[RequestHandle | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._worker_loop, name=f"gram-local-{self.kind}-{i}", daemon=True)
            for i in range(self.pool.capacity)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def n_ctx_train(self) -> int:
        """The model's trained context, from the GGUF's metadata (a vocabulary-only load reads no
        hyperparameters)."""
        values = self.model.metadata()
        try:
            return int(values[f"{values.get('general.architecture', 'llama')}.context_length"])
        except (KeyError, ValueError):
            return 0

    # ------------------------------------------------------------ for subclasses

    @abstractmethod
    def _connect(self) -> tuple[dict[str, Any], int]:
        """Check every replica serves this model; set their capacities; return the identity and the
        context one request may fill."""

    @abstractmethod
    def _think(self, lease: Lease, request: GenerationRequest) -> Think:
        """The think text under the grammar, up to the budget (end-of-generation tokens dropped)."""

    @abstractmethod
    def _answer_logprobs(self, lease: Lease, tokens: list[int], pin: Any) -> tuple[float, float]:
        """A's and B's log-probabilities after `tokens` (the prompt up to the answer slot)."""

    def _generate(self, lease: Lease, handle: RequestHandle) -> Generation:
        """The think text, the closing the budget forces (if any), then the answer slot, as the local
        engine produces them."""
        request = handle.request
        generated: list[int] = []
        closing, closing_ids, text, pin = "", [], "", None
        if not request.at_answer_slot:
            if request.max_think_tokens > 0:
                think = self._think(lease, request)
                generated, pin = think.tokens, think.pin
                text = self.vocab.detokenize(generated)
                check_think_reply(text, think, request)
                self.emit_pieces(handle, generated)
            if not reached_answer_slot(text):
                closing = forced_close_text(text)
                closing_ids = self.vocab.tokenize(closing)
        self.check_cancel(handle)
        logprob_a, logprob_b = self._answer_logprobs(lease, list(request.prompt) + generated + closing_ids, pin)
        return Generation(
            text=text + closing,
            closing_text=closing,
            think_tokens=len(generated),
            forced_close=bool(closing_ids) or request.at_answer_slot,
            answer=answer_from_pair(request.sampler, logprob_a, logprob_b),
            logit_a=logprob_a,
            logit_b=logprob_b,
            tokens=generated + closing_ids,
        )

    def check_cancel(self, handle: RequestHandle) -> None:
        if handle.cancel_requested or handle.done():
            raise Cancelled("the request was cancelled")

    def emit_pieces(self, handle: RequestHandle, tokens: Sequence[int]) -> None:
        """Hand the generated tokens' text to the handle's live view (after the reply: no streaming)."""
        if handle.on_text is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in tokens:
            handle.emit_text(decoder.decode(self.vocab.piece(token)))

    def count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, value in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _count(self, event: str) -> None:
        name = {"request": "requests", "retry": "retries", "error": "errors"}[event]
        self.count(**{name: 1})

    # ------------------------------------------------------------ facts

    @property
    def parallel(self) -> int:
        """Requests in flight over all replicas (what a batch keeps busy)."""
        return self.pool.capacity

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    # ------------------------------------------------------------ requests

    def submit(self, request: GenerationRequest, *, on_text: TextCallback | None = None) -> RequestHandle:
        if self._closed:
            raise BackendError("the backend is closed")
        if not request.prompt:
            raise InputError("a generation request needs a prompt of at least one token")
        if request.max_think_tokens < 0:
            raise InputError("the think budget must be 0 or more")
        need = request.context_needed
        if need > self.n_ctx_seq:
            raise ContextOverflowError(len(request.prompt), max(self.n_ctx_seq - (need - len(request.prompt)), 0))
        handle = RequestHandle(self, request, on_text)
        with self._lock:
            self._pending.add(handle)
        self._queue.put(handle)
        return handle

    def _worker_loop(self) -> None:
        while True:
            handle = self._queue.get()
            if handle is None:
                return
            self._work(handle)

    def _work(self, handle: RequestHandle) -> None:
        with self._workers:
            if self._closed:
                return
            self._active += 1
        try:
            if handle.cancel_requested or handle.done():
                self._end(handle, None, Cancelled("the request was cancelled"))
                return
            handle.set_state(RequestState.DECODING)
            try:
                with self.pool.lease() as lease:
                    self.check_cancel(handle)
                    generation = self._generate(lease, handle)
            except BaseException as exc:  # noqa: BLE001 - the request's own failure ends only that request
                self._end(handle, None, exc)
            else:
                self._end(handle, generation, None)
        finally:
            with self._workers:
                self._active -= 1
                self._workers.notify_all()

    def _end(self, handle: RequestHandle, generation: Generation | None, error: BaseException | None) -> None:
        with self._lock:
            self._pending.discard(handle)
            if handle.done():
                return  # cancelled meanwhile: its reply is dropped
            if generation is not None:
                handle.finish(generation)
            elif isinstance(error, Cancelled):
                handle.mark_cancelled()
                self.count(cancelled=1)
            else:
                handle.fail(error if error is not None else BackendError("the request ended without a reply"))
        self.notify_progress()

    def _drop_cancelled(self) -> None:
        with self._lock:
            for handle in [h for h in self._pending if h.cancel_requested and not h.done()]:
                self._pending.discard(handle)
                handle.mark_cancelled()
                self.count(cancelled=1)

    def _advance(self, timeout: float | None) -> None:
        self._drop_cancelled()
        with self._progress:
            if not self._changed:
                self._progress.wait(_WAIT_CAP if timeout is None else max(min(timeout, _WAIT_CAP), 0.0))
            self._changed = False

    def notify_progress(self) -> None:
        with self._progress:
            self._changed = True
            self._progress.notify_all()

    def wake(self) -> None:
        self.notify_progress()

    def in_flight(self) -> int:
        return self.pool.in_flight()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for handle in list(self._pending):
                if not handle.done():
                    handle.mark_cancelled()
            self._pending.clear()
        self.notify_progress()
        for _ in self._threads:
            self._queue.put(None)
        self.pool.close()
        # Workers read the vocabulary after their replies: free it only once none runs. One still
        # waiting on a server after the grace keeps it (its reply is dropped; the process is
        # usually ending).
        with self._workers:
            self._workers.wait_for(lambda: self._active == 0, timeout=_CLOSE_GRACE)
            if self._active == 0:
                self.model.close()
