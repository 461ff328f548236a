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
from collections import deque
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np

from gram_local.backend import Backend, GenerationRequest, RequestHandle, TextCallback
from gram_local.config import EngineSettings
from gram_local.engine.build import amx_compiled, binding_version, gpu_offload_supported, llama_cpp_version
from gram_local.engine.kv import KvCache
from gram_local.engine.metadata import kv_identity, read_metadata
from gram_local.engine.native import LlamaContext, LlamaModel, ModelShape
from gram_local.engine.plan import plan_engine
from gram_local.engine.prefix_store import PrefixStore
from gram_local.engine.sampling import Sampling
from gram_local.engine.scheduler import Scheduler, Sequence
from gram_local.engine.slots import SlotTable
from gram_local.engine.stepping import Stepper
from gram_local.engine.vocab import GGUFVocabulary, LlamaVocab
from gram_local.errors import Cancelled, ContextAllocationError, ContextOverflowError, EngineError, InputError


class Engine(GGUFVocabulary, Backend):
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
        self.version = f"{llama_cpp_version()}/{binding_version()}"
        self.gpu_offload = gpu_offload_supported()
        self.amx_build = amx_compiled()
        plan = plan_engine(s, gpu_offload=self.gpu_offload, amx_build=self.amx_build, n_cpus=os.cpu_count() or 1)
        self.n_threads, self.n_gpu_layers, self.offloading = plan.n_threads, plan.n_gpu_layers, plan.offloading
        self.kv_unified, self.flash_attn, self.speculative = plan.kv_unified, plan.flash_attn, plan.speculative
        self.repack = plan.repack
        self.parallel, self.kv_type, self.max_draft = s.parallel, s.kv_type, s.max_draft
        # Repacked weights are copies; memory-mapping the file as well would keep both in memory.
        self.model = LlamaModel(self.model_path, n_gpu_layers=self.n_gpu_layers, repack=self.repack, use_mmap=not self.repack)
        self.vocab = LlamaVocab(self.model)
        self.shape: ModelShape = self.model.shape()
        self.n_vocab = self.vocab.n_vocab
        self.n_ctx_train = self.shape.n_ctx_train
        self.metadata = read_metadata(self.model, self.shape, self.n_vocab)
        self._vocabulary = self.vocab.facts()
        self.sampling = Sampling(self.vocab, self.stats)
        self.scheduler = Scheduler(kv_unified=self.kv_unified, n_batch=s.n_batch)
        self.kv = KvCache(
            self.model,
            self.shape,
            n_batch=s.n_batch,
            n_threads=self.n_threads,
            kv_type=self.kv_type,
            flash_attn=self.flash_attn,
            kv_unified=self.kv_unified,
            max_outputs_per_seq=self.max_draft + 1,
            offloading=self.offloading,
        )
        self.stepper = Stepper(self.kv, self.scheduler, self.sampling, self.vocab, self.stats, max_draft=self.max_draft)
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
    def slots(self) -> SlotTable:
        return self.kv.slots

    @property
    def ctx(self) -> LlamaContext | None:
        return self.kv.ctx

    @property
    def n_slots(self) -> int:
        return self.kv.n_slots

    @property
    def n_ctx_seq(self) -> int:
        return self.kv.n_ctx_seq

    @property
    def llama_model(self) -> Any:
        """The loaded llama.cpp model, for a tool that runs its own context over the same weights
        (the peer benchmark's bare loop). Valid until `close`."""
        return self.model.ptr

    def kv_bytes(self, n_seq: int, n_ctx_seq: int) -> int:
        return self.kv.bytes_for(n_seq, n_ctx_seq)

    @functools.cached_property
    def kv_identity(self) -> str:
        return kv_identity(self.version, repack=self.repack, n_gpu_layers=self.n_gpu_layers if self.offloading else 0,
                           flash_attn=self.flash_attn, kv_type=self.kv_type)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "llama_cpp": self.version}

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
            self.kv.ensure(min(n_seq, self.parallel), n_ctx_seq)

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
            placed, prefill = self.stepper.fill_batch(self._running)
            for seq in self.stepper.decode(placed, prefill=prefill):
                self._release(seq)
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
        self.kv.drop()

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
            if self.prefix_store is not None:
                self.prefix_store.restore(self.kv, request, {s.slot for s in self._running}, self.stats)
            self._running.append(self.stepper.start(handle, {s.slot for s in self._running}, speculative=self.speculative))

    def _grow_for(self, demand: list[RequestHandle]) -> bool:
        """Size the idle context for the waiting work (fewer sequences at once where llama.cpp
        cannot allocate that much); if not even one fits, that request fails with the reason."""
        try:
            self.kv.ensure_most(min(self.parallel, len(demand)),
                                lambda n: max(h.request.context_needed for h in demand[:n]))
            return True
        except ContextAllocationError as exc:
            self._waiting.remove(demand[0])
            demand[0].fail(exc)
            return False

    def _release(self, seq: Sequence) -> None:
        seq.close()
        self.slots.touch(seq.slot)
        self._running.remove(seq)

    # ---------------------------------------------------------------- direct use

    def next_token_logits(self, tokens: Seq[int]) -> np.ndarray:
        """The model's logits after `tokens`, from a cold evaluation (for checks and diagnostics)."""
        with self._step_lock:
            if self._running:
                raise EngineError("next_token_logits needs an idle engine")
            return self.kv.cold_logits(tokens)

    def clear_cache(self) -> None:
        """Forget every cached prefix (the next request evaluates its whole prompt)."""
        if not self._running:
            self.kv.forget_all()

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
            self.kv.drop()
            self.model.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass
