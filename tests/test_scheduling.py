"""The judge over a backend, without a model: continuous batching, cancellation, re-entrancy, and
what one-order rankings do with a position-biased model."""

from __future__ import annotations

import threading

from fake_backend import ScriptedBackend, scripted_judge

from gram_local.backend import GenerationRequest, RequestState


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
