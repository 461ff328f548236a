"""The model store and `models.lock`: from a model name or path to a verified GGUF file for the engine.

gram-local knows its models by name (`gram-rr-3b`, `gram-rr-8b`). `models.lock` pins what each name
means: the Hugging Face repo and revision, the source files with their sizes and SHA-256, and the
SHA-256 of the converted outputs. `pull` downloads the pinned revision into the normal Hugging Face
cache (resumable, and usable offline afterwards), checks every source file, converts and quantizes,
and registers the GGUF in the store; `import_path` does the same from a local checkpoint or GGUF for
air-gapped machines.

    resolve_model("gram-rr-3b")                       # what the judging runtime calls
    ModelStore().pull("gram-rr-3b", quants=["Q8_0"])  # what `gram-local models pull` calls

Trust levels: source hashes are strict, and so are the converter's own F32/F16/BF16 outputs (the
conversion is deterministic for a given converter version); quantized outputs come from llama.cpp,
whose builds can differ, so a mismatch there only warns.

Store layout under `store_home()`:

    models/<name>/<QUANT>.json                      the record: what the file is, where it came from
    models/<name>/<name>-<QUANT>-<sha256[:12]>.gguf  the file, named by its content
    tmp/                                            work in progress, same filesystem as models/
    sha256-cache.json                               see `gram_local.hashing`

A record is replaced by one atomic rename, and it points at a file that is complete before the
record is written, so a crash leaves either the old model or the new one registered, never half a
file; the old file is deleted only after the switch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from gram_local.errors import ChecksumError, InputError, ModelError, ModelNotFoundError, ModelStoreWarning, SourceChecksumError
from gram_local.hashing import CHUNK_SIZE, remember_sha256, sha256_file

__all__ = [
    "DEFAULT_QUANT",
    "SOURCE_PATTERNS",
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
    "lock_path",
    "normalize_name",
    "normalize_quant",
    "resolve_model",
    "store_home",
    "write_atomic",
]

logger = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"
HOME_ENV = "GRAM_LOCAL_HOME"
LOCK_ENV = "GRAM_LOCAL_LOCK"
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

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_QUANT_RE = re.compile(r"[A-Z0-9_]{2,16}")
_GGUF_MAGIC = b"GGUF"
_STALE_SECONDS = 3600.0


# ---------------------------------------------------------------------------------------------------
# Places


def store_home() -> Path:
    """`$GRAM_LOCAL_HOME`, else the platform's per-user cache directory plus `gram-local`."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "gram-local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gram-local"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gram-local"


def lock_path() -> Path:
    """`$GRAM_LOCAL_LOCK`, else `models.lock` at the top of the source tree, else the copy in the package."""
    configured = os.environ.get(LOCK_ENV)
    if configured:
        return Path(configured).expanduser()
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "models.lock", package / "models.lock"):
        if candidate.is_file():
            return candidate
    return package.parent / "models.lock"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def normalize_name(name: str) -> str:
    """Model names are lower case (case-insensitive filesystems would merge `Foo` and `foo`)."""
    norm = name.strip().lower()
    if not _NAME_RE.fullmatch(norm):
        raise InputError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return norm


def normalize_quant(quant: str) -> str:
    """Quantization labels are upper case with `_` (`q4-k-m` -> `Q4_K_M`); any GGUF type can be stored."""
    norm = quant.strip().upper().replace("-", "_")
    if not _QUANT_RE.fullmatch(norm):
        raise InputError(f"invalid quantization {quant!r} (expected a name such as Q4_K_M, Q8_0 or BF16)")
    return norm


# ---------------------------------------------------------------------------------------------------
# models.lock


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


# ---------------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class ResolvedModel:
    """What the engine loads, and what a result reports about it."""

    path: Path
    name: str | None
    quant: str | None
    sha256: str


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
class Verification:
    """The outcome of re-hashing one stored model."""

    model: StoredModel
    actual_sha256: str | None
    problem: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class _Output:
    quant: str
    path: Path
    sha256: str
    size: int


