"""Sampling under the format grammar, and the answer slot's probabilities.

The grammar keeps the think block free of `</think>` until it closes with `</think>\\n<answer>\\n`.
Checking all 128k candidates against it at every token is what makes llama-cpp-python's own
grammar sampling slow; here the sequence's sampler draws first and only that token is checked.
The full grammar runs over the vocabulary only when the token is rejected, and the draw is redone
among the allowed tokens. Greedy, and sampling with top-p 1, give exactly grammar-first sampling's
distribution at a fraction of the cost. With top-p < 1 (votes use 0.9) they do not: the nucleus of
the first draw is cut over the whole vocabulary, so an allowed token can fall outside a nucleus that
grammar-first sampling would have cut over the allowed tokens only. The difference is confined to
the tokens near `</think>` that the grammar forbids, and it is the sampler the votes are defined by.
"""

from __future__ import annotations

import ctypes
import math
import time
from typing import cast

import llama_cpp as llama
import numpy as np

from gram_local.backend import BackendStats, SamplerSpec
from gram_local.engine.native import TOKEN_DATA_DTYPE, LlamaContext, SamplerChain
from gram_local.engine.vocab import LlamaVocab
from gram_local.errors import EngineError
from gram_local.grammar import think_grammar


# llama_cpp annotates llama_token_data.id as ctypes.c_int32, but a ctypes Structure field of a
# simple type reads and writes a plain int: these two keep that untruth in one place.
def _set_entry(entry: llama.llama_token_data, token: int, logit: float) -> None:
    entry.id = token  # type: ignore[assignment]  # see above: the field holds a plain int
    entry.logit = logit


def _entry_id(entry: llama.llama_token_data) -> int:
    return cast(int, entry.id)  # see above: the field holds a plain int


class Sampling:
    """The samplers of the running sequences, over one context and vocabulary."""

    def __init__(self, vocab: LlamaVocab, stats: BackendStats) -> None:
        self.vocab = vocab
        self.stats = stats
        self._candidates = np.zeros(vocab.n_vocab, dtype=TOKEN_DATA_DTYPE)
        self._single = (llama.llama_token_data * 1)()
        self._grammars: dict[bool, str] = {}

    def chain(self, spec: SamplerSpec, *, with_grammar: bool, allow_close: bool) -> SamplerChain:
        grammar = None
        if with_grammar:
            if allow_close not in self._grammars:
                self._grammars[allow_close] = think_grammar(allow_close=allow_close)
            grammar = self._grammars[allow_close]
        return SamplerChain(
            self.vocab._ptr, greedy=spec.greedy, temperature=spec.temperature, top_p=spec.top_p, seed=spec.seed, grammar=grammar
        )

    def sample(self, chain: SamplerChain, ctx: LlamaContext, row: int) -> int:
        """Draw with the sequence's chain; check only that token against the grammar."""
        started = time.perf_counter()
        token = int(llama.llama_sampler_sample(chain.chain, ctx.ptr, row))
        mid = time.perf_counter()
        self.stats.sample_seconds += mid - started
        single = self._single
        _set_entry(single[0], token, 1.0)
        single[0].p = 0.0
        arr = llama.llama_token_data_array(data=single, size=1, selected=-1, sorted=False)
        llama.llama_sampler_apply(chain.grammar, ctypes.byref(arr))
        if self.vocab.is_special(token) or math.isinf(single[0].logit):
            self.stats.grammar_fallbacks += 1
            token = self._sample_constrained(chain, ctx, row)
        llama.llama_sampler_accept(chain.grammar, token)
        self.stats.grammar_seconds += time.perf_counter() - mid
        return token

    def _sample_constrained(self, chain: SamplerChain, ctx: LlamaContext, row: int) -> int:
        cand = self._candidates
        cand["id"] = np.arange(self.vocab.n_vocab, dtype=np.int32)
        cand["logit"] = ctx.logits(row)
        cand["p"] = 0.0
        cand["logit"][self.vocab.special_ids] = -np.inf
        arr = llama.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(llama.llama_token_data)),
            size=self.vocab.n_vocab,
            selected=-1,
            sorted=False,
        )
        llama.llama_sampler_apply(chain.grammar, ctypes.byref(arr))
        llama.llama_sampler_apply(chain.chain, ctypes.byref(arr))
        if arr.selected < 0 or arr.selected >= arr.size:
            raise EngineError("the sampler selected no token under the grammar")
        return int(cand["id"][arr.selected])

    def answer(self, chain: SamplerChain | None, ctx: LlamaContext, row: int) -> tuple[str, float, float]:
        """The letter at the answer slot and the logits of A and B there.

        Greedy takes the larger; sampling draws between the two with the sequence's own chain
        (temperature, then top-p over the pair, then its seeded draw).
        """
        logits = ctx.logits(row)
        logit_a = float(logits[self.vocab.token_a])
        logit_b = float(logits[self.vocab.token_b])
        if chain is None:
            return ("A" if logit_a >= logit_b else "B"), logit_a, logit_b
        pair = (llama.llama_token_data * 2)()
        _set_entry(pair[0], self.vocab.token_a, logit_a)
        _set_entry(pair[1], self.vocab.token_b, logit_b)
        arr = llama.llama_token_data_array(data=pair, size=2, selected=-1, sorted=False)
        llama.llama_sampler_apply(chain.chain, ctypes.byref(arr))
        return ("A" if _entry_id(pair[arr.selected]) == self.vocab.token_a else "B"), logit_a, logit_b
