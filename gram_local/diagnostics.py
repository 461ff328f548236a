"""What `gram-local doctor` reports: the build, the devices, the CPU check, a model's needs.

Plain data only; the CLI prints it. Everything here is safe to call on a machine where the model
could not run (it never decodes unless asked to check offload).
"""

from __future__ import annotations

import resource
import sys
from typing import Any

from gram_local import __version__
from gram_local.config import ANSWER_MARGIN, DEFAULT_MAX_THINK_TOKENS, EngineSettings, JudgeSettings


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def build_report() -> dict[str, Any]:
    """The installed llama.cpp build: versions, compiled CPU features, backends and devices."""
    from gram_local.engine.build import binding_version, devices, gpu_offload_supported, llama_cpp_version, system_info

    info = system_info()
    found = devices()
    names = [d.name for d in found] if found is not None else []
    return {
        "gram_local": __version__,
        "llama_cpp_python": binding_version(),
        "llama_cpp": llama_cpp_version(),
        "system_info": info,
        "gpu_offload": gpu_offload_supported(),
        "devices": None if found is None else [d.__dict__ for d in found],
        # Weights are never put in AMX buffers (their kernels crash: see gram_local.engine.core).
        "amx_build": "AMX_INT8 = 1" in info,
        "compiled": {
            "cpu": "CPU" in info or any(n.upper().startswith("CPU") for n in names),
            "cuda": "CUDA" in info or any(n.upper().startswith("CUDA") for n in names),
            "metal": "METAL" in info.upper() or any(n.upper().startswith(("METAL", "MTL")) for n in names),
        },
    }


def model_report(model: str, *, quant: str | None = None, n_gpu_layers: int | None = None, check_offload: bool = True) -> dict[str, Any]:
    """Load a model and say what it is and what judging with it needs."""
    from gram_local.engine import Engine
    from gram_local.loading import load_judge

    before = peak_rss_bytes()
    judge = load_judge(
        model,
        quant=quant,
        settings=JudgeSettings(max_think_tokens=8),
        engine=EngineSettings(n_gpu_layers=n_gpu_layers, head_cache=False, parallel=1),
    )
    try:
        engine = judge.backend
        assert isinstance(engine, Engine)  # load_judge runs the in-process engine
        meta = engine.metadata
        per_token = engine.shape.kv_bytes_per_token(engine.kv_type)
        typical = 2048 + DEFAULT_MAX_THINK_TOKENS + ANSWER_MARGIN
        report: dict[str, Any] = {
            **judge.model.to_dict(),
            "architecture": meta.architecture,
            "name": meta.name,
            "description": meta.file_type,
            "parameters": meta.n_params,
            "layers": meta.n_layer,
            "context_length": meta.n_ctx_train,
            "vocabulary": meta.n_vocab,
            "chat_format": judge.chat_format,
            "answer_tokens": {"A": engine.token_a, "B": engine.token_b},
            "gpu_layers": engine.n_gpu_layers,
            "weights": {
                "repacked": engine.repack,
                "memory_mapped": not engine.repack,
                "bytes": engine.shape.size_bytes,
            },
            "kv_cache": {
                "type": engine.kv_type,
                "bytes_per_token": per_token,
                "one_compare_2k_prompt": per_token * typical,
                "swap_2k_prompt": 2 * per_token * typical,
                "note": f"a 2,048-token pair at the default think budget needs {typical:,} cells per sequence",
            },
            "peak_rss_after_load": peak_rss_bytes(),
            "peak_rss_before_load": before,
        }
        offloaded = engine.gpu_offload and engine.n_gpu_layers > 0
        if check_offload and offloaded:
            try:
                judge.compare("1+1?", "2", "3", max_think_tokens=0)
                report["offload_check"] = "ok: a judgment ran with layers offloaded"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                report["offload_check"] = f"failed: {exc}"
        else:
            report["offload_check"] = "not applicable: CPU-only build or --n-gpu-layers 0"
        return report
    finally:
        judge.close()
