#!/usr/bin/env python
"""Find the first llama.cpp call that fails on a GPU build, one stage at a time.

    GRAM_LOCAL_LLAMA_LOG=1 python -X faulthandler scripts/cuda_probe.py MODEL.gguf [--n-gpu-layers 999]

Each stage prints `STAGE <name>` before it starts and `ok <name>` when it is done, flushed, so after
a segmentation fault the last STAGE line without its ok names the failing call (faulthandler adds
the Python stack; GRAM_LOCAL_LLAMA_LOG=1 makes llama.cpp log everything to stderr). The stages go
from the bare binding to what `gram-local bench` and `doctor --model` do, so the first one that
fails separates "llama.cpp on this GPU" from "what gram-local asks of it".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any


def stage(name: str, action: Callable[[], Any]) -> Any:
    print(f"STAGE {name}", flush=True)
    started = time.perf_counter()
    value = action()
    print(f"ok {name} ({time.perf_counter() - started:.2f} s)", flush=True)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--n-gpu-layers", type=int, default=999)
    args = parser.parse_args(argv)
    ngl = args.n_gpu_layers

    from gram_local.engine import build, native

    stage("build facts", lambda: print(build.system_info(), build.gpu_offload_supported(), build.devices(), flush=True))
    model = stage("load the model (no repack)", lambda: native.LlamaModel(args.model, n_gpu_layers=ngl, repack=False))
    shape = stage("model shape", model.shape)
    print(shape, flush=True)
    for kv_unified, flash in ((True, True), (True, False), (False, False)):
        label = f"context n_seq=2 kv_unified={kv_unified} flash_attn={flash}"
        ctx = stage(label, lambda u=kv_unified, f=flash: native.LlamaContext(
            model, native.ContextShape(n_seq=2, n_ctx_seq=512, kv_unified=u), n_batch=512, n_threads=4,
            kv_type="f16", flash_attn=f, max_outputs_per_seq=1, kv_bytes=0))

        def prefill(c: Any = ctx) -> None:
            c.batch.clear()
            for i in range(64):
                c.batch.add(1000 + i, i, 0, i == 63)
            assert c.decode() == 0, "llama_decode returned an error"
            c.synchronize()

        stage(f"  prefill 64 tokens ({label})", prefill)
        stage(f"  read logits ({label})", lambda c=ctx: float(c.logits(63).max()))
        stage(f"  copy sequence 0 to 1 ({label})", lambda c=ctx: c.seq_cp(0, 1))

        def decode_two(c: Any = ctx) -> None:
            c.batch.clear()
            c.batch.add(7, 64, 0, True)
            c.batch.add(8, 64, 1, True)
            assert c.decode() == 0, "llama_decode returned an error"
            c.synchronize()

        stage(f"  decode one token in each sequence ({label})", decode_two)
        stage(f"  free the context ({label})", ctx.close)
    stage("grammar sampler", lambda: native.SamplerChain(model.vocab_ptr, greedy=True, temperature=0.0, top_p=1.0, seed=0,
                                                          grammar=__import__("gram_local.grammar", fromlist=["x"]).think_grammar()).close())
    stage("free the model", model.close)

    from gram_local.config import EngineSettings, JudgeSettings
    from gram_local.loading import load_judge

    for repack in (False, True):
        judge = stage(f"load_judge repack={repack}", lambda r=repack: load_judge(
            args.model, settings=JudgeSettings(max_think_tokens=16), engine=EngineSettings(n_gpu_layers=ngl, repack=r, head_cache=False)))
        stage(f"  compare --swap (repack={repack})", lambda j=judge: print(j.compare("2+2?", "4", "5", swap=True).winner, flush=True))
        stage(f"  vote k=4 (repack={repack})", lambda j=judge: print(j.vote("2+2?", "4", "5", k=4).winner, flush=True))
        stage(f"  close (repack={repack})", judge.close)
    from gram_local.diagnostics import model_report

    stage("doctor --model (diagnostics.model_report)", lambda: print(model_report(args.model, n_gpu_layers=ngl), flush=True))
    print("all stages passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
