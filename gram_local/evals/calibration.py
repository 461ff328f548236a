"""How far the judge's `p_a` can be trusted as a probability, and how much order sways it.

Pure functions over plain numbers, shared by both benchmarks, so they are tested without a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Five buckets of confidence from 0.5 to 1.0: enough points per bucket on a few hundred pairs.
DEFAULT_BUCKETS = 5


@dataclass(frozen=True)
class Bucket:
    """Judgments whose confidence fell in [low, high) (the last bucket includes 1.0)."""

    low: float
    high: float
    n: int
    confidence: float | None  # mean confidence of the bucket's judgments
    accuracy: float | None  # share of them that picked the better response


@dataclass(frozen=True)
class Calibration:
    n: int
    buckets: list[Bucket]
    ece: float | None  # expected calibration error: sum of n_b / n * |accuracy_b - confidence_b|
    brier: float | None  # mean squared error of p_a against the 0/1 truth
    accuracy: float | None
    mean_confidence: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration(points: Iterable[tuple[float, bool]], n_buckets: int = DEFAULT_BUCKETS) -> Calibration:
    """Calibrate `(p_a, a_is_better)` points.

    The judge predicts input a when p_a > 0.5, with confidence max(p_a, 1 - p_a). A judgment at
    exactly 0.5 predicts neither side and counts as half right, which is what a coin flip earns.
    """
    if n_buckets < 1:
        raise ValueError("n_buckets must be at least 1")
    width = 0.5 / n_buckets
    counts = [0] * n_buckets
    conf_sums = [0.0] * n_buckets
    right_sums = [0.0] * n_buckets
    brier_sum = 0.0
    n = 0
    for p_a, a_is_better in points:
        if not 0.0 <= p_a <= 1.0:
            raise ValueError(f"p_a must lie in [0, 1], got {p_a!r}")
        truth = 1.0 if a_is_better else 0.0
        confidence = max(p_a, 1.0 - p_a)
        if p_a == 0.5:
            right = 0.5
        else:
            right = 1.0 if (p_a > 0.5) == a_is_better else 0.0
        # The epsilon keeps an edge such as 0.7 in its own bucket despite float error ((0.7-0.5)/0.1 < 2).
        index = min(math.floor((confidence - 0.5) / width + 1e-9), n_buckets - 1)
        counts[index] += 1
        conf_sums[index] += confidence
        right_sums[index] += right
        brier_sum += (p_a - truth) ** 2
        n += 1
    buckets = [
        Bucket(
            low=0.5 + i * width,
            high=0.5 + (i + 1) * width,
            n=counts[i],
            confidence=conf_sums[i] / counts[i] if counts[i] else None,
            accuracy=right_sums[i] / counts[i] if counts[i] else None,
        )
        for i in range(n_buckets)
    ]
    if n == 0:
        return Calibration(n=0, buckets=buckets, ece=None, brier=None, accuracy=None, mean_confidence=None)
    ece = sum(abs(right_sums[i] - conf_sums[i]) for i in range(n_buckets)) / n
    return Calibration(
        n=n,
        buckets=buckets,
        ece=ece,
        brier=brier_sum / n,
        accuracy=sum(right_sums) / n,
        mean_confidence=sum(conf_sums) / n,
    )


@dataclass(frozen=True)
class Position:
    """Order effects: a judge without position bias agrees with itself across orders."""

    pairs_both_orders: int  # pairs judged in both orders
    consistent: int  # of those, pairs whose two judgments prefer the same input
    consistency: float | None
    judgments: int
    first_shown_preferred: int  # judgments that picked the response shown first ("A")
    first_shown_rate: float | None  # 0.5 for an unbiased judge on balanced data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position(pairs: Iterable[Sequence[Mapping[str, Any]]]) -> Position:
    """Position consistency over each pair's judgments (dicts with `order`, `answer`, `prefers`)."""
    both = consistent = judgments = first = 0
    for pair in pairs:
        by_order = {j["order"]: j for j in pair}
        for j in pair:
            judgments += 1
            first += j["answer"] == "A"
        if "AB" in by_order and "BA" in by_order:
            both += 1
            consistent += by_order["AB"]["prefers"] == by_order["BA"]["prefers"]
    return Position(
        pairs_both_orders=both,
        consistent=consistent,
        consistency=consistent / both if both else None,
        judgments=judgments,
        first_shown_preferred=first,
        first_shown_rate=first / judgments if judgments else None,
    )
