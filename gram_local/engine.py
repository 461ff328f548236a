"""The only module that touches llama.cpp: load a GGUF, decode many sequences at once.

The engine speaks in token ids. A `GenerationRequest` is a prompt (ending with `<think>\\n`) and a
sampler; the engine runs the think block under the format grammar, closes it itself at the think
budget, and stops at the answer slot with the logits of `A` and `B`. Requests share one context:
each runs in its own KV sequence (its own stream on a CPU, one unified cache when offloaded),
shared prompt prefixes are evaluated once and reused, and all running sequences advance together
in one batch per step.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import llama_cpp as llama
import numpy as np

from gram_local.errors import ContextOverflowError, EngineError, ModelError
from gram_local.grammar import forced_close_text, reached_answer_slot, think_grammar

_SPECIAL_ATTRS = (
    llama.LLAMA_TOKEN_ATTR_CONTROL | llama.LLAMA_TOKEN_ATTR_UNKNOWN | llama.LLAMA_TOKEN_ATTR_UNUSED
)
_TOKEN_DATA_DTYPE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA_DTYPE.itemsize == ctypes.sizeof(llama.llama_token_data)

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1


# --------------------------------------------------------------------------------------------
# Logging: llama.cpp prints every tensor it loads; keep only the last errors to explain failures.

_log_lock = threading.Lock()
_recent_errors: deque[str] = deque(maxlen=20)
_log_verbose = bool(os.environ.get("GRAM_LOCAL_LLAMA_LOG"))


@llama.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace") if text else ""
    if _log_verbose:
        os.write(2, message.encode("utf-8", errors="replace"))
    if level == 2:  # GGML_LOG_LEVEL_ERROR
        with _log_lock:
            _recent_errors.append(message.strip())


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama.llama_backend_init()
        _backend_ready = True


def _last_errors() -> str:
    with _log_lock:
        lines = [line for line in _recent_errors if line]
        _recent_errors.clear()
    return "; ".join(lines[-3:])


# --------------------------------------------------------------------------------------------
# Build facts, for `doctor`.


def system_info() -> dict[str, Any]:
    _init_backend()
    info = llama.llama_print_system_info().decode("utf-8", errors="replace")
    return {
        "llama_cpp_python": llama.__version__,
        "llama_cpp": _version_string(),
        "system_info": info.strip(),
        "gpu_offload": bool(llama.llama_supports_gpu_offload()),
        "backends": _backend_names(),
    }


def _version_string() -> str:
    value = llama.llama_version() if callable(llama.llama_version) else llama.llama_version
    return value.decode() if isinstance(value, bytes) else str(value)


def _backend_names() -> list[str]:
    names = []
    try:
        for i in range(llama.ggml_backend_dev_count()):
            dev = llama.ggml_backend_dev_get(i)
            names.append(llama.ggml_backend_dev_name(dev).decode())
    except AttributeError:  # pragma: no cover - binding without device enumeration
        pass
    return names


# --------------------------------------------------------------------------------------------
# Requests and results.


@dataclass(frozen=True)
class SamplerSpec:
    """temperature 0 means greedy; otherwise temperature, then nucleus (top_p), then a seeded draw."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationRequest:
    prompt: list[int]
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    max_think_tokens: int = 2048
    # False: the model cannot close the think block itself; the budget does (exact-length benches).
    allow_close: bool = True
    # True: the prompt already ends at the answer slot (a think budget of 0, prefilled).
    at_answer_slot: bool = False


@dataclass
class Generation:
    """What came out of one request: its text, how it ended, and the answer-slot logits."""

    # Everything after `<think>\n` up to the answer slot: the model's words, then any closing the
    # engine forced at the budget (`closing_text`).
    text: str
    closing_text: str
    think_tokens: int
    forced_close: bool
    answer: str
    logit_a: float
    logit_b: float
    tokens: list[int]
    drafted: int = 0
    accepted: int = 0

    @property
    def p_answer_a(self) -> float:
        """The model's probability of `A` against `B` at the answer slot (temperature 1)."""
        diff = self.logit_b - self.logit_a
        if diff > 50:
            return math.exp(-diff)
        return 1.0 / (1.0 + math.exp(diff))


