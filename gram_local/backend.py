"""The seam between the judge and whatever runs the model.

A backend takes token ids and sampler settings and returns generations: the think text, how it
ended, and the logits of `A` and `B` at the answer slot. It knows nothing of prompts' meaning,
votes or rankings. The judge renders and tokenizes through it, submits requests, and reads the
results as they finish. Implementations: the in-process llama.cpp engine (`gram_local.engine`),
llama-server and OpenAI-compatible servers (`gram_local.remote`), and a scripted fake in tests.

Requests are independent: a backend may run them in any order and together, admit new ones while
others are decoding (continuous batching), and cancel one between steps.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from gram_local.config import ANSWER_MARGIN, DEFAULT_MAX_THINK_TOKENS
from gram_local.errors import Cancelled, GramLocalError


@dataclass(frozen=True)
class SamplerSpec:
    """temperature 0 means greedy; otherwise temperature, then nucleus (top_p), then a seeded draw."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationRequest:
    """One judgment to generate: a prompt ending with `<think>\\n` (or at the answer slot)."""

    prompt: list[int]
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    max_think_tokens: int = DEFAULT_MAX_THINK_TOKENS
    # False: the model cannot close the think block itself; the budget does (exact-length benches).
    allow_close: bool = True
    # True: the prompt already ends at the answer slot (a think budget of 0, prefilled).
    at_answer_slot: bool = False
    # Leading tokens that every request of this kind shares (the chat header and instructions):
    # worth keeping across processes. A hint; a backend may ignore it.
    shared_prefix: int = 0

    @property
    def context_needed(self) -> int:
        """Cells one sequence of this request can fill: the prompt, the think budget, the answer."""
        return len(self.prompt) + (0 if self.at_answer_slot else self.max_think_tokens + ANSWER_MARGIN)


@dataclass
class Generation:
    """What came out of one request: its text, how it ended, and the answer-slot logits."""

    # Everything after `<think>\n` up to the answer slot: the model's words, then any closing the
    # backend forced at the budget (`closing_text`).
    text: str
    closing_text: str
    think_tokens: int
    forced_close: bool
    answer: str
    # Any two numbers whose difference is the model's log-odds of A against B (logits, or
    # log-probabilities from a server).
    logit_a: float
    logit_b: float
    tokens: list[int]
    drafted: int = 0
    accepted: int = 0

    @property
    def p_answer_a(self) -> float:
        """The model's probability of `A` against `B` at the answer slot (temperature 1)."""
        diff = self.logit_b - self.logit_a
        if diff > 50:
            return math.exp(-diff)
        return 1.0 / (1.0 + math.exp(diff))


@dataclass(frozen=True)
class Vocabulary:
    """The facts about the model's vocabulary that rendering and parsing rely on."""

    n_vocab: int
    bos_id: int
    add_bos: bool
    token_a: int
    token_b: int
    special_ids: frozenset[int]
    special_texts: tuple[str, ...]
    chat_template: str | None
    n_ctx_train: int

    def is_special(self, token: int) -> bool:
        return token in self.special_ids


class RequestState(enum.Enum):
    WAITING = "waiting"  # submitted, no slot yet
    PREFILLING = "prefilling"  # its prompt is being evaluated
    DECODING = "decoding"  # generating think tokens, or at the answer slot
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (RequestState.FINISHED, RequestState.CANCELLED, RequestState.FAILED)


TextCallback = Callable[[str], None]


class RequestHandle:
    """A submitted request: its state, and its generation once finished.

    `on_text` (if given) receives the think text as it is generated, from whichever thread runs
    the backend; keep it quick.
    """

    def __init__(self, backend: Backend, request: GenerationRequest, on_text: TextCallback | None = None) -> None:
        self.backend = backend
        self.request = request
        self.on_text = on_text
        self.state = RequestState.WAITING
        self.generation: Generation | None = None
        self.error: BaseException | None = None
        self.submitted = time.monotonic()
        self.tokens_so_far = 0
        self._ended = threading.Event()
        self._cancel_requested = False

    def done(self) -> bool:
        return self._ended.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def cancel(self) -> None:
        """Ask for the request to stop; its slot is freed at the backend's next step."""
        if not self.done():
            self._cancel_requested = True
            self.backend.wake()

    def result(self, timeout: float | None = None) -> Generation:
        """The generation, waiting (and, for an in-process engine, working) until it is there."""
        self.backend.wait([self], timeout=timeout)
        if self.generation is not None:
            return self.generation
        if self.error is not None:
            raise self.error
        if self.state is RequestState.CANCELLED:
            raise Cancelled("the request was cancelled")
        raise TimeoutError("the request did not finish in time")

    # ------------------------------------------------------------ for backends

    def set_state(self, state: RequestState) -> None:
        self.state = state

    def emit_text(self, text: str) -> None:
        """One generated token's text ("" while a character is split across tokens)."""
        self.tokens_so_far += 1
        if self.on_text is not None:
            self.on_text(text)

    def finish(self, generation: Generation) -> None:
        self.generation = generation
        self.state = RequestState.FINISHED
        self._ended.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.state = RequestState.FAILED
        self._ended.set()

    def mark_cancelled(self) -> None:
        self.state = RequestState.CANCELLED
        self._ended.set()

    def wait_ended(self, timeout: float | None) -> bool:
        return self._ended.wait(timeout)


