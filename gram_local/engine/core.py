"""The in-process llama.cpp backend: one loaded model, one context, continuous batching.

Requests may be submitted from any thread at any time; each `step` admits waiting requests into
free slots, decodes one batch for every running sequence, and finishes those that reached their
answer slot. Whoever waits for a result drives the steps (under one lock), so there is no engine
thread, no lock is held while a caller holds a result, and a caller can start new work between
two results of an earlier batch.

Memory follows the work: the context holds KV for as many sequences as actually run together
(up to `parallel`), each as long as the longest request needs, and grows only when idle.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gram_local.backend import Backend, Generation, GenerationRequest, RequestHandle, RequestState, TextCallback, Vocabulary
from gram_local.config import EngineSettings
from gram_local.engine.drafting import PromptLookup
from gram_local.engine.native import (
    ContextShape,
    LlamaContext,
    LlamaModel,
    ModelShape,
    devices,
    gpu_offload_supported,
    llama_cpp_version,
    system_info,
    take_log_messages,
)
from gram_local.engine.prefix_store import PrefixStore
from gram_local.engine.sampling import Sampling
from gram_local.engine.scheduler import Feed, Scheduler, Sequence
from gram_local.engine.slots import SlotTable
from gram_local.engine.vocab import LlamaVocab
from gram_local.errors import Cancelled, ContextAllocationError, ContextOverflowError, EngineError, InputError
from gram_local.grammar import forced_close_text, reached_answer_slot

_CTX_ROUND = 256


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class ModelMetadata:
    architecture: str
    name: str
    n_params: int
    n_ctx_train: int
    n_vocab: int
    n_layer: int
    file_type: str
    chat_template: str | None
    values: dict[str, str]


class Engine(Backend):
    """A loaded GGUF and a multi-sequence context over it."""

    kind = "llama.cpp"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        settings: EngineSettings | None = None,
        *,
        model_id: str | None = None,
        prefix_dir: Path | None = None,
    ) -> None:
        super().__init__()
        s = settings or EngineSettings()
        self.settings = s
        if s.cpu_check:
            from gram_local.cpu import ensure_supported

            ensure_supported()
        self.model_path = str(model_path)
        self.version = f"{llama_cpp_version()}/{_binding_version()}"
        self.n_threads = s.n_threads or os.cpu_count() or 1
        self.gpu_offload = gpu_offload_supported()
        self.n_gpu_layers = s.n_gpu_layers if s.n_gpu_layers is not None else (999 if self.gpu_offload else 0)
        self.offloading = self.gpu_offload and self.n_gpu_layers > 0
        self.parallel = s.parallel
        self.kv_type = s.kv_type
        # On a CPU each sequence gets its own KV stream (a token attends over its own cells only);
        # offloaded, one unified cache with flash attention. See the README's speed section.
        self.kv_unified = self.offloading if s.kv_unified is None else s.kv_unified
        flash = (self.offloading or (self.kv_unified and s.parallel > 1)) if s.flash_attn is None else s.flash_attn
        if s.kv_type == "q8_0":
            if s.flash_attn is False:
                raise InputError("--kv-type q8_0 needs flash attention (llama.cpp quantizes V only with it)")
            flash = True
        self.flash_attn = flash
        self.speculative = self.offloading if s.speculative is None else s.speculative
        self.max_draft = s.max_draft
        # The extra buffer types hold both the CPU repack and, in a build with AMX, the AMX copy of
        # the weights, whose kernels crash on the first batch (ggml_backend_amx_mul_mat, llama.cpp
        # issue 20824; SIGILL where the OS withholds AMX). With AMX compiled in they stay off.
        self.amx_build = "AMX_INT8 = 1" in system_info()
        self.repack = s.repack and not self.amx_build
        # Repacked weights are copies; memory-mapping the file as well would keep both in memory.
        self.model = LlamaModel(self.model_path, n_gpu_layers=self.n_gpu_layers, repack=self.repack, use_mmap=not self.repack)
        self.vocab = LlamaVocab(self.model)
        self.shape: ModelShape = self.model.shape()
        self.n_vocab = self.vocab.n_vocab
        self.n_ctx_train = self.shape.n_ctx_train
        self.metadata = self._read_metadata()
        self._vocabulary = self.vocab.facts()
        self.sampling = Sampling(self.vocab, self.stats)
        self.scheduler = Scheduler(kv_unified=self.kv_unified, n_batch=s.n_batch)
        self.slots = SlotTable()
        self.ctx: LlamaContext | None = None
        self.prefix_store = (
            PrefixStore(prefix_dir, model_id=model_id, kv_identity=self.kv_identity) if prefix_dir and model_id else None
        )
        self._inbox: deque[RequestHandle] = deque()
        self._waiting: deque[RequestHandle] = deque()
        self._running: list[Sequence] = []
        self._step_lock = threading.Lock()
        self._closed = False

    # ---------------------------------------------------------------- facts

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def token_text(self, token: int) -> str:
        return self.vocab.token_text(token)

    def detokenize(self, tokens: Any) -> str:
        return self.vocab.detokenize(tokens)

    @property
    def token_a(self) -> int:
        return self.vocab.token_a

    @property
    def token_b(self) -> int:
        return self.vocab.token_b

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def n_ctx_seq(self) -> int:
        return self.ctx.shape.n_ctx_seq if self.ctx else 0

    @property
    def llama_model(self) -> Any:
        """The loaded llama.cpp model, for a tool that runs its own context over the same weights
        (the peer benchmark's bare loop). Valid until `close`."""
        return self.model.ptr

    def kv_bytes(self, n_seq: int, n_ctx_seq: int) -> int:
        return n_seq * n_ctx_seq * self.shape.kv_bytes_per_token(self.kv_type)

    @functools.cached_property
    def kv_identity(self) -> str:
        """What the values in this engine's KV cache depend on besides the model and the tokens."""
        found = devices() or []
        return "|".join([
            self.version,
            system_info(),
            ",".join(d.name for d in found),
            f"repack={self.repack}",
            f"gpu_layers={self.n_gpu_layers if self.offloading else 0}",
            f"flash_attn={'auto' if self.flash_attn else 'off'}",
            f"kv={self.kv_type}",
        ])

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "llama_cpp": self.version}

    def _read_metadata(self) -> ModelMetadata:
        values = self.model.metadata()
        return ModelMetadata(
            architecture=values.get("general.architecture", "?"),
            name=values.get("general.name", Path(self.model_path).stem),
            n_params=self.shape.n_params,
            n_ctx_train=self.shape.n_ctx_train,
            n_vocab=self.n_vocab,
            n_layer=self.shape.n_layer,
            file_type=self.model.description(),
            chat_template=self.model.chat_template(),
            values={k: v for k, v in values.items() if not k.startswith("tokenizer.ggml.")},
        )

    # ---------------------------------------------------------------- requests

    def submit(self, request: GenerationRequest, *, on_text: TextCallback | None = None) -> RequestHandle:
        if self._closed:
            raise EngineError("the engine is closed")
        if not request.prompt:
            raise InputError("a generation request needs a prompt of at least one token")
        if request.max_think_tokens < 0:
            raise InputError("the think budget must be 0 or more")
        need = request.context_needed
        if need > self.n_ctx_train:
            raise ContextOverflowError(len(request.prompt), max(self.n_ctx_train - (need - len(request.prompt)), 0))
        handle = RequestHandle(self, request, on_text)
        self._inbox.append(handle)
        self.wake()
        return handle

    def reserve(self, n_seq: int, n_ctx_seq: int) -> None:
        """Create the context now, for `n_seq` sequences of `n_ctx_seq` cells (a service does this
        once, so requests arriving while others decode never wait for the context to grow)."""
        with self._step_lock:
            self._ensure_context(min(n_seq, self.parallel), n_ctx_seq)

    def _advance(self, timeout: float | None) -> None:
        if self._step_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            try:
                self._step()
            finally:
                self._step_lock.release()
            self.notify_progress()

    def step(self) -> int:
        """One scheduling and decode step; returns how many sequences are running after it."""
        with self._step_lock:
            self._step()
            running = len(self._running)
        self.notify_progress()
        return running

    def busy(self) -> bool:
        return bool(self._inbox or self._waiting or self._running)

    # ---------------------------------------------------------------- the step

    def _step(self) -> None:
        while self._inbox:
            self._waiting.append(self._inbox.popleft())
        self._drop_cancelled()
        if not self._waiting and not self._running:
            return
        try:
            self._admit()
            if not self._running:
                return
            placed, prefill = self._fill_batch()
            self._decode(placed, prefill=prefill)
        except BaseException as exc:
            self._abort_running(exc)
            raise
        self.stats.steps += 1

    def _drop_cancelled(self) -> None:
        for handle in [h for h in self._waiting if h.cancel_requested]:
            self._waiting.remove(handle)
            handle.mark_cancelled()
            self.stats.cancelled += 1
        for seq in [s for s in self._running if s.handle.cancel_requested]:
            self._release(seq)
            seq.handle.mark_cancelled()
            self.stats.cancelled += 1

    def _abort_running(self, exc: BaseException) -> None:
        """A step failed or was interrupted between queuing KV changes and decoding them: what the
        slots are believed to hold may not be what the cache holds, and llama.cpp keeps queued
        stream copies through a clear. Fail the running requests and drop the whole context."""
        error: BaseException = exc if isinstance(exc, EngineError) else Cancelled("interrupted while decoding")
        for seq in self._running:
            seq.close()
            seq.handle.fail(error)
        self._running = []
        self._drop_context()

    def _admit(self) -> None:
        if not self._running and self._waiting and not self._grow_for(list(self._waiting)):
            return
        while self._waiting and len(self._running) < self.n_slots:
            handle = self._waiting[0]
            request = handle.request
            if request.context_needed > self.n_ctx_seq:
                break  # runs once the context has drained and grown
            if self.scheduler.worth_waiting(request.prompt, self._running, self.slots):
                break
            self._waiting.popleft()
            self._restore_prefix(request)
            self._start(handle)

    def _grow_for(self, demand: list[RequestHandle]) -> bool:
        """Size the idle context for the waiting work. If llama.cpp cannot allocate that much, try
        fewer sequences at once; if not even one fits, that request fails with the reason."""
        n_seq = min(self.parallel, len(demand))
        while True:
            need = max(h.request.context_needed for h in demand[:n_seq])
            try:
                self._ensure_context(n_seq, need)
                return True
            except ContextAllocationError as exc:
                if n_seq > 1:
                    n_seq = max(1, n_seq // 2)
                    continue
                handle = demand[0]
                self._waiting.remove(handle)
                handle.fail(exc)
                return False

    def _ensure_context(self, n_seq: int, n_ctx_seq: int) -> None:
        n_ctx_seq = _round_up(max(n_ctx_seq, 1), _CTX_ROUND)
        if n_ctx_seq > self.n_ctx_train:
            n_ctx_seq = self.n_ctx_train
        if self.ctx is not None and n_seq <= self.n_slots and n_ctx_seq <= self.n_ctx_seq:
            return
        n_seq = max(n_seq, self.n_slots, 1)
        n_ctx_seq = max(n_ctx_seq, self.n_ctx_seq)
        self._drop_context()
        shape = ContextShape(n_seq=n_seq, n_ctx_seq=n_ctx_seq, kv_unified=self.kv_unified)
        self.ctx = LlamaContext(
            self.model,
            shape,
            n_batch=self.settings.n_batch,
            n_threads=self.n_threads,
            kv_type=self.kv_type,
            flash_attn=self.flash_attn,
            max_outputs_per_seq=self.max_draft + 1,
            kv_bytes=self.kv_bytes(n_seq, n_ctx_seq),
        )
        self.slots.reset(n_seq)

    def _drop_context(self) -> None:
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None
        self.slots.reset(0)

    def _restore_prefix(self, request: GenerationRequest) -> None:
        """Make some free slot hold the request's shared prefix: read from disk, or computed once
        and written there."""
        n = request.shared_prefix
        if self.prefix_store is None or n < 2 or n >= self.n_ctx_seq:
            return
        tokens = list(request.prompt[:n])
        if self.slots.holds_prefix(tokens):
            return
        busy = {s.slot for s in self._running}
        free = [s for s in range(self.n_slots) if s not in busy]
        if not free:
            return
        ctx = self._ctx()
        slot = self.slots.least_recently_used(free)
        ctx.seq_rm(slot)
        self.slots.set(slot, [])
        if self.prefix_store.load(ctx, slot, tokens):
            self.slots.set(slot, tokens)
            self.stats.restored_tokens += len(tokens)
            return
        started = time.perf_counter()
        self._evaluate(tokens, slot)
        self.stats.prefill_seconds += time.perf_counter() - started
        self.stats.prompt_tokens += len(tokens)
        self.slots.set(slot, tokens)
        self.prefix_store.save(ctx, slot, tokens)

    def _start(self, handle: RequestHandle) -> None:
        request = handle.request
        ctx = self._ctx()
        busy = {s.slot for s in self._running}
        place = self.scheduler.place(request.prompt, busy, self.slots)
        slot = place.slot
        if slot != place.source:
            ctx.seq_rm(slot)
            self.slots.set(slot, [])
            if place.reuse > 0:
                self._copy_prefix(place.source, slot, place.reuse)
        else:
            ctx.seq_rm(slot, place.reuse, -1)
            self.slots.truncate(slot, place.reuse)
        self.slots.touch(slot)
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
            lookup=PromptLookup(history) if self.speculative and not request.at_answer_slot else None,
            history=history,
            at_answer_slot=request.at_answer_slot,
        )
        self.stats.reused_tokens += place.reuse
        self.stats.prompt_tokens += len(seq.pending)
        handle.set_state(RequestState.PREFILLING)
        self._running.append(seq)

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make slot `dst` hold the first `n` cells of slot `src`. Between streams llama.cpp copies
        whole streams only (queued until the next decode), so copy all and cut the tail."""
        ctx = self._ctx()
        if self.kv_unified:
            ctx.seq_cp(src, dst, 0, n)
        else:
            ctx.seq_cp(src, dst)
            ctx.seq_rm(dst, n, -1)
        self.slots.set(dst, self.slots.tokens(src)[:n])

    def _release(self, seq: Sequence) -> None:
        seq.close()
        self.slots.touch(seq.slot)
        self._running.remove(seq)

    def _ctx(self) -> LlamaContext:
        if self.ctx is None:
            raise EngineError("internal error: no context")
        return self.ctx

    # ---------------------------------------------------------------- batches

    def _fill_batch(self) -> tuple[list[tuple[Feed, int]], bool]:
        """Queue each running sequence's next tokens; returns the feeds with their first logits
        row, and whether the batch evaluates prompt tokens (timed as prefill)."""
        for seq, target in self.scheduler.moves(self._running, self.n_slots):
            self._ctx().seq_rm(target)
            self._copy_prefix(seq.slot, target, len(self.slots.tokens(seq.slot)))
            self.slots.touch(seq.slot)
            seq.slot = target
            self.stats.moved += 1
        batch = self._ctx().batch
        batch.clear()
        placed: list[tuple[Feed, int]] = []
        prefill = False
        for feed in self.scheduler.plan(self._running):
            seq = feed.sequence
            prefill = prefill or seq.state is RequestState.PREFILLING
            cached = self.slots.tokens(seq.slot)
            last_of_pending = len(feed.tokens) >= len(seq.pending)
            first = batch.n
            for j, token in enumerate(feed.tokens):
                logits = feed.all_logits or (j == len(feed.tokens) - 1 and last_of_pending)
                batch.add(token, len(cached) + j, seq.slot, logits)
            self.slots.extend(seq.slot, feed.tokens)
            del seq.pending[: min(len(feed.tokens), len(seq.pending))]
            if feed.all_logits or last_of_pending:
                placed.append((feed, first if feed.all_logits else batch.n - 1))
        return placed, prefill

    def _decode(self, placed: list[tuple[Feed, int]], *, prefill: bool) -> None:
        ctx = self._ctx()
        started = time.perf_counter()
        rc = ctx.decode()
        if self.offloading:  # a GPU decode returns early; wait so the time lands on decoding
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
        for feed, row in placed:
            seq = feed.sequence
            if seq.state is RequestState.PREFILLING:
                seq.handle.set_state(RequestState.DECODING)
            if not feed.all_logits:
                self._on_logits(seq, row)
            else:
                self._verify_drafts(seq, feed, row)
            if seq.handle.generation is not None:
                self._release(seq)

    def _verify_drafts(self, seq: Sequence, feed: Feed, first: int) -> None:
        """Row j holds the distribution after the j-th fed token: keep drafts while they are
        what the sampler picks, then drop the KV of the rest."""
        count = len(feed.tokens)
        cached = self.slots.tokens(seq.slot)
        base = len(cached) - count
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
            self._ctx().seq_rm(seq.slot, base + kept, -1)
            self.slots.truncate(seq.slot, base + kept)

    def _on_logits(self, seq: Sequence, row: int) -> None:
        """Act on the logits at a row: answer, close the think block, or sample the next token."""
        request = seq.handle.request
        if seq.at_answer_slot:
            self._answer(seq, row)
            return
        if len(seq.sampled) >= request.max_think_tokens:
            closing = forced_close_text(seq.text.decode("utf-8", errors="replace"))
            seq.forced = self.vocab.tokenize(closing)
            seq.pending = list(seq.forced)
            seq.forced_close = True
            seq.at_answer_slot = True
            self.stats.forced_tokens += len(seq.forced)
            return
        assert seq.sampler is not None
        token = self.sampling.sample(seq.sampler, self._ctx(), row)
        piece = self.vocab.piece(token)
        seq.sampled.append(token)
        seq.history.append(token)
        seq.text += piece
        seq.pending = [token]
        self.stats.generated_tokens += 1
        seq.handle.emit_text(seq.decoder.decode(piece))
        if reached_answer_slot(seq.text.decode("utf-8", errors="replace")):
            seq.at_answer_slot = True
        elif seq.lookup is not None and len(seq.sampled) < request.max_think_tokens:
            seq.lookup.index_upto(len(seq.history) - 1)
            room = request.max_think_tokens - len(seq.sampled)
            seq.drafts = seq.lookup.draft(min(self.max_draft, room))

    def _answer(self, seq: Sequence, row: int) -> None:
        request = seq.handle.request
        chain = None if request.sampler.greedy else seq.sampler
        answer, logit_a, logit_b = self.sampling.answer(chain, self._ctx(), row)
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

    # ---------------------------------------------------------------- direct use

    def _evaluate(self, tokens: Seq[int], slot: int, *, logits_last: bool = False) -> None:
        """Decode `tokens` from position 0 into `slot`, in chunks (outside the step batch)."""
        ctx = self._ctx()
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

    def next_token_logits(self, tokens: Seq[int]) -> np.ndarray:
        """The model's logits after `tokens`, from a cold evaluation (for checks and diagnostics)."""
        with self._step_lock:
            if self._running:
                raise EngineError("next_token_logits needs an idle engine")
            self._ensure_context(1, len(tokens) + 1)
            self.clear_cache()
            ctx = self._ctx()
            self._evaluate(tokens, 0, logits_last=True)
            logits: np.ndarray = ctx.logits(ctx.batch.n - 1).copy()
            self.clear_cache()
            return logits

    def clear_cache(self) -> None:
        """Forget every cached prefix (the next request evaluates its whole prompt)."""
        if self.ctx is not None and not self._running:
            n = self.n_slots
            for slot in range(n):
                self.ctx.seq_rm(slot)
            self.slots.forget_all()

    def close(self) -> None:
        self._closed = True
        with self._step_lock:
            for seq in list(self._running):
                seq.close()
                seq.handle.mark_cancelled()
            self._running = []
            for handle in list(self._waiting) + list(self._inbox):
                handle.mark_cancelled()
            self._waiting.clear()
            self._inbox.clear()
            self._drop_context()
            self.model.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass


def _binding_version() -> str:
    import llama_cpp

    return str(getattr(llama_cpp, "__version__", "?"))
