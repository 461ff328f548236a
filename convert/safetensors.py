"""Reading (sharded) safetensors checkpoints with numpy only, a slab of rows at a time.

We read with plain file reads instead of memory maps on purpose: pages of a memory-mapped file
count towards the process's resident set for as long as the map lives, so streaming a 6.4 GB
checkpoint through `mmap` shows a 6.4 GB peak RSS even though every tensor is released after use.
`readinto` a fresh buffer keeps the peak at one slab.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gram_local.convert.dtypes import bf16_to_float32
from gram_local.convert.errors import ConversionError

#: safetensors dtype tag -> numpy dtype holding the raw words (bf16 has no numpy type: uint16).
RAW_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live: enough to read any run of its rows later."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_elems(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check one safetensors file's header; no tensor data is read."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                raise ConversionError(f"{path}: not a safetensors file (bad header length {n})")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read the safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: the safetensors header is not a JSON object")
    base = 8 + n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: malformed header entry for tensor {name!r}") from None
        if dtype not in RAW_DTYPES:
            raise ConversionError(f"{path}: tensor {name!r} has dtype {dtype}; only BF16, F16 and F32 are supported")
        if any(d < 0 for d in shape):  # two negatives would multiply to a plausible size
            raise ConversionError(f"{path}: tensor {name!r} has a negative dimension in its shape {list(shape)}")
        expected = math.prod(shape) * RAW_DTYPES[dtype].itemsize
        if end - begin != expected or begin < 0 or base + end > size:
            raise ConversionError(
                f"{path}: tensor {name!r} data range {begin}..{end} does not fit its shape "
                f"{list(shape)} or the file (truncated download?)"
            )
        entries[name] = TensorEntry(name, dtype, shape, path, base + begin, expected)
    return entries


def index_checkpoint(checkpoint_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint folder, sharded (with an index) or single-file."""
    index_path = checkpoint_dir / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise ConversionError(f"{index_path}: not a valid safetensors index (no weight_map)") from None
        entries: dict[str, TensorEntry] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = checkpoint_dir / shard
            if Path(shard).name != shard or not shard_path.is_file():
                raise ConversionError(f"{index_path} names shard {shard!r}, which is not in {checkpoint_dir}")
            for name, entry in read_header(shard_path).items():
                if weight_map.get(name) != shard:
                    raise ConversionError(f"{shard_path} holds tensor {name!r}, which the index does not place there")
                entries[name] = entry
        missing = sorted(set(weight_map) - set(entries))
        if missing:
            raise ConversionError(f"{index_path} lists tensors no shard holds: {', '.join(missing[:5])}")
        return entries
    single = checkpoint_dir / SINGLE_NAME
    if single.is_file():
        return read_header(single)
    others = sorted(p.name for p in checkpoint_dir.glob("*.bin")) + sorted(p.name for p in checkpoint_dir.glob("*.pth"))
    if others:
        raise ConversionError(
            f"{checkpoint_dir} has only PyTorch pickle weights ({others[0]}); only safetensors are supported"
        )
    raise ConversionError(f"{checkpoint_dir} has no safetensors weights ({SINGLE_NAME} or {INDEX_NAME})")


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen raw words of a safetensors dtype to float32, exactly."""
    if dtype == "BF16":
        return bf16_to_float32(raw)
    return raw.astype(np.float32, copy=False)


def row_slabs(n_rows: int, row_elems: int, max_elems: int) -> Iterator[tuple[int, int]]:
    """Split rows into runs of at most `max_elems` elements (at least one row each)."""
    step = max(1, max_elems // max(1, row_elems))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


class TensorReader:
    """Reads runs of rows from a checkpoint's shard files, keeping one handle per file."""

    def __init__(self) -> None:
        self._files: dict[Path, io.FileIO] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def read_rows(self, entry: TensorEntry, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as raw words, shaped (stop - start, *shape[1:])."""
        raw_dtype = RAW_DTYPES[entry.dtype]
        count = (stop - start) * entry.row_elems
        out = np.empty(count, dtype=raw_dtype)
        f = self._files.get(entry.path)
        if f is None:
            f = self._files[entry.path] = entry.path.open("rb", buffering=0)
        f.seek(entry.offset + start * entry.row_elems * raw_dtype.itemsize, os.SEEK_SET)
        view = out.data.cast("B")
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise ConversionError(f"{entry.path}: unexpected end of file inside tensor {entry.name!r}")
            got += n
        return out.reshape((stop - start, *entry.shape[1:]) if entry.shape else ())

    def read_all(self, entry: TensorEntry) -> np.ndarray:
        return self.read_rows(entry, 0, entry.n_rows)
