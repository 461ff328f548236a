"""The judge: compare, vote, rank and best-of-n over any backend, with results stamped.

    judge = gram_local.load_judge("gram-rr-3b")
    judge.compare(question, a, b, swap=True)

Operations are programs (`gram_local.operations`) run by one `Runner`, so calls from several
threads, and an unfinished `compare_many` iterator beside new calls, all share the backend's batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from gram_local import __version__
from gram_local.backend import Backend, BackendStats
from gram_local.config import DEFAULT_RANK_METHOD, DEFAULT_VOTES, JudgeSettings
from gram_local.errors import GramLocalError, InputError
from gram_local.operations import (
    Planner,
    ThinkCallback,
    best_of_n_program,
    compare_program,
    rank_program,
    vote_program,
    with_overrides,
)
from gram_local.prompt import pieces_text
from gram_local.rendering import PromptRenderer
from gram_local.results import BestOfNResult, CompareResult, JudgeResult, ModelInfo, PromptView, RankResult, Timings, VoteResult
from gram_local.runner import Program, Runner

R = TypeVar("R", bound=JudgeResult)


class Judge:
    """A GRAM-RR judge over one backend (a loaded model, or a server)."""

    def __init__(self, backend: Backend, *, model: ModelInfo, settings: JudgeSettings | None = None) -> None:
        self.backend = backend
        self.model = model
        self.settings = settings or JudgeSettings()
        self.renderer = PromptRenderer(backend, model_label=model.path)
        self.chat_format = self.renderer.chat_format
        n_ctx_train = backend.vocabulary.n_ctx_train
        if self.settings.n_ctx is not None and self.settings.n_ctx > n_ctx_train:
            raise InputError(f"--ctx {self.settings.n_ctx} is over the model's context of {n_ctx_train}")
        self.planner = Planner(self.renderer, n_ctx_limit=n_ctx_train)
        self.runner = Runner(backend)

    # ---------------------------------------------------------------- prompts

    def prompt(self, question: str, response_a: str, response_b: str, **overrides: Any) -> PromptView:
        """Exactly what the model is fed for the order a, b."""
        settings = self._with(**overrides)
        pieces = self.renderer.render(question, response_a, response_b, settings)
        tokens = self.renderer.tokenize(pieces)
        self.planner.check_fits(len(tokens), settings)
        return PromptView(text=pieces_text(pieces), tokens=tokens, model=self.model)

    def head_tokens(self, settings: JudgeSettings | None = None) -> list[int]:
        """The chat header and instructions every prompt starts with (kept in the KV cache)."""
        return self.renderer.head_tokens(settings or self.settings)

    def settings_record(self, settings: JudgeSettings | None = None) -> dict[str, Any]:
        """What produced a result: enough to tell whether two results are comparable."""
        s = settings or self.settings
        record: dict[str, Any] = {
            "model_sha256": self.model.sha256,
            "quantization": self.model.quantization,
            "chat_format": self.chat_format,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "max_think_tokens": s.max_think_tokens,
            "think_may_close": s.allow_close,
            "date": s.date,
            "position": s.position,
            "backend": self.backend.kind,
            "gram_local_version": __version__,
        }
        if self.backend.remote:
            record["server"] = {k: v for k, v in self.backend.identity().items() if k != "kind"}
        return record

    def _with(self, **overrides: Any) -> JudgeSettings:
        return with_overrides(self.settings, **overrides)

    def vote_settings(self, temperature: float | None = None, top_p: float | None = None, **overrides: Any) -> JudgeSettings:
        settings = self._with(**overrides)
        return replace(
            settings,
            temperature=settings.vote_temperature if temperature is None else temperature,
            top_p=settings.vote_top_p if top_p is None else top_p,
        )

    # ---------------------------------------------------------------- programs

    def compare_program(self, question: str, a: str, b: str, *, swap: bool = False, settings: JudgeSettings | None = None,
                        on_think: ThinkCallback | None = None) -> Program[CompareResult]:
        s = settings or self.settings
        result = yield from compare_program(self.planner, question, a, b, swap=swap, settings=s, on_think=on_think)
        return self._stamp(result, s, swap=swap)

    def vote_program(self, question: str, a: str, b: str, *, k: int = DEFAULT_VOTES, settings: JudgeSettings | None = None,
                     on_think: ThinkCallback | None = None) -> Program[VoteResult]:
        s = settings or self.vote_settings()
        result = yield from vote_program(self.planner, question, a, b, k=k, settings=s, on_think=on_think)
        return self._stamp(result, s, votes=k)

    def rank_program(self, question: str, responses: Sequence[str], *, method: str = DEFAULT_RANK_METHOD, swap: bool = False,
                     settings: JudgeSettings | None = None, on_think: ThinkCallback | None = None) -> Program[RankResult]:
        s = settings or self.settings
        result = yield from rank_program(self.planner, question, responses, method=method, swap=swap, settings=s, on_think=on_think)
        return self._stamp(result, s, method=method, swap=swap)

    def best_of_n_program(self, question: str, responses: Sequence[str], *, swap: bool = False,
                          settings: JudgeSettings | None = None, on_think: ThinkCallback | None = None) -> Program[BestOfNResult]:
        s = settings or self.settings
        result = yield from best_of_n_program(self.planner, question, responses, swap=swap, settings=s, on_think=on_think)
        return self._stamp(result, s, swap=swap)

    def _stamp(self, result: R, settings: JudgeSettings, **extra: Any) -> R:
        result.model = self.model
        result.settings = self.settings_record(settings) | extra
        return result

    def run(self, program: Program[R]) -> R:
        """Run one program to its result; its timings are the backend's work meanwhile."""
        clock = _Clock(self.backend)
        result = self.runner.run(program)
        result.timings = clock.timings()
        return result

    def run_many(self, programs: Iterable[Program[R]], *, in_flight: int | None = None) -> Iterator[tuple[int, R | BaseException]]:
        """(index, result or error) as programs finish; the backend's work between two yields is
        shared equally by the results finished then."""
        limit = in_flight or max(getattr(self.backend, "parallel", 8), 1)
        clock = _Clock(self.backend)
        for finished in self.runner.run_many(programs, in_flight=limit):
            results = [o for _, o in finished if not isinstance(o, BaseException)]
            if results:
                share = _scale_timings(clock.timings(), 1.0 / len(results))
                for r in results:
                    r.timings = share
                clock = _Clock(self.backend)
            yield from finished

    # ---------------------------------------------------------------- operations

    def compare(self, question: str, a: str, b: str, *, swap: bool = False, on_think: ThinkCallback | None = None,
                **overrides: Any) -> CompareResult:
        """Which of a and b answers the question better; with swap, both orders (disagreement: tie)."""
        return self.run(self.compare_program(question, a, b, swap=swap, settings=self._with(**overrides), on_think=on_think))

    def compare_many(self, items: Iterable[tuple[str, str, str]], *, swap: bool = False,
                     **overrides: Any) -> Iterator[CompareResult | GramLocalError]:
        """Many comparisons decoded together, yielded in input order as soon as each is done.

        A bad item yields its error instead of a result; the others go on.
        """
        settings = self._with(**overrides)
        programs = (self.compare_program(q, a, b, swap=swap, settings=settings) for q, a, b in items)
        done: dict[int, Any] = {}
        next_index = 0
        for index, outcome in self.run_many(programs):
            if isinstance(outcome, BaseException) and not isinstance(outcome, GramLocalError):
                raise outcome
            done[index] = outcome
            while next_index in done:
                yield done.pop(next_index)
                next_index += 1

    def vote(self, question: str, a: str, b: str, *, k: int = DEFAULT_VOTES, temperature: float | None = None,
             top_p: float | None = None, on_think: ThinkCallback | None = None, **overrides: Any) -> VoteResult:
        """k sampled judgments in one order; the majority wins, an even split goes to the mean p_a."""
        settings = self.vote_settings(temperature, top_p, **overrides)
        return self.run(self.vote_program(question, a, b, k=k, settings=settings, on_think=on_think))

    def rank(self, question: str, responses: Sequence[str], *, method: str = DEFAULT_RANK_METHOD, swap: bool = False,
             on_think: ThinkCallback | None = None, **overrides: Any) -> RankResult:
        """All responses best first: a comparison sort, or round-robin with Bradley-Terry scores."""
        return self.run(self.rank_program(question, responses, method=method, swap=swap, settings=self._with(**overrides),
                                          on_think=on_think))

    def best_of_n(self, question: str, responses: Sequence[str], *, swap: bool = False, on_think: ThinkCallback | None = None,
                  **overrides: Any) -> BestOfNResult:
        """The best response by knockout, in n-1 comparisons."""
        return self.run(self.best_of_n_program(question, responses, swap=swap, settings=self._with(**overrides),
                                               on_think=on_think))

    def close(self) -> None:
        self.backend.close()


