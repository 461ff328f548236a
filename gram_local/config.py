"""Every default and every environment variable gram-local reads, in one place.

The CLI shows these defaults (`show_default`), the Python API uses them, and the settings objects
below group them: `JudgeSettings` decides a verdict and is recorded with every result;
`EngineSettings` decides how the model runs (threads, offload, memory) and not what it says.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal

from gram_local.errors import InputError

# ------------------------------------------------------------------------------------------ names

ENV_PREFIX = "GRAM_LOCAL_"
"""Each CLI option can also come from GRAM_LOCAL_<OPTION> (GRAM_LOCAL_MODEL, GRAM_LOCAL_PARALLEL, ...)."""
ENV_HOME = "GRAM_LOCAL_HOME"
"""The model store, the KV cache of the instruction head and the hash cache (see `gram_local.paths`)."""
ENV_LOCK = "GRAM_LOCAL_LOCK"
"""A models.lock to use instead of the one shipped in the package."""
ENV_LLAMA_LOG = "GRAM_LOCAL_LLAMA_LOG"
"""Set: llama.cpp's own log goes to stderr (otherwise only its errors are kept, for messages)."""
ENV_DEBUG = "GRAM_LOCAL_DEBUG"
"""Set: unexpected failures print their traceback."""
ENV_API_KEY = "GRAM_LOCAL_API_KEY"
"""Bearer token of `gram-local serve` (required to listen beyond this machine), of its client, and of remote backends."""
ENV_BACKEND = "GRAM_LOCAL_BACKEND"
"""Which backend judges: llama.cpp (in this process), llama-server or openai (`--backend`)."""
ENV_BASE_URL = "GRAM_LOCAL_BASE_URL"
"""Remote backends: the server's base URL; several separated by spaces (`--base-url`, repeatable)."""
ENV_LLAMA_SERVER = "GRAM_LOCAL_LLAMA_SERVER"
"""Tests: the llama-server binary the remote-backend tests start on 127.0.0.1."""
ENV_CI = "CI"
"""Set by CI: tests that need a tool (the llama-server binary) fail instead of skipping without it."""
ENV_CPU_FLAGS_FILE = "GRAM_LOCAL_CPU_FLAGS_FILE"
"""A recorded /proc/cpuinfo (or `sysctl -a`) to check the build against instead of this machine's."""
ENV_SKIP_CPU_CHECK = "GRAM_LOCAL_SKIP_CPU_CHECK"
"""Set: load a model even when the build uses instructions this CPU does not report."""


def env_name(option: str) -> str:
    """GRAM_LOCAL_<OPTION> for a CLI option name (`max-think-tokens` -> GRAM_LOCAL_MAX_THINK_TOKENS)."""
    return ENV_PREFIX + option.upper().replace("-", "_")


# --------------------------------------------------------------------------------------- defaults

DEFAULT_MODEL = "gram-rr-3b"
DEFAULT_QUANT = "Q4_K_M"

DEFAULT_DATE = "26 Jul 2024"
"""The Llama-3.2 template's own fallback date: pinned so a verdict does not change with the calendar."""
DEFAULT_MAX_THINK_TOKENS = 2048
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 1.0
DEFAULT_SEED = 0
DEFAULT_VOTES = 8
# How rank orders its responses: a comparison sort, or every pair with Bradley-Terry scores.
DEFAULT_RANK_METHOD = "sort"
VOTE_TEMPERATURE = 0.6
VOTE_TOP_P = 0.9
ANSWER_MARGIN = 16
"""Tokens kept free after the think budget: the forced closing of the think block and the answer."""

DEFAULT_PARALLEL = 8
"""At most this many sequences decode together; memory is reserved only for those that run."""
DEFAULT_BATCH = 512
"""Tokens per llama.cpp decode call (prompt chunks)."""
DEFAULT_MAX_DRAFT = 8
"""Prompt-lookup draft tokens per step, where drafting is on."""
HEAD_CACHE_FILES = 8
"""Files of the instruction head's KV kept on disk (one per model, date and build)."""

# `gram-local serve`
DEFAULT_HOST = "127.0.0.1"
"""Only this machine can reach the service unless told otherwise (and then only with an API key)."""
DEFAULT_PORT = 8765
DEFAULT_SERVE_CTX = 4096
"""Context per sequence the service reserves at start (capped at the model's), unless --ctx says."""
DEFAULT_MAX_QUEUE = 64
"""Requests the service holds at once, running or waiting; beyond it, 503 with Retry-After."""
DEFAULT_MAX_BODY = 4 * 2**20
"""Bytes of one request body (a batch's JSONL included); beyond it, 413."""
DEFAULT_MAX_RESPONSES = 32
"""Responses of one rank or best-of-n request; beyond it, 422."""
DEFAULT_MAX_VOTES = 64
"""Samples of one vote request; beyond it, 422."""
DEFAULT_DEADLINE = 900.0
"""Seconds one request (one task of a batch) may run before it is cancelled (504)."""
DEFAULT_GRACE = 10
"""Seconds a stopping service gives requests in flight before cancelling them."""
RETRY_AFTER = 5
# Seconds /health asks a client to wait while the model loads.
LOADING_RETRY_AFTER = 2
"""Seconds a 503 asks a client to wait before retrying."""

