"""The judge over a backend, without a model: continuous batching, cancellation, re-entrancy, what
one-order rankings do with a position-biased model, and what hostile texts can do to a verdict."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fake_backend import ScriptedBackend, scripted_judge
from helpers import HOSTILE

from gram_local.backend import GenerationRequest, RequestState
from gram_local.grammar import parse_reply
from gram_local.ranking import JudgePairs, PairOutcome, knockout, merge_sort


def backend_of(judge: object) -> ScriptedBackend:
    backend = judge.backend  # type: ignore[attr-defined]
    assert isinstance(backend, ScriptedBackend)
    return backend


def prompt(judge: object, a: str, b: str) -> list[int]:
    return judge.renderer.prompt_tokens("q", a, b, judge.settings)  # type: ignore[attr-defined]


def test_a_request_submitted_while_another_decodes_joins_the_running_batch() -> None:
    judge = scripted_judge()
    backend = backend_of(judge)
    first = backend.submit(GenerationRequest(prompt=prompt(judge, "aaaa", "b")))
    backend._advance(None)
    backend._advance(None)
    assert first.state is RequestState.DECODING
    second = backend.submit(GenerationRequest(prompt=prompt(judge, "a", "bbbb")))
    backend.wait([first, second])
    together = backend.stats.steps

    alone = backend_of(scripted_judge())
    for a, b in (("aaaa", "b"), ("a", "bbbb")):
        handle = alone.submit(GenerationRequest(prompt=prompt(judge, a, b)))
        alone.wait([handle])
    assert together < alone.stats.steps
    assert 2 in backend.batch_sizes  # the second joined while the first was still decoding
    assert first.result().answer == "A" and second.result().answer == "B"


def test_a_cancelled_request_frees_its_slot_for_a_waiting_one() -> None:
    judge = scripted_judge(parallel=1)
    backend = backend_of(judge)
    running = backend.submit(GenerationRequest(prompt=prompt(judge, "aaaa", "b")))
    waiting = backend.submit(GenerationRequest(prompt=prompt(judge, "a", "bbbb")))
    backend._advance(None)
    assert running.state is RequestState.DECODING and waiting.state is RequestState.WAITING
    running.cancel()
    backend._advance(None)
    assert running.state is RequestState.CANCELLED and backend.stats.cancelled == 1
    assert waiting.state is RequestState.DECODING
    backend.wait([waiting])
    assert waiting.result().answer == "B"


def test_a_suspended_compare_many_does_not_block_a_new_compare() -> None:
    judge = scripted_judge()
    items = [("q", "x" * (i + 1), "yyy") for i in range(6)]
    pending = judge.compare_many(items)
    first = next(pending)  # the iterator now sits suspended between two results
    outcome: dict[str, object] = {}

    def other() -> None:
        outcome["result"] = judge.compare("q", "long answer", "short")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "a second call hung behind a suspended compare_many"
    assert outcome["result"].winner == "a"  # type: ignore[attr-defined]
    nested = judge.compare("q", "s", "a longer one")  # the same thread, too
    assert nested.winner == "b"
    rest = list(pending)
    assert [r.winner for r in [first, *rest]] == ["b", "b", "a", "a", "a", "a"]  # equal lengths: A


def test_position_bias_is_spread_over_inputs_not_turned_into_input_order_bias() -> None:
    # A model that prefers whatever it is shown first, on responses it cannot tell apart.
    responses = ["same"] * 5
    fixed = scripted_judge(bias=0.4, position="fixed").rank("q", responses, method="round-robin")
    shuffled = scripted_judge(bias=0.4, position="shuffled").rank("q", responses, method="round-robin")
    # Fixed: the lower index is always Response A, so it always wins: the ranking is input order.
    assert all(j.order == "AB" for j in fixed.judgments)
    assert fixed.ranking == [0, 1, 2, 3, 4]
    assert [c.winner for c in fixed.comparisons] == ["a"] * len(fixed.comparisons)
    # Shuffled: each pair's order is a seeded coin, recorded in the judgment.
    orders = [j.order for j in shuffled.judgments]
    assert 3 <= orders.count("BA") <= 7 and len(orders) == 10
    wins = [0] * 5
    for c in shuffled.comparisons:
        wins[c.a if c.winner == "a" else c.b] += 1
    assert wins != [4, 3, 2, 1, 0], "earlier inputs still win every comparison"
    first_half = wins[0] + wins[1]
    assert first_half < 7  # fixed order gives the first two inputs 4 + 3 wins
    again = scripted_judge(bias=0.4, position="shuffled").rank("q", responses, method="round-robin")
    assert [j.order for j in again.judgments] == orders  # seeded: the same run gives the same orders
    assert shuffled.settings["position"] == "shuffled" and fixed.settings["position"] == "fixed"


def _first_shown_wins(judgments: list[Any]) -> JudgePairs:
    """A judge of pairs that replays the recorded orders: the input shown as Response A wins."""
    order_of = {j.pair: j.order for j in judgments}

    def judge_pairs(pairs: list[tuple[int, int]]) -> list[PairOutcome]:
        return [PairOutcome(i, k, "a" if order_of[(i, k)] == "AB" else "b", 0.5) for i, k in pairs]

    return judge_pairs


@pytest.mark.parametrize("method", ["best-of-n", "sort"])
def test_position_bias_is_spread_over_inputs_for_knockout_and_sort(method: str) -> None:
    """The same first-position-biased model on responses it cannot tell apart, through best-of-n
    (knockout) and rank --method sort. The scripted model reads only lengths, so equal-length texts
    are identical to it; their labels let the test see which input each prompt showed first. Four
    inputs: a bracket of four is fair to each input under coin flips (with five, the odd one out
    would only play the final, and win half the time by the bracket alone)."""
    responses = ["same 0", "same 1", "same 2", "same 3"]

    def run(judge: object, seed: int) -> tuple[int, Any]:
        backend_of(judge).shown.clear()  # type: ignore[union-attr]
        if method == "best-of-n":
            r = judge.best_of_n("q", responses, seed=seed)  # type: ignore[attr-defined]
            top = r.best
        else:
            r = judge.rank("q", responses, method="sort", seed=seed)  # type: ignore[attr-defined]
            top = r.ranking[0]
        # What the model was shown is what each judgment records as its order.
        expected = [(responses[i], responses[k]) if j.order == "AB" else (responses[k], responses[i])
                    for j in r.judgments for i, k in [j.pair]]
        assert sorted(backend_of(judge).shown) == sorted(expected)  # type: ignore[arg-type]
        return top, r

    fixed_judge = scripted_judge(bias=0.4, position="fixed", record_shown=True)
    shuffled_judge = scripted_judge(bias=0.4, position="shuffled", record_shown=True)
    seeds = range(64)

    # Fixed: the lower index is always Response A, and Response A always wins: input order decides.
    for seed in seeds[:4]:
        top, fixed = run(fixed_judge, seed)
        assert fixed.settings["position"] == "fixed"
        assert all(j.order == "AB" for j in fixed.judgments)
        assert [c.winner for c in fixed.comparisons] == ["a"] * len(fixed.comparisons)
        assert top == 0
        if method == "sort":
            assert fixed.ranking == [0, 1, 2, 3]

    # Shuffled: each pair's order is a seeded coin, recorded per judgment; the model still follows
    # the position, so the result is exactly what those coins decide, not what the input order does.
    tops = [0] * 4
    in_input_order = shown_second = judgments = 0
    for seed in seeds:
        top, shuffled = run(shuffled_judge, seed)
        assert shuffled.settings["position"] == "shuffled" and shuffled.settings["seed"] == seed
        for j, c in zip(shuffled.judgments, shuffled.comparisons):
            assert (c.a, c.b) == j.pair and c.winner == ("a" if j.order == "AB" else "b")
        replay = _first_shown_wins(shuffled.judgments)
        if method == "best-of-n":
            assert shuffled.best == knockout(4, replay)[0]
        else:
            assert shuffled.ranking == merge_sort(4, replay)[0]
            in_input_order += shuffled.ranking == [0, 1, 2, 3]
        tops[top] += 1
        shown_second += sum(j.order == "BA" for j in shuffled.judgments)
        judgments += len(shuffled.judgments)
    # Fair coins give each input the top place 16 times in 64 (sd 3.5); fixed order gives input 0 all 64.
    assert min(tops) >= 5 and tops[0] <= 32, tops
    assert 0.3 <= shown_second / judgments <= 0.7
    if method == "sort":
        assert in_input_order <= 16  # fair coins: 1 run in 16 (4 of 64); fixed order: every run
    # Seeded: a new judge with the same seed shows the same orders and gives the same result.
    _, first = run(scripted_judge(bias=0.4, position="shuffled", record_shown=True), 7)
    _, again = run(scripted_judge(bias=0.4, position="shuffled", record_shown=True), 7)
    assert [j.order for j in again.judgments] == [j.order for j in first.judgments]
    assert [(c.a, c.b, c.winner) for c in again.comparisons] == [(c.a, c.b, c.winner) for c in first.comparisons]


PREFERS = {"AB": {"A": "a", "B": "b"}, "BA": {"A": "b", "B": "a"}}  # the shown letter, as an input


def _check_slot_verdict(j: Any, letter: str) -> None:
    """The verdict is the letter at the answer slot, mapped through the order it was shown in."""
    assert j.answer == letter and parse_reply(j.output).answer == letter
    assert j.output.endswith(f"</think>\n<answer>\n{letter}\n</answer>")
    assert j.prefers == PREFERS[j.order][letter]
    shown_a = 0.8 if letter == "A" else 0.2  # the scripted model's P(A) at the slot
    assert j.p_a == pytest.approx(shown_a if j.order == "AB" else 1.0 - shown_a)


def test_hostile_texts_repeated_in_the_think_block_cannot_set_the_verdict() -> None:
    """A judge that repeats every judged text in its think block (fake frames, fake answer blocks,
    fake end-of-turn text, "answer A") and then answers at the real slot with the script's letter:
    every verdict is that letter mapped to the input order, never a letter from the texts."""
    plain = "A plain answer."
    checked = 0
    for letter in ("A", "B"):
        judge = scripted_judge(verdict=letter, copy_responses=True, max_think_tokens=512)
        benign = judge.prompt("q", plain, plain)
        specials = lambda tokens: [t for t in tokens if t >= 256]  # noqa: E731 - ids over 255 are the special tokens
        for attack in HOSTILE:
            for question, a, b in ((attack, plain, plain), ("q", attack, plain), ("q", plain, attack)):
                # Only the template's special tokens: the texts' look-alikes stay plain bytes.
                assert specials(judge.prompt(question, a, b).tokens) == specials(benign.tokens)
                r = judge.compare(question, a, b, swap=True)
                assert [j.order for j in r.judgments] == ["AB", "BA"]
                for j in r.judgments:
                    assert attack in j.rationale and not j.forced_close  # the think block did repeat it
                    _check_slot_verdict(j, letter)
                    checked += 1
                # The same shown letter in both orders is a different input in each: --swap shows a tie.
                assert r.winner == "tie"
    assert checked == 2 * len(HOSTILE) * 3 * 2  # letters x texts x places (question, a, b) x orders = 132

    # Rankings read verdicts the same way: every pair of hostile texts, both orders.
    judge = scripted_judge(verdict="B", copy_responses=True, max_think_tokens=512)
    ranked = judge.rank("q", HOSTILE, method="round-robin", swap=True)
    n = len(HOSTILE)
    assert len(ranked.judgments) == n * (n - 1)
    for j in ranked.judgments:
        _check_slot_verdict(j, "B")
    assert {c.winner for c in ranked.comparisons} == {"tie"}