@dataclass
class BackendStats:
    """Counters since the backend was made; differences of two snapshots time one operation."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0
    decode_calls: int = 0
    steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0
    grammar_seconds: float = 0.0
    grammar_fallbacks: int = 0
    drafted: int = 0
    accepted: int = 0
    # Prompt tokens whose KV was read from a file on disk instead of computed.
    restored_tokens: int = 0
    # Running sequences moved to a lower KV stream to keep one micro-batch per step.
    moved: int = 0
    cancelled: int = 0
    # Remote backends: requests sent, retried, and failed attempts.
    requests: int = 0
    retries: int = 0
    errors: int = 0

    def snapshot(self) -> BackendStats:
        return BackendStats(**{f.name: getattr(self, f.name) for f in fields(self)})

    def since(self, before: BackendStats) -> BackendStats:
        return BackendStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)})


class Backend(ABC):
    """What the judge needs from an engine. Thread-safe: requests may come from several threads."""

    kind: str = "?"
    # A server over HTTP: its identity (URLs, version, served model) goes into every result.
    remote: bool = False

    def __init__(self) -> None:
        self.stats = BackendStats()
        self._progress = threading.Condition()

    # ------------------------------------------------------------ vocabulary

    @property
    @abstractmethod
    def vocabulary(self) -> Vocabulary: ...

    @abstractmethod
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids for text; `special=False` never yields a special token from the text."""

    @abstractmethod
    def token_text(self, token: int) -> str:
        """The text of one token (special tokens as their text)."""

    def detokenize(self, tokens: Iterable[int]) -> str:
        return "".join(self.token_text(t) for t in tokens)

    # ------------------------------------------------------------ requests

    @abstractmethod
    def submit(self, request: GenerationRequest, *, on_text: TextCallback | None = None) -> RequestHandle:
        """Queue a request; it joins the running work at the next step."""

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[RequestHandle]:
        return [self.submit(r) for r in requests]

    @abstractmethod
    def _advance(self, timeout: float | None) -> None:
        """Make progress on queued work, or wait up to `timeout` for someone else's progress."""

    def wake(self) -> None:
        """Something changed (a cancel, a new request): let waiting threads look again."""
        with self._progress:
            self._progress.notify_all()

    def notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def wait(self, handles: Sequence[RequestHandle], *, timeout: float | None = None) -> None:
        """Until every handle has ended (or `timeout` seconds passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for handle in handles:
            while not handle.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._advance(left)

    def as_completed(self, handles: Sequence[RequestHandle]) -> Iterator[RequestHandle]:
        """Each handle once it has ended, in the order they end. Holds no lock while yielding:
        the caller may submit and wait on other requests between two results."""
        pending = list(handles)
        while pending:
            ended = [h for h in pending if h.done()]
            if not ended:
                self._advance(None)
                continue
            for handle in ended:
                pending.remove(handle)
                yield handle

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Run requests to their answer slots (together where the backend can); results in order."""
        handles = self.submit_all(requests)
        try:
            self.wait(handles)
            return [h.result() for h in handles]
        finally:
            for h in handles:
                h.cancel()

    # ------------------------------------------------------------ the rest

    def identity(self) -> dict[str, Any]:
        """What this backend is, for result records (kind, server, version, model as served)."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Free what the backend holds (native handles, connections). Not abstract: a backend that
        holds nothing (the scripted one in tests) has nothing to free."""
        return None


def first_error(handles: Sequence[RequestHandle]) -> GramLocalError | None:
    """The first failure among ended handles, as a GramLocalError (or None)."""
    for h in handles:
        if h.error is not None:
            return h.error if isinstance(h.error, GramLocalError) else GramLocalError(str(h.error))
    return None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n
