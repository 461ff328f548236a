"""Ranking strategies over a pairwise judge, with no model inside.

Each strategy works in rounds: it yields a list of independent comparisons at once (so the
engine can decode them together) and decides the next round from the outcomes it is sent. A
pair `(i, j)` always shows response i as input a; outcomes are given from input a's side.

The model card's listwise demo sorted with a comparator and then printed the unsorted ids; here
the sort's result is the ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

import numpy as np

Winner = Literal["a", "b", "tie"]
T = TypeVar("T")


@dataclass(frozen=True)
class PairOutcome:
    a: int
    b: int
    winner: Winner
    p_a: float


JudgePairs = Callable[[list[tuple[int, int]]], list[PairOutcome]]
Pairs = list[tuple[int, int]]
Rounds = Generator[Pairs, list[PairOutcome], T]
"""A strategy as a generator: it yields a round of independent pairs and is sent their outcomes,
so whoever drives it can judge the round's pairs together (and other work beside them)."""


def first_wins(outcome: PairOutcome) -> bool:
    """Whether input a goes through; a tie (the two orders disagree) falls to the mean p_a,
    and an exact 0.5 keeps the earlier response, so results never depend on dict order."""
    if outcome.winner == "tie":
        return outcome.p_a >= 0.5
    return outcome.winner == "a"


def merge_sort_rounds(n: int) -> Rounds[tuple[list[int], list[PairOutcome]]]:
    """Bottom-up merge sort: at most n*log2(n) comparisons; every merge in a pass runs together."""
    runs: list[list[int]] = [[i] for i in range(n)]
    made: list[PairOutcome] = []
    while len(runs) > 1:
        merges = [(runs[k], runs[k + 1]) for k in range(0, len(runs) - 1, 2)]
        leftover = [runs[-1]] if len(runs) % 2 else []
        states: list[tuple[list[int], list[int], list[int]]] = [(list(left), list(right), []) for left, right in merges]
        while True:
            waiting = [st for st in states if st[0] and st[1]]
            if not waiting:
                break
            outcomes = yield [(st[0][0], st[1][0]) for st in waiting]
            made.extend(outcomes)
            for (left, right, out), outcome in zip(waiting, outcomes):
                out.append((left if first_wins(outcome) else right).pop(0))
        runs = [out + left + right for left, right, out in states] + leftover
    return (runs[0] if runs else []), made


def round_robin_rounds(n: int) -> Rounds[tuple[list[int], np.ndarray, list[PairOutcome]]]:
    """Every pair once, all in one round; Bradley-Terry strengths from the p_a values."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    outcomes = (yield pairs) if pairs else []
    scores = bradley_terry(n, outcomes)
    return order_by_scores(scores), scores, outcomes


def knockout_rounds(n: int) -> Rounds[tuple[int, list[PairOutcome]]]:
    """Single elimination: n-1 comparisons, each round's matches together; an odd one out waits."""
    alive = list(range(n))
    made: list[PairOutcome] = []
    while len(alive) > 1:
        pairs = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        outcomes = yield pairs
        made.extend(outcomes)
        winners = [o.a if first_wins(o) else o.b for o in outcomes]
        alive = winners + ([alive[-1]] if len(alive) % 2 else [])
    return alive[0], made


def drive(rounds: Rounds[T], judge_pairs: JudgePairs) -> T:
    """Run a strategy to its end with a plain function judging each round."""
    try:
        pairs = next(rounds)
        while True:
            pairs = rounds.send(judge_pairs(pairs))
    except StopIteration as done:
        return cast(T, done.value)  # StopIteration.value is untyped; it is what `rounds` returns


def merge_sort(n: int, judge_pairs: JudgePairs) -> tuple[list[int], list[PairOutcome]]:
    return drive(merge_sort_rounds(n), judge_pairs)


def round_robin(n: int, judge_pairs: JudgePairs) -> tuple[list[int], np.ndarray, list[PairOutcome]]:
    return drive(round_robin_rounds(n), judge_pairs)


def knockout(n: int, judge_pairs: JudgePairs) -> tuple[int, list[PairOutcome]]:
    return drive(knockout_rounds(n), judge_pairs)


def bradley_terry(n: int, outcomes: Sequence[PairOutcome], *, l2: float = 0.01, iterations: int = 100) -> np.ndarray:
    """Strengths s (mean zero) maximizing sum p*log sig(s_a - s_b) + (1-p)*log sig(s_b - s_a).

    Soft outcomes use the model's confidence, not just its vote; the small L2 term keeps
    strengths finite when one response wins everything (p = 1). Newton steps on a concave objective.
    """
    s = np.zeros(n)
    if n == 0 or not outcomes:
        return s
    a = np.array([o.a for o in outcomes])
    b = np.array([o.b for o in outcomes])
    w = np.clip(np.array([o.p_a for o in outcomes], dtype=float), 0.0, 1.0)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(s[a] - s[b])))
        resid = w - p
        grad = np.zeros(n)
        np.add.at(grad, a, resid)
        np.add.at(grad, b, -resid)
        grad -= l2 * s
        curv = p * (1 - p)
        hess = np.zeros((n, n))
        np.add.at(hess, (a, a), -curv)
        np.add.at(hess, (b, b), -curv)
        np.add.at(hess, (a, b), curv)
        np.add.at(hess, (b, a), curv)
        hess -= l2 * np.eye(n)
        step = np.linalg.solve(hess, grad)
        s = s - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return s - float(s.mean())


def order_by_scores(scores: np.ndarray) -> list[int]:
    """Best first; equal scores keep input order."""
    return sorted(range(len(scores)), key=lambda i: (-round(float(scores[i]), 12), i))
