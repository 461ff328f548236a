"""Remote backends: the same judge on llama-server or an OpenAI-compatible server (vLLM, SGLang).

    backend = open_backend("llama-server", "model.gguf", RemoteSettings(base_urls=("http://10.0.0.5:8080",)))

The GGUF given locally is the served model's: gram-local renders and tokenizes with its vocabulary
and checks at start that every replica tokenizes the same way.
"""

from __future__ import annotations

import os

from gram_local.config import RemoteSettings
from gram_local.errors import InputError
from gram_local.remote.base import RemoteBackend

REMOTE_KINDS = ("llama-server", "openai")


def open_backend(kind: str, model_path: str | os.PathLike[str], settings: RemoteSettings) -> RemoteBackend:
    """Connect to the servers of one kind, checking each serves the local model's vocabulary."""
    if kind == "llama-server":
        from gram_local.remote.llama_server import LlamaServerBackend

        return LlamaServerBackend(model_path, settings)
    if kind == "openai":
        from gram_local.remote.openai import OpenAIBackend

        return OpenAIBackend(model_path, settings)
    raise InputError(f"unknown remote backend {kind!r}; use one of {', '.join(REMOTE_KINDS)}")


__all__ = ["REMOTE_KINDS", "RemoteBackend", "RemoteSettings", "open_backend"]