class ModelStore:
    """The store under `home` (default `store_home()`) with the pins of `lock` (default models.lock)."""

    def __init__(self, home: Path | None = None, lock: ModelLock | None = None) -> None:
        self.home = (store_home() if home is None else Path(home)).expanduser().absolute()
        self._lock = lock

    @property
    def lock(self) -> ModelLock:
        """Read lazily: resolving a path or a stored model must work even where models.lock is broken."""
        if self._lock is None:
            self._lock = ModelLock.load()
        return self._lock

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    # -- reading ------------------------------------------------------------------------------------

    def list(self, name: str | None = None) -> list[StoredModel]:
        """Registered models (of `name` only, if given), sorted by name and quantization."""
        dirs = [self.models_dir / normalize_name(name)] if name else sorted(self.models_dir.glob("*"))
        found = []
        for d in dirs:
            for record in sorted(d.glob("*.json")):
                model = self._read_record(record)
                if model is not None:
                    found.append(model)
        return found

    def get(self, name: str, quant: str) -> StoredModel | None:
        return self._read_record(self._record_path(normalize_name(name), normalize_quant(quant)))

    def resolve(self, model: str | os.PathLike[str], *, quant: str | None = None) -> ResolvedModel:
        """A GGUF path, or a stored model by name (`quant` default Q4_K_M, or the only one stored)."""
        text = os.fspath(model)
        candidate = Path(text).expanduser()
        if isinstance(model, os.PathLike) or candidate.is_file() or _looks_like_path(text):
            return self._resolve_path(candidate)
        try:
            name = normalize_name(text)
        except InputError:
            raise ModelNotFoundError(f"{text!r} is neither a model name nor an existing .gguf file") from None
        stored = self.list(name)
        wanted = normalize_quant(quant) if quant else None
        chosen = _choose_quant(stored, wanted)
        if chosen is None:
            raise ModelNotFoundError(self._not_stored_message(name, wanted or DEFAULT_QUANT, stored))
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

    def _resolve_path(self, path: Path) -> ResolvedModel:
        if not path.exists():
            raise ModelNotFoundError(f"model file {path} does not exist")
        if path.is_dir():
            raise ModelNotFoundError(
                f"{path} is a directory, not a GGUF file; convert a checkpoint with `gram-local models import {path}`"
            )
        if not _is_gguf(path):
            raise ModelNotFoundError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
        resolved = path.resolve()
        registered = next((m for m in self.list() if m.path.resolve() == resolved), None)
        return ResolvedModel(
            path=path,
            name=registered.name if registered else None,
            quant=registered.quant if registered else None,
            sha256=sha256_file(path),
        )

    def _not_stored_message(self, name: str, quant: str, stored: list[StoredModel]) -> str:
        quant_opt = "" if quant == DEFAULT_QUANT else f" --quant {quant}"
        have = f" (stored: {', '.join(m.quant for m in stored)})" if stored else ""
        if self._lock_entry(name) is not None or stored:
            return (
                f"model '{name}' ({quant}) is not in the store at {self.home}{have}; "
                f"run `gram-local models pull {name}{quant_opt}` while online, "
                f"or `gram-local models import PATH --name {name}{quant_opt}` on an air-gapped machine, "
                "or pass --model path/to/model.gguf"
            )
        names = sorted({*self._lock_names(), *(m.name for m in self.list())})
        return (
            f"unknown model '{name}': not a stored model, not a name in models.lock ({', '.join(names) or 'none'}) "
            "and not an existing .gguf file; pass --model path/to/model.gguf or `gram-local models import` it"
        )

    def _lock_names(self) -> list[str]:
        try:
            return list(self.lock.models)
        except ModelError:
            return []

    def _lock_entry(self, name: str) -> LockedModel | None:
        """The lock's entry for `name`, or None (also when models.lock is unreadable: it only adds checks here)."""
        try:
            return self.lock.get(name)
        except ModelError:
            return None

    # -- pull -------------------------------------------------------------------------------------

    def pull(self, name: str, *, quants: Sequence[str] = (DEFAULT_QUANT,)) -> list[StoredModel]:
        """Download the pinned revision, check it, convert to each of `quants` and register the results."""
        entry = self._locked(name)
        quants = _convertible(quants)
        folder, commit = self._download(entry)
        files = self._check_sources(folder, entry, origin="download")
        source = {"kind": "hub", "repo": entry.repo, "revision": commit, "files": [vars(f) for f in files]}
        with self._build(folder, entry, quants) as outputs:
            return [self._register(entry.name, o, source=source) for o in outputs]

    def _locked(self, name: str) -> LockedModel:
        norm = normalize_name(name)
        entry = self.lock.get(norm)
        if entry is None:
            known = ", ".join(self.lock.models) or "none"
            raise ModelNotFoundError(
                f"'{norm}' is not in models.lock ({self.lock.path}; known: {known}); "
                "to use another checkpoint, `gram-local models import PATH --name NAME`"
            )
        return entry

    def _download(self, entry: LockedModel) -> tuple[Path, str]:
        """The snapshot folder in the Hugging Face cache, and the commit it holds."""
        from huggingface_hub import constants, snapshot_download

        revision = entry.revision or "main"
        patterns = [f.path for f in entry.files] if entry.files is not None else list(SOURCE_PATTERNS)
        cache = constants.HF_HUB_CACHE
        logger.info("downloading %s@%s into the Hugging Face cache (%s)", entry.repo, revision, cache)
        try:
            folder = snapshot_download(entry.repo, revision=revision, allow_patterns=patterns)
        except _hub_failure_types() as exc:
            reason = _hub_problem(exc, entry.repo, revision)
            if _cut_off(exc):
                raise ModelError(
                    f"cannot pull {entry.name}: {reason} and {entry.repo}@{revision} is not (completely) in the "
                    f"Hugging Face cache {cache}; run the pull with network access, or bring the checkpoint over "
                    f"and run `gram-local models import PATH --name {entry.name}`"
                ) from exc
            raise ModelError(f"cannot pull {entry.name}: {reason}") from exc
        except OSError as exc:
            raise ModelError(f"cannot pull {entry.name}: {_one_line(exc)}") from exc
        commit = Path(folder).name
        if entry.revision is None:
            warnings.warn(
                f"{entry.name} is not pinned in models.lock ({entry.unresolved.get('revision', 'no revision')}); "
                f"used '{revision}' as it is now (commit {commit}) without checking source hashes; "
                f"`gram-local models lock {entry.name}` pins it",
                ModelStoreWarning,
                stacklevel=3,
            )
        return Path(folder), commit

    def _check_sources(
        self, folder: Path, entry: LockedModel | None, *, origin: Literal["download", "import"]
    ) -> list[LockedFile]:
        """Hash the source files; strict against the lock's pins where it has them."""
        if entry is not None and entry.files is not None:
            names = [f.path for f in entry.files]
        else:
            names = sorted(p.relative_to(folder).as_posix() for p in _matching_files(folder))
        actual: list[LockedFile] = []
        for rel in names:
            path = folder / rel
            if not path.is_file():
                raise ModelError(f"source file {rel} is missing from {folder}")
            actual.append(LockedFile(rel, path.stat().st_size, sha256_file(path)))
        if entry is None or entry.files is None:
            if entry is not None and entry.revision is not None and origin == "download":
                warnings.warn(
                    f"the source files of {entry.name} are not pinned in models.lock; "
                    f"recorded what was downloaded (run `gram-local models lock {entry.name}` online to pin it)",
                    ModelStoreWarning,
                    stacklevel=3,
                )
            return actual
        for pin, got in zip(entry.files, actual):
            if got.sha256 != pin.sha256:
                if origin == "download":
                    _discard_download(folder / pin.path)
                    hint = (
                        "nothing was registered and stored models are unchanged; the bad download was removed "
                        "from the Hugging Face cache, so a new pull fetches it again"
                    )
                else:
                    hint = f"nothing was imported; this is not the pinned {entry.repo}@{entry.revision}"
                sizes = "" if got.size == pin.size else f" (size {got.size}, pinned {pin.size})"
                raise SourceChecksumError(f"{entry.name} source file {pin.path}{sizes}", pin.sha256, got.sha256, hint)
        return actual

    # -- build ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _build(
        self, checkpoint: Path, entry: LockedModel | None, quants: Sequence[str], *, check: bool = True
    ) -> Iterator[list[_Output]]:
        """Convert once to the checkpoint's own precision, then quantize to each of `quants`.

        The outputs live in a work folder that is removed on exit: register them inside the block.
        """
        from gram_local.convert import convert_checkpoint, load_checkpoint, quantize_gguf

        wanted = _convertible(quants)
        base_quant = load_checkpoint(checkpoint).lossless_type  # what quantizing starts from
        outputs: list[_Output] = []
        with self._staging() as tmp:
            direct = [q for q in wanted if q in CONVERTER_OUTPUTS]
            for q in direct:
                logger.info("converting %s to %s", checkpoint, q)
                out = convert_checkpoint(checkpoint, tmp / f"{q}.gguf", quant=q)
                outputs.append(self._check_output(entry, q, out, check=check))
            quantized = [q for q in wanted if q not in CONVERTER_OUTPUTS]
            if quantized:
                base = next((o for o in outputs if o.quant == base_quant), None)
                if base is None:
                    logger.info("converting %s to %s", checkpoint, base_quant)
                    path = convert_checkpoint(checkpoint, tmp / f"{base_quant}.gguf", quant=base_quant)
                    base = self._check_output(entry, base_quant, path, check=check)
                for q in quantized:
                    logger.info("quantizing to %s", q)
                    out = quantize_gguf(base.path, tmp / f"{q}.gguf", q)
                    outputs.append(self._check_output(entry, q, out, check=check))
                if base_quant not in wanted:
                    base.path.unlink()
            yield outputs

    def _check_output(self, entry: LockedModel | None, quant: str, path: Path, *, check: bool) -> _Output:
        """Hash a fresh output; strict against a pin for converter outputs, advisory for quantized ones."""
        digest = sha256_file(path)
        out = _Output(quant, path, digest, path.stat().st_size)
        if entry is None or not check:
            return out
        pin = entry.outputs.get(quant)
        if pin is None or digest == pin.sha256:
            return out
        from gram_local.convert import CONVERTER_VERSION

        if quant in CONVERTER_OUTPUTS:
            if entry.converter_version != CONVERTER_VERSION:
                warnings.warn(
                    f"{entry.name} {quant}: sha256 {digest} differs from the pin {pin.sha256}, which was made by "
                    f"converter {entry.converter_version}; this is converter {CONVERTER_VERSION}, so it is not checked",
                    ModelStoreWarning,
                    stacklevel=4,
                )
                return out
            raise SourceChecksumError(
                f"{entry.name} converted {quant}",
                pin.sha256,
                digest,
                "the conversion is not the pinned one; nothing was registered and stored models are unchanged",
            )
        warnings.warn(
            f"{entry.name} {quant}: sha256 {digest} differs from models.lock ({pin.sha256}, made with "
            f"{pin.llama_cpp or 'an unrecorded llama.cpp'}; this is {_llama_cpp_version()}); quantized files can "
            "differ between llama.cpp builds, so this is only a warning",
            ModelStoreWarning,
            stacklevel=4,
        )
        return out

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A private work folder on the store's filesystem, so finished files are renamed, not copied."""
        root = self.home / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(root.iterdir())
        work = Path(tempfile.mkdtemp(dir=root, prefix="work-"))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- registration -----------------------------------------------------------------------------

    def _record_path(self, name: str, quant: str) -> Path:
        return self.models_dir / name / f"{quant}.json"

    def _register(self, name: str, out: _Output, *, source: dict[str, Any], link: bool = False) -> StoredModel:
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
        converter_version, llama_cpp = _versions(source, out.quant)
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
        write_atomic(self._record_path(name, out.quant), (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        if previous is not None and not previous.linked and previous.path != final:
            with contextlib.suppress(OSError):
                previous.path.unlink()
        self._sweep(folder)
        logger.info("registered %s %s at %s", name, out.quant, final)
        return model

    def _read_record(self, record: Path) -> StoredModel | None:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            file = Path(data["file"])
            return StoredModel(
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
            warnings.warn(f"ignoring the unreadable store record {record}: {exc}", ModelStoreWarning, stacklevel=2)
            return None

    def _sweep(self, folder: Path) -> None:
        """Delete GGUFs no record points at (left by a crash or a concurrent pull), once they are stale."""
        referenced = {m.path.name for m in self.list(folder.name) if not m.linked}
        _sweep_stale(p for p in folder.glob("*.gguf") if p.name not in referenced)

    # -- import -----------------------------------------------------------------------------------

    def import_path(
        self, path: Path, *, name: str | None = None, quants: Sequence[str] | None = None, link: bool = False
    ) -> list[StoredModel]:
        """Register a local checkpoint directory (converted to `quants`) or a GGUF file (copied, or linked)."""
        path = Path(path).expanduser()
        if path.is_dir():
            if link:
                raise InputError("--link applies to a .gguf file, not to a checkpoint directory (which is converted)")
            return self._import_checkpoint(path, name=name, quants=quants or (DEFAULT_QUANT,))
        if not path.is_file():
            raise ModelNotFoundError(f"{path} does not exist")
        if not _is_gguf(path):
            raise InputError(f"{path} is neither a checkpoint directory nor a GGUF file (no GGUF magic)")
        return [self._import_gguf(path, name=name, quant=quants[0] if quants else None, link=link)]

    def _import_checkpoint(self, folder: Path, *, name: str | None, quants: Sequence[str]) -> list[StoredModel]:
        quants = _convertible(quants)
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder} is not a Hugging Face checkpoint (no config.json)")
        entry = self._lock_entry_for_checkpoint(folder, name)
        if entry is not None:
            final_name = entry.name
        elif name is not None:
            final_name = normalize_name(name)
        elif folder.resolve().parent.name == "snapshots":
            raise InputError(f"{folder} is a Hugging Face cache snapshot of no model in models.lock; pass --name")
        else:
            final_name = _name_for(folder.resolve().name, folder)
        files = self._check_sources(folder, entry, origin="import")
        source = {"kind": "checkpoint", "path": str(folder.resolve()), "files": [vars(f) for f in files]}
        if entry is not None:
            source.update(repo=entry.repo, revision=entry.revision)
        with self._build(folder, entry, quants) as outputs:
            return [self._register(final_name, o, source=source) for o in outputs]

    def _lock_entry_for_checkpoint(self, folder: Path, name: str | None) -> LockedModel | None:
        """The lock entry a checkpoint claims to be: by `--name`, else by its folder's name.

        The folder of a `git clone` is named like the repo; a copied Hugging Face cache snapshot sits
        under `models--<owner>--<repo>/snapshots/<commit>`.
        """
        if name is not None:
            return self._lock_entry(normalize_name(name))
        folder = folder.resolve()
        for entry in (self._lock_entry(n) for n in self._lock_names()):
            assert entry is not None
            if folder.name.lower() == entry.repo.split("/")[-1].lower():
                return entry
            cache_folder = "models--" + entry.repo.replace("/", "--")
            if folder.parent.name == "snapshots" and folder.parent.parent.name == cache_folder:
                return entry
        return None

    def _import_gguf(self, path: Path, *, name: str | None, quant: str | None, link: bool) -> StoredModel:
        file_quant = _gguf_file_type_name(path)
        if quant is not None and file_quant is not None and normalize_quant(quant) != file_quant:
            raise InputError(f"{path} is a {file_quant} GGUF, not {normalize_quant(quant)}; drop --quant or fix it")
        final_quant = file_quant or (normalize_quant(quant) if quant else None)
        if final_quant is None:
            raise InputError(f"cannot tell the quantization of {path} from its metadata; pass --quant")
        final_name = normalize_name(name) if name else _name_from_filename(path, final_quant)
        source = {"kind": "gguf", "path": str(path.resolve())}
        if link:
            out = _Output(final_quant, path, sha256_file(path), path.stat().st_size)
            return self._register(final_name, out, source=source, link=True)
        with self._staging() as tmp:
            copy = tmp / "import.gguf"
            digest = _copy_hashing(path, copy)
            return self._register(final_name, _Output(final_quant, copy, digest, copy.stat().st_size), source=source)

    # -- verify / remove --------------------------------------------------------------------------

    def verify(self, name: str | None = None, *, quant: str | None = None) -> list[Verification]:
        """Re-hash stored models (no cache) against their records, and against models.lock where it pins them."""
        models = self.list(name)
        if quant is not None:
            models = [m for m in models if m.quant == normalize_quant(quant)]
        if name is not None and not models:
            raise ModelNotFoundError(f"nothing stored under '{normalize_name(name)}'{f' ({quant})' if quant else ''}")
        return [self._verify_one(m) for m in models]

    def _verify_one(self, model: StoredModel) -> Verification:
        if not model.path.is_file():
            return Verification(model, None, f"the file is missing: {model.path}")
        actual = sha256_file(model.path, use_cache=False)
        if actual != model.sha256:
            problem = f"sha256 {actual} differs from {model.sha256}, recorded when it was registered"
            return Verification(model, actual, problem)
        entry = self._lock_entry(model.name)
        pin = entry.outputs.get(model.quant) if entry is not None else None
        if entry is None or pin is None or pin.sha256 == actual:
            return Verification(model, actual)
        strict = model.quant in CONVERTER_OUTPUTS and model.converter_version == entry.converter_version
        message = f"sha256 differs from models.lock ({pin.sha256})"
        if strict:
            return Verification(model, actual, message + " although the converter version is the pinned one")
        return Verification(model, actual, None, (message + "; advisory for this file",))

    def remove(self, name: str, *, quant: str | None = None) -> list[StoredModel]:
        """Unregister and delete (linked files are only unregistered); returns what was removed."""
        norm = normalize_name(name)
        models = self.list(norm)
        if quant is not None:
            models = [m for m in models if m.quant == normalize_quant(quant)]
        if not models:
            raise ModelNotFoundError(f"nothing stored under '{norm}'{f' ({normalize_quant(quant)})' if quant else ''}")
        for m in models:
            self._record_path(norm, m.quant).unlink(missing_ok=True)
            if not m.linked:
                m.path.unlink(missing_ok=True)
        folder = self.models_dir / norm
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
        return models

    # -- lock -------------------------------------------------------------------------------------

    def update_lock(
        self,
        names: Sequence[str] | None = None,
        *,
        revision: str | None = None,
        outputs: bool = False,
        quants: Sequence[str] | None = None,
    ) -> ModelLock:
        """Resolve revisions and source hashes from the hub (and, with `outputs`, convert and pin outputs); save."""
        lock = self.lock
        if not lock.models:
            raise ModelError(f"no models to lock: the model lock {lock.path} is missing or empty")
        selected = [self._locked(n).name for n in names] if names else list(lock.models)
        if revision is not None and len(selected) != 1:
            raise InputError("--revision applies to one model at a time")
        for n in selected:
            lock.models[n] = self._resolve_sources(lock.models[n], revision=revision)
            lock.save()  # one model at a time: a failure later keeps what was resolved
            if outputs:
                lock.models[n] = self._resolve_outputs(lock.models[n], quants)
                lock.save()
        return lock

    def _resolve_sources(self, entry: LockedModel, *, revision: str | None) -> LockedModel:
        """The commit, and the source files' sizes and SHA-256 (LFS files: the hub's listing; others: downloaded)."""
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import filter_repo_objects

        api = HfApi()
        wanted = revision or entry.revision or "main"
        try:
            commit = api.model_info(entry.repo, revision=wanted).sha
            listing = api.list_repo_tree(entry.repo, revision=commit, recursive=True)
            tree = [f for f in listing if isinstance(f, RepoFile)]
            selected = set(filter_repo_objects([f.path for f in tree], allow_patterns=list(SOURCE_PATTERNS)))
            files = []
            for f in sorted((f for f in tree if f.path in selected), key=lambda f: f.path):
                if f.lfs is not None:
                    files.append(LockedFile(f.path, f.lfs.size, f.lfs.sha256))
                else:
                    local = Path(hf_hub_download(entry.repo, f.path, revision=commit))
                    files.append(LockedFile(f.path, local.stat().st_size, sha256_file(local)))
        except _hub_failure_types() as exc:
            advice = "; `gram-local models lock` needs network access" if _cut_off(exc) else ""
            raise ModelError(f"cannot lock {entry.name}: {_hub_problem(exc, entry.repo, wanted)}{advice}") from exc
        except OSError as exc:
            raise ModelError(f"cannot lock {entry.name}: {_one_line(exc)}") from exc
        if "config.json" not in selected or not any(p.endswith(".safetensors") for p in selected):
            raise ModelError(
                f"cannot lock {entry.name}: {entry.repo}@{commit} has no config.json and safetensors weights"
            )
        unresolved = {k: v for k, v in entry.unresolved.items() if k not in ("revision", "files")}
        if commit == entry.revision and tuple(files) == entry.files:
            return replace(entry, unresolved=unresolved)
        # New sources: the old output pins describe other files.
        unresolved["outputs"] = (
            f"not converted from {commit} yet: run `gram-local models lock {entry.name} --outputs` "
            "(downloads and converts the model)"
        )
        return replace(
            entry,
            revision=commit,
            files=tuple(files),
            converter_version=None,
            outputs={q: None for q in entry.outputs},
            unresolved=unresolved,
        )

    def _resolve_outputs(self, entry: LockedModel, quants: Sequence[str] | None) -> LockedModel:
        """Download, convert and pin the outputs (registered in the store as well: they were made anyway)."""
        from gram_local.convert import CONVERTER_VERSION

        wanted = [normalize_quant(q) for q in (quants or entry.outputs or ("BF16", "Q8_0", DEFAULT_QUANT))]
        folder, _ = self._download(entry)
        files = self._check_sources(folder, entry, origin="download")
        source = {"kind": "hub", "repo": entry.repo, "revision": entry.revision, "files": [vars(f) for f in files]}
        with self._build(folder, entry, wanted, check=False) as built:
            stored = [self._register(entry.name, o, source=source) for o in built]
        outputs = dict(entry.outputs)
        for m in stored:
            outputs[m.quant] = LockedOutput(m.sha256, m.size, m.llama_cpp)
        unresolved = {k: v for k, v in entry.unresolved.items() if k != "outputs"}
        return replace(entry, converter_version=CONVERTER_VERSION, outputs=outputs, unresolved=unresolved)


def resolve_model(model: str | os.PathLike[str], *, quant: str | None = None) -> ResolvedModel:
    """A `.gguf` path, or a model name in the default store, as the GGUF file the engine should load."""
    return ModelStore().resolve(model, quant=quant)


# ---------------------------------------------------------------------------------------------------
# Helpers


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


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def _matching_files(folder: Path) -> Iterable[Path]:
    from fnmatch import fnmatch

    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and any(fnmatch(rel, pattern) for pattern in SOURCE_PATTERNS):
            yield p


def _discard_download(path: Path) -> None:
    """Drop a bad file from the Hugging Face cache: its snapshot entry and the blob behind it.

    Left in place it would be served from the cache to every later pull; the blob goes too because
    `huggingface_hub` reuses a blob by its ETag, and its bytes are wrong whoever links to them.
    """
    blob = path.resolve()
    for p in (path, blob):
        with contextlib.suppress(OSError):
            p.unlink()


def _convertible(quants: Sequence[str]) -> list[str]:
    """Check the requested types before a long download or conversion starts."""
    from gram_local.convert.quantize import normalize_quant as converter_quant

    return list(dict.fromkeys(converter_quant(q) for q in quants))


def _versions(source: dict[str, Any], quant: str) -> tuple[str | None, str | None]:
    """Which converter and llama.cpp made a file (an imported GGUF: unknown)."""
    if source.get("kind") == "gguf":
        return None, None
    from gram_local.convert import CONVERTER_VERSION

    return CONVERTER_VERSION, None if quant in CONVERTER_OUTPUTS else _llama_cpp_version()


def _llama_cpp_version() -> str:
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy and hash in one pass (a GGUF is read once on import, not twice)."""
    import hashlib

    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK_SIZE):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _name_from_filename(path: Path, quant: str) -> str:
    """`GRAM-RR-3B-Q4_K_M.gguf` -> `gram-rr-3b`: the stem without its quantization suffix."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.stem
    for sep in ("-", ".", "_"):
        if stem.upper().endswith(sep + quant):
            stem = stem[: -len(quant) - 1]
            break
    return _name_for(stem, path)


def _name_for(text: str, origin: Path) -> str:
    try:
        return normalize_name(text)
    except InputError:
        raise InputError(f"cannot make a model name from {origin.name!r}; pass --name") from None


def _sweep_stale(paths: Iterable[Path]) -> None:
    """Remove leftovers older than an hour; younger ones may belong to a pull still running."""
    now = time.time()
    for p in paths:
        try:
            if now - p.stat().st_mtime < _STALE_SECONDS:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
        except OSError:
            pass


def _hub_failure_types() -> tuple[type[BaseException], ...]:
    """For `except _hub_failure_types():` (evaluated only when something is raised, so nothing loads early)."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    return (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.HTTPError)


def _cut_off(exc: BaseException) -> bool:
    """Offline or unreachable (as opposed to an answer from the hub)."""
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.TransportError))


def _hub_problem(exc: BaseException, repo: str, revision: str) -> str:
    """Why a request to the hub failed, in words a user can act on."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        return "offline mode is on (HF_HUB_OFFLINE)"
    if isinstance(exc, (LocalEntryNotFoundError, httpx.TransportError)):
        return f"the hub at {constants.ENDPOINT} cannot be reached"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision '{revision}' of {repo} does not exist on the hub"
    if isinstance(exc, RepositoryNotFoundError):
        return f"the repo {repo} does not exist on the hub, or needs a token"
    if isinstance(exc, HfHubHTTPError):
        return f"the hub answered {_one_line(exc)}"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# GGUF metadata, read just far enough to find `general.file_type` (gguf.GGUFReader parses the whole
# vocabulary first: seconds on a 128k-token model).
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


def _gguf_file_type_name(path: Path) -> str | None:
    """The quantization label of a GGUF (`Q4_K_M`, `BF16`...) from `general.file_type`, or None."""
    from gguf import LlamaFileType

    value = _gguf_file_type(path)
    try:
        member = LlamaFileType(value) if value is not None else None
    except ValueError:
        return None
    if member is None or member is LlamaFileType.GUESSED:
        return None
    return member.name.split("_", 1)[1]  # ALL_F32 -> F32, MOSTLY_Q4_K_M -> Q4_K_M


def _gguf_file_type(path: Path) -> int | None:
    import io

    def read(f: io.BufferedReader, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) != size:
            raise EOFError
        return struct.unpack(fmt, data)[0]

    def skip(f: io.BufferedReader, vtype: int) -> None:
        if vtype == _STRING:
            f.seek(read(f, "<Q"), io.SEEK_CUR)
        elif vtype == _ARRAY:
            etype, count = read(f, "<I"), read(f, "<Q")
            if etype in _SCALAR_SIZES:
                f.seek(_SCALAR_SIZES[etype] * count, io.SEEK_CUR)
            else:
                for _ in range(count):
                    skip(f, etype)
        elif vtype in _SCALAR_SIZES:
            f.seek(_SCALAR_SIZES[vtype], io.SEEK_CUR)
        else:
            raise ValueError(f"unknown GGUF value type {vtype}")

    try:
        with path.open("rb") as raw:
            f = io.BufferedReader(raw, buffer_size=1 << 16)
            if f.read(4) != _GGUF_MAGIC or read(f, "<I") not in (2, 3):
                return None
            read(f, "<Q")  # tensor count
            for _ in range(read(f, "<Q")):
                key = f.read(read(f, "<Q")).decode("utf-8", "replace")
                vtype = read(f, "<I")
                if key == "general.file_type" and vtype == _UINT32:
                    return int(read(f, "<I"))
                skip(f, vtype)
    except (OSError, EOFError, ValueError, struct.error):
        return None
    return None
