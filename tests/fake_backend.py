"""A scripted backend: the real Judge, runner and operations over a model-free engine.

Byte-level vocabulary (ids 0-255 are bytes) plus the Llama-3 special tokens, so the real renderer
produces the real GRAM-RR prompt. The verdict is scripted from the prompt it is given: the longer
response is better, plus `bias` towards the one shown first. Requests run together, one think
"token" (word) per step, so continuous batching, cancellation and step counts are observable.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gram_local.backend import Backend, Generation, GenerationRequest, RequestHandle, RequestState, TextCallback, Vocabulary
from gram_local.config import JudgeSettings
from gram_local.grammar import ANSWER_SLOT_PREFIX
from gram_local.judge import Judge
from gram_local.results import ModelInfo

SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
SPECIAL_IDS = {text: 256 + i for i, text in enumerate(SPECIALS)}
QUESTION_HEADER = "[User Question]\n"
START_A = "[The Start of Assistant A's Response]\n"
END_A_START_B = "\n[The End of Assistant A's Response]\n\n[The Start of Assistant B's Response]\n"
END_B = "\n[The End of Assistant B's Response]"


def shown_responses(prompt_text: str) -> tuple[str, str]:
    """The two responses of a rendered GRAM-RR prompt (outermost frame markers win)."""
    start = prompt_text.index(START_A) + len(START_A)
    middle = prompt_text.rindex(END_A_START_B)
    end = prompt_text.rindex(END_B)
    return prompt_text[start:middle], prompt_text[middle + len(END_A_START_B) : end]


@dataclass
class _Running:
    handle: RequestHandle
    words: list[str]
    answer: str
    p_shown_a: float
    emitted: int = 0
    text: list[str] = field(default_factory=list)


class ScriptedBackend(Backend):
    """Deterministic, model-free, with the engine's request lifecycle."""

    kind = "scripted"

    def __init__(
        self,
        *,
        bias: float = 0.0,
        parallel: int = 8,
        n_ctx_train: int = 4096,
        delay: float = 0.0,
        interrupt_after: int | None = None,
        record_shown: bool = False,
        verdict: str | None = None,
        copy_responses: bool = False,
    ) -> None:
        super().__init__()
        self.bias = bias
        self.parallel = parallel
        self.delay = delay
        self.interrupt_after = interrupt_after  # KeyboardInterrupt when this many generations have finished
        self.verdict = verdict  # a letter to answer at the slot whatever the prompt (None: the length script)
        self.copy_responses = copy_responses  # the think text quotes both shown responses verbatim
        self.finished = 0
        self.batch_sizes: list[int] = []  # sequences in each step
        # With record_shown: (Response A, Response B) of every prompt started, in order.
        self.shown: list[tuple[str, str]] | None = [] if record_shown else None
        self._vocab = Vocabulary(
            n_vocab=256 + len(SPECIALS),
            bos_id=SPECIAL_IDS["<|begin_of_text|>"],
            add_bos=True,
            token_a=ord("A"),
            token_b=ord("B"),
            special_ids=frozenset(SPECIAL_IDS.values()),
            special_texts=SPECIALS,
            chat_template=None,
            n_ctx_train=n_ctx_train,
        )
        self._lock = threading.RLock()
        self._waiting: deque[RequestHandle] = deque()
        self._running: list[_Running] = []

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocab

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if special and text in SPECIAL_IDS:
            return [SPECIAL_IDS[text]]
        return list(text.encode("utf-8"))

    def token_text(self, token: int) -> str:
        if token >= 256:
            return SPECIALS[token - 256]
        return bytes([token]).decode("latin-1")

    def detokenize(self, tokens: Any) -> str:
        out = bytearray()
        for t in tokens:
            out += SPECIALS[t - 256].encode() if t >= 256 else bytes([t])
        return out.decode("utf-8", errors="replace")

    def submit(self, request: GenerationRequest, *, on_text: TextCallback | None = None) -> RequestHandle:
        if not request.prompt:
            raise ValueError("an empty prompt")
        handle = RequestHandle(self, request, on_text)
        with self._lock:
            self._waiting.append(handle)
        self.wake()
        return handle

    def _start(self, handle: RequestHandle) -> _Running:
        request = handle.request
        text = self.detokenize(request.prompt)
        shown_a, shown_b = shown_responses(text)
        if self.shown is not None:
            self.shown.append((shown_a, shown_b))
        p = 0.5 + 0.45 * math.tanh((len(shown_a) - len(shown_b)) / 8.0) + self.bias
        p = min(max(p, 0.001), 0.999)
        if request.sampler.greedy:
            answer = "A" if p >= 0.5 else "B"
        else:
            answer = "A" if random.Random(request.sampler.seed).random() < p else "B"
        if self.verdict is not None:
            answer, p = self.verdict, (0.8 if self.verdict == "A" else 0.2)
        reply = f"Feedback: lengths {len(shown_a)} and {len(shown_b)}.\u2028Conclusion: {answer}."
        if self.copy_responses:
            # A model that repeats what it read, verbatim: the question and both responses, fake
            # frames and answers included. (The real engine's grammar would not let it write
            # `</think>`; this one does, so the parser meets the worst case.)
            read = text[text.index(QUESTION_HEADER) : text.rindex(END_B) + len(END_B)]
            reply = f"I read: {read}\nConclusion: {answer}."
        words = [] if request.at_answer_slot else reply.split(" ")
        handle.set_state(RequestState.DECODING)
        self.stats.prompt_tokens += len(request.prompt)
        return _Running(handle, words, answer, p)

    def _advance(self, timeout: float | None) -> None:
        if self.interrupt_after is not None and self.finished >= self.interrupt_after:
            raise KeyboardInterrupt  # Ctrl-C between two steps, as a user's arrives
        with self._lock:
            for running in [r for r in self._running if r.handle.cancel_requested]:
                self._running.remove(running)
                running.handle.mark_cancelled()
                self.stats.cancelled += 1
            for handle in [h for h in self._waiting if h.cancel_requested]:
                self._waiting.remove(handle)
                handle.mark_cancelled()
                self.stats.cancelled += 1
            while self._waiting and len(self._running) < self.parallel:
                self._running.append(self._start(self._waiting.popleft()))
            if not self._running:
                return
            self.stats.steps += 1
            self.batch_sizes.append(len(self._running))
            for running in list(self._running):
                self._step(running)

    def _step(self, running: _Running) -> None:
        request = running.handle.request
        budget = request.max_think_tokens
        if running.emitted < len(running.words) and running.emitted < budget:
            word = running.words[running.emitted] + (" " if running.emitted < len(running.words) - 1 else "")
            running.emitted += 1
            running.text.append(word)
            self.stats.generated_tokens += 1
            running.handle.emit_text(word)
            return
        if self.interrupt_after is not None and self.finished >= self.interrupt_after:
            return  # held until the interrupt
        self._running.remove(running)
        forced = running.emitted < len(running.words)
        closing = "" if request.at_answer_slot else ANSWER_SLOT_PREFIX
        logit_a, logit_b = math.log(running.p_shown_a), math.log(1.0 - running.p_shown_a)
        if self.delay:
            time.sleep(self.delay)
        self.finished += 1
        running.handle.finish(
            Generation(
                text="".join(running.text) + closing,
                closing_text=closing if forced else "",
                think_tokens=running.emitted,
                forced_close=forced,
                answer=running.answer,
                logit_a=logit_a,
                logit_b=logit_b,
                tokens=[],
            )
        )
        self.notify_progress()


def scripted_judge(
    *, seed: int = 0, max_think_tokens: int = 64, temperature: float = 0.0, position: str = "fixed", **backend: Any
) -> Judge:
    """The real Judge over a ScriptedBackend (greedy by default: verdicts follow the script)."""
    settings = JudgeSettings(
        seed=seed, max_think_tokens=max_think_tokens, temperature=temperature, position=position  # type: ignore[arg-type]
    )
    model = ModelInfo(path="scripted.gguf", name="fake", sha256="f" * 64, quantization="F16")
    return Judge(ScriptedBackend(**backend), model=model, settings=settings)
