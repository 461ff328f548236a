"""Thin typed owners of llama.cpp's objects: each native handle has one owner, freed in one place.

Everything else in the engine talks to llama.cpp through these classes (and `vocab.py`), so the
pointer rules live here: check what llama.cpp returns, copy logits before the next decode, free
each handle exactly once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as llama
import numpy as np

from gram_local.config import ENV_LLAMA_LOG
from gram_local.errors import ContextAllocationError, EngineError, ModelError

# ggml's log levels (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
LOG_WARN = 3
LOG_ERROR = 4
LOG_CONT = 5

GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
KV_BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}

# --------------------------------------------------------------------------------------------
# Logging: llama.cpp prints every tensor it loads; keep its warnings and errors to explain failures.

_log_lock = threading.Lock()
_recent: deque[str] = deque(maxlen=40)
_last_level = 0


def _log_message(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    message = text.decode("utf-8", errors="replace") if text else ""
    if os.environ.get(ENV_LLAMA_LOG):
        os.write(2, message.encode("utf-8", errors="replace"))
    if level == LOG_CONT:
        level = _last_level
    else:
        _last_level = level
    if level >= LOG_WARN and message.strip():
        with _log_lock:
            _recent.append(message.strip())


# The C function pointer llama.cpp calls; a module global, so it lives as long as llama.cpp holds it.
_log_callback = llama.llama_log_callback(_log_message)

_backend_ready = False


def init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama.llama_backend_init()
        _backend_ready = True


def take_log_messages() -> str:
    """The warnings and errors llama.cpp logged since the last call (the last few, joined)."""
    with _log_lock:
        lines = list(_recent)
        _recent.clear()
    return "; ".join(lines[-4:])


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ctx_train: int
    n_params: int
    size_bytes: int

    def kv_bytes_per_token(self, kv_type: str) -> int:
        """K and V of one token in every layer (grouped-query heads of n_embd / n_head values)."""
        head_dim = self.n_embd // max(self.n_head, 1)
        values = 2 * self.n_layer * self.n_head_kv * head_dim
        return int(values * KV_BYTES_PER_VALUE[kv_type])


class LlamaModel:
    """A loaded GGUF (weights, or only the vocabulary). Owns `llama_model *`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_gpu_layers: int = 0,
        repack: bool = True,
        use_mmap: bool = True,
        vocab_only: bool = False,
    ) -> None:
        init_backend()
        self.path = str(path)
        if not Path(self.path).is_file():
            raise ModelError(f"model file not found: {self.path}")
        params = llama.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack
        # (0.3.36 has no `use_mmap` field: setting one on the ctypes struct would do nothing.)
        params.load_mode = llama.LLAMA_LOAD_MODE_MMAP if use_mmap else llama.LLAMA_LOAD_MODE_NONE
        params.vocab_only = vocab_only
        take_log_messages()
        self.ptr: Any = llama.llama_model_load_from_file(self.path.encode(), params)
        if not self.ptr:
            detail = take_log_messages()
            raise ModelError(f"llama.cpp could not load {self.path}" + (f": {detail}" if detail else ""))
        self.vocab_ptr: Any = llama.llama_model_get_vocab(self.ptr)

    def shape(self) -> ModelShape:
        m = self.ptr
        return ModelShape(
            n_layer=int(llama.llama_model_n_layer(m)),
            n_embd=int(llama.llama_model_n_embd(m)),
            n_head=int(llama.llama_model_n_head(m)),
            n_head_kv=int(llama.llama_model_n_head_kv(m)),
            n_ctx_train=int(llama.llama_model_n_ctx_train(m)),
            n_params=int(llama.llama_model_n_params(m)),
            size_bytes=int(llama.llama_model_size(m)),
        )

    def metadata(self) -> dict[str, str]:
        values: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(llama.llama_model_meta_count(self.ptr)):
            llama.llama_model_meta_key_by_index(self.ptr, i, buf, len(buf))
            key = buf.value.decode("utf-8", "replace")
            n = llama.llama_model_meta_val_str_by_index(self.ptr, i, buf, len(buf))
            if n >= len(buf):
                big = ctypes.create_string_buffer(n + 1)
                llama.llama_model_meta_val_str_by_index(self.ptr, i, big, len(big))
                values[key] = big.value.decode("utf-8", "replace")
            else:
                values[key] = buf.value.decode("utf-8", "replace")
        return values

    def chat_template(self) -> str | None:
        ptr = llama.llama_model_chat_template(self.ptr, None)
        return ptr.decode("utf-8", "replace") if ptr else None

    def description(self) -> str:
        desc = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self.ptr, desc, 256)
        return desc.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.ptr:
            llama.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# The context and its batch


@dataclass(frozen=True)
class ContextShape:
    """What a context was made for: `n_seq` sequences of up to `n_ctx_seq` cells each."""

    n_seq: int
    n_ctx_seq: int
    kv_unified: bool