@dataclass
class EngineStats:
    """Counters since the engine was made; differences of two snapshots time one operation."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0
    decode_calls: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0
    grammar_seconds: float = 0.0
    grammar_fallbacks: int = 0
    drafted: int = 0
    accepted: int = 0
    # Prompt tokens whose KV was read from a file on disk instead of computed.
    restored_tokens: int = 0
    # Running sequences moved to a lower KV stream to keep one micro-batch per step.
    moved: int = 0

    def snapshot(self) -> "EngineStats":
        return EngineStats(**self.__dict__)

    def since(self, before: "EngineStats") -> "EngineStats":
        return EngineStats(**{k: getattr(self, k) - getattr(before, k) for k in self.__dict__})


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


# --------------------------------------------------------------------------------------------


class _Sequence:
    """One running request bound to a KV sequence id (its slot)."""

    def __init__(self, request: GenerationRequest, slot: int, index: int) -> None:
        self.request = request
        self.slot = slot
        self.index = index
        self.pending: list[int] = []
        self.chain: Any = None
        self.grammar: Any = None
        self.sampled: list[int] = []
        self.text = bytearray()
        self.forced: list[int] = []
        self.forced_close = False
        self.at_answer_slot = request.at_answer_slot
        self.history: list[int] = list(request.prompt)
        self.drafts: list[int] = []
        self.drafted = 0
        self.accepted = 0
        self.ngram_index: dict[tuple[int, ...], int] = {}
        self.indexed_upto = 0
        self.prompt_done = False
        self.result: Generation | None = None


class Engine:
    """A loaded GGUF model and one multi-sequence context over it."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_parallel: int = 8,
        n_batch: int = 512,
        kv_type: str = "f16",
        speculative: bool | None = None,
        max_draft: int = 8,
        repack: bool = True,
        flash_attn: bool | None = None,
        kv_unified: bool | None = None,
    ) -> None:
        _init_backend()
        self.model_path = str(model_path)
        # llama.cpp's own version and the binding's: what decides the bytes of the KV it writes.
        self.version = f"{_version_string()}/{getattr(llama, '__version__', '?')}"
        self.n_threads = n_threads or os.cpu_count() or 1
        self.gpu_offload = bool(llama.llama_supports_gpu_offload())
        if n_gpu_layers is None:
            n_gpu_layers = 999 if self.gpu_offload else 0
        self.n_gpu_layers = n_gpu_layers
        self.n_parallel = max(1, n_parallel)
        self.n_batch = n_batch
        self.kv_type = {"f16": GGML_TYPE_F16, "f32": GGML_TYPE_F32}[kv_type]
        # Prompt-lookup drafts pay off only where verifying a few tokens costs little more than one:
        # on a GPU. On a CPU the extra rows cost nearly their full price (see the README).
        # The KV layout. On a CPU each sequence gets its own KV stream: a token attends over its own
        # sequence's cells only, so decoding eight 1.4k-token judgments together costs 616 ms a
        # step instead of 1,008 in one unified cache (3B, 2 cores), and a lone decode stays fast
        # while idle slots keep cached prompts. A shared prefix is then copied between streams
        # rather than shared in place (a memory copy, no recompute). Offloaded, the cache stays
        # unified with flash attention, the layout measured on a GPU (streams were not).
        self.offloading = self.gpu_offload and n_gpu_layers > 0
        self.kv_unified = self.offloading if kv_unified is None else kv_unified
        # Flash attention skips the cells of other sequences in a unified cache; without it every
        # token there attends over all of them, which halves prefill speed when a few other
        # prompts are cached. With streams there is nothing to skip and the CPU's plain attention
        # is faster (8 sequences: 616 against 855 ms a step). Its sums depend on which cells hold
        # a sequence, so a prefix reused or a draft rolled back can move logits by float
        # rounding; without it they do not (how a step is batched still can). Default: on when
        # offloading or when several sequences share one unified cache.
        self.flash_attn = (
            (self.offloading or (self.kv_unified and n_parallel > 1)) if flash_attn is None else flash_attn
        )
        self.speculative = self.offloading if speculative is None else speculative
        self.max_draft = max_draft
        # llama.cpp repacks CPU-resident weights for its matrix kernels (its default). On this
        # project's AVX-512 test machine that decodes one sequence 1.3x faster and prefills 1.4x
        # slower than the plain layout (see the README); the plain layout is also mmap-shared.
        self.repack = repack

        params = llama.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack
        if not Path(self.model_path).is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        self._model = llama.llama_model_load_from_file(self.model_path.encode(), params)
        if not self._model:
            detail = _last_errors()
            raise ModelError(f"llama.cpp could not load {self.model_path}" + (f": {detail}" if detail else ""))
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)
        self._ctx: Any = None
        self._batch: Any = None
        self.n_ctx_seq = 0
        self._slot_tokens: list[list[int]] = []
        self._slot_used: list[float] = []
        self.stats = EngineStats()
        self._lock = threading.Lock()
        # A prefix whose KV is kept in a file (the fixed instruction head): see `keep_prefix_on_disk`.
        self._disk_prefix: tuple[list[int], Path] | None = None

        attrs = np.fromiter(
            (llama.llama_vocab_get_attr(self._vocab, i) for i in range(self.n_vocab)),
            dtype=np.int64,
            count=self.n_vocab,
        )
        self.special_ids = np.flatnonzero(attrs & _SPECIAL_ATTRS).astype(np.int32)
        self._special_set = frozenset(int(i) for i in self.special_ids)
        self.special_texts = [self.piece(int(i), special=True).decode("utf-8", "replace") for i in self.special_ids]
        self._candidates = np.zeros(self.n_vocab, dtype=_TOKEN_DATA_DTYPE)
        self._candidates["id"] = np.arange(self.n_vocab, dtype=np.int32)
        self._single = (llama.llama_token_data * 1)()
        self.token_a = self._single_token("A")
        self.token_b = self._single_token("B")
        self.metadata = self._read_metadata()

    @property
    def llama_model(self) -> Any:
        """The loaded llama.cpp model, for a tool that runs its own context over the same weights
        (the peer benchmark's bare loop). Valid until `close`."""
        return self._model

    # ---------------------------------------------------------------- vocabulary

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids for text; `special=False` never yields a special token from the text."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Iterable[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_special(self, token: int) -> bool:
        return token in self._special_set

    @property
    def bos_id(self) -> int:
        return llama.llama_vocab_bos(self._vocab)

    @property
    def add_bos(self) -> bool:
        return bool(llama.llama_vocab_get_add_bos(self._vocab))

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def _single_token(self, text: str) -> int:
        ids = self.tokenize(text)
        if len(ids) != 1:
            raise ModelError(f"the model's vocabulary has no single token for {text!r}; it cannot be a GRAM-RR judge")
        return ids[0]

    def _read_metadata(self) -> ModelMetadata:
        values: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(llama.llama_model_meta_count(self._model)):
            llama.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value.decode("utf-8", "replace")
            n = llama.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= len(buf):
                big = ctypes.create_string_buffer(n + 1)
                llama.llama_model_meta_val_str_by_index(self._model, i, big, len(big))
                values[key] = big.value.decode("utf-8", "replace")
            else:
                values[key] = buf.value.decode("utf-8", "replace")
        template_ptr = llama.llama_model_chat_template(self._model, None)
        template = template_ptr.decode("utf-8", "replace") if template_ptr else None
        desc = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self._model, desc, 256)
        return ModelMetadata(
            architecture=values.get("general.architecture", "?"),
            name=values.get("general.name", Path(self.model_path).stem),
            n_params=int(llama.llama_model_n_params(self._model)),
            n_ctx_train=self.n_ctx_train,
            n_vocab=self.n_vocab,
            n_layer=int(llama.llama_model_n_layer(self._model)),
            file_type=desc.value.decode("utf-8", "replace"),
            chat_template=template,
            values={k: v for k, v in values.items() if not k.startswith("tokenizer.ggml.")},
        )

    # ---------------------------------------------------------------- context

    def ensure_context(self, n_ctx_seq: int, n_parallel: int | None = None) -> None:
        """A context where each of `n_parallel` sequences can hold `n_ctx_seq` tokens.

        It can never overflow: a stream holds n_ctx_seq cells, one slot's worth; a unified cache of
        n_parallel x n_ctx_seq cells holds every slot, and shared prefixes only save cells there.
        Growing drops the prefix cache.
        """
        n_parallel = n_parallel or self.n_parallel
        if n_ctx_seq > self.n_ctx_train:
            raise ContextOverflowError(n_ctx_seq, self.n_ctx_train, what="needed context")
        if self._ctx is not None and n_ctx_seq <= self.n_ctx_seq and n_parallel <= len(self._slot_tokens):
            return
        n_ctx_seq = max(n_ctx_seq, self.n_ctx_seq)
        n_parallel = max(n_parallel, len(self._slot_tokens))
        self._free_context()
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_parallel
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_parallel
        params.kv_unified = self.kv_unified
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.type_k = self.kv_type
        params.type_v = self.kv_type
        params.no_perf = True
        params.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_AUTO if self.flash_attn else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        # Rows of logits one sequence may ask for in a batch: its token plus its drafts.
        params.n_outputs_max_per_seq = max(1, self.max_draft + 1)
        ctx = llama.llama_init_from_model(self._model, params)
        if not ctx:
            detail = _last_errors()
            raise EngineError(
                f"could not create a context of {params.n_ctx} tokens ({n_parallel} x {n_ctx_seq}); "
                "lower --parallel or --ctx" + (f": {detail}" if detail else "")
            )
        self._ctx = ctx
        self._mem = llama.llama_get_memory(ctx)
        self._batch = llama.llama_batch_init(self.n_batch, 0, n_parallel)
        self.n_ctx_seq = n_ctx_seq
        self._slot_tokens = [[] for _ in range(n_parallel)]
        self._slot_used = [0.0] * n_parallel

    def _free_context(self) -> None:
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama.llama_free(self._ctx)
            self._ctx = None

    def close(self) -> None:
        self._free_context()
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    @functools.cached_property
    def kv_identity(self) -> str:
        """What the values in this engine's KV cache depend on besides the model and the tokens:
        the build (version, CPU features, backends), the weights layout, offload, attention, KV type."""
        try:
            system = llama.llama_print_system_info().decode("utf-8", "replace")
        except Exception:  # pragma: no cover - binding without it
            system = "?"
        return "|".join([
            self.version,
            system.strip(),
            ",".join(_backend_names()),
            f"repack={self.repack}",
            f"gpu_layers={self.n_gpu_layers if self.offloading else 0}",
            f"flash_attn={'auto' if self.flash_attn else 'off'}",
            f"kv={self.kv_type}",
        ])

    def keep_prefix_on_disk(self, tokens: Sequence[int] | None, path: str | os.PathLike[str] | None) -> None:
        """Before each run, make sure some slot holds `tokens`: read from `path`, or computed once
        and written there. A new process then skips the prefill of the fixed instruction head.

        The caller keys `path` by everything the KV depends on (model hash, weights layout,
        offload, llama.cpp version); the file also records its tokens, checked on every read.
        None turns it off.
        """
        self._disk_prefix = None if tokens is None or path is None or len(tokens) < 2 else (list(tokens), Path(path))

    def _restore_disk_prefix(self) -> None:
        if self._disk_prefix is None:
            return
        tokens, path = self._disk_prefix
        if len(tokens) >= self.n_ctx_seq or any(common_prefix(t, tokens) == len(tokens) for t in self._slot_tokens):
            return
        slot = min(range(len(self._slot_tokens)), key=lambda s: self._slot_used[s])
        llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self._slot_tokens[slot] = []
        self._slot_used[slot] = time.monotonic()
        if self._load_sequence(path, slot, tokens):
            self._slot_tokens[slot] = list(tokens)
            self.stats.restored_tokens += len(tokens)
            return
        started = time.perf_counter()
        try:
            self._evaluate(tokens, slot, logits_last=False)
        except EngineError:
            llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
            raise
        if self.offloading:
            llama.llama_synchronize(self._ctx)
        self.stats.prefill_seconds += time.perf_counter() - started
        self.stats.prompt_tokens += len(tokens)
        self._slot_tokens[slot] = list(tokens)
        _save_sequence(self._ctx, path, slot, tokens)

    def _load_sequence(self, path: Path, slot: int, tokens: list[int]) -> bool:
        """Read a sequence file into `slot` if it holds exactly `tokens` at positions 0..n-1.

        A file written by another build, cut short, damaged or recording other tokens is refused
        (llama.cpp checks its layout; we check the tokens and the positions it filled).
        """
        try:
            if not path.is_file():
                return False
            capacity = len(tokens) + 1
            read_tokens = (llama.llama_token * capacity)()
            count = ctypes.c_size_t(0)
            read = llama.llama_state_seq_load_file(
                self._ctx, os.fsencode(path), slot, read_tokens, capacity, ctypes.byref(count)
            )
        except OSError:
            read = 0
        ok = (
            bool(read)
            and list(read_tokens[: count.value]) == tokens
            and llama.llama_memory_seq_pos_min(self._mem, slot) == 0
            and llama.llama_memory_seq_pos_max(self._mem, slot) == len(tokens) - 1
        )
        if not ok:
            llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
            _last_errors()  # what llama.cpp logged about the refused file is not the next error's cause
            return False
        try:
            os.utime(path)  # pruning keeps the files in use
        except OSError:
            pass
        return True

    def clear_cache(self) -> None:
        """Forget every cached prefix (the next request evaluates its whole prompt)."""
        if self._ctx is not None:
            llama.llama_memory_clear(self._mem, True)
            self._slot_tokens = [[] for _ in self._slot_tokens]

    def _evaluate(self, tokens: Sequence[int], seq: int, *, logits_last: bool) -> None:
        """Decode `tokens` from position 0 into sequence `seq`, in chunks of n_batch."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            for j, token in enumerate(chunk):
                self._batch.token[j] = token
                self._batch.pos[j] = start + j
                self._batch.n_seq_id[j] = 1
                self._batch.seq_id[j][0] = seq
                self._batch.logits[j] = logits_last and start + j == len(tokens) - 1
            self._batch.n_tokens = len(chunk)
            if llama.llama_decode(self._ctx, self._batch) != 0:
                raise EngineError("llama_decode failed: " + _last_errors())

    def next_token_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """The model's logits after `tokens`, from a cold evaluation (for checks and diagnostics)."""
        with self._lock:
            self.ensure_context(_round_up(len(tokens) + 1, 256))
            self.clear_cache()
            self._evaluate(tokens, 0, logits_last=True)
            ptr = llama.llama_get_logits_ith(self._ctx, -1)
            logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
            self.clear_cache()
            return logits

    # ---------------------------------------------------------------- generation

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Run requests to their answer slots, as many at once as the context has slots."""
        results: list[Generation | None] = [None] * len(requests)
        for index, generation in self.generate_iter(requests):
            results[index] = generation
        return [r for r in results if r is not None]

    def generate_iter(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """Like `generate`, but yields (request index, generation) as each one finishes, so a
        caller can save finished work while the rest of the batch is still decoding."""
        if not requests:
            return
        with self._lock:
            longest = max(len(r.prompt) + (0 if r.at_answer_slot else r.max_think_tokens + 16) for r in requests)
            if self._ctx is None or longest > self.n_ctx_seq:
                self.ensure_context(_round_up(longest, 256))
            self._restore_disk_prefix()
            yield from self._run(list(requests))

    def _run(self, requests: list[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        queue = deque(enumerate(requests))
        active: list[_Sequence] = []
        try:
            while queue or active:
                while queue and len(active) < len(self._slot_tokens):
                    if self._worth_waiting(queue[0][1].prompt, active):
                        break
                    index, request = queue.popleft()
                    active.append(self._start(request, index, busy={s.slot for s in active}))
                rows = self._fill_batch(active)
                self._decode(rows)
                for seq in [s for s in active if s.result is not None]:
                    self._finish(seq)
                    active.remove(seq)
                    yield seq.index, seq.result
        except BaseException:
            # Interrupted between queuing tokens and decoding them: what the slots are believed to
            # hold may not be what the KV cache holds. Forget it all rather than reuse it wrongly.
            self.clear_cache()
            raise
        finally:
            for seq in active:
                self._finish(seq)

    def _worth_waiting(self, prompt: list[int], active: list[_Sequence]) -> bool:
        """Hold a request back while a running prefill is computing a long prefix it shares.

        Requests started together (the k samples of a vote, the two orders of a pair) would
        otherwise each evaluate the common prefix; waiting a step or two lets them copy it.
        """
        if not active:
            return False
        have = max((common_prefix(tokens, prompt) for tokens in self._slot_tokens), default=0)
        coming = max(
            (common_prefix(self._slot_tokens[s.slot] + s.pending, prompt) for s in active if not s.prompt_done),
            default=0,
        )
        return coming - have >= _WAIT_FOR_PREFIX

    def _start(self, request: GenerationRequest, index: int, busy: set[int]) -> _Sequence:
        prompt = request.prompt
        if len(prompt) + (0 if request.at_answer_slot else request.max_think_tokens + 16) > self.n_ctx_seq:
            raise ContextOverflowError(len(prompt), self.n_ctx_seq - request.max_think_tokens - 16)
        free = [s for s in range(len(self._slot_tokens)) if s not in busy]
        # The longest cached prefix anywhere (running or idle sequences) is shared, not recomputed.
        best_src, best_len = -1, 0
        for slot, tokens in enumerate(self._slot_tokens):
            n = common_prefix(tokens, prompt)
            if n > best_len or (n == best_len and n > 0 and slot in free and best_src not in free):
                best_src, best_len = slot, n
        best_len = min(best_len, len(prompt) - 1)  # the last prompt token must be decoded for logits
        if not self.kv_unified:
            # Running sequences stay in the lowest slots (see `_compact`); a copy keeps its source.
            slot = min(free)
        elif best_src in free and best_len > 0:
            slot = best_src
        else:
            # Evict the idle slot that was used longest ago.
            slot = min(free, key=lambda s: self._slot_used[s])
        if slot != best_src:
            llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
            self._slot_tokens[slot] = []
            if best_len > 0:
                self._copy_prefix(best_src, slot, best_len)
                self._slot_tokens[slot] = list(prompt[:best_len])
        else:
            llama.llama_memory_seq_rm(self._mem, slot, best_len, -1)
            del self._slot_tokens[slot][best_len:]
        self._slot_used[slot] = time.monotonic()
        seq = _Sequence(request, slot, index)
        seq.pending = list(prompt[best_len:])
        self.stats.reused_tokens += best_len
        self.stats.prompt_tokens += len(seq.pending)
        if not request.at_answer_slot:
            seq.chain = _make_chain(request.sampler)
            seq.grammar = llama.llama_sampler_init_grammar(
                self._vocab, think_grammar(allow_close=request.allow_close).encode(), b"root"
            )
            if not seq.grammar:
                raise EngineError("llama.cpp rejected the format grammar")
            _index_ngrams(seq, len(seq.history) - 1)
        elif not request.sampler.greedy:
            seq.chain = _make_chain(request.sampler)
        return seq

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make slot `dst` hold the first `n` cells of slot `src`.

        In a unified cache the cells are shared in place. Between streams llama.cpp copies only
        whole streams (queued until the next decode, in order), so copy all and cut the tail.
        """
        if self.kv_unified:
            llama.llama_memory_seq_cp(self._mem, src, dst, 0, n)
        else:
            llama.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
            llama.llama_memory_seq_rm(self._mem, dst, n, -1)

    def _finish(self, seq: _Sequence) -> None:
        for sampler in (seq.chain, seq.grammar):
            if sampler:
                llama.llama_sampler_free(sampler)
        seq.chain = seq.grammar = None
        self._slot_used[seq.slot] = time.monotonic()

    def _fill_batch(self, active: list[_Sequence]) -> list[tuple[_Sequence, int, int]]:
        """Queue each sequence's next tokens; returns (sequence, first row, row count with logits)."""
        if not self.kv_unified:
            self._compact(active)
        # Sequences that are generating get room first (one token each, plus drafts), then prompt
        # chunks. Tokens are written in slot order: with KV streams llama.cpp puts only ascending,
        # consecutive sequence ids in one micro-batch, and each extra one reads all the weights.
        feeds: list[tuple[_Sequence, list[int], bool]] = []
        n = 0
        for seq in sorted(active, key=lambda s: len(s.pending) > 1 + len(s.drafts)):
            room = self.n_batch - n
            if room <= 0:
                break
            generating = bool(seq.sampled) or seq.forced_close
            feed = seq.pending[:room]
            with_logits_all = False
            if generating and seq.drafts and len(seq.pending) == 1:
                seq.drafts = seq.drafts[: max(0, room - 1)]
                feed = seq.pending + seq.drafts
                with_logits_all = True
            else:
                seq.drafts = []
            feeds.append((seq, feed, with_logits_all))
            n += len(feed)
        batch = self._batch
        n = 0
        prompt_tokens = 0
        rows: list[tuple[_Sequence, int, int]] = []
        for seq, feed, with_logits_all in sorted(feeds, key=lambda f: f[0].slot):
            tokens = self._slot_tokens[seq.slot]
            done_pending = len(feed) >= len(seq.pending)
            first = n
            for j, token in enumerate(feed):
                batch.token[n] = token
                batch.pos[n] = len(tokens) + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.slot
                last = j == len(feed) - 1
                batch.logits[n] = with_logits_all or (last and done_pending)
                n += 1
            tokens.extend(feed)
            consumed = min(len(feed), len(seq.pending))
            del seq.pending[:consumed]
            if with_logits_all:
                rows.append((seq, first, len(feed)))
            elif done_pending:
                rows.append((seq, n - 1, 1))
            if not seq.prompt_done:
                prompt_tokens += len(feed)
        batch.n_tokens = n
        self._batch_has_prompt = prompt_tokens > 0
        return rows

    def _compact(self, active: list[_Sequence]) -> None:
        """Keep the running sequences in the lowest slots, so one step is one micro-batch.

        Moving a sequence copies its KV stream (one memory copy, queued for the next decode);
        the slot it leaves keeps its tokens as a cached prefix.
        """
        busy = {s.slot for s in active}
        for seq in sorted(active, key=lambda s: -s.slot):
            lowest_free = min((s for s in range(len(self._slot_tokens)) if s not in busy), default=None)
            if lowest_free is None or lowest_free > seq.slot:
                break
            llama.llama_memory_seq_rm(self._mem, lowest_free, -1, -1)
            self._copy_prefix(seq.slot, lowest_free, len(self._slot_tokens[seq.slot]))
            self._slot_tokens[lowest_free] = list(self._slot_tokens[seq.slot])
            self._slot_used[lowest_free] = self._slot_used[seq.slot] = time.monotonic()
            busy.discard(seq.slot)
            busy.add(lowest_free)
            seq.slot = lowest_free
            self.stats.moved += 1

    def _decode(self, rows: list[tuple[_Sequence, int, int]]) -> None:
        batch = self._batch
        prefill = self._batch_has_prompt
        started = time.perf_counter()
        rc = llama.llama_decode(self._ctx, batch)
        if self.offloading:  # a GPU decode returns early; wait here so the time lands on decoding
            llama.llama_synchronize(self._ctx)
        elapsed = time.perf_counter() - started
        self.stats.decode_calls += 1
        if prefill:
            self.stats.prefill_seconds += elapsed
        else:
            self.stats.decode_seconds += elapsed
        if rc != 0:
            detail = _last_errors()
            raise EngineError(f"llama_decode failed with status {rc}" + (f": {detail}" if detail else ""))
        for seq, first, count in rows:
            seq.prompt_done = True
            if count == 1:
                self._on_logits(seq, first)
                continue
            # Verify drafts: row j holds the distribution after the j-th fed token.
            fed = self._slot_tokens[seq.slot][-count:]
            base = len(self._slot_tokens[seq.slot]) - count
            drafts = seq.drafts
            seq.drafted += len(drafts)
            self.stats.drafted += len(drafts)
            kept = count
            for j in range(count):
                self._on_logits(seq, first + j)
                if j + 1 < count and seq.result is None and seq.pending == [fed[j + 1]] and not seq.forced_close:
                    seq.pending = []
                    seq.accepted += 1
                    self.stats.accepted += 1
                    continue
                kept = j + 1
                break
            if kept < count:
                llama.llama_memory_seq_rm(self._mem, seq.slot, base + kept, -1)
                del self._slot_tokens[seq.slot][base + kept:]

    def _on_logits(self, seq: _Sequence, row: int) -> None:
        """Act on the logits at a row: answer, close the think block, or sample the next token."""
        request = seq.request
        if seq.at_answer_slot:
            self._answer(seq, row)
            return
        if len(seq.sampled) >= request.max_think_tokens:
            closing = forced_close_text(seq.text.decode("utf-8", errors="replace"))
            seq.forced = self.tokenize(closing)
            seq.pending = list(seq.forced)
            seq.forced_close = True
            seq.at_answer_slot = True
            self.stats.forced_tokens += len(seq.forced)
            return
        token = self._sample(seq, row)
        seq.sampled.append(token)
        seq.history.append(token)
        seq.text += self.piece(token)
        seq.pending = [token]
        self.stats.generated_tokens += 1
        if reached_answer_slot(seq.text.decode("utf-8", errors="replace")):
            seq.at_answer_slot = True
        elif self.speculative and len(seq.sampled) < request.max_think_tokens:
            _index_ngrams(seq, len(seq.history) - 1)
            room = request.max_think_tokens - len(seq.sampled)
            seq.drafts = _draft(seq, min(self.max_draft, room))

    def _sample(self, seq: _Sequence, row: int) -> int:
        """Sample with the sequence's chain; check only that token against the grammar.

        The full grammar (128k candidates) runs only when the cheap check rejects the token,
        which gives the same distribution as grammar-first sampling at a fraction of the cost.
        """
        started = time.perf_counter()
        token = llama.llama_sampler_sample(seq.chain, self._ctx, row)
        mid = time.perf_counter()
        self.stats.sample_seconds += mid - started
        single = self._single
        single[0].id = token
        single[0].logit = 1.0
        single[0].p = 0.0
        arr = llama.llama_token_data_array(data=single, size=1, selected=-1, sorted=False)
        llama.llama_sampler_apply(seq.grammar, ctypes.byref(arr))
        if token in self._special_set or math.isinf(single[0].logit):
            self.stats.grammar_fallbacks += 1
            token = self._sample_constrained(seq, row)
        llama.llama_sampler_accept(seq.grammar, token)
        self.stats.grammar_seconds += time.perf_counter() - mid
        return token

    def _sample_constrained(self, seq: _Sequence, row: int) -> int:
        logits_ptr = llama.llama_get_logits_ith(self._ctx, row)
        if not logits_ptr:
            raise EngineError("llama.cpp returned no logits for a sampled row")
        cand = self._candidates
        cand["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cand["logit"] = np.ctypeslib.as_array(logits_ptr, shape=(self.n_vocab,))
        cand["p"] = 0.0
        cand["logit"][self.special_ids] = -np.inf
        arr = llama.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(llama.llama_token_data)),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )
        llama.llama_sampler_apply(seq.grammar, ctypes.byref(arr))
        llama.llama_sampler_apply(seq.chain, ctypes.byref(arr))
        if arr.selected < 0 or arr.selected >= arr.size:
            raise EngineError("the sampler selected no token under the grammar")
        return int(cand["id"][arr.selected])

    def _answer(self, seq: _Sequence, row: int) -> None:
        logits_ptr = llama.llama_get_logits_ith(self._ctx, row)
        if not logits_ptr:
            raise EngineError("llama.cpp returned no logits at the answer slot")
        logit_a = float(logits_ptr[self.token_a])
        logit_b = float(logits_ptr[self.token_b])
        if seq.request.sampler.greedy:
            answer = "A" if logit_a >= logit_b else "B"
        else:
            pair = (llama.llama_token_data * 2)()
            pair[0].id, pair[0].logit = self.token_a, logit_a
            pair[1].id, pair[1].logit = self.token_b, logit_b
            arr = llama.llama_token_data_array(data=pair, size=2, selected=-1, sorted=False)
            llama.llama_sampler_apply(seq.chain, ctypes.byref(arr))
            answer = "A" if pair[arr.selected].id == self.token_a else "B"
        forced_text = self.detokenize(seq.forced) if seq.forced_close else ""
        seq.result = Generation(
            text=seq.text.decode("utf-8", errors="replace") + forced_text,
            closing_text=forced_text,
            think_tokens=len(seq.sampled),
            forced_close=seq.forced_close or seq.request.at_answer_slot,
            answer=answer,
            logit_a=logit_a,
            logit_b=logit_b,
            tokens=list(seq.sampled) + list(seq.forced),
            drafted=seq.drafted,
            accepted=seq.accepted,
        )


