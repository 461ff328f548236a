#!/usr/bin/env python
"""Peak memory of one judging operation, each case in a fresh process, and the effect of a q8_0
KV cache on P(A).

    python benchmarks/memory.py MODEL.gguf [--cases compare-2k,swap-2k,compare-4k,...] [--steps 16]
    python benchmarks/memory.py MODEL.gguf --kv-effect PAIRS.jsonl [--limit 20]

A case loads the model with the engine settings it names, renders a pair of the given token
length, submits the operation at the default think budget (2,048 tokens: the context is sized for
it) and decodes `--steps` steps, then reports the process's peak RSS (`ru_maxrss`) and the KV bytes
the engine reserved. llama.cpp clears the KV buffers when it creates a context, so the pages are
resident from the first step and later steps add nothing; `--steps 0` runs the operation to its
end instead (minutes per judgment on a CPU, and the same peak).

--kv-effect judges each pair of a JudgeBench-style file (question, response_A, response_B) at once
(no think text) with an f16 and a q8_0 KV cache and reports how far P(A) moves.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES = {
    # name: (pair tokens, swap, engine settings)
    "compare-2k": (2048, False, {}),
    "swap-2k": (2048, True, {}),
    "compare-4k": (4096, False, {}),
    "compare-2k-q8kv": (2048, False, {"kv_type": "q8_0"}),
    "compare-2k-norepack": (2048, False, {"repack": False}),
    "swap-2k-norepack": (2048, True, {"repack": False}),
}


def run_case(model: str, name: str, steps: int) -> dict[str, Any]:
    """In this process: load, render a pair of the case's size, run the operation, measure."""
    from gram_local.bench import fit_text
    from gram_local.config import EngineSettings, JudgeSettings
    from gram_local.loading import load_judge

    pair_tokens, swap, engine_options = CASES[name]
    started = time.perf_counter()
    judge = load_judge(model, settings=JudgeSettings(), engine=EngineSettings(head_cache=False, **engine_options))
    engine = judge.backend
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def count(text: str) -> int:
        return len(engine.tokenize(text, special=False))

    head = len(judge.head_tokens())
    budget = pair_tokens - head - 40  # the pair's prompt, instructions included, is pair_tokens long
    question = fit_text(count, budget // 5, seed=1)
    a = fit_text(count, 2 * budget // 5, seed=2)
    b = fit_text(count, 2 * budget // 5, seed=3)
    prompt_tokens = len(judge.prompt(question, a, b).tokens)
    future = judge.runner.start(judge.compare_program(question, a, b, swap=swap, settings=judge.settings))
    n = 0
    while not future.done() and (steps == 0 or n < steps):
        judge.runner.pump()
        n += 1
    result = None
    if future.done():
        result = future.result()
    else:
        future.cancel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "case": name,
        "prompt_tokens": prompt_tokens,
        "swap": swap,
        "engine": engine_options,
        "steps": n,
        "finished": result is not None,
        "kv_streams": engine.n_slots,
        "n_ctx_per_stream": engine.n_ctx_seq,
        "kv_bytes": engine.kv_bytes(engine.n_slots, engine.n_ctx_seq),
        "peak_rss_after_load": loaded_rss,
        "peak_rss": peak,
        "seconds": round(time.perf_counter() - started, 1),
    }
    judge.close()
    return out


def kv_effect(model: str, pairs_path: Path, limit: int) -> dict[str, Any]:
    """P(A) at the answer slot (no think text) with f16 and q8_0 KV, on the same pairs."""
    from gram_local.config import EngineSettings, JudgeSettings
    from gram_local.loading import load_judge

    rows = [json.loads(line) for line in pairs_path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    items = [(r["question"], r["response_A"], r["response_B"]) for r in rows]
    p_a: dict[str, list[float]] = {}
    answers: dict[str, list[str]] = {}
    for kv_type in ("f16", "q8_0"):
        judge = load_judge(model, settings=JudgeSettings(max_think_tokens=0, n_ctx=8192),
                           engine=EngineSettings(kv_type=kv_type, head_cache=False, parallel=1))
        results = [judge.compare(q, a, b) for q, a, b in items]
        p_a[kv_type] = [r.p_a for r in results]
        answers[kv_type] = [r.judgments[0].answer for r in results]
        judge.close()
    diffs = [abs(x - y) for x, y in zip(p_a["f16"], p_a["q8_0"])]
    return {
        "model": model,
        "pairs": len(items),
        "max_abs_diff_p_a": max(diffs),
        "mean_abs_diff_p_a": sum(diffs) / len(diffs),
        "same_answer": sum(x == y for x, y in zip(answers["f16"], answers["q8_0"])),
        "p_a_f16": p_a["f16"],
        "p_a_q8_0": p_a["q8_0"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one case in this process
    parser.add_argument("--kv-effect", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.model, args.one, args.steps)))
        return 0
    if args.kv_effect:
        print(json.dumps(kv_effect(args.model, args.kv_effect, args.limit), indent=1))
        return 0
    rows = []
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name}; known: {', '.join(CASES)}")
        done = subprocess.run([sys.executable, __file__, args.model, "--one", name, "--steps", str(args.steps)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:22s} prompt {row['prompt_tokens']:5d}  streams {row['kv_streams']}  ctx/stream {row['n_ctx_per_stream']:5d}  "
              f"KV {row['kv_bytes'] / 2**30:5.2f} GiB  peak RSS {row['peak_rss'] / 2**30:5.2f} GiB "
              f"(after load {row['peak_rss_after_load'] / 2**30:4.2f})  {row['seconds']} s", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
