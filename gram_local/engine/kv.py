"""The KV cache: one llama.cpp context sized to the work, and what each of its streams holds.

The context is made for as many sequences as run together, each as long as the longest request
needs, grown only when idle, and dropped whole when what it holds can no longer be trusted (an
interrupted step: llama.cpp keeps queued stream copies through a clear).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gram_local.engine.native import ContextShape, LlamaContext, LlamaModel, ModelShape, take_log_messages
from gram_local.engine.slots import SlotTable
from gram_local.errors import ContextAllocationError, EngineError

_CTX_ROUND = 256


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class KvCache:
    """Owns the `LlamaContext` (there is at most one) and the slot table that describes it."""

    def __init__(
        self,
        model: LlamaModel,
        shape: ModelShape,
        *,
        n_batch: int,
        n_threads: int,
        kv_type: str,
        flash_attn: bool,
        kv_unified: bool,
        max_outputs_per_seq: int,
        offloading: bool,
    ) -> None:
        self.model = model
        self.shape = shape
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.kv_type = kv_type
        self.flash_attn = flash_attn
        self.kv_unified = kv_unified
        self.max_outputs_per_seq = max_outputs_per_seq
        self.offloading = offloading
        self.slots = SlotTable()
        self.ctx: LlamaContext | None = None

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def n_ctx_seq(self) -> int:
        return self.ctx.shape.n_ctx_seq if self.ctx else 0

    def bytes_for(self, n_seq: int, n_ctx_seq: int) -> int:
        return n_seq * n_ctx_seq * self.shape.kv_bytes_per_token(self.kv_type)

    def context(self) -> LlamaContext:
        if self.ctx is None:
            raise EngineError("internal error: no context")
        return self.ctx

    def ensure(self, n_seq: int, n_ctx_seq: int) -> None:
        """At least `n_seq` streams of `n_ctx_seq` cells (rounded up; never past the model's
        context). Making a bigger one drops the old context with what it held."""
        n_ctx_seq = min(_round_up(max(n_ctx_seq, 1), _CTX_ROUND), self.shape.n_ctx_train)
        if self.ctx is not None and n_seq <= self.n_slots and n_ctx_seq <= self.n_ctx_seq:
            return
        n_seq = max(n_seq, self.n_slots, 1)
        n_ctx_seq = max(n_ctx_seq, self.n_ctx_seq)
        self.drop()
        self.ctx = LlamaContext(
            self.model,
            ContextShape(n_seq=n_seq, n_ctx_seq=n_ctx_seq, kv_unified=self.kv_unified),
            n_batch=self.n_batch,
            n_threads=self.n_threads,
            kv_type=self.kv_type,
            flash_attn=self.flash_attn,
            max_outputs_per_seq=self.max_outputs_per_seq,
            kv_bytes=self.bytes_for(n_seq, n_ctx_seq),
        )
        self.slots.reset(n_seq)

    def ensure_most(self, n_seq: int, need: Callable[[int], int]) -> int:
        """Streams for up to `n_seq` sequences, `need(n)` cells each for the first n: where llama.cpp
        cannot allocate that much, halve the count. Returns the count made; raises
        ContextAllocationError when not even one fits."""
        while True:
            try:
                self.ensure(n_seq, need(n_seq))
                return n_seq
            except ContextAllocationError:
                if n_seq <= 1:
                    raise
                n_seq = max(1, n_seq // 2)

    def cold_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """The logits after `tokens`, evaluated from nothing into stream 0 and forgotten after."""
        self.ensure(1, len(tokens) + 1)
        self.forget_all()
        ctx = self.context()
        self.evaluate(tokens, 0, logits_last=True)
        logits: np.ndarray = ctx.logits(ctx.batch.n - 1).copy()
        self.forget_all()
        return logits

    def drop(self) -> None:
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None
        self.slots.reset(0)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make slot `dst` hold the first `n` cells of slot `src`. Between streams llama.cpp copies
        whole streams only (queued until the next decode), so copy all and cut the tail."""
        ctx = self.context()
        if self.kv_unified:
            ctx.seq_cp(src, dst, 0, n)
        else:
            ctx.seq_cp(src, dst)
            ctx.seq_rm(dst, n, -1)
        self.slots.set(dst, self.slots.tokens(src)[:n])

    def clear_slot(self, slot: int, keep: int = 0) -> None:
        """Keep only the first `keep` cells of a slot (none: empty it)."""
        self.context().seq_rm(slot, keep, -1)
        self.slots.truncate(slot, keep)

    def evaluate(self, tokens: Sequence[int], slot: int, *, logits_last: bool = False) -> None:
        """Decode `tokens` from position 0 into `slot`, in chunks (outside the step batch)."""
        ctx = self.context()
        batch = ctx.batch
        for start in range(0, len(tokens), ctx.n_batch):
            chunk = tokens[start:start + ctx.n_batch]
            batch.clear()
            for j, token in enumerate(chunk):
                batch.add(token, start + j, slot, logits_last and start + j == len(tokens) - 1)
            if ctx.decode() != 0:
                ctx.seq_rm(slot)
                raise EngineError("llama_decode failed: " + take_log_messages())
        if self.offloading:
            ctx.synchronize()

    def forget_all(self) -> None:
        """Empty every stream (the context stays)."""
        if self.ctx is not None:
            for slot in range(self.n_slots):
                self.ctx.seq_rm(slot)
            self.slots.forget_all()