def _make_chain(spec: SamplerSpec) -> Any:
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    if spec.greedy:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
    else:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(spec.temperature))
        if spec.top_p < 1.0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(spec.top_p, 1))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(spec.seed & 0xFFFFFFFF))
    return chain


def _save_sequence(ctx: Any, path: Path, slot: int, tokens: list[int]) -> None:
    """Write a sequence's KV under a temporary name, then rename: readers never see half a file.
    The file is only a cache: a failure to write it is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
    except OSError:
        return
    tmp = Path(name)
    try:
        array = (llama.llama_token * len(tokens))(*tokens)
        if llama.llama_state_seq_save_file(ctx, os.fsencode(tmp), slot, array, len(tokens)):
            os.replace(tmp, path)
    except OSError:
        pass
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


_NGRAM = 3
_WAIT_FOR_PREFIX = 32  # tokens of shared prefix worth waiting one prefill step for


def _index_ngrams(seq: _Sequence, upto: int) -> None:
    """Remember where each trigram of the history ending at or before `upto` ended."""
    history = seq.history
    for end in range(max(seq.indexed_upto + 1, _NGRAM), upto + 1):
        seq.ngram_index[tuple(history[end - _NGRAM:end])] = end
    seq.indexed_upto = max(seq.indexed_upto, upto)


def _draft(seq: _Sequence, limit: int) -> list[int]:
    """Prompt lookup: the tokens that followed the last earlier occurrence of the current trigram."""
    history = seq.history
    if limit <= 0 or len(history) < _NGRAM + 1:
        return []
    key = tuple(history[-_NGRAM:])
    end = seq.ngram_index.get(key)
    if end is None or end >= len(history):
        return []
    return history[end:end + limit]
