"""The model store: from a model name or path to a verified GGUF file for the engine.

gram-local knows its models by name (`gram-rr-3b`, `gram-rr-8b`); `models.lock` pins what each
name means. One module per concept:

    lock         models.lock: repo, revision, source and output hashes per name
    registry     the stored models' records and files (models/<name>/<QUANT>.json + .gguf)
    download     the Hugging Face hub: pinned downloads and the hashes to pin
    importing    checkpoint or GGUF -> checked, converted, registered
    resolve      `--model NAME|PATH` -> the file to load
    verify       re-hashing stored files against records and pins
    gguf_header  a bounds-checked read of a GGUF's header and tensor table
    validate     `validate_gguf`: refuse a file llama.cpp must not be given
    hashing      SHA-256 of files, cached by size and mtime
    atomic       atomic writes and the sweep of stale leftovers
    names        model names and quantization labels
    model_store  `ModelStore`, the operations together, and `resolve_model`
"""

from __future__ import annotations

from gram_local.config import DEFAULT_QUANT
from gram_local.errors import ModelStoreWarning, SourceChecksumError
from gram_local.store.atomic import write_atomic
from gram_local.store.hashing import sha256_file
from gram_local.store.lock import (
    SOURCE_PATTERNS,
    LockedFile,
    LockedModel,
    LockedOutput,
    ModelLock,
)
from gram_local.store.model_store import ModelStore, resolve_model
from gram_local.store.names import normalize_name, normalize_quant
from gram_local.store.registry import StoredModel
from gram_local.store.resolve import ResolvedModel
from gram_local.store.validate import GgufSummary, validate_gguf
from gram_local.store.verify import Verification

__all__ = [
    "DEFAULT_QUANT",
    "SOURCE_PATTERNS",
    "GgufSummary",
    "LockedFile",
    "LockedModel",
    "LockedOutput",
    "ModelLock",
    "ModelStore",
    "ModelStoreWarning",
    "ResolvedModel",
    "SourceChecksumError",
    "StoredModel",
    "Verification",
    "normalize_name",
    "normalize_quant",
    "resolve_model",
    "sha256_file",
    "validate_gguf",
    "write_atomic",
]
