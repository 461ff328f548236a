"""From a checkpoint folder or a GGUF file to registered models: check, convert, quantize, register.

A checkpoint is converted once to its own precision and quantized from there; every output is hashed
and held against the lock's pins (strict for the converter's own outputs, advisory for llama.cpp's
quantizations) before anything is registered. Work happens in a staging folder on the store's
filesystem, so finished files are renamed into the store, not copied.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gram_local.errors import (
    InputError,
    ModelError,
    ModelStoreWarning,
    SourceChecksumError,
)
from gram_local.store.atomic import staging
from gram_local.store.download import discard_download
from gram_local.store.gguf_header import file_type_name
from gram_local.store.hashing import copy_hashing, sha256_file
from gram_local.store.lock import (
    CONVERTER_OUTPUTS,
    SOURCE_PATTERNS,
    LockedFile,
    LockedModel,
    Pins,
)
from gram_local.store.names import normalize_name, normalize_quant
from gram_local.store.registry import Output, Registry, StoredModel

if TYPE_CHECKING:
    from gram_local.convert.progress import ProgressCallback

__all__ = ["build", "check_sources", "convertible", "import_checkpoint", "import_gguf", "register"]

logger = logging.getLogger(__name__)


def convertible(quants: Sequence[str]) -> list[str]:
    """Check the requested types before a long download or conversion starts."""
    from gram_local.convert.quantize import normalize_quant as converter_quant

    return list(dict.fromkeys(converter_quant(q) for q in quants))


def register(registry: Registry, name: str, out: Output, *, source: dict[str, Any], link: bool = False) -> StoredModel:
    """Register `out` with the versions of the tools that made it (an imported GGUF: unknown)."""
    converter_version = llama_cpp = None
    if source.get("kind") != "gguf":
        from gram_local.convert import CONVERTER_VERSION

        converter_version = CONVERTER_VERSION
        llama_cpp = None if out.quant in CONVERTER_OUTPUTS else _llama_cpp_version()
    return registry.register(
        name, out, source=source, link=link, converter_version=converter_version, llama_cpp=llama_cpp
    )


def check_sources(folder: Path, entry: LockedModel | None, *, origin: Literal["download", "import"]) -> list[LockedFile]:
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
                discard_download(folder / pin.path)
                hint = (
                    "nothing was registered and stored models are unchanged; the bad download was removed "
                    "from the Hugging Face cache, so a new pull fetches it again"
                )
            else:
                hint = f"nothing was imported; this is not the pinned {entry.repo}@{entry.revision}"
            sizes = "" if got.size == pin.size else f" (size {got.size}, pinned {pin.size})"
            raise SourceChecksumError(f"{entry.name} source file {pin.path}{sizes}", pin.sha256, got.sha256, hint)
    return actual


@contextlib.contextmanager
def build(
    checkpoint: Path, entry: LockedModel | None, quants: Sequence[str], *, work_root: Path, check: bool = True,
    on_progress: ProgressCallback | None = None,
) -> Iterator[list[Output]]:
    """Convert once to the checkpoint's own precision, then quantize to each of `quants`.

    The outputs live in a work folder under `work_root` that is removed on exit: register them
    inside the block.
    """
    from gram_local.convert import convert_checkpoint, load_checkpoint, quantize_gguf

    wanted = convertible(quants)
    base_quant = load_checkpoint(checkpoint).lossless_type  # what quantizing starts from
    outputs: list[Output] = []
    with staging(work_root) as tmp:
        for q in (q for q in wanted if q in CONVERTER_OUTPUTS):
            logger.info("converting %s to %s", checkpoint, q)
            out = convert_checkpoint(checkpoint, tmp / f"{q}.gguf", quant=q, on_progress=on_progress)
            outputs.append(_check_output(entry, q, out, check=check))
        quantized = [q for q in wanted if q not in CONVERTER_OUTPUTS]
        if quantized:
            base = next((o for o in outputs if o.quant == base_quant), None)
            if base is None:
                logger.info("converting %s to %s", checkpoint, base_quant)
                path = convert_checkpoint(checkpoint, tmp / f"{base_quant}.gguf", quant=base_quant, on_progress=on_progress)
                base = _check_output(entry, base_quant, path, check=check)
            for q in quantized:
                logger.info("quantizing to %s", q)
                out = quantize_gguf(base.path, tmp / f"{q}.gguf", q, on_progress=on_progress)
                outputs.append(_check_output(entry, q, out, check=check))
            if base_quant not in wanted:
                base.path.unlink()
        yield outputs


def import_checkpoint(
    registry: Registry, pins: Pins, folder: Path, *, name: str | None, quants: Sequence[str], work_root: Path,
    on_progress: ProgressCallback | None = None,
) -> list[StoredModel]:
    """Convert a local Hugging Face checkpoint to each of `quants` and register the results."""
    quants = convertible(quants)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} is not a Hugging Face checkpoint (no config.json)")
    entry = _lock_entry_for_checkpoint(pins, folder, name)
    if entry is not None:
        final_name = entry.name
    elif name is not None:
        final_name = normalize_name(name)
    elif folder.resolve().parent.name == "snapshots":
        raise InputError(f"{folder} is a Hugging Face cache snapshot of no model in models.lock; pass --name")
    else:
        final_name = _name_for(folder.resolve().name, folder)
    files = check_sources(folder, entry, origin="import")
    source: dict[str, Any] = {"kind": "checkpoint", "path": str(folder.resolve()), "files": [vars(f) for f in files]}
    if entry is not None:
        source.update(repo=entry.repo, revision=entry.revision)
    with build(folder, entry, quants, work_root=work_root, on_progress=on_progress) as outputs:
        return [register(registry, final_name, o, source=source) for o in outputs]


def import_gguf(
    registry: Registry, path: Path, *, name: str | None, quant: str | None, link: bool, work_root: Path
) -> StoredModel:
    """Copy a GGUF into the store (or, with `link`, register it where it is); its type comes from its metadata."""
    file_quant = file_type_name(path)
    if quant is not None and file_quant is not None and normalize_quant(quant) != file_quant:
        raise InputError(f"{path} is a {file_quant} GGUF, not {normalize_quant(quant)}; drop --quant or fix it")
    final_quant = file_quant or (normalize_quant(quant) if quant else None)
    if final_quant is None:
        raise InputError(f"cannot tell the quantization of {path} from its metadata; pass --quant")
    final_name = normalize_name(name) if name else _name_from_filename(path, final_quant)
    source = {"kind": "gguf", "path": str(path.resolve())}
    if link:
        out = Output(final_quant, path, sha256_file(path), path.stat().st_size)
        return register(registry, final_name, out, source=source, link=True)
    with staging(work_root) as tmp:
        copy = tmp / "import.gguf"
        digest = copy_hashing(path, copy)
        return register(registry, final_name, Output(final_quant, copy, digest, copy.stat().st_size), source=source)


def _check_output(entry: LockedModel | None, quant: str, path: Path, *, check: bool) -> Output:
    """Hash a fresh output; strict against a pin for converter outputs, advisory for quantized ones."""
    digest = sha256_file(path)
    out = Output(quant, path, digest, path.stat().st_size)
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


def _lock_entry_for_checkpoint(pins: Pins, folder: Path, name: str | None) -> LockedModel | None:
    """The lock entry a checkpoint claims to be: by `--name`, else by its folder's name.

    The folder of a `git clone` is named like the repo; a copied Hugging Face cache snapshot sits
    under `models--<owner>--<repo>/snapshots/<commit>`.
    """
    if name is not None:
        return pins.entry(normalize_name(name))
    folder = folder.resolve()
    for entry in (e for e in map(pins.entry, pins.names()) if e is not None):
        if folder.name.lower() == entry.repo.split("/")[-1].lower():
            return entry
        cache_folder = "models--" + entry.repo.replace("/", "--")
        if folder.parent.name == "snapshots" and folder.parent.parent.name == cache_folder:
            return entry
    return None


def _matching_files(folder: Path) -> Iterable[Path]:
    from fnmatch import fnmatch

    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and any(fnmatch(rel, pattern) for pattern in SOURCE_PATTERNS):
            yield p


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


def _llama_cpp_version() -> str:
    from gram_local.engine.build import binding_version

    return f"llama-cpp-python {binding_version()}"

