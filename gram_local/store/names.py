"""Model names and quantization labels as the store spells them.

Names become folder names and quantization labels become file names, so both are checked against a
small alphabet before any path is built from them.
"""

from __future__ import annotations

import re

from gram_local.errors import InputError

__all__ = ["normalize_name", "normalize_quant"]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_QUANT_RE = re.compile(r"[A-Z0-9_]{2,16}")


def normalize_name(name: str) -> str:
    """Model names are lower case (case-insensitive filesystems would merge `Foo` and `foo`)."""
    norm = name.strip().lower()
    if not _NAME_RE.fullmatch(norm) or norm in (".", ".."):
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
