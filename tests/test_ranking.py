"""Ranking strategies against a known truth, with no model."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from gram_local.ranking import PairOutcome, bradley_terry, first_wins, knockout, merge_sort, round_robin


def oracle(strengths: list[float], log: list[list[tuple[int, int]]] | None = None):
    def judge_pairs(pairs: list[tuple[int, int]]) -> list[PairOutcome]:
        if log is not None:
            log.append(list(pairs))
        out = []
        for i, j in pairs:
            p = 1 / (1 + math.exp(-(strengths[i] - strengths[j])))
            out.append(PairOutcome(i, j, "a" if p > 0.5 else "b", p))
        return out

    return judge_pairs


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_merge_sort_sorts_and_batches_rounds(n: int) -> None:
    rng = random.Random(n)
    strengths = [rng.uniform(-3, 3) for _ in range(n)]
    rounds: list[list[tuple[int, int]]] = []
    ranking, outcomes = merge_sort(n, oracle(strengths, rounds))
    assert ranking == sorted(range(n), key=lambda i: -strengths[i])
    assert len(outcomes) <= n * math.ceil(math.log2(n))
    assert len(rounds) < len(outcomes) or n <= 3  # independent comparisons went together


def test_merge_sort_result_is_used_not_the_input_order() -> None:
    # The model card's demo sorted ids and printed them unsorted: a reversed truth must show.
    ranking, _ = merge_sort(4, oracle([0.0, 1.0, 2.0, 3.0]))
    assert ranking == [3, 2, 1, 0]


def test_round_robin_compares_every_pair_once_and_ranks_by_strength() -> None:
    strengths = [0.5, -1.0, 2.0, 0.0]
    ranking, scores, outcomes = round_robin(4, oracle(strengths))
    assert sorted((o.a, o.b) for o in outcomes) == list(itertools.combinations(range(4), 2))
    assert ranking == [2, 0, 3, 1]
    assert abs(float(np.sum(scores))) < 1e-9


def test_bradley_terry_recovers_strength_differences() -> None:
    truth = np.array([1.0, 0.0, -0.5, 0.7])
    outcomes = [
        PairOutcome(i, j, "a", float(1 / (1 + np.exp(-(truth[i] - truth[j])))))
        for i, j in itertools.combinations(range(4), 2)
    ]
    scores = bradley_terry(4, outcomes, l2=1e-6)
    assert np.allclose(scores, truth - truth.mean(), atol=1e-3)


def test_bradley_terry_stays_finite_for_a_clean_sweep() -> None:
    outcomes = [PairOutcome(0, 1, "a", 1.0), PairOutcome(0, 2, "a", 1.0), PairOutcome(1, 2, "a", 1.0)]
    scores = bradley_terry(3, outcomes)
    assert np.all(np.isfinite(scores)) and scores[0] > scores[1] > scores[2]


@pytest.mark.parametrize("n", [2, 3, 7, 8])
def test_knockout_finds_the_best_in_n_minus_one(n: int) -> None:
    rng = random.Random(n + 10)
    strengths = [rng.uniform(-2, 2) for _ in range(n)]
    rounds: list[list[tuple[int, int]]] = []
    best, outcomes = knockout(n, oracle(strengths, rounds))
    assert best == max(range(n), key=lambda i: strengths[i])
    assert len(outcomes) == n - 1
    assert len(rounds) == math.ceil(math.log2(n))


def test_ties_fall_to_the_mean_confidence_then_the_earlier_response() -> None:
    assert first_wins(PairOutcome(0, 1, "tie", 0.6))
    assert not first_wins(PairOutcome(0, 1, "tie", 0.4))
    assert first_wins(PairOutcome(0, 1, "tie", 0.5))
    assert not first_wins(PairOutcome(0, 1, "b", 0.9))  # the verdict, not the confidence, decides
