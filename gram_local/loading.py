"""From a model name or path to a ready judge: resolve, check, load (or connect).

    load_judge("gram-rr-3b")
    load_judge("model.gguf", settings=JudgeSettings(max_think_tokens=512), engine=EngineSettings(parallel=4))
    connect_judge("gram-rr-3b", backend="llama-server", base_urls=["http://10.0.0.5:8080", "http://10.0.0.6:8080"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gram_local.config import EngineSettings, JudgeSettings, RemoteSettings
from gram_local.judge import Judge
from gram_local.results import ModelInfo


def load_judge(
    model: str | os.PathLike[str],
    *,
    quant: str | None = None,
    settings: JudgeSettings | None = None,
    engine: EngineSettings | None = None,
) -> Judge:
    """Load a GGUF (a path, or a model name from the store) as a judge on the in-process engine."""
    from gram_local.engine import Engine
    from gram_local.paths import kv_cache_dir
    from gram_local.store import resolve_model, validate_gguf

    engine_settings = engine or EngineSettings()
    resolved = resolve_model(model, quant=quant)
    validate_gguf(resolved.path)  # llama.cpp trusts the header: a damaged one must not reach it
    head_cache = engine_settings.head_cache
    prefix_dir: Path | None
    if head_cache is True:
        prefix_dir = kv_cache_dir()
    elif head_cache:
        prefix_dir = Path(head_cache)
    else:
        prefix_dir = None
    backend = Engine(resolved.path, engine_settings, model_id=resolved.sha256 or None, prefix_dir=prefix_dir)
    try:
        info = ModelInfo(
            path=str(resolved.path),
            name=resolved.name,
            sha256=resolved.sha256,
            quantization=resolved.quant or _quant_name(backend.metadata.file_type),
        )
        return Judge(backend, model=info, settings=settings)
    except BaseException:
        backend.close()
        raise


def connect_judge(
    model: str | os.PathLike[str],
    *,
    backend: str = "llama-server",
    base_urls: Sequence[str] = (),
    api_key: str | None = None,
    quant: str | None = None,
    settings: JudgeSettings | None = None,
    remote: RemoteSettings | None = None,
) -> Judge:
    """A judge whose model runs on servers (`llama-server`, or `openai` for vLLM and SGLang).

    `model` is the served model's GGUF, here: prompts are rendered and tokenized with its vocabulary
    (loaded without weights) and every server is checked to tokenize the same way. `remote` sets
    the rest (requests per replica, timeout, retries); `base_urls` and `api_key` override it.
    """
    from gram_local.remote import open_backend
    from gram_local.store import resolve_model, validate_gguf
    from gram_local.store.gguf_header import file_type_name

    remote_settings = remote or RemoteSettings(base_urls=tuple(base_urls), api_key=api_key)
    if remote is not None and (base_urls or api_key):
        remote_settings = replace(remote, base_urls=tuple(base_urls) or remote.base_urls, api_key=api_key or remote.api_key)
    resolved = resolve_model(model, quant=quant)
    validate_gguf(resolved.path)
    server = open_backend(backend, resolved.path, remote_settings)
    try:
        info = ModelInfo(
            path=str(resolved.path),
            name=resolved.name,
            sha256=resolved.sha256,
            quantization=resolved.quant or file_type_name(resolved.path),
        )
        return Judge(server, model=info, settings=settings)
    except BaseException:
        server.close()
        raise


def _quant_name(description: str) -> str | None:
    """The file type llama.cpp reports (e.g. `Q4_K - Medium`), as the quantization of a bare path."""
    parts = description.split(" ", 2)
    return parts[2] if len(parts) == 3 else description or None
