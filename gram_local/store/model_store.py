"""`ModelStore`: the store's operations as the CLI and the judging runtime call them.

    resolve_model("gram-rr-3b")                       # what the judging runtime calls
    ModelStore().pull("gram-rr-3b", quants=["Q8_0"])  # what `gram-local models pull` calls

`pull` downloads the pinned revision into the Hugging Face cache, checks every source file,
converts and quantizes, and registers the GGUFs; `import_path` does the same from a local
checkpoint or GGUF, for air-gapped machines; `update_lock` writes new pins into models.lock.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gram_local.config import DEFAULT_QUANT
from gram_local.errors import InputError, ModelError, ModelNotFoundError
from gram_local.paths import store_home
from gram_local.store.download import download, locked_sources
from gram_local.store.importing import (
    build,
    check_sources,
    convertible,
    import_checkpoint,
    import_gguf,
    register,
)
from gram_local.store.lock import LockedModel, LockedOutput, ModelLock, Pins
from gram_local.store.names import normalize_name, normalize_quant
from gram_local.store.registry import Registry, StoredModel
from gram_local.store.resolve import ResolvedModel, is_gguf, resolve
from gram_local.store.verify import Verification, verify_model

if TYPE_CHECKING:
    from gram_local.convert.progress import ProgressCallback

__all__ = ["ModelStore", "resolve_model"]


class ModelStore:
    """The store under `home` (default `paths.store_home()`) with the pins of `lock` (default models.lock)."""

    def __init__(self, home: Path | None = None, lock: ModelLock | None = None, *,
                 on_progress: ProgressCallback | None = None) -> None:
        self.home = (store_home() if home is None else Path(home)).expanduser().absolute()
        self.on_progress = on_progress  # hears the conversions' progress (the CLI draws it)
        self.pins = Pins(lock)
        self.registry = Registry(self.home / "models")

    @property
    def lock(self) -> ModelLock:
        """Read lazily: resolving a path or a stored model must work even where models.lock is broken."""
        return self.pins.lock

    @property
    def models_dir(self) -> Path:
        return self.registry.models_dir

    @property
    def work_dir(self) -> Path:
        """Work in progress, on the same filesystem as the models."""
        return self.home / "tmp"

    # -- reading ------------------------------------------------------------------------------------

    def list(self, name: str | None = None) -> list[StoredModel]:
        """Registered models (of `name` only, if given), sorted by name and quantization."""
        return self.registry.list(name)

    def get(self, name: str, quant: str) -> StoredModel | None:
        return self.registry.get(name, quant)

    def resolve(self, model: str | os.PathLike[str], *, quant: str | None = None) -> ResolvedModel:
        """A GGUF path, or a stored model by name (`quant` default Q4_K_M, or the only one stored)."""
        return resolve(self.registry, self.pins, model, quant=quant)

    # -- adding -------------------------------------------------------------------------------------

    def pull(self, name: str, *, quants: Sequence[str] = (DEFAULT_QUANT,)) -> builtins.list[StoredModel]:
        """Download the pinned revision, check it, convert to each of `quants` and register the results."""
        entry = self.pins.locked(name)
        quants = convertible(quants)
        folder, commit = download(entry)
        files = check_sources(folder, entry, origin="download")
        source = {"kind": "hub", "repo": entry.repo, "revision": commit, "files": [vars(f) for f in files]}
        with build(folder, entry, quants, work_root=self.work_dir, on_progress=self.on_progress) as outputs:
            return [register(self.registry, entry.name, o, source=source) for o in outputs]

    def import_path(
        self, path: Path, *, name: str | None = None, quants: Sequence[str] | None = None, link: bool = False
    ) -> builtins.list[StoredModel]:
        """Register a local checkpoint directory (converted to `quants`) or a GGUF file (copied, or linked)."""
        path = Path(path).expanduser()
        if path.is_dir():
            if link:
                raise InputError("--link applies to a .gguf file, not to a checkpoint directory (which is converted)")
            return import_checkpoint(
                self.registry, self.pins, path, name=name, quants=quants or (DEFAULT_QUANT,), work_root=self.work_dir,
                on_progress=self.on_progress,
            )
        if not path.is_file():
            raise ModelNotFoundError(f"{path} does not exist")
        if not is_gguf(path):
            raise InputError(f"{path} is neither a checkpoint directory nor a GGUF file (no GGUF magic)")
        quant = quants[0] if quants else None
        return [import_gguf(self.registry, path, name=name, quant=quant, link=link, work_root=self.work_dir)]

    # -- checking and removing ----------------------------------------------------------------------

    def verify(self, name: str | None = None, *, quant: str | None = None) -> builtins.list[Verification]:
        """Re-hash stored models (no cache) against their records, and against models.lock where it pins them."""
        models = self.registry.list(name, strict=True)
        if quant is not None:
            models = [m for m in models if m.quant == normalize_quant(quant)]
        if name is not None and not models:
            raise ModelNotFoundError(f"nothing stored under '{normalize_name(name)}'{f' ({quant})' if quant else ''}")
        return [verify_model(m, self.pins.entry(m.name)) for m in models]

    def remove(self, name: str, *, quant: str | None = None) -> builtins.list[StoredModel]:
        """Unregister and delete (linked files are only unregistered); returns what was removed."""
        return self.registry.remove(name, quant=quant)

    # -- models.lock ----------------------------------------------------------------------------------

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
        selected = [self.pins.locked(n).name for n in names] if names else list(lock.models)
        if revision is not None and len(selected) != 1:
            raise InputError("--revision applies to one model at a time")
        for n in selected:
            lock.models[n] = locked_sources(lock.models[n], revision=revision)
            lock.save()  # one model at a time: a failure later keeps what was resolved
            if outputs:
                lock.models[n] = self._pin_outputs(lock.models[n], quants)
                lock.save()
        return lock

    def _pin_outputs(self, entry: LockedModel, quants: Sequence[str] | None) -> LockedModel:
        """Download, convert and pin the outputs (registered in the store as well: they were made anyway)."""
        from gram_local.convert import CONVERTER_VERSION

        wanted = [normalize_quant(q) for q in (quants or entry.outputs or ("BF16", "Q8_0", DEFAULT_QUANT))]
        folder, _ = download(entry)
        files = check_sources(folder, entry, origin="download")
        source = {"kind": "hub", "repo": entry.repo, "revision": entry.revision, "files": [vars(f) for f in files]}
        with build(folder, entry, wanted, work_root=self.work_dir, check=False, on_progress=self.on_progress) as built:
            stored = [register(self.registry, entry.name, o, source=source) for o in built]
        pinned = dict(entry.outputs)
        for m in stored:
            pinned[m.quant] = LockedOutput(m.sha256, m.size, m.llama_cpp)
        unresolved = {k: v for k, v in entry.unresolved.items() if k != "outputs"}
        return replace(entry, converter_version=CONVERTER_VERSION, outputs=pinned, unresolved=unresolved)


def resolve_model(model: str | os.PathLike[str], *, quant: str | None = None) -> ResolvedModel:
    """A `.gguf` path, or a model name in the default store, as the GGUF file the engine should load."""
    return ModelStore().resolve(model, quant=quant)
