"""The registry of stored models: one JSON record per name and quantization, next to its GGUF.

    models/<name>/<QUANT>.json                       the record: what the file is, where it came from
    models/<name>/<name>-<QUANT>-<sha256[:12]>.gguf  the file, named by its content

A record is replaced by one atomic rename, and it points at a file that is complete before the
record is written, so a crash leaves either the old model or the new one registered, never half a
file; the old file is deleted only after the switch. A linked record points at a GGUF outside the
store (`models import --link`), which the store never deletes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from gram_local.errors import ModelError, ModelNotFoundError, ModelStoreWarning
from gram_local.store.atomic import sweep_stale, write_atomic
from gram_local.store.hashing import remember_sha256, sha256_file
from gram_local.store.names import normalize_name, normalize_quant

__all__ = ["Output", "Registry", "StoredModel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredModel:
    """A registered GGUF and where it came from (the record's content)."""

    name: str
    quant: str
    path: Path
    sha256: str
    size: int
    linked: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    converter_version: str | None = None
    llama_cpp: str | None = None
    created: str = ""

    def status(self) -> Literal["ok", "missing", "changed"]:
        """A cheap check (no hashing): is the file there with the size it was registered with?"""
        try:
            size = self.path.stat().st_size
        except OSError:
            return "missing"
        return "ok" if size == self.size else "changed"


@dataclass(frozen=True)
class Output:
    """A finished GGUF waiting to be registered, with its hash."""

    quant: str
    path: Path
    sha256: str
    size: int


class Registry:
    """The records under `models_dir`."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def record_path(self, name: str, quant: str) -> Path:
        return self.models_dir / name / f"{quant}.json"

    def list(self, name: str | None = None, *, strict: bool = False) -> list[StoredModel]:
        """Registered models (of `name` only, if given), sorted by name and quantization.

        `strict` raises on a record that points outside its folder, instead of skipping it.
        """
        dirs = [self.models_dir / normalize_name(name)] if name else sorted(self.models_dir.glob("*"))
        found = []
        for d in dirs:
            for record in sorted(d.glob("*.json")):
                model = self._read(record, strict=strict)
                if model is not None:
                    found.append(model)
        return found

    def get(self, name: str, quant: str) -> StoredModel | None:
        return self._read(self.record_path(normalize_name(name), normalize_quant(quant)))

    def register(
        self,
        name: str,
        out: Output,
        *,
        source: dict[str, Any],
        link: bool = False,
        converter_version: str | None = None,
        llama_cpp: str | None = None,
    ) -> StoredModel:
        """Move a finished GGUF into the store (or point at it, with `link`), then switch the record to it."""
        folder = self.models_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        previous = self.get(name, out.quant)
        if link:
            final = out.path.resolve()
        else:
            final = folder / f"{name}-{out.quant}-{out.sha256[:12]}.gguf"
            if not (final.is_file() and sha256_file(final) == out.sha256):  # else: keep the file in use
                os.replace(out.path, final)
                remember_sha256(final, out.sha256)  # the first judging run need not hash it again
        model = StoredModel(
            name=name,
            quant=out.quant,
            path=final,
            sha256=out.sha256,
            size=out.size,
            linked=link,
            source=source,
            converter_version=converter_version,
            llama_cpp=llama_cpp,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        record = {**{k: v for k, v in vars(model).items() if k != "path"}, "file": str(final) if link else final.name}
        write_atomic(self.record_path(name, out.quant), (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        if previous is not None and not previous.linked and previous.path != final:
            with contextlib.suppress(OSError):
                previous.path.unlink()
        self._sweep(folder)
        logger.info("registered %s %s at %s", name, out.quant, final)
        return model

    def remove(self, name: str, *, quant: str | None = None) -> builtins.list[StoredModel]:
        """Unregister and delete (linked files are only unregistered); returns what was removed."""
        norm = normalize_name(name)
        models = self.list(norm, strict=True)
        if quant is not None:
            models = [m for m in models if m.quant == normalize_quant(quant)]
        if not models:
            raise ModelNotFoundError(f"nothing stored under '{norm}'{f' ({normalize_quant(quant)})' if quant else ''}")
        for m in models:
            self.record_path(norm, m.quant).unlink(missing_ok=True)
            if not m.linked:
                m.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.models_dir / norm).rmdir()  # only when empty
        return models

    def _read(self, record: Path, *, strict: bool = False) -> StoredModel | None:
        """The record's model; None if it is gone or unreadable (with a warning).

        A record is a file anyone can edit, so where it points is checked before it is used: its
        name and quantization must be those of its place, and its file (unless linked: those are
        never deleted) must lie in the record's own folder once `..` and symbolic links are
        resolved. A record that fails this raises with `strict` (to remove or load it) and is
        skipped with a warning otherwise.
        """
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            file = Path(data["file"])
            model = StoredModel(
                name=str(data["name"]),
                quant=str(data["quant"]),
                path=file if file.is_absolute() else record.parent / file,
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                linked=bool(data.get("linked", False)),
                source=dict(data.get("source") or {}),
                converter_version=data.get("converter_version"),
                llama_cpp=data.get("llama_cpp"),
                created=str(data.get("created", "")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"ignoring the unreadable store record {record}: {exc}", ModelStoreWarning, stacklevel=3)
            return None
        problem = _misplaced(record, model, str(data["file"]))
        if problem is None:
            return model
        message = f"the store record {record} {problem}; it was not used and nothing was deleted"
        if strict:
            raise ModelError(f"{message} (check it, and delete the record by hand if it is wrong)")
        warnings.warn(f"ignoring it: {message}", ModelStoreWarning, stacklevel=3)
        return None

    def _sweep(self, folder: Path) -> None:
        """Delete GGUFs no record points at (left by a crash or a concurrent pull), once they are stale."""
        referenced = {m.path.name for m in self.list(folder.name) if not m.linked}
        sweep_stale(p for p in folder.glob("*.gguf") if p.name not in referenced)


def _misplaced(record: Path, model: StoredModel, file: str) -> str | None:
    """Why a record cannot be trusted with the paths it names, or None."""
    if (model.name, model.quant) != (record.parent.name, record.stem):
        return f"names {model.name} {model.quant} but is the record of {record.parent.name} {record.stem}"
    if model.linked:
        return None
    folder = record.parent.resolve()
    target = model.path.resolve()
    if target.parent != folder:
        return f"points outside its folder: its file {file!r} is {target}"
    return None
