"""From what a user typed (`--model gram-rr-3b`, `--model ./x.gguf`) to the GGUF file to load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gram_local.config import DEFAULT_QUANT
from gram_local.errors import ChecksumError, InputError, ModelNotFoundError
from gram_local.store.gguf_header import GGUF_MAGIC
from gram_local.store.hashing import sha256_file
from gram_local.store.lock import Pins
from gram_local.store.names import normalize_name, normalize_quant
from gram_local.store.registry import Registry, StoredModel

__all__ = ["ResolvedModel", "is_gguf", "resolve"]


@dataclass(frozen=True)
class ResolvedModel:
    """What the engine loads, and what a result reports about it."""

    path: Path
    name: str | None
    quant: str | None
    sha256: str


def resolve(
    registry: Registry, pins: Pins, model: str | os.PathLike[str], *, quant: str | None = None
) -> ResolvedModel:
    """A GGUF path, or a stored model by name (`quant` default Q4_K_M, or the only one stored).

    A stored model's file, by name or by path, is hashed (through the hash cache) and must match
    its record, which was checked against models.lock's pins when it was registered.
    """
    text = os.fspath(model)
    candidate = Path(text).expanduser()
    if isinstance(model, os.PathLike) or candidate.is_file() or _looks_like_path(text):
        return _resolve_path(registry, candidate)
    try:
        name = normalize_name(text)
    except InputError:
        raise ModelNotFoundError(f"{text!r} is neither a model name nor an existing .gguf file") from None
    stored = registry.list(name, strict=True)
    wanted = normalize_quant(quant) if quant else None
    chosen = _choose_quant(stored, wanted)
    if chosen is None:
        raise ModelNotFoundError(_not_stored_message(registry, pins, name, wanted or DEFAULT_QUANT, stored))
    if not chosen.path.is_file():
        raise ModelNotFoundError(
            f"the stored file of {name} ({chosen.quant}) is missing: {chosen.path}; "
            f"run `gram-local models pull {name} --quant {chosen.quant}` or import it again"
        )
    digest = sha256_file(chosen.path)
    if digest != chosen.sha256:
        where = f"{chosen.path} ({name} {chosen.quant}, changed since it was registered)"
        raise ChecksumError(where, chosen.sha256, digest)
    return ResolvedModel(path=chosen.path, name=name, quant=chosen.quant, sha256=digest)


def is_gguf(path: Path) -> bool:
    """Starts with the GGUF magic (a cheap first check; `validate_gguf` is the thorough one)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _resolve_path(registry: Registry, path: Path) -> ResolvedModel:
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelNotFoundError(
            f"{path} is a directory, not a GGUF file; convert a checkpoint with `gram-local models import {path}`"
        )
    if not is_gguf(path):
        raise ModelNotFoundError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    resolved = path.resolve()
    registered = next((m for m in registry.list() if m.path.resolve() == resolved), None)
    digest = sha256_file(path)
    if registered is None:
        return ResolvedModel(path=path, name=None, quant=None, sha256=digest)
    if digest != registered.sha256:  # a stored file named by its path is held to its record too
        where = f"{path} ({registered.name} {registered.quant}, changed since it was registered)"
        raise ChecksumError(where, registered.sha256, digest)
    return ResolvedModel(path=path, name=registered.name, quant=registered.quant, sha256=digest)


def _not_stored_message(registry: Registry, pins: Pins, name: str, quant: str, stored: list[StoredModel]) -> str:
    quant_opt = "" if quant == DEFAULT_QUANT else f" --quant {quant}"
    have = f" (stored: {', '.join(m.quant for m in stored)})" if stored else ""
    if pins.entry(name) is not None or stored:
        return (
            f"model '{name}' ({quant}) is not in the store at {registry.models_dir.parent}{have}; "
            f"run `gram-local models pull {name}{quant_opt}` while online, "
            f"or `gram-local models import PATH --name {name}{quant_opt}` on an air-gapped machine, "
            "or pass --model path/to/model.gguf"
        )
    names = sorted({*pins.names(), *(m.name for m in registry.list())})
    return (
        f"unknown model '{name}': not a stored model, not a name in models.lock ({', '.join(names) or 'none'}) "
        "and not an existing .gguf file; pass --model path/to/model.gguf or `gram-local models import` it"
    )


def _looks_like_path(text: str) -> bool:
    seps = {"/", os.sep, os.altsep or "/"}
    return any(s in text for s in seps) or text.lower().endswith(".gguf") or text.startswith(("~", "."))


def _choose_quant(stored: list[StoredModel], wanted: str | None) -> StoredModel | None:
    by_quant = {m.quant: m for m in stored}
    if wanted is not None:
        return by_quant.get(wanted)
    if DEFAULT_QUANT in by_quant:
        return by_quant[DEFAULT_QUANT]
    return stored[0] if len(stored) == 1 else None
