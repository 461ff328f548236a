"""GGUF -> GGUF re-typing through llama.cpp's own quantizer (`llama_model_quantize`).

The only module of the converter that touches llama.cpp, and only when called: converting to
F16/BF16/F32 needs no compiled library. llama.cpp's log lines (several per tensor) are swallowed
while it runs and shown only if it fails; the previous log callback is put back afterwards, so the
judge runtime's logging is unchanged.
"""

from __future__ import annotations

import collections
import ctypes
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gram_local.convert.errors import ConversionError, ConversionFailed
from gram_local.convert.files import staged_output
from gram_local.convert.progress import ProgressCallback

#: Output types by name -> llama_ftype. None of these needs an importance matrix.
QUANT_FTYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "BF16": 32,
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K_M": 17,
    "Q5_K_S": 16,
    "Q5_0": 8,
    "Q4_K_M": 15,
    "Q4_K_S": 14,
    "Q4_0": 2,
    "Q3_K_M": 12,
}

#: Rows kept in memory at once by the quantizer (its default is 8 GiB, i.e. whole tensors).
_MAX_BUF_BYTES = 256 * 1024 * 1024
_GGUF_MAGIC = b"GGUF"
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)\s*/\s*(\d+)\]")
_LOCK = threading.Lock()  # llama.cpp's logger is process-global
_GGML_LOG_ERROR = 4  # ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line


def normalize_quant(quant: str) -> str:
    """Accept any case and `-` for `_`; refuse unknown names with the list of known ones."""
    name = quant.strip().upper().replace("-", "_")
    if name not in QUANT_FTYPES:
        raise ConversionError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_FTYPES)}")
    return name


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except (ImportError, OSError) as e:
        raise ConversionFailed(f"llama-cpp-python is needed to quantize and could not be loaded ({e})") from None
    return llama_cpp


class _LogSink:
    """Keeps the last lines llama.cpp logged and turns its per-tensor lines into progress."""

    def __init__(self, stage: str, on_progress: ProgressCallback | None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self.errors: list[str] = []
        self.stage, self.on_progress = stage, on_progress
        self.tensors = 0.0
        self._partial = b""

    def __call__(self, level: int, text: bytes | None, _user_data: Any) -> None:
        if not text:
            return
        self._partial += text
        while b"\n" in self._partial:
            line, self._partial = self._partial.split(b"\n", 1)
            decoded = line.decode("utf-8", "replace").strip()
            if decoded:
                self.lines.append(decoded)
                if level == _GGML_LOG_ERROR:
                    self.errors.append(decoded)
        match = _TENSOR_LINE.search(text)
        if match and self.on_progress is not None:
            self.tensors = float(match.group(2))
            self.on_progress(self.stage, float(match.group(1)) - 1, self.tensors, "tensors")

    def finished(self) -> None:
        if self.on_progress is not None and self.tensors:
            self.on_progress(self.stage, self.tensors, self.tensors, "tensors")

    def reason(self) -> str:
        picked = self.errors or list(self.lines)[-3:]
        return "; ".join(picked) or "no message from llama.cpp"


@contextmanager
def _quiet_llama_log(llama_cpp: Any, sink: _LogSink) -> Iterator[None]:
    previous = llama_cpp.llama_log_callback()
    previous_data = ctypes.c_void_p()
    callback = llama_cpp.llama_log_callback(sink)  # must stay referenced while installed
    with _LOCK:
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
        llama_cpp.llama_log_set(callback, None)
        try:
            yield
        finally:
            llama_cpp.llama_log_set(previous, previous_data)


def _check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}") from None
    if magic != _GGUF_MAGIC:
        raise ConversionError(f"{path} is not a GGUF file")


def quantize_gguf(
    in_path: Path, out_path: Path, quant: str, *, nthreads: int = 0, on_progress: ProgressCallback | None = None
) -> Path:
    """Re-type a GGUF with llama.cpp (`nthreads <= 0`: all cores); the output appears only when complete.

    With the default Q4_K_M mixture llama.cpp itself picks a type per tensor (for example Q6_K for
    tied embeddings and some attn_v/ffn_down layers); 1-D tensors stay F32.
    """
    name = normalize_quant(quant)
    in_path, out_path = Path(in_path), Path(out_path)
    _check_gguf(in_path)
    if out_path.resolve() == in_path.resolve():
        raise ConversionError("the quantized output cannot overwrite its input")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    llama_cpp = _llama_cpp()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthreads
    params.ftype = QUANT_FTYPES[name]
    if hasattr(params, "max_buf_size"):
        params.max_buf_size = _MAX_BUF_BYTES
    sink = _LogSink(f"quantizing to {name}", on_progress)
    with staged_output(out_path) as tmp, _quiet_llama_log(llama_cpp, sink):
        status = llama_cpp.llama_model_quantize(str(in_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            raise ConversionFailed(f"llama.cpp could not quantize {in_path} to {name}: {sink.reason()}")
        sink.finished()
    return out_path