class LlamaBatch:
    """A `llama_batch` of up to `capacity` tokens. Owns its arrays."""

    def __init__(self, capacity: int, n_seq_max: int) -> None:
        self.capacity = capacity
        self.raw: Any = llama.llama_batch_init(capacity, 0, n_seq_max)
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append a token; returns its row (where its logits will be)."""
        i = self.n
        if i >= self.capacity:
            raise EngineError("internal error: the decode batch is full")
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq
        raw.logits[i] = logits
        self.n = i + 1
        raw.n_tokens = self.n
        return i

    def close(self) -> None:
        if self.raw is not None:
            llama.llama_batch_free(self.raw)
            self.raw = None


class LlamaContext:
    """A `llama_context` over a model, with its KV memory and one decode batch. Owns both."""

    def __init__(
        self,
        model: LlamaModel,
        shape: ContextShape,
        *,
        n_batch: int,
        n_threads: int,
        kv_type: str,
        flash_attn: bool,
        max_outputs_per_seq: int,
        kv_bytes: int,
    ) -> None:
        self.shape = shape
        self.n_batch = n_batch
        params = llama.llama_context_default_params()
        params.n_ctx = shape.n_ctx_seq * shape.n_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = shape.n_seq
        params.kv_unified = shape.kv_unified
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.type_k = GGML_TYPES[kv_type]
        params.type_v = GGML_TYPES[kv_type]
        params.no_perf = True
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_AUTO if flash_attn else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_outputs_max_per_seq = max(1, max_outputs_per_seq)
        # The logits buffer is sized for this many rows (n_vocab floats each; by default n_batch
        # rows, 250 MB on a 128k vocabulary): a step reads at most a draft's rows per sequence.
        params.n_outputs_max = min(n_batch, shape.n_seq * max(1, max_outputs_per_seq))
        take_log_messages()
        self.ptr: Any = llama.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            detail = take_log_messages()
            raise ContextAllocationError(
                f"could not create a context of {params.n_ctx} tokens ({shape.n_seq} sequence(s) x "
                f"{shape.n_ctx_seq}), which needs about {kv_bytes / 2**20:,.0f} MiB of {kv_type} KV cache "
                "plus compute buffers; lower --parallel, --max-think-tokens or --ctx, or use --kv-type q8_0"
                + (f" (llama.cpp: {detail})" if detail else "")
            )
        self.n_vocab = int(llama.llama_vocab_n_tokens(model.vocab_ptr))
        self.memory: Any = llama.llama_get_memory(self.ptr)
        self.batch = LlamaBatch(n_batch, shape.n_seq)

    # KV memory, by sequence id (the slot)
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        llama.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """In a unified cache the cells are shared in place; between streams llama.cpp queues a
        copy of the whole stream, done before the next decode."""
        llama.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_pos_range(self, seq: int) -> tuple[int, int]:
        return int(llama.llama_memory_seq_pos_min(self.memory, seq)), int(llama.llama_memory_seq_pos_max(self.memory, seq))

    def decode(self) -> int:
        return int(llama.llama_decode(self.ptr, self.batch.raw))

    def synchronize(self) -> None:
        llama.llama_synchronize(self.ptr)

    def logits(self, row: int) -> np.ndarray:
        """A view of one row's logits: valid until the next decode (copy to keep)."""
        ptr = llama.llama_get_logits_ith(self.ptr, row)
        if not ptr:
            raise EngineError(f"llama.cpp returned no logits for row {row}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def save_sequence(self, path: Path, seq: int, tokens: Sequence[int]) -> bool:
        array = (llama.llama_token * len(tokens))(*tokens)
        return bool(llama.llama_state_seq_save_file(self.ptr, os.fsencode(path), seq, array, len(tokens)))

    def load_sequence(self, path: Path, seq: int, capacity: int) -> list[int] | None:
        """The tokens a sequence file recorded, its KV loaded into `seq`; None if refused."""
        read_tokens = (llama.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        read = llama.llama_state_seq_load_file(self.ptr, os.fsencode(path), seq, read_tokens, capacity, ctypes.byref(count))
        if not read:
            return None
        return list(read_tokens[: count.value])

    def close(self) -> None:
        self.batch.close()
        if self.ptr:
            llama.llama_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# Samplers


class SamplerChain:
    """One sequence's samplers: the draw (greedy, or temperature/top-p/seeded) and the format
    grammar. Owns both `llama_sampler *`; `close` frees them, also when making one failed."""

    def __init__(self, vocab_ptr: Any, *, greedy: bool, temperature: float, top_p: float, seed: int, grammar: str | None) -> None:
        self.chain: Any = None
        self.grammar: Any = None
        self.chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if greedy:
            llama.llama_sampler_chain_add(self.chain, llama.llama_sampler_init_greedy())
        else:
            llama.llama_sampler_chain_add(self.chain, llama.llama_sampler_init_temp(temperature))
            if top_p < 1.0:
                llama.llama_sampler_chain_add(self.chain, llama.llama_sampler_init_top_p(top_p, 1))
            llama.llama_sampler_chain_add(self.chain, llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if grammar is not None:
            self.grammar = llama.llama_sampler_init_grammar(vocab_ptr, grammar.encode(), b"root")
            if not self.grammar:
                detail = take_log_messages()
                self.close()
                raise EngineError("llama.cpp rejected the format grammar" + (f": {detail}" if detail else ""))

    def close(self) -> None:
        for sampler in (self.chain, self.grammar):
            if sampler:
                llama.llama_sampler_free(sampler)
        self.chain = self.grammar = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


TOKEN_DATA_DTYPE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert TOKEN_DATA_DTYPE.itemsize == ctypes.sizeof(llama.llama_token_data)
