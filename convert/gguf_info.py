"""A fast read of a GGUF file's metadata and tensor table, without its tensor data.

gguf-py's `GGUFReader` builds a numpy view per array element and needs ~18 s for a Llama-3
vocabulary (400k strings); this reader needs well under a second. Used by the tests and useful to
anyone who must check an imported GGUF (architecture, file type, vocabulary) before loading it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from gram_local.convert.errors import ConversionError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: the row length first
    type_name: str
    offset: int


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]

    @property
    def tensor_types(self) -> dict[str, str]:
        return {t.name: t.type_name for t in self.tensors}


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8", "surrogateescape")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            return [self.value(item_kind) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown value type {kind}")
        return self.unpack(_SCALARS[kind])


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header, key/value metadata and tensor table of a GGUF file."""
    try:
        with Path(path).open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                cur = _Cursor(view)
                if bytes(view[:4]) != b"GGUF":
                    raise ConversionError(f"{path} is not a GGUF file")
                cur.pos = 4
                version, n_tensors, n_kv = cur.unpack("<I"), cur.unpack("<Q"), cur.unpack("<Q")
                metadata: dict[str, Any] = {}
                for _ in range(n_kv):
                    key = cur.string()
                    metadata[key] = cur.value(cur.unpack("<I"))
                tensors = []
                for _ in range(n_tensors):
                    name = cur.string()
                    dims = tuple(cur.unpack("<Q") for _ in range(cur.unpack("<I")))
                    kind, offset = cur.unpack("<I"), cur.unpack("<Q")
                    try:
                        type_name = gguf.GGMLQuantizationType(kind).name
                    except ValueError:
                        type_name = f"type{kind}"
                    tensors.append(TensorInfo(name, dims, type_name, offset))
            finally:
                view.release()
    except (OSError, ValueError, struct.error) as e:
        raise ConversionError(f"{path}: not a readable GGUF file ({e})") from None
    return GGUFInfo(version, metadata, tensors)
