"""Re-hashing stored models against their records and against models.lock's pins."""

from __future__ import annotations

from dataclasses import dataclass

from gram_local.store.hashing import sha256_file
from gram_local.store.lock import CONVERTER_OUTPUTS, LockedModel
from gram_local.store.registry import StoredModel

__all__ = ["Verification", "verify_model"]


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


def verify_model(model: StoredModel, entry: LockedModel | None) -> Verification:
    """Hash the file afresh (no cache); a pin differs strictly for converter outputs, advisorily otherwise."""
    if not model.path.is_file():
        return Verification(model, None, f"the file is missing: {model.path}")
    actual = sha256_file(model.path, use_cache=False)
    if actual != model.sha256:
        problem = f"sha256 {actual} differs from {model.sha256}, recorded when it was registered"
        return Verification(model, actual, problem)
    pin = entry.outputs.get(model.quant) if entry is not None else None
    if entry is None or pin is None or pin.sha256 == actual:
        return Verification(model, actual)
    strict = model.quant in CONVERTER_OUTPUTS and model.converter_version == entry.converter_version
    message = f"sha256 differs from models.lock ({pin.sha256})"
    if strict:
        return Verification(model, actual, message + " although the converter version is the pinned one")
    return Verification(model, actual, None, (message + "; advisory for this file",))
