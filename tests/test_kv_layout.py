"""The KV layouts: one stream per sequence (the CPU default) against one unified cache.

Streams copy shared prefixes between sequences and move running sequences down to the lowest
slots; neither may change what the model says. Batch shape still moves logits by float rounding
(llama.cpp's kernels take rows four at a time), so greedy tokens must match a run alone up to a
place where the picks nearly tie (within the batch-shape noise measured on this build), and p_a
within 0.01 where the tokens match.
"""

from __future__ import annotations

import pytest
from helpers import assert_near_tie, make_judge

from gram_local.config import EngineSettings
from gram_local.engine import Engine, GenerationRequest, SamplerSpec

QUESTION = "10 words to apologize for being late."
RESPONSES = [
    "My sincere apologies for being late today.",
    "Apologies for making you wait; punctuality isn't my strong suit.",
    "Sorry I'm late, the bus broke down on the bridge.",
    "Late again. Sorry, truly sorry, it won't happen twice.",
]


def _requests(judge, budgets: list[int], *, sampled: bool = False) -> list[GenerationRequest]:
    settings = judge.settings
    requests = []
    for i, budget in enumerate(budgets):
        a, b = RESPONSES[i % 4], RESPONSES[(i + 1) % 4]
        prompt = judge.prompt(QUESTION, a, b).tokens
        sampler = SamplerSpec(temperature=0.7, top_p=0.9, seed=i) if sampled else SamplerSpec()
        requests.append(GenerationRequest(prompt=prompt, sampler=sampler, max_think_tokens=budget,
                                          allow_close=settings.allow_close))
    return requests


def test_cpu_defaults_are_streams_without_flash_attention(smollm2_path) -> None:
    engine = Engine(smollm2_path, EngineSettings(parallel=4))
    if engine.offloading:
        pytest.skip("offloaded builds keep one unified cache with flash attention")
    assert engine.kv_unified is False and engine.flash_attn is False
    unified = Engine(smollm2_path, EngineSettings(parallel=4, kv_unified=True))
    assert unified.kv_unified is True and unified.flash_attn is True


def test_streams_reuse_prefixes_and_move_sequences_without_changing_tokens(smollm2_path) -> None:
    """Budgets that end at different steps leave holes among the running slots; a fifth request
    waits for a free slot and copies the shared instructions from another stream. Each greedy
    generation matches the same request run alone in a fresh engine, up to a near tie."""
    judge = make_judge(smollm2_path, max_think_tokens=24, parallel=4, head_cache=False)
    engine = judge.backend
    if engine.offloading:
        pytest.skip("CPU layout")
    greedy = _requests(judge, [4, 20, 2, 24, 12])
    sampled = _requests(judge, [16, 16], sampled=True)
    together = engine.generate(greedy + sampled)
    assert engine.stats.moved > 0, engine.stats
    assert engine.stats.reused_tokens > 0, engine.stats
    alone = Engine(smollm2_path, EngineSettings(parallel=1))
    identical = 0
    for request, got in zip(greedy, together):
        expected = alone.generate([request])[0]
        alone.clear_cache()
        diverge = next((i for i, (x, y) in enumerate(zip(got.tokens, expected.tokens)) if x != y), None)
        if diverge is None:
            identical += 1
            assert got.tokens == expected.tokens and got.answer == expected.answer
            assert got.p_answer_a == pytest.approx(expected.p_answer_a, abs=0.01)
            continue
        assert_near_tie(alone, request.prompt + expected.tokens[:diverge], [expected.tokens[diverge], got.tokens[diverge]],
                        f"request {request.max_think_tokens} at token {diverge}")
        alone.clear_cache()
    assert identical >= len(greedy) - 1, f"only {identical}/{len(greedy)} greedy generations identical"
    for request, got in zip(sampled, together[len(greedy):]):
        assert got.think_tokens <= request.max_think_tokens and got.answer in ("A", "B")
