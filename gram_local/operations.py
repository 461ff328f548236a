"""The judge operations as programs: compare, vote, rank and best-of-n.

Each reduces to pairwise generations. A program renders its prompts, yields the generations it
needs (see `gram_local.runner`), and maps every answer back to the inputs as given: a judgment
shown in order "BA" prefers input b when the model writes A. Results carry no timings or model
fields yet; the judge stamps those.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar, cast

from gram_local.backend import Generation, GenerationRequest, SamplerSpec
from gram_local.config import ANSWER_MARGIN, JudgeSettings
from gram_local.errors import ContextOverflowError, InputError
from gram_local.grammar import ANSWER_CLOSE, ANSWER_SLOT_PREFIX, parse_reply
from gram_local.prompt import THINK_OPEN
from gram_local.ranking import PairOutcome, Rounds, bradley_terry, knockout_rounds, merge_sort_rounds, round_robin_rounds
from gram_local.rendering import PromptRenderer, require_text
from gram_local.results import BestOfNResult, CompareResult, Comparison, Judgment, RankResult, Side, VoteResult, Winner
from gram_local.runner import Ask, Program

Order = Literal["AB", "BA"]
RankMethod = Literal["sort", "round-robin"]
METHODS: tuple[str, ...] = ("sort", "round-robin")
# The judge's operations by the names the CLI, batch rows and the service's routes use.
OPERATIONS: tuple[str, ...] = ("compare", "vote", "rank", "best-of-n")
T = TypeVar("T")
ThinkCallback = Callable[[int, str], None]
"""Receives (index of the judgment in the result, think text as it is generated)."""


@dataclass
class Planned:
    """One generation to run: which inputs, in which order, with which sampler."""

    pair: tuple[int, int] | None
    order: Order
    request: GenerationRequest


class Planner:
    """Turns texts into requests for one backend's prompts and maps answers back."""

    def __init__(self, renderer: PromptRenderer, n_ctx_limit: int) -> None:
        self.renderer = renderer
        self.n_ctx_limit = n_ctx_limit

    def request(self, question: str, shown_a: str, shown_b: str, sampler: SamplerSpec, settings: JudgeSettings) -> GenerationRequest:
        tokens = self.renderer.prompt_tokens(question, shown_a, shown_b, settings)
        self.check_fits(len(tokens), settings)
        return GenerationRequest(
            prompt=tokens,
            sampler=sampler,
            max_think_tokens=settings.max_think_tokens,
            allow_close=settings.allow_close,
            at_answer_slot=settings.max_think_tokens == 0,
            shared_prefix=len(self.renderer.head_tokens(settings)),
        )

    def check_fits(self, n_tokens: int, settings: JudgeSettings) -> None:
        limit = min(settings.n_ctx or self.n_ctx_limit, self.n_ctx_limit)
        room = limit - settings.max_think_tokens - ANSWER_MARGIN
        if n_tokens > room:
            raise ContextOverflowError(n_tokens, max(room, 0))

    def pair(
        self,
        question: str,
        a: str,
        b: str,
        *,
        swap: bool,
        settings: JudgeSettings,
        pair: tuple[int, int] | None = None,
        seed_offset: int = 0,
        first: Order = "AB",
    ) -> list[Planned]:
        """One order (`first`) or, with swap, both; each its own seed."""
        orders: list[Order] = ["AB", "BA"] if swap else [first]
        planned = []
        for k, order in enumerate(orders):
            shown_a, shown_b = (a, b) if order == "AB" else (b, a)
            sampler = sampler_for(settings, seed_offset + k)
            planned.append(Planned(pair, order, self.request(question, shown_a, shown_b, sampler, settings)))
        return planned

    def judgment(self, planned: Planned, gen: Generation) -> Judgment:
        prefilled = ANSWER_SLOT_PREFIX if planned.request.at_answer_slot else ""
        output = THINK_OPEN + gen.text + prefilled + gen.answer + ANSWER_CLOSE
        parsed = parse_reply(output)  # the backend guarantees the format; verify, never trust
        p_shown_a = gen.p_answer_a
        prefers: Side
        if planned.order == "AB":
            prefers, p_a = ("a" if parsed.answer == "A" else "b"), p_shown_a
        else:
            prefers, p_a = ("b" if parsed.answer == "A" else "a"), 1.0 - p_shown_a
        return Judgment(
            order=planned.order,
            answer=parsed.answer,
            prefers=prefers,
            p_a=p_a,
            rationale=parsed.rationale,
            think_tokens=gen.think_tokens,
            forced_close=gen.forced_close,
            pair=planned.pair,
            output=output,
        )


def sampler_for(settings: JudgeSettings, offset: int = 0) -> SamplerSpec:
    return SamplerSpec(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed + offset)


def shown_first(settings: JudgeSettings, pair: tuple[int, int]) -> Order:
    """Which input of a one-order comparison the model sees as Response A.

    Always the lower index would turn the model's position bias into a bias for earlier inputs;
    a coin seeded by --seed and the pair's indices spreads it evenly and is recorded per judgment.
    """
    if settings.position == "fixed":
        return "AB"
    digest = hashlib.sha256(f"{settings.seed}|{pair[0]}|{pair[1]}".encode()).digest()
    return "BA" if digest[0] & 1 else "AB"


def _asks(planned: Sequence[Planned], on_think: ThinkCallback | None, base: int) -> list[Ask]:
    def callback(index: int) -> Callable[[str], None] | None:
        if on_think is None:
            return None
        return lambda text: on_think(index, text)

    return [Ask(p.request, callback(base + k)) for k, p in enumerate(planned)]


