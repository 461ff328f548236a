"""`gram-local doctor`: what the installed build can do on this machine, and what a model needs."""

from __future__ import annotations

import json
from typing import Any

import click

from gram_local.cli.common import handle_errors
from gram_local.config import env_name


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


@click.command()
@click.option("--model", "-m", envvar=env_name("model"), show_envvar=True, default=None,
              help="Also load this model (GGUF path or stored name) and show its metadata and memory needs.")
@click.option("--quant", envvar=env_name("quant"), show_envvar=True, default=None)
@click.option("--n-gpu-layers", envvar=env_name("n_gpu_layers"), show_envvar=True, type=int, default=None)
@click.option("--json", "as_json", envvar=env_name("json"), show_envvar=True, is_flag=True, default=False)
@handle_errors
def doctor(model: str | None, quant: str | None, n_gpu_layers: int | None, as_json: bool) -> None:
    """The llama.cpp build (CPU/CUDA/Metal), devices, the CPU check, and a model's needs."""
    from gram_local.cpu import report as cpu_report
    from gram_local.diagnostics import build_report, model_report

    info: dict[str, Any] = build_report()
    info["cpu_check"] = cpu_report()
    if model:
        info["model"] = model_report(model, quant=quant, n_gpu_layers=n_gpu_layers)
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False))
        return
    compiled = ", ".join(k.upper() for k, v in info["compiled"].items() if v)
    if info["devices"] is None:
        devices = "cannot tell (this llama.cpp library does not list its devices)"
    else:
        devices = ", ".join(
            f"{d['name']} ({d['description']}" + (f", {_mib(d['memory_total'])}" if d["memory_total"] else "") + ")"
            for d in info["devices"]
        ) or "none"
    lines = [
        f"gram-local {info['gram_local']}  llama-cpp-python {info['llama_cpp_python']}  llama.cpp {info['llama_cpp']}",
        f"compiled backends: {compiled}",
        f"devices: {devices}",
        f"GPU offload supported by this build: {'yes' if info['gpu_offload'] else 'no'}",
        f"CPU features compiled in: {info['system_info']}",
        f"CPU check: {info['cpu_check']['summary']}",
    ]
    if info["amx_build"]:
        lines.append(
            "AMX: compiled in, and its kernels crash llama.cpp (issue 20824), so weights stay unrepacked; "
            "a build without AMX (README, Install) gets the faster repacked weights back"
        )
    if "model" in info:
        m = info["model"]
        kv = m["kv_cache"]
        w = m["weights"]
        layout = "repacked copy in memory (faster one-sequence decode)" if w["repacked"] else "memory-mapped file"
        lines += [
            f"model: {m['path']}  ({m['description']}, {m['parameters'] / 1e9:.2f} B parameters, {m['layers']} layers)",
            f"  sha256 {m['sha256']}",
            f"  context {m['context_length']}, vocabulary {m['vocabulary']}, chat format {m['chat_format']}, "
            f"A={m['answer_tokens']['A']} B={m['answer_tokens']['B']}",
            f"  weights: {_mib(w['bytes'])}, {layout}; --no-repack memory-maps them instead",
            f"  KV cache ({kv['type']}): {kv['bytes_per_token']:,} bytes per token; one compare of a 2,048-token pair "
            f"{_mib(kv['one_compare_2k_prompt'])}, --swap {_mib(kv['swap_2k_prompt'])}",
            f"  peak memory of this process after loading: {_mib(m['peak_rss_after_load'])}",
            f"  offload: {m['offload_check']}",
        ]
    click.echo("\n".join(lines))