class _Clock:
    """Wall time and backend counters since it was made."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.started = time.perf_counter()
        self.before = backend.stats.snapshot()

    def timings(self) -> Timings:
        return timings_of(self.backend.stats.since(self.before), time.perf_counter() - self.started)


def timings_of(stats: BackendStats, wall: float) -> Timings:
    return Timings(
        seconds=round(wall, 4),
        prompt_tokens=stats.prompt_tokens,
        generated_tokens=stats.generated_tokens,
        prefill_seconds=round(stats.prefill_seconds, 4),
        decode_seconds=round(stats.decode_seconds, 4),
        prefill_tokens_per_s=round(stats.prompt_tokens / stats.prefill_seconds, 2) if stats.prefill_seconds else None,
        decode_tokens_per_s=round(stats.generated_tokens / stats.decode_seconds, 2) if stats.decode_seconds else None,
        restored_tokens=stats.restored_tokens,
    )


def _scale_timings(t: Timings, factor: float) -> Timings:
    return replace(
        t,
        seconds=round(t.seconds * factor, 4),
        prompt_tokens=round(t.prompt_tokens * factor),
        generated_tokens=round(t.generated_tokens * factor),
        prefill_seconds=round(t.prefill_seconds * factor, 4),
        decode_seconds=round(t.decode_seconds * factor, 4),
        restored_tokens=round(t.restored_tokens * factor),
    )