def compare_result(judgments: list[Judgment]) -> CompareResult:
    preferred = {j.prefers for j in judgments}
    winner: Winner = preferred.pop() if len(preferred) == 1 else "tie"
    p_a = sum(j.p_a for j in judgments) / len(judgments)
    return CompareResult(winner=winner, p_a=p_a, judgments=judgments)


def compare_program(
    planner: Planner, question: str, a: str, b: str, *, swap: bool, settings: JudgeSettings, on_think: ThinkCallback | None = None
) -> Program[CompareResult]:
    planned = planner.pair(question, a, b, swap=swap, settings=settings)
    generations = yield _asks(planned, on_think, 0)
    return compare_result([planner.judgment(p, g) for p, g in zip(planned, generations)])


def vote_program(
    planner: Planner, question: str, a: str, b: str, *, k: int, settings: JudgeSettings, on_think: ThinkCallback | None = None
) -> Program[VoteResult]:
    """k sampled judgments in one order; the majority wins, an even split goes to the mean p_a."""
    if k < 1:
        raise InputError("--votes must be at least 1")
    planned = [
        Planned(None, "AB", planner.request(question, a, b, sampler_for(settings, i), settings)) for i in range(k)
    ]
    generations = yield _asks(planned, on_think, 0)
    judgments = [planner.judgment(p, g) for p, g in zip(planned, generations)]
    votes = {"a": sum(j.prefers == "a" for j in judgments), "b": sum(j.prefers == "b" for j in judgments)}
    p_a = sum(j.p_a for j in judgments) / len(judgments)
    winner: Winner
    if votes["a"] != votes["b"]:
        winner = "a" if votes["a"] > votes["b"] else "b"
    else:
        winner = "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"
    return VoteResult(winner=winner, votes=votes, p_a=p_a, judgments=judgments)


def check_responses(question: str, responses: Sequence[str]) -> None:
    require_text("question", question)
    if isinstance(responses, str) or len(responses) < 2:
        raise InputError(f"need at least two responses, got {1 if isinstance(responses, str) else len(responses)}")
    for i, response in enumerate(responses):
        require_text(f"response {i}", response)


def _pairs_program(
    planner: Planner,
    question: str,
    responses: Sequence[str],
    rounds: Rounds[T],
    *,
    swap: bool,
    settings: JudgeSettings,
    judgments: list[Judgment],
    on_think: ThinkCallback | None,
) -> Generator[list[Ask], list[Generation], T]:
    """Feed a ranking strategy's rounds of pairs through the backend; collect every judgment."""
    try:
        pairs = next(rounds)
        while True:
            planned: list[Planned] = []
            for i, j in pairs:
                first = shown_first(settings, (i, j))
                planned += planner.pair(question, responses[i], responses[j], swap=swap, settings=settings, pair=(i, j), first=first)
            generations = yield _asks(planned, on_think, len(judgments))
            made = [planner.judgment(p, g) for p, g in zip(planned, generations)]
            judgments.extend(made)
            per = 2 if swap else 1
            outcomes = []
            for n, (i, j) in enumerate(pairs):
                summary = compare_result(made[n * per:(n + 1) * per])
                outcomes.append(PairOutcome(i, j, summary.winner, summary.p_a))
            pairs = rounds.send(outcomes)
    except StopIteration as done:
        return cast(T, done.value)  # StopIteration.value is untyped; it is what `rounds` returns


def rank_program(
    planner: Planner,
    question: str,
    responses: Sequence[str],
    *,
    method: str,
    swap: bool,
    settings: JudgeSettings,
    on_think: ThinkCallback | None = None,
) -> Program[RankResult]:
    """All responses best first: a comparison sort, or round-robin with Bradley-Terry scores."""
    check_responses(question, responses)
    if method not in METHODS:
        raise InputError(f"unknown ranking method {method!r}: use 'sort' or 'round-robin'")
    judgments: list[Judgment] = []
    n = len(responses)
    if method == "sort":
        ranking, outcomes = yield from _pairs_program(
            planner, question, responses, merge_sort_rounds(n), swap=swap, settings=settings, judgments=judgments, on_think=on_think
        )
        scores = bradley_terry(n, outcomes)
    else:
        ranking, scores, outcomes = yield from _pairs_program(
            planner, question, responses, round_robin_rounds(n), swap=swap, settings=settings, judgments=judgments, on_think=on_think
        )
    return RankResult(
        ranking=ranking,
        scores=[float(s) for s in scores],
        comparisons=[Comparison(o.a, o.b, o.winner, o.p_a) for o in outcomes],
        judgments=judgments,
    )


def best_of_n_program(
    planner: Planner,
    question: str,
    responses: Sequence[str],
    *,
    swap: bool,
    settings: JudgeSettings,
    on_think: ThinkCallback | None = None,
) -> Program[BestOfNResult]:
    """The best response by knockout, in n-1 comparisons."""
    check_responses(question, responses)
    judgments: list[Judgment] = []
    best, outcomes = yield from _pairs_program(
        planner, question, responses, knockout_rounds(len(responses)), swap=swap, settings=settings, judgments=judgments, on_think=on_think
    )
    return BestOfNResult(
        best=best, comparisons=[Comparison(o.a, o.b, o.winner, o.p_a) for o in outcomes], judgments=judgments
    )


def with_overrides(settings: JudgeSettings, **overrides: object) -> JudgeSettings:
    changes = {k: v for k, v in overrides.items() if v is not None}
    # Values arrive as `object` (any JudgeSettings field); JudgeSettings.__post_init__ checks them at run time.
    return replace(settings, **changes) if changes else settings  # type: ignore[arg-type]
