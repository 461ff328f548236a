"""Official scoring on hand-built prediction sets whose scores are known by hand."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gram_local.evals.calibration import calibration, position
from gram_local.evals.data import (
    DataError,
    JudgeBenchPair,
    RMBenchItem,
    load_judgebench,
    load_rmbench,
    load_rmbench_files,
    parse_domains,
    resolve_split,
)
from gram_local.evals.judgebench import pair_sum, pair_tasks, score_judgebench
from gram_local.evals.rmbench import cell_correct, cell_id, cell_tasks, score_rmbench

SHARED = Path(__file__).resolve().parents[2] / "shared"


def judgment(order: str, prefers: str, p_a: float | None = None) -> dict[str, Any]:
    """A judgment as the judge writes it: `answer` is the letter, `p_a` for input a."""
    shown_first = "a" if order == "AB" else "b"
    answer = "A" if prefers == shown_first else "B"
    if p_a is None:
        p_a = 0.9 if prefers == "a" else 0.1
    return {"order": order, "answer": answer, "prefers": prefers, "p_a": p_a}


def both(first: str, second: str) -> list[dict[str, Any]]:
    return [judgment("AB", first), judgment("BA", second)]


# -------------------------------------------------------------------------------------- JudgeBench


def jb_pair(pair_id: str, source: str, label: str) -> JudgeBenchPair:
    return JudgeBenchPair(pair_id, source, "q", "ra", "rb", label)


def test_official_pair_rule() -> None:
    assert pair_sum(True, both("a", "a")) == 2
    assert pair_sum(False, both("b", "b")) == 2
    assert pair_sum(True, both("a", "b")) == 0  # inconsistent: not > 0, so wrong
    assert pair_sum(True, both("b", "b")) == -2
    assert pair_sum(True, [judgment("AB", "a")]) == 1  # one verdict, the other missing: official +1
    assert pair_sum(True, None) == 0


def test_judgebench_hand_built_set() -> None:
    pairs = [
        jb_pair("k1", "mmlu-pro-law", "A>B"),
        jb_pair("k2", "mmlu-pro-biology", "B>A"),
        jb_pair("k3", "mmlu-pro-history", "A>B"),
        jb_pair("r1", "livebench-reasoning", "B>A"),
        jb_pair("r2", "livebench-reasoning", "A>B"),
        jb_pair("m1", "livebench-math", "A>B"),
        jb_pair("c1", "livecodebench", "B>A"),
        jb_pair("c2", "livecodebench", "A>B"),
    ]
    predictions = {
        "k1": both("a", "a"),  # right
        "k2": both("a", "b"),  # inconsistent
        "k3": both("b", "b"),  # wrong
        "r1": both("b", "b"),  # right (label B>A)
        "r2": both("a", "a"),  # right
        "m1": None,  # failed
        "c1": both("b", "b"),  # right
        "c2": both("b", "a"),  # inconsistent
    }
    s = score_judgebench(pairs, predictions, split="gpt-4o")
    assert {k: (c.n, c.correct) for k, c in s.categories.items()} == {
        "knowledge": (3, 1),
        "reasoning": (2, 2),
        "math": (1, 0),
        "coding": (2, 1),
    }
    assert s.categories["knowledge"].accuracy == pytest.approx(100 / 3)
    assert s.overall == pytest.approx(50.0)  # 4 of 8 pairs
    assert s.category_mean == pytest.approx((100 / 3 + 100 + 0 + 50) / 4)
    assert (s.failed, s.inconsistent, s.missing_categories) == (1, 2, [])
    assert (s.position.pairs_both_orders, s.position.consistent) == (7, 5)
    assert s.calibration.n == 14
    d = s.to_dict()
    assert d["paper"]["category_mean"] == 80.3 and d["categories"]["math"]["accuracy"] == 0.0


def test_judgebench_always_first_shown_scores_zero() -> None:
    """A judge that always picks the response shown first is inconsistent on every pair."""
    pairs = [jb_pair(f"p{i}", "livebench-math", "A>B" if i % 2 else "B>A") for i in range(6)]
    s = score_judgebench(pairs, {p.pair_id: both("a", "b") for p in pairs})
    assert s.overall == 0.0 and s.inconsistent == 6
    assert s.position.consistency == 0.0 and s.position.first_shown_rate == 1.0


def test_judgebench_missing_categories_leave_the_mean() -> None:
    pairs = [jb_pair("k1", "mmlu-pro-law", "A>B"), jb_pair("k2", "mmlu-pro-law", "A>B")]
    s = score_judgebench(pairs, {"k1": both("a", "a"), "k2": both("b", "b")})
    assert s.missing_categories == ["reasoning", "math", "coding"]
    assert s.category_mean == s.overall == 50.0
    assert s.categories["math"].accuracy is None


def test_judgebench_tasks_judge_both_orders_with_response_a_as_input_a() -> None:
    (task,) = pair_tasks([JudgeBenchPair("x", "livecodebench", "Q", "RA", "RB", "B>A")])
    assert (task.id, task.op, task.question, task.a, task.b, task.swap) == ("x", "compare", "Q", "RA", "RB", True)


def test_judgebench_loader_checks_fields(tmp_path: Path) -> None:
    good = {"pair_id": "1", "source": "livebench-math", "question": "q", "response_A": "a", "response_B": "b", "label": "A>B"}
    path = tmp_path / "jb.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "pair_id": "2", "label": "B>A"}) + "\n")
    assert [p.a_is_better for p in load_judgebench(path)] == [True, False]
    for bad, message in (
        ({**good, "label": "A=B"}, "label"),
        ({**good, "source": "arena"}, "no official category"),
        ({k: v for k, v in good.items() if k != "response_B"}, "response_B"),
    ):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=message):
            load_judgebench(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match="appears twice"):
        load_judgebench(path)
    assert resolve_split("gpt").name == resolve_split("gpt-4o-2024-05-13").name == "gpt-4o"
    assert resolve_split("claude").response_model == "claude-3-5-sonnet-20240620"
    with pytest.raises(DataError, match="unknown JudgeBench split"):
        resolve_split("llama")


# ---------------------------------------------------------------------------------------- RM-Bench


def rm_item(source: str, item_id: int, chosen: tuple[str, ...] = ("c0", "c1", "c2")) -> RMBenchItem:
    return RMBenchItem(source, item_id, f"prompt {item_id}", chosen, ("r0", "r1", "r2"))


def cells_by(items: list[RMBenchItem], right: Callable[[RMBenchItem, int, int], bool]) -> dict[str, Any]:
    """Both orders agree: right cells prefer the chosen input a, wrong ones the rejected input b."""
    return {
        cell_id(item, i, j): both("a", "a") if right(item, i, j) else both("b", "b")
        for item in items
        for i in range(3)
        for j in range(3)
    }


def test_rmbench_hard_normal_easy() -> None:
    items = [rm_item("chat", 1), rm_item("chat", 2)]
    # Right only when the chosen response is at least as fancy as the rejected one (i >= j).
    s = score_rmbench(items, cells_by(items, lambda item, i, j: i >= j))
    chat = s.domains["chat"]
    assert chat.matrix == [[100.0, 0.0, 0.0], [100.0, 100.0, 0.0], [100.0, 100.0, 100.0]]
    assert (chat.hard, chat.normal, chat.easy) == (0.0, 100.0, 100.0)
    assert chat.score == pytest.approx(600 / 9)
    assert s.overall == pytest.approx(600 / 9) and s.hard == 0.0


def test_rmbench_cell_is_right_only_above_one_half() -> None:
    assert cell_correct([judgment("AB", "a", 0.7), judgment("BA", "a", 0.31)]) is True
    assert cell_correct([judgment("AB", "a", 0.7), judgment("BA", "b", 0.3)]) is False  # mean exactly 0.5: a tie
    assert cell_correct([judgment("AB", "b", 0.45), judgment("BA", "a", 0.6)]) is True  # orders disagree, mean wins
    assert cell_correct([]) is False and cell_correct(None) is False


def test_rmbench_ties_and_order_accuracies() -> None:
    items = [rm_item("code", 1)]
    tie = [judgment("AB", "a", 0.7), judgment("BA", "b", 0.3)]  # chosen shown first wins, then loses
    s = score_rmbench(items, {cell_id(items[0], i, j): tie for i in range(3) for j in range(3)})
    code = s.domains["code"]
    assert code.score == 0.0
    assert (code.chosen_first, code.chosen_second) == (100.0, 0.0)
    assert s.position.consistency == 0.0 and s.position.first_shown_rate == 1.0


def test_rmbench_duplicated_chosen_styles_are_separate_cells() -> None:
    item = rm_item("chat", 7, chosen=("same text", "same text", "other"))
    tasks = cell_tasks([item])
    assert len({t.id for t in tasks}) == 9
    assert [t.a for t in tasks[:6]] == ["same text"] * 6
    # Identical texts, different cells: a scorer keyed by text would merge rows 0 and 1.
    s = score_rmbench([item], cells_by([item], lambda _, i, j: i == 0))
    assert s.domains["chat"].matrix[0] == [100.0] * 3 and s.domains["chat"].matrix[1] == [0.0] * 3
    assert s.domains["chat"].score == pytest.approx(100 / 3)


def test_rmbench_missing_domains_failed_cells_and_pooled_safety() -> None:
    items = [rm_item("chat", 1), rm_item("safety-refuse", 1), *(rm_item("safety-response", k) for k in (1, 2, 3))]
    cells = cells_by(items, lambda item, i, j: item.source != "safety-response")
    del cells[cell_id(items[0], 0, 2)]  # a chat cell without a result counts wrong
    s = score_rmbench(items, cells)
    assert s.missing_domains == ["math", "code"]
    assert s.missing_sources == ["math", "code"]
    assert s.domains["safety"].sources == ["safety-refuse", "safety-response"]
    # Pooled by item (1 right of 4), not the mean of the two files (50).
    assert s.domains["safety"].score == pytest.approx(25.0)
    assert s.domains["chat"].score == pytest.approx(800 / 9) and s.domains["chat"].hard == pytest.approx(200 / 3)
    assert s.failed_cells == s.domains["chat"].failed_cells == 1
    assert s.overall == pytest.approx((800 / 9 + 25.0) / 2)
    assert (s.items, s.cells) == (5, 45)


def test_rmbench_loader_total_dataset_and_domain_files(tmp_path: Path) -> None:
    base = {"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]}
    total = tmp_path / "total_dataset.json"
    total.write_text(json.dumps([
        {**base, "id": 1, "domain": "chat"},
        {**base, "id": 1, "domain": "code"},  # the same id in another domain is another item
        {**base, "id": "9", "domain": "safety-response"},
    ]))
    items = load_rmbench(total)
    assert [(i.source, i.domain, i.key) for i in items] == [
        ("chat", "chat", "chat/1"),
        ("code", "code", "code/1"),
        ("safety-response", "safety", "safety-response/9"),
    ]
    named = tmp_path / "safety-refuse_filtered.json"
    named.write_text(json.dumps([{**base, "id": 4}]))
    assert load_rmbench(named)[0].source == "safety-refuse"
    assert len(load_rmbench_files([total, named])) == 4
    with pytest.raises(DataError, match="appears in"):
        load_rmbench_files([total, total])
    anonymous = tmp_path / "data.json"
    anonymous.write_text(json.dumps([{**base, "id": 4}]))
    with pytest.raises(DataError, match="cannot tell the domain"):
        load_rmbench(anonymous)
    for bad, message in (
        ({**base, "id": 1, "domain": "poetry"}, "unknown domain"),
        ({**base, "id": 1, "domain": "chat", "chosen": ["a", "b"]}, "list of 3 strings"),
        ({**base, "id": None, "domain": "chat"}, "'id'"),
    ):
        total.write_text(json.dumps([bad]))
        with pytest.raises(DataError, match=message):
            load_rmbench(total)
    assert parse_domains(["chat,safety", "code", "chat", "safety-refuse"]) == ["chat", "safety", "code", "safety-refuse"]
    with pytest.raises(DataError, match="unknown RM-Bench domain"):
        parse_domains(["poetry"])


# ------------------------------------------------------------------------------------- calibration


def test_calibration_by_hand() -> None:
    c = calibration([(0.9, True), (0.8, False), (0.5, True), (0.3, False), (0.05, False)])
    assert [b.n for b in c.buckets] == [1, 0, 1, 1, 2]
    assert c.buckets[4].confidence == pytest.approx(0.925) and c.buckets[4].accuracy == 1.0
    assert c.buckets[0].accuracy == 0.5  # p_a = 0.5 picks no side: half right
    assert c.ece == pytest.approx((0.15 + 0.8 + 0.3 + 0.0) / 5)
    assert c.brier == pytest.approx(0.9925 / 5)
    assert c.accuracy == pytest.approx(0.7)
    perfect = calibration([(0.8, True)] * 8 + [(0.8, False)] * 2)
    assert perfect.ece == pytest.approx(0.0)
    assert calibration([(1.0, True), (0.0, True)]).buckets[-1].n == 2
    empty = calibration([])
    assert empty.ece is None and all(b.n == 0 for b in empty.buckets)
    with pytest.raises(ValueError):
        calibration([(1.2, True)])


def test_position_counts_orders() -> None:
    p = position([both("a", "a"), both("a", "b"), [judgment("AB", "b")]])
    assert (p.pairs_both_orders, p.consistent, p.judgments) == (2, 1, 5)
    # answers: A,B | A,A | B  -> shown first picked 3 times of 5
    assert p.first_shown_preferred == 3 and p.consistency == 0.5


# --------------------------------------------------------------------------- the official files here


@pytest.mark.skipif(not (SHARED / "benchmarks").is_dir(), reason="the shared benchmark files are not on this machine")
def test_the_official_files_load_with_their_known_shape() -> None:
    gpt = load_judgebench(SHARED / "benchmarks/judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl")
    counts: dict[str, int] = {}
    for pair in gpt:
        counts[pair.category] = counts.get(pair.category, 0) + 1
    assert counts == {"knowledge": 154, "reasoning": 98, "math": 56, "coding": 42}
    claude = load_judgebench(SHARED / "benchmarks/judgebench/dataset=judgebench,response_model=claude-3-5-sonnet-20240620.jsonl")
    assert len(claude) == 270
    items = load_rmbench_files(sorted((SHARED / "benchmarks/rm-bench").glob("*_filtered.json")))
    sizes: dict[str, int] = {}
    for item in items:
        sizes[item.source] = sizes.get(item.source, 0) + 1
    assert sizes == {"chat": 129, "code": 228, "safety-refuse": 284, "safety-response": 157}
    assert sum(len(set(i.chosen)) < 3 for i in items) == 49  # duplicated chosen styles exist for real
