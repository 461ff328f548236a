"""JudgeBench, scored by the official rule.

Each pair is judged in both orders. A verdict that matches the label counts +1, one that contradicts
it -1, a missing one 0; the pair is correct only when the sum is positive, so a judge that flips
with the order scores 0 on that pair. Categories by `source` prefix. The official overall weights
every pair equally; the GRAM papers report the mean of the four category accuracies: both are given,
labelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gram_local.batch import Task, id_key
from gram_local.evals.calibration import Calibration, Position, calibration, position
from gram_local.evals.data import JUDGEBENCH_CATEGORIES, JudgeBenchPair

# GRAM-RR-LLaMA-3.2-3B as published (model card; GPT-4o split). The paper gives no pair-weighted
# overall, so none is printed for it.
PAPER_GRAM_RR_3B: dict[str, float] = {
    "knowledge": 93.0,
    "reasoning": 78.1,
    "math": 81.6,
    "coding": 68.5,
    "category_mean": 80.3,
}

Judgments = Sequence[Mapping[str, Any]]


def pair_tasks(pairs: Sequence[JudgeBenchPair]) -> list[Task]:
    """One batch task per pair: response_A as input a, both orders judged."""
    return [
        Task(id=p.pair_id, op="compare", question=p.question, a=p.response_a, b=p.response_b, swap=True)
        for p in pairs
    ]


def pair_sum(a_is_better: bool, judgments: Judgments | None) -> int:
    """The official per-pair sum: +1 per verdict that matches the label, -1 per one against it."""
    total = 0
    for judgment in judgments or ():
        prefers_a = judgment["prefers"] == "a"
        total += 1 if prefers_a == a_is_better else -1
    return total


@dataclass(frozen=True)
class CategoryScore:
    n: int
    correct: int
    accuracy: float | None  # percent


@dataclass
class JudgeBenchScores:
    split: str | None
    pairs: int
    failed: int  # pairs without judgments (error records or missing): scored as incorrect
    categories: dict[str, CategoryScore]
    overall: float | None  # official: percent of all pairs correct
    category_mean: float | None  # GRAM papers: mean of the category accuracies
    missing_categories: list[str]
    inconsistent: int  # pairs whose two orders disagree (each scores 0, hence incorrect)
    position: Position
    calibration: Calibration
    paper: dict[str, float] = field(default_factory=lambda: dict(PAPER_GRAM_RR_3B))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["position"] = self.position.to_dict()
        data["calibration"] = self.calibration.to_dict()
        return data


def score_judgebench(
    pairs: Sequence[JudgeBenchPair],
    judgments: Mapping[str, Judgments | None],
    *,
    split: str | None = None,
) -> JudgeBenchScores:
    """Score `pairs` from each pair's judgments (dicts with `prefers`, `order`, `answer`, `p_a`).

    `judgments` maps pair_id to the judgments of that pair; a pair absent or mapped to None failed.
    """
    tallies: dict[str, list[int]] = {name: [0, 0] for name, _ in JUDGEBENCH_CATEGORIES}
    failed = inconsistent = 0
    judged: list[Judgments] = []
    points: list[tuple[float, bool]] = []
    for pair in pairs:
        found = judgments.get(pair.pair_id)
        tally = tallies[pair.category]
        tally[0] += 1
        if not found:
            failed += 1
            continue
        judged.append(found)
        prefers = {j["prefers"] for j in found}
        inconsistent += len(prefers) > 1
        tally[1] += pair_sum(pair.a_is_better, found) > 0
        points.extend((float(j["p_a"]), pair.a_is_better) for j in found)
    categories = {
        name: CategoryScore(n=n, correct=correct, accuracy=100.0 * correct / n if n else None)
        for name, (n, correct) in tallies.items()
    }
    present = [c.accuracy for c in categories.values() if c.accuracy is not None]
    total = sum(c.n for c in categories.values())
    return JudgeBenchScores(
        split=split,
        pairs=total,
        failed=failed,
        categories=categories,
        overall=100.0 * sum(c.correct for c in categories.values()) / total if total else None,
        category_mean=sum(present) / len(present) if present else None,
        missing_categories=[name for name, c in categories.items() if c.n == 0],
        inconsistent=inconsistent,
        position=position(judged),
        calibration=calibration(points),
    )


def judgments_from_records(pairs: Sequence[JudgeBenchPair], records: Mapping[str, Mapping[str, Any]]) -> dict[str, Judgments | None]:
    """Each pair's judgments from batch records (keyed by id key); error records give None."""
    found: dict[str, Judgments | None] = {}
    for pair in pairs:
        record = records.get(id_key(pair.pair_id))
        found[pair.pair_id] = record["judgments"] if record and record.get("status") == "ok" else None
    return found