BACKENDS: tuple[str, ...] = ("llama.cpp", "llama-server", "openai")
DEFAULT_BACKEND = "llama.cpp"
REMOTE_TIMEOUT = 600.0
"""Seconds one HTTP request to a remote backend may take (a long think on a busy server)."""
REMOTE_RETRIES = 6
"""Attempts after the first for a request that met a connection error, 429 or 503."""
REMOTE_BACKOFF = 0.5
"""Seconds before the first retry; doubled on each next one (with jitter), up to REMOTE_BACKOFF_MAX."""
REMOTE_BACKOFF_MAX = 30.0
ANSWER_TOP_K = 40
"""Top log-probabilities asked for at the answer slot; raised once if A or B is not among them."""

KvType = Literal["f16", "q8_0", "f32"]
KV_TYPES: tuple[str, ...] = ("f16", "q8_0", "f32")
Position = Literal["shuffled", "fixed"]
POSITIONS: tuple[str, ...] = ("shuffled", "fixed")


def normalize_date(date: str) -> str:
    """Accept `26 Jul 2024` or ISO `2024-07-26`; return the template's `%d %b %Y` form."""
    text = date.strip()
    for fmt in ("%d %b %Y", "%Y-%m-%d", "%d %B %Y"):
        try:
            return _dt.datetime.strptime(text, fmt).strftime("%d %b %Y")
        except ValueError:
            continue
    raise InputError(f"unreadable date {date!r}: use the form '26 Jul 2024' or '2024-07-26'")


@dataclass(frozen=True)
class JudgeSettings:
    """Everything besides the model that decides a verdict; recorded with every result."""

    date: str = DEFAULT_DATE
    max_think_tokens: int = DEFAULT_MAX_THINK_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int = DEFAULT_SEED
    vote_temperature: float = VOTE_TEMPERATURE
    vote_top_p: float = VOTE_TOP_P
    # Per-sequence context; None sizes it to the prompts at hand (up to the model's own).
    n_ctx: int | None = None
    # False: the model cannot end its think block; the budget does (benchmarks only).
    allow_close: bool = True
    # Which input a one-order comparison in rank and best-of-n shows as Response A: "shuffled"
    # (a coin seeded by `seed` and the pair, recorded in each judgment's order) or "fixed" (the
    # lower index, which turns a model's position bias into a bias for earlier inputs).
    position: Position = "shuffled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "date", normalize_date(self.date))
        if isinstance(self.max_think_tokens, bool) or not isinstance(self.max_think_tokens, int):
            raise InputError("max-think-tokens must be an integer")
        if self.max_think_tokens < 0:
            raise InputError("max-think-tokens must be 0 or more")
        for name in ("temperature", "vote_temperature"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise InputError(f"{name.replace('_', '-')} must be 0 or more")
        for name in ("top_p", "vote_top_p"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(f"{name.replace('_', '-')} must be in (0, 1]")
        if self.n_ctx is not None and self.n_ctx < 64:
            raise InputError("ctx must be at least 64 tokens")
        if self.position not in POSITIONS:
            raise InputError(f"position must be one of {', '.join(POSITIONS)}")


@dataclass(frozen=True)
class EngineSettings:
    """How the in-process engine runs the model: none of these changes what a verdict means."""

    n_threads: int | None = None  # None: all cores
    n_gpu_layers: int | None = None  # None: all when the build can offload, else 0
    parallel: int = DEFAULT_PARALLEL  # most sequences decoded together
    n_batch: int = DEFAULT_BATCH
    kv_type: KvType = "f16"
    speculative: bool | None = None  # None: on only with GPU offload
    max_draft: int = DEFAULT_MAX_DRAFT
    repack: bool = True  # llama.cpp's repacked CPU weights
    flash_attn: bool | None = None  # None: on with offload or a shared (unified) cache
    kv_unified: bool | None = None  # None: unified when offloaded, one stream per sequence on a CPU
    # The instruction head's KV on disk: True (in the store), False, or a folder.
    head_cache: bool | str = True
    # Check the build's instruction sets against this CPU before loading (see gram_local.cpu).
    cpu_check: bool = True

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise InputError("parallel must be at least 1")
        if self.n_threads is not None and self.n_threads < 1:
            raise InputError("threads must be at least 1")
        if self.n_batch < 1:
            raise InputError("the batch size must be at least 1")
        if self.kv_type not in KV_TYPES:
            raise InputError(f"kv-type must be one of {', '.join(KV_TYPES)}")


@dataclass(frozen=True)
class RemoteSettings:
    """How a remote backend talks to its servers: none of these changes what a verdict means."""

    base_urls: tuple[str, ...] = ()
    api_key: str | None = None
    # Requests in flight per replica; None: as many as the server has slots.
    per_replica: int | None = None
    timeout: float = REMOTE_TIMEOUT
    retries: int = REMOTE_RETRIES
    backoff: float = REMOTE_BACKOFF
    backoff_max: float = REMOTE_BACKOFF_MAX

    def __post_init__(self) -> None:
        if not self.base_urls:
            raise InputError("a remote backend needs at least one --base-url")
        if self.per_replica is not None and self.per_replica < 1:
            raise InputError("per-replica must be at least 1")
        if not self.timeout > 0:
            raise InputError("the request timeout must be more than 0 seconds")
        if self.retries < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise InputError("retries and backoff must be 0 or more")
