"""What the installed llama.cpp build is and can use: its compiled CPU features, version, GPU
offload, and the devices it registered (read through libggml, which the binding does not wrap)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama

from gram_local.engine.native import init_backend


def system_info() -> str:
    init_backend()
    return str(llama.llama_print_system_info().decode("utf-8", errors="replace")).strip()


def amx_compiled() -> bool:
    """Whether this build holds llama.cpp's AMX kernels, which are reached through the extra
    buffer types and crash on the first batch (llama.cpp issue 20824): callers keep those off."""
    return "AMX_INT8 = 1" in system_info()


def binding_version() -> str:
    """llama-cpp-python's version (the binding; llama.cpp's own is `llama_cpp_version`)."""
    return str(getattr(llama, "__version__", "?"))


def llama_cpp_version() -> str:
    value = llama.llama_version() if callable(llama.llama_version) else llama.llama_version
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_offload_supported() -> bool:
    init_backend()
    return bool(llama.llama_supports_gpu_offload())


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu, gpu, igpu, accel
    memory_total: int
    memory_free: int


_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def _ggml_library() -> ctypes.CDLL | None:
    """libggml, already loaded by llama-cpp-python: the binding has no ggml_backend_dev_* calls."""
    lib_dir = Path(llama.__file__).resolve().parent / "lib"
    for pattern in ("libggml.so", "libggml.dylib", "ggml.dll", "libggml.so.*"):
        for candidate in sorted(lib_dir.glob(pattern)):
            try:
                return ctypes.CDLL(str(candidate))
            except OSError:
                continue
    return None


def devices() -> list[Device] | None:
    """The devices llama.cpp registered (CPU, CUDA GPUs, Metal...), or None where it cannot tell."""
    init_backend()
    lib = _ggml_library()
    if lib is None or not hasattr(lib, "ggml_backend_dev_count"):
        return None
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).restype = ctypes.c_char_p
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if not dev:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(Device(
            name=(lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace"),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
            kind=_DEVICE_KINDS.get(lib.ggml_backend_dev_type(dev), "?"),
            memory_total=int(total.value),
            memory_free=int(free.value),
        ))
    return found


