"""`models.lock`: what each model name means, pinned.

For each name: the Hugging Face repo and revision, the source files with their sizes and SHA-256,
the converter version and the SHA-256 of the converted outputs. `None` fields are unresolved and
`unresolved` says why, field by field. The JSON stays readable with the standard library alone.

Trust levels: source hashes are strict, and so are the converter's own F32/F16/BF16 outputs (the
conversion is deterministic for a given converter version); quantized outputs come from llama.cpp,
whose builds can differ, so a mismatch there only warns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gram_local.errors import InputError, ModelError, ModelNotFoundError
from gram_local.paths import lock_path
from gram_local.store.atomic import write_atomic
from gram_local.store.names import normalize_name, normalize_quant

__all__ = [
    "CONVERTER_OUTPUTS",
    "LOCK_FORMAT",
    "SOURCE_PATTERNS",
    "LockedFile",
    "LockedModel",
    "LockedOutput",
    "ModelLock",
    "Pins",
]

LOCK_FORMAT = 1

#: What a conversion needs from a Hugging Face repo (the same glob semantics as `allow_patterns`).
SOURCE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
    "*.safetensors",
)

#: Outputs written by the converter itself (no llama.cpp quantization): deterministic, so pins are strict.
#: The converter's `DIRECT_TYPES`, named here so that listing and verifying need not import numpy.
CONVERTER_OUTPUTS = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class LockedFile:
    """A source file of a pinned revision."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LockedOutput:
    """A converted GGUF as the lock's author produced it."""

    sha256: str
    size: int
    llama_cpp: str | None = None


@dataclass(frozen=True)
class LockedModel:
    """One name in models.lock. `None` fields are unresolved; `unresolved` says why, field by field."""

    name: str
    repo: str
    revision: str | None = None
    files: tuple[LockedFile, ...] | None = None
    converter_version: str | None = None
    outputs: dict[str, LockedOutput | None] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "files": None if self.files is None else [vars(f) for f in self.files],
            "converter_version": self.converter_version,
            "outputs": {q: None if o is None else vars(o) for q, o in self.outputs.items()},
            "unresolved": dict(self.unresolved),
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> LockedModel:
        files = data.get("files")
        outputs = data.get("outputs") or {}
        return cls(
            name=name,
            repo=str(data["repo"]),
            revision=data.get("revision"),
            files=None
            if files is None
            else tuple(LockedFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in files),
            converter_version=data.get("converter_version"),
            outputs={
                normalize_quant(q): None
                if o is None or o.get("sha256") is None
                else LockedOutput(str(o["sha256"]), int(o["size"]), o.get("llama_cpp"))
                for q, o in outputs.items()
            },
            unresolved={str(k): str(v) for k, v in (data.get("unresolved") or {}).items()},
        )


@dataclass
class ModelLock:
    """The parsed models.lock; `load` and `save` keep the JSON readable with the standard library."""

    models: dict[str, LockedModel]
    path: Path | None = None
    note: str = ""

    @classmethod
    def load(cls, path: Path | None = None) -> ModelLock:
        path = lock_path() if path is None else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(models={}, path=path)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the model lock {path}: {exc}") from exc
        try:
            if data.get("format") != LOCK_FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r} (this gram-local reads {LOCK_FORMAT})")
            models = {normalize_name(n): LockedModel.from_json(normalize_name(n), m) for n, m in data["models"].items()}
        except (AttributeError, KeyError, TypeError, ValueError, InputError) as exc:
            raise ModelError(f"the model lock {path} is not valid: {exc}") from exc
        return cls(models=models, path=path, note=str(data.get("note", "")))

    def save(self, path: Path | None = None) -> Path:
        target = path or self.path or lock_path()
        payload = {"format": LOCK_FORMAT, "note": self.note, "models": {n: m.to_json() for n, m in self.models.items()}}
        write_atomic(target, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
        return target

    def get(self, name: str) -> LockedModel | None:
        return self.models.get(name)


class Pins:
    """models.lock, read on first use: resolving a path or a stored model must work even where it is broken.

    `lock` raises when the file is unreadable; `entry` and `names` treat it as empty, for callers
    to which the lock only adds checks.
    """

    def __init__(self, lock: ModelLock | None = None) -> None:
        self._lock = lock

    @property
    def lock(self) -> ModelLock:
        if self._lock is None:
            self._lock = ModelLock.load()
        return self._lock

    def entry(self, name: str) -> LockedModel | None:
        try:
            return self.lock.get(name)
        except ModelError:
            return None

    def names(self) -> list[str]:
        try:
            return list(self.lock.models)
        except ModelError:
            return []

    def locked(self, name: str) -> LockedModel:
        """The entry of a name that must be in the lock (to pull or lock it)."""
        norm = normalize_name(name)
        entry = self.lock.get(norm)
        if entry is None:
            known = ", ".join(self.lock.models) or "none"
            raise ModelNotFoundError(
                f"'{norm}' is not in models.lock ({self.lock.path}; known: {known}); "
                "to use another checkpoint, `gram-local models import PATH --name NAME`"
            )
        return entry
