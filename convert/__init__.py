"""Hugging Face Llama-3.x checkpoint -> GGUF -> quantized GGUF, without torch.

`convert_checkpoint` is what `gram-local convert`, `python -m gram_local.convert` and the model
store call. F32/F16/BF16 are written directly by our streaming writer; every other type goes
through a lossless intermediate GGUF (the checkpoint's own precision) and llama.cpp's quantizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gram_local.convert.errors import ConversionError, ConversionFailed
from gram_local.convert.files import scratch_file, staged_output
from gram_local.convert.progress import ProgressCallback
from gram_local.convert.quantize import QUANT_FTYPES, normalize_quant, quantize_gguf

if TYPE_CHECKING:
    from gram_local.convert.gguf_info import GGUFInfo, read_gguf_info
    from gram_local.convert.llama import Checkpoint, load_checkpoint

# The writer and the reader import gguf-py (0.2 s, and a sentencepiece probe): only when used, so
# the CLI, which registers `convert`, starts without them.
_LAZY = {
    "GGUFInfo": "gram_local.convert.gguf_info",
    "read_gguf_info": "gram_local.convert.gguf_info",
    "Checkpoint": "gram_local.convert.llama",
    "load_checkpoint": "gram_local.convert.llama",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: Bump whenever the bytes of a converted F32/F16/BF16 file change; models.lock records it.
CONVERTER_VERSION = "1"

QUANT_TYPES: tuple[str, ...] = tuple(QUANT_FTYPES)

__all__ = [
    "CONVERTER_VERSION",
    "QUANT_TYPES",
    "Checkpoint",
    "ConversionError",
    "ConversionFailed",
    "GGUFInfo",
    "convert_checkpoint",
    "load_checkpoint",
    "quantize_gguf",
    "read_gguf_info",
]


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConversionFailed(
            f"not enough free disk space in {folder}: the conversion needs about {needed / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB are free"
        )


def convert_checkpoint(
    checkpoint_dir: Path,
    out_path: Path,
    *,
    quant: str = "Q4_K_M",
    on_progress: ProgressCallback | None = None,
    nthreads: int = 0,
) -> Path:
    """Convert a checkpoint folder to a GGUF of type `quant` at `out_path` (replaced if present).

    Every check on the checkpoint runs before anything is written; the output appears under its
    name only when complete, and the intermediate file is removed however the run ends.
    `on_progress` hears how far each stage is (see `ProgressCallback`).
    """
    from gram_local.convert.llama import DIRECT_TYPES, load_checkpoint, write_gguf

    name = normalize_quant(quant)
    checkpoint = load_checkpoint(Path(checkpoint_dir))
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ConversionError(f"the output path {out_path} is a directory; give a file name")
    if name in DIRECT_TYPES:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _check_free_space(out_path.parent, checkpoint.gguf_nbytes(name))
        with staged_output(out_path) as tmp:
            write_gguf(checkpoint, tmp, name, on_progress=on_progress)
        return out_path

    intermediate = checkpoint.lossless_type
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(out_path.parent, 2 * checkpoint.gguf_nbytes(intermediate))
    with scratch_file(out_path.parent, out_path.name, f".{intermediate.lower()}.partial") as tmp_in:
        write_gguf(checkpoint, tmp_in, intermediate, on_progress=on_progress)
        quantize_gguf(tmp_in, out_path, name, nthreads=nthreads, on_progress=on_progress)
    return out_path
