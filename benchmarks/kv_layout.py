"""Decode-step cost of llama.cpp's KV layouts on this machine (a script, not a test).

Fills `--sequences` sequences with the same `--prompt-tokens` prompt, each in its own cells (the
first is evaluated, the others get a copy of its state), then times decode steps of 1, 2, 4 and
all sequences together, for: one unified cache with flash attention (gram-local's layout up to
run 3), KV streams with flash attention, and KV streams with plain attention (the CPU default).
Rounds alternate the layouts; the median step is printed.

    python benchmarks/kv_layout.py --gguf 3b-q4_k_m.gguf --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import llama_cpp as llama

from gram_local.engine.build import amx_compiled

LAYOUTS = {  # name: (kv_unified, flash attention)
    "unified, flash attention": (True, 1),
    "streams, flash attention": (False, 1),
    "streams, plain attention": (False, 0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=1423)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    llama.llama_backend_init()
    mparams = llama.llama_model_default_params()
    mparams.use_extra_bufts = not amx_compiled()  # as the engine does: AMX buffers crash
    model = llama.llama_model_load_from_file(str(args.gguf).encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {args.gguf}")
    n, n_seq = args.prompt_tokens, args.sequences
    prompt = [(i * 7919) % 30000 + 1000 for i in range(n)]
    n_ctx_seq = -(-(n + 64) // 256) * 256
    contexts = {}
    for name, (unified, fa) in LAYOUTS.items():
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = args.threads
        params.n_seq_max = n_seq
        params.kv_unified = unified
        params.flash_attn_type = fa
        params.no_perf = True
        ctx = llama.llama_init_from_model(model, params)
        batch = llama.llama_batch_init(512, 0, n_seq)
        for start in range(0, n, 512):
            _decode(ctx, batch, [(t, start + i, 0) for i, t in enumerate(prompt[start:start + 512])])
        size = llama.llama_state_seq_get_size(ctx, 0)
        state = (ctypes.c_uint8 * size)()
        llama.llama_state_seq_get_data(ctx, state, size, 0)
        for seq in range(1, n_seq):  # distinct cells with the same contents, as separate prompts would have
            if llama.llama_state_seq_set_data(ctx, state, size, seq) != size:
                raise SystemExit("llama.cpp refused a sequence state")
        contexts[name] = (ctx, batch)

    widths = sorted({1, 2, 4, n_seq})
    steps: dict[tuple[str, int], list[float]] = {(name, w): [] for name in LAYOUTS for w in widths}
    for r in range(args.rounds):
        for name in (list(LAYOUTS) if r % 2 == 0 else list(LAYOUTS)[::-1]):
            ctx, batch = contexts[name]
            mem = llama.llama_get_memory(ctx)
            for width in widths:
                for seq in range(n_seq):
                    llama.llama_memory_seq_rm(mem, seq, n, -1)
                started = time.perf_counter()
                for step in range(4):
                    _decode(ctx, batch, [(1000 + seq + step, n + step, seq) for seq in range(width)], logits_all=True)
                steps[(name, width)].append((time.perf_counter() - started) / 4)
    print(f"{args.gguf.name}, {args.threads} threads, {n_seq} sequences of {n} distinct cells each; "
          f"median ms per decode step of 1, 2, 4, ... sequences")
    for name in LAYOUTS:
        cells = "  ".join(f"{w}: {statistics.median(steps[(name, w)]) * 1000:6.0f}" for w in widths)
        print(f"{name:<26} {cells}")


def _decode(ctx, batch, rows: list[tuple[int, int, int]], *, logits_all: bool = False) -> None:
    batch.n_tokens = len(rows)
    for i, (token, pos, seq) in enumerate(rows):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits_all or i == len(rows) - 1
    if llama.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")


if __name__ == "__main__":
    main()
