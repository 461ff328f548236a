"""A GGUF file's header, metadata and tensor table, read without its tensor data.

Every count and length is checked against the bytes left in the file as it is read, so a damaged
file is reported rather than followed (one flipped bit in a count can claim 2^60 entries), and
every tensor is checked to lie inside the file. Arrays are skipped unless asked for by key: most of
a Llama-3 header is its 128k-token vocabulary and 280k merges, which only validation needs, and
only the tokens. gguf-py's `GGUFReader` decodes all of it into numpy views, which takes seconds.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from gram_local.errors import ModelFileError

__all__ = ["GGUF_MAGIC", "ArrayRef", "GgufHeader", "TensorEntry", "file_type_name", "quant_label", "read_header"]

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
#: The fewest bytes an item of each type takes, to refuse counts the rest of the file cannot hold.
_MIN_SIZE = {**{t: struct.calcsize(f) for t, f in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
_MIN_KV = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR = 8 + 4 + 4 + 8  # name length, dimension count, type, offset


@dataclass(frozen=True)
class ArrayRef:
    """An array value left undecoded: its item type, length and where its first item starts."""

    item_type: int
    count: int
    offset: int


MetaValue = Union[int, float, bool, str, ArrayRef, "list[str]"]


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table."""

    name: str
    dims: tuple[int, ...]  # GGUF order: the row length first
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, MetaValue]
    tensors: tuple[TensorEntry, ...]
    data_offset: int
    file_size: int

    def string(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None

    def integer(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Cursor:
    """Reads little-endian values from the file's bytes, refusing to run past their end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, problem)

    def need(self, n: int, what: str) -> None:
        if n > len(self.buf) - self.pos:
            raise self.fail(
                f"{what} at byte {self.pos} needs {n} bytes but the file ends at byte {len(self.buf)} (truncated)"
            )

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        self.need(size, what)
        value: int | float | bool = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def count(self, what: str, min_size: int, unit: str = "entries") -> int:
        """A length prefix, checked against what the rest of the file can hold."""
        at = self.pos
        n = self.u64(what)
        if n * min_size > len(self.buf) - self.pos:
            raise self.fail(
                f"{what} at byte {at} claims {n} {unit}, more than the remaining {len(self.buf) - self.pos} "
                "bytes of the file can hold (damaged or truncated)"
            )
        return n

    def string(self, what: str) -> str:
        n = self.count(f"the length of {what}", 1, "bytes")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - n} is not UTF-8 text") from None

    def skip_string(self, what: str) -> None:
        n = self.count(f"the length of {what}", 1, "bytes")  # moves past the length first
        self.pos += n

    def value(self, kind: int, key: str, decode: bool) -> MetaValue:
        if kind == _STRING:
            return self.string(f"the value of {key}")
        if kind == _ARRAY:
            item_type = self.u32(f"the item type of {key}")
            if item_type not in _MIN_SIZE:
                raise self.fail(f"the array {key} has items of unknown type {item_type}")
            n = self.count(f"the array {key}", _MIN_SIZE[item_type])
            start = self.pos
            if decode and item_type == _STRING:
                return [self.string(f"item {i} of {key}") for i in range(n)]
            self.skip(item_type, n, key)
            return ArrayRef(item_type, n, start)
        if kind not in _SCALARS:
            raise self.fail(f"the metadata key {key!r} has a value of unknown type {kind}")
        return self.unpack(_SCALARS[kind], f"the value of {key}")

    def skip(self, item_type: int, n: int, key: str) -> None:
        if item_type == _STRING:
            for i in range(n):
                self.skip_string(f"item {i} of {key}")
        elif item_type == _ARRAY:
            for _ in range(n):
                self.value(_ARRAY, key, False)
        else:
            size = _MIN_SIZE[item_type] * n
            self.need(size, f"the array {key}")
            self.pos += size


def read_header(path: Path, *, decode: Collection[str] = ()) -> GgufHeader:
    """Parse and bounds-check a GGUF's header, metadata and tensor table; string arrays in `decode` are read.

    Raises `ModelFileError` for anything llama.cpp would refuse or misread: no GGUF magic, an
    unsupported version, counts or lengths past the end of the file, unknown value or tensor types,
    tensors that are misaligned or lie (partly) past the end of the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise ModelFileError(path, "the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    return _parse(_Cursor(view, path), size, decode)
                finally:
                    view.release()
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from None


def _parse(cur: _Cursor, size: int, decode: Collection[str]) -> GgufHeader:
    if bytes(cur.buf[:4]) != GGUF_MAGIC:
        raise cur.fail(f"it does not start with the GGUF magic (found {bytes(cur.buf[:4])!r})")
    cur.pos = 4
    version = cur.u32("the version")
    if version not in VERSIONS:
        raise cur.fail(f"GGUF version {version} is not one llama.cpp reads ({', '.join(map(str, VERSIONS))})")
    n_tensors = cur.count("the tensor count", _MIN_TENSOR)
    n_kv = cur.count("the metadata count", _MIN_KV)
    metadata: dict[str, MetaValue] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        metadata[key] = cur.value(cur.u32(f"the type of {key}"), key, key in decode)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment is {alignment!r}, not a power of two")
    entries = [_tensor_entry(cur, i) for i in range(n_tensors)]
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    seen: set[str] = set()
    for name, dims, ggml_type, offset in entries:
        if name in seen:
            raise cur.fail(f"the tensor {name} is listed twice")
        seen.add(name)
        nbytes = _tensor_bytes(cur, name, dims, ggml_type)
        if offset % alignment:
            raise cur.fail(f"the tensor {name} starts at offset {offset}, not a multiple of the alignment {alignment}")
        end = data_offset + offset + nbytes
        if end > size:
            raise cur.fail(
                f"the tensor {name} ends at byte {end}, past the end of the file ({size} bytes): truncated or damaged"
            )
        tensors.append(TensorEntry(name, dims, ggml_type, offset, nbytes))
    return GgufHeader(cur.path, version, metadata, tuple(tensors), data_offset, size)


def _tensor_entry(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(f"the name of tensor {i}")
    n_dims = cur.u32(f"the dimension count of {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"the tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    dims = tuple(cur.u64(f"a dimension of {name}") for _ in range(n_dims))
    return name, dims, cur.u32(f"the type of {name}"), cur.u64(f"the offset of {name}")


def _tensor_bytes(cur: _Cursor, name: str, dims: tuple[int, ...], ggml_type: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise cur.fail(f"the tensor {name} has unknown type {ggml_type}") from None
    if dims[0] % block:
        raise cur.fail(f"the tensor {name} has rows of {dims[0]}, not a multiple of its type's block of {block}")
    n = 1
    for d in dims:
        n *= d
    return n // block * type_size


def file_type_name(path: Path) -> str | None:
    """The quantization label of a GGUF (`Q4_K_M`, `BF16`...) from `general.file_type`, or None."""
    try:
        return quant_label(read_header(path).integer("general.file_type"))
    except ModelFileError:
        return None


def quant_label(file_type: int | None) -> str | None:
    """`general.file_type` as a quantization label (7 -> `Q8_0`); None for none, an unknown one or GUESSED."""
    from gguf import LlamaFileType

    try:
        member = LlamaFileType(file_type) if file_type is not None else None
    except ValueError:
        return None
    if member is None or member is LlamaFileType.GUESSED:
        return None
    return member.name.split("_", 1)[1]  # ALL_F32 -> F32, MOSTLY_Q4_K_M -> Q4_K_M
