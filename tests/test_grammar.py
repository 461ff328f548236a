"""The reply format: grammar acceptance through llama.cpp's own grammar engine, and the parser."""

from __future__ import annotations

import ctypes
import math

import llama_cpp as llama
import pytest

from gram_local.grammar import (
    ANSWER_SLOT_PREFIX,
    forced_close_text,
    parse_reply,
    reached_answer_slot,
    think_grammar,
)


class GrammarProbe:
    """Feed text to a llama.cpp grammar sampler one token at a time, like the engine does."""

    def __init__(self, engine, allow_close: bool = True) -> None:
        self.engine = engine
        self.sampler = llama.llama_sampler_init_grammar(
            engine.model.vocab_ptr, think_grammar(allow_close=allow_close).encode(), b"root"
        )
        assert self.sampler, "llama.cpp rejected the grammar"

    def allows(self, token: int) -> bool:
        cell = (llama.llama_token_data * 1)()
        cell[0].id, cell[0].logit, cell[0].p = token, 1.0, 0.0
        arr = llama.llama_token_data_array(data=cell, size=1, selected=-1, sorted=False)
        llama.llama_sampler_apply(self.sampler, ctypes.byref(arr))
        return not math.isinf(cell[0].logit)

    def feed(self, text: str) -> bool:
        for token in self.engine.tokenize(text):
            if not self.allows(token):
                return False
            llama.llama_sampler_accept(self.sampler, token)
        return True

    def close(self) -> None:
        llama.llama_sampler_free(self.sampler)


@pytest.fixture(scope="module")
def engine(smollm2_path):
    from gram_local.config import EngineSettings
    from gram_local.engine import Engine

    return Engine(smollm2_path, EngineSettings(parallel=1))


@pytest.mark.parametrize(
    "text",
    [
        "Feedback: fine.\n</think>\n<answer>\n",
        "</think>\n<answer>\n",
        "a </thi </think>\n<answer>\n",
        "<<</think>\n<answer>\n",
        "x < y and </ think > is not a close</think>\n<answer>\n",
        "naïve 日本語 🙂 \n\n</think>\n<answer>\n",
    ],
)
def test_grammar_accepts_a_think_block_up_to_the_answer_slot(engine, text: str) -> None:
    probe = GrammarProbe(engine)
    try:
        assert probe.feed(text)
        # Complete: nothing more may follow, not even a newline; end of generation is allowed.
        assert not probe.allows(engine.tokenize("\n")[0])
        assert probe.allows(llama.llama_vocab_eos(engine.model.vocab_ptr))
    finally:
        probe.close()


@pytest.mark.parametrize(
    "text",
    [
        "done</think>\n<answer>\nA",  # the letter is not the grammar's: the engine reads it from logits
        "done</think>A",
        "done</think>\n\n<answer>\n",
        "done</think>\n<answer>B",
    ],
)
def test_grammar_rejects_anything_else_after_the_close(engine, text: str) -> None:
    probe = GrammarProbe(engine)
    try:
        assert not probe.feed(text)
    finally:
        probe.close()


def test_grammar_refuses_end_of_generation_inside_the_think_block(engine) -> None:
    probe = GrammarProbe(engine)
    try:
        assert probe.feed("still thinking")
        assert not probe.allows(llama.llama_vocab_eos(engine.model.vocab_ptr))
    finally:
        probe.close()


def test_grammar_without_close_never_closes(engine) -> None:
    probe = GrammarProbe(engine, allow_close=False)
    try:
        assert probe.feed("thinking </thin")
        assert not probe.feed("k>")
    finally:
        probe.close()


def test_parse_reply_reads_the_answer_tags_only() -> None:
    parsed = parse_reply("<think>\nanswer: A is wrong\n</think>\n<answer>\nB\n</answer>")
    assert parsed.answer == "B" and parsed.rationale == "answer: A is wrong\n"
    parsed = parse_reply("<think>\nB looks bad\n</think>\n<answer>\nA\n</answer>")
    assert parsed.answer == "A"
    for bad in [
        "<think>\nx\n</think>\n<answer>\nC\n</answer>",
        "<think>\nx</think><answer>A</answer>",
        "<answer>\nA\n</answer>",
        "<think>\nx\n</think>\n<answer>\nA\n</answer>\nmore",
    ]:
        with pytest.raises(ValueError):
            parse_reply(bad)


def test_forced_close_text() -> None:
    assert forced_close_text("") == ANSWER_SLOT_PREFIX
    assert forced_close_text("line\n") == ANSWER_SLOT_PREFIX
    assert forced_close_text("half a thought") == "\n" + ANSWER_SLOT_PREFIX
    assert forced_close_text("cut </thi") == "\n" + ANSWER_SLOT_PREFIX
    assert forced_close_text("done</think>\n<ans") == "wer>\n"
    assert forced_close_text("done</think>") == "\n<answer>\n"


def test_reached_answer_slot() -> None:
    assert reached_answer_slot("x" + ANSWER_SLOT_PREFIX)
    assert not reached_answer_slot("x</think>\n<answer>")
    assert not reached_answer_slot("x</think>y" + ANSWER_SLOT_PREFIX)
