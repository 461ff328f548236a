"""One decode step for the running sequences: fill the batch as the scheduler plans, decode, and
act on every row of logits (sample the next think token, accept or drop drafts, close the think
block at the budget, read the answer slot)."""

from __future__ import annotations

import time

from gram_local.backend import BackendStats, Generation, RequestHandle, RequestState
from gram_local.engine.drafting import PromptLookup
from gram_local.engine.kv import KvCache
from gram_local.engine.native import take_log_messages
from gram_local.engine.sampling import Sampling
from gram_local.engine.scheduler import Feed, Scheduler, Sequence
from gram_local.engine.vocab import LlamaVocab
from gram_local.errors import EngineError
from gram_local.grammar import forced_close_text, reached_answer_slot

Placed = list[tuple[Feed, int]]


class Stepper:
    """Carries out one step over the KV cache; the engine decides who runs and releases them."""

    def __init__(
        self,
        kv: KvCache,
        scheduler: Scheduler,
        sampling: Sampling,
        vocab: LlamaVocab,
        stats: BackendStats,
        *,
        max_draft: int,
    ) -> None:
        self.kv = kv
        self.scheduler = scheduler
        self.sampling = sampling
        self.vocab = vocab
        self.stats = stats
        self.max_draft = max_draft

    def start(self, handle: RequestHandle, busy: set[int], *, speculative: bool) -> Sequence:
        """A sequence for an admitted request, in the slot the scheduler places it (taking over or
        copying the longest cached prefix of its prompt), with its samplers."""
        request = handle.request
        kv = self.kv
        place = self.scheduler.place(request.prompt, busy, kv.slots)
        slot = place.slot
        if slot != place.source:
            kv.clear_slot(slot)
            if place.reuse > 0:
                kv.copy_prefix(place.source, slot, place.reuse)
        else:
            kv.clear_slot(slot, place.reuse)
        kv.slots.touch(slot)
        sampler = None
        if not request.at_answer_slot:
            sampler = self.sampling.chain(request.sampler, with_grammar=True, allow_close=request.allow_close)
        elif not request.sampler.greedy:
            sampler = self.sampling.chain(request.sampler, with_grammar=False, allow_close=True)
        history = list(request.prompt)
        seq = Sequence(
            handle=handle,
            slot=slot,
            pending=list(request.prompt[place.reuse:]),
            sampler=sampler,
            lookup=PromptLookup(history) if speculative and not request.at_answer_slot else None,
            history=history,
            at_answer_slot=request.at_answer_slot,
        )
        self.stats.reused_tokens += place.reuse
        self.stats.prompt_tokens += len(seq.pending)
        handle.set_state(RequestState.PREFILLING)
        return seq

    def fill_batch(self, running: list[Sequence]) -> tuple[Placed, bool]:
        """Queue each running sequence's next tokens; returns the feeds with their first logits
        row, and whether the batch evaluates prompt tokens (timed as prefill)."""
        kv = self.kv
        for seq, target in self.scheduler.moves(running, kv.n_slots):
            kv.context().seq_rm(target)
            kv.copy_prefix(seq.slot, target, len(kv.slots.tokens(seq.slot)))
            kv.slots.touch(seq.slot)
            seq.slot = target
            self.stats.moved += 1
        batch = kv.context().batch
        batch.clear()
        placed: Placed = []
        prefill = False
        for feed in self.scheduler.plan(running):
            seq = feed.sequence
            prefill = prefill or seq.state is RequestState.PREFILLING
            cached = kv.slots.tokens(seq.slot)
            last_of_pending = len(feed.tokens) >= len(seq.pending)
            first = batch.n
            for j, token in enumerate(feed.tokens):
                logits = feed.all_logits or (j == len(feed.tokens) - 1 and last_of_pending)
                batch.add(token, len(cached) + j, seq.slot, logits)
            kv.slots.extend(seq.slot, feed.tokens)
            del seq.pending[: min(len(feed.tokens), len(seq.pending))]
            if feed.all_logits or last_of_pending:
                placed.append((feed, first if feed.all_logits else batch.n - 1))
        return placed, prefill

    def decode(self, placed: Placed, *, prefill: bool) -> list[Sequence]:
        """Decode the filled batch and act on its logits; returns the sequences that finished."""
        ctx = self.kv.context()
        started = time.perf_counter()
        rc = ctx.decode()
        if self.kv.offloading:  # a GPU decode returns early; wait so the time lands on decoding
            ctx.synchronize()
        elapsed = time.perf_counter() - started
        self.stats.decode_calls += 1
        if prefill:
            self.stats.prefill_seconds += elapsed
        else:
            self.stats.decode_seconds += elapsed
        if rc != 0:
            detail = take_log_messages()
            raise EngineError(f"llama_decode failed with status {rc}" + (f": {detail}" if detail else ""))
        finished = []
        for feed, row in placed:
            seq = feed.sequence
            if seq.state is RequestState.PREFILLING:
                seq.handle.set_state(RequestState.DECODING)
            if not feed.all_logits:
                self._on_logits(seq, row)
            else:
                self._verify_drafts(seq, feed, row)
            if seq.handle.generation is not None:
                finished.append(seq)
        return finished

    def _verify_drafts(self, seq: Sequence, feed: Feed, first: int) -> None:
        """Row j holds the distribution after the j-th fed token: keep drafts while they are
        what the sampler picks, then drop the KV of the rest."""
        count = len(feed.tokens)
        base = len(self.kv.slots.tokens(seq.slot)) - count
        drafts = feed.tokens[1:]
        seq.drafted += len(drafts)
        self.stats.drafted += len(drafts)
        kept = count
        for j in range(count):
            self._on_logits(seq, first + j)
            if j + 1 < count and seq.handle.generation is None and seq.pending == [feed.tokens[j + 1]] and not seq.forced_close:
                seq.pending = []
                seq.accepted += 1
                self.stats.accepted += 1
                continue
            kept = j + 1
            break
        if kept < count:
            self.kv.clear_slot(seq.slot, base + kept)

    def _on_logits(self, seq: Sequence, row: int) -> None:
        """Act on the logits at a row: answer, close the think block, or sample the next token."""
        request = seq.handle.request
        if seq.at_answer_slot:
            self._answer(seq, row)
            return
        if len(seq.sampled) >= request.max_think_tokens:  # a budget of 0 asked of the engine directly
            self._force_close(seq, [], seq.text.decode("utf-8", errors="replace"))
            return
        assert seq.sampler is not None
        token = self.sampling.sample(seq.sampler, self.kv.context(), row)
        piece = self.vocab.piece(token)
        seq.sampled.append(token)
        seq.history.append(token)
        seq.text += piece
        seq.pending = [token]
        self.stats.generated_tokens += 1
        seq.handle.emit_text(seq.decoder.decode(piece))
        text = seq.text.decode("utf-8", errors="replace")
        if reached_answer_slot(text):
            seq.at_answer_slot = True
        elif len(seq.sampled) >= request.max_think_tokens:
            # The budget is spent: the last token and the forced closing go in as one feed (a
            # remote server, which cannot stop at the budget and close in one request, evaluates
            # them the same way, so the answer slot's logits agree).
            self._force_close(seq, [token], text)
        elif seq.lookup is not None:
            seq.lookup.index_upto(len(seq.history) - 1)
            room = request.max_think_tokens - len(seq.sampled)
            seq.drafts = seq.lookup.draft(min(self.max_draft, room))

    def _force_close(self, seq: Sequence, unevaluated: list[int], text: str) -> None:
        seq.forced = self.vocab.tokenize(forced_close_text(text))
        seq.pending = [*unevaluated, *seq.forced]
        seq.forced_close = True
        seq.at_answer_slot = True
        self.stats.forced_tokens += len(seq.forced)

    def _answer(self, seq: Sequence, row: int) -> None:
        request = seq.handle.request
        chain = None if request.sampler.greedy else seq.sampler
        answer, logit_a, logit_b = self.sampling.answer(chain, self.kv.context(), row)
        forced_text = self.vocab.detokenize(seq.forced) if seq.forced_close else ""
        seq.handle.finish(Generation(
            text=seq.text.decode("utf-8", errors="replace") + forced_text,
            closing_text=forced_text,
            think_tokens=len(seq.sampled),
            forced_close=seq.forced_close or request.at_answer_slot,
            answer=answer,
            logit_a=logit_a,
            logit_b=logit_b,
            tokens=list(seq.sampled) + list(seq.forced),
            drafted=seq.drafted,
            accepted=seq.accepted,
        ))
