"""How the engine will run on this machine, decided from the settings and the build: pure, so every
combination is testable without loading a model."""

from __future__ import annotations

from dataclasses import dataclass

from gram_local.config import EngineSettings
from gram_local.errors import InputError


@dataclass(frozen=True)
class EnginePlan:
    n_threads: int
    n_gpu_layers: int
    offloading: bool
    kv_unified: bool
    flash_attn: bool
    speculative: bool
    repack: bool


def plan_engine(s: EngineSettings, *, gpu_offload: bool, amx_build: bool, n_cpus: int) -> EnginePlan:
    n_gpu_layers = s.n_gpu_layers if s.n_gpu_layers is not None else (999 if gpu_offload else 0)
    offloading = gpu_offload and n_gpu_layers > 0
    # On a CPU each sequence gets its own KV stream (a token attends over its own cells only);
    # offloaded, one unified cache with flash attention. See the README's speed section.
    kv_unified = offloading if s.kv_unified is None else s.kv_unified
    flash = (offloading or (kv_unified and s.parallel > 1)) if s.flash_attn is None else s.flash_attn
    if s.kv_type == "q8_0":
        if s.flash_attn is False:
            raise InputError("--kv-type q8_0 needs flash attention (llama.cpp quantizes V only with it)")
        flash = True
    return EnginePlan(
        n_threads=s.n_threads or n_cpus or 1,
        n_gpu_layers=n_gpu_layers,
        offloading=offloading,
        kv_unified=kv_unified,
        flash_attn=flash,
        speculative=offloading if s.speculative is None else s.speculative,
        # The extra buffer types hold both the CPU repack and, in a build with AMX, the AMX copy
        # of the weights, whose kernels crash on the first batch (ggml_backend_amx_mul_mat,
        # llama.cpp issue 20824; SIGILL where the OS withholds AMX): with AMX compiled in, off.
        repack=s.repack and not amx_build,
    )
