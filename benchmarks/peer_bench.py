#!/usr/bin/env python
"""Peer benchmark: the fixed GRAM-RR workload through the seed's pipeline, the bare llama.cpp loop,
llama-cpp-python's own generator (with and without its grammar) and gram-local, in one run.

    python benchmarks/peer_bench.py --checkpoint /work/bench-data/ckpt-3b \\
        --gguf /work/bench-data/3b-q4_k_m.gguf --seed-judgments 2 --out benchmarks/results

Engines (all on the same prompt of the workload: question 200 tokens, responses 400 tokens, 256
think tokens per judgment; model load excluded everywhere):
  (a) seed: transformers `generate` on the HF checkpoint (bf16, torch on the CPU), one judgment after
      another as the model card does (apply_chat_template, then the tokenizer, which adds a second
      BOS as the card's code does). It runs --seed-judgments judgments (the pair in both orders) and
      is extrapolated per judgment; greedy, exactly 256 think tokens plus the closing and the letter.
  (b) bare: prefill, then 256 greedy decode steps through llama_cpp's low-level API: no grammar, no
      logic, no prefix reuse. The ceiling for gram-local's single-sequence decode.
  (c) gram-local through gram_local.bench (compare, compare --swap, ...), and warm single compares
      interleaved with bare decode runs, so the decode ratio is taken under the same load.
  (d) llama-cpp-python's `Llama.create_completion`, 256 greedy tokens with no grammar and with
      `LlamaGrammar.from_string(think_grammar())`: the cost of the binding's built-in grammar.

Writes <out>/peer-bench.md (a table), <out>/peer-bench.png (bar charts) and <out>/peer-bench.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THINK_TOKENS = 256


# ------------------------------------------------------------------------------------ (b) bare


class BareLoop:
    """A bare llama.cpp decode loop: one sequence, greedy chain, nothing else (the ceiling)."""

    def __init__(
        self, gguf: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int, flash_attn: int, n_batch: int = 512,
        repack: bool = True, model: Any = None,
    ) -> None:
        import llama_cpp as llama

        self.llama = llama
        # Given gram-local's loaded model, the loop runs on the very same weights in memory. Two
        # copies of the 3B in one process decode up to 10% apart on this machine (whichever was
        # loaded first is slower), which would otherwise be charged to the engine.
        self.owns_model = model is None
        if model is None:
            mparams = llama.llama_model_default_params()
            mparams.n_gpu_layers = n_gpu_layers
            mparams.use_extra_bufts = repack  # the same weight layout as gram-local's
            model = llama.llama_model_load_from_file(str(gguf).encode(), mparams)
        self.model = model
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        cparams.flash_attn_type = flash_attn
        self.ctx = llama.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.mem = llama.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.batch = llama.llama_batch_init(n_batch, 0, 1)
        self.chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        llama.llama_sampler_chain_add(self.chain, llama.llama_sampler_init_greedy())
        self.prompt: list[int] = []

    def _decode(self, tokens: list[int], start: int, logits_last: bool) -> None:
        batch = self.batch
        for j, token in enumerate(tokens):
            batch.token[j] = token
            batch.pos[j] = start + j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = logits_last and j == len(tokens) - 1
        batch.n_tokens = len(tokens)
        rc = self.llama.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")

    def prefill(self, prompt: list[int]) -> float:
        """Evaluate the whole prompt from an empty cache; seconds taken."""
        self.llama.llama_memory_clear(self.mem, True)
        self.prompt = list(prompt)
        started = time.perf_counter()
        for at in range(0, len(prompt), self.n_batch):
            chunk = prompt[at:at + self.n_batch]
            self._decode(chunk, at, logits_last=at + len(chunk) == len(prompt))
        return time.perf_counter() - started

    def rewind(self) -> None:
        """Drop everything after the prompt and recompute the last prompt token's logits (untimed)."""
        n = len(self.prompt)
        self.llama.llama_memory_seq_rm(self.mem, 0, n - 1, -1)
        self._decode([self.prompt[-1]], n - 1, logits_last=True)

    def decode(self, n_tokens: int) -> float:
        """n_tokens steps of (greedy sample, decode one token); seconds taken."""
        llama = self.llama
        pos = len(self.prompt)
        started = time.perf_counter()
        for i in range(n_tokens):
            token = llama.llama_sampler_sample(self.chain, self.ctx, -1)
            llama.llama_sampler_accept(self.chain, token)
            self._decode([token], pos + i, logits_last=True)
        return time.perf_counter() - started

    def close(self) -> None:
        llama = self.llama
        llama.llama_sampler_free(self.chain)
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)
        if self.owns_model:
            llama.llama_model_free(self.model)


# ------------------------------------------------------------------------------------ (a) seed


@dataclass
class SeedRun:
    judgments: int = 0
    new_tokens: int = 0
    prompt_tokens: int = 0
    seconds: list[float] = field(default_factory=list)
    prefill_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)
    load_seconds: float = 0.0


class SeedPipeline:
    """The model card's way: one `generate` per judgment on the bf16 HF checkpoint (CPU by default).

    Greedy, and exactly 256 think tokens plus what the model writes to reach its letter
    (`\n</think>\n<answer>\n` and A/B): min_new_tokens = max_new_tokens, so the random weights'
    output length cannot vary. The card's tokenizer call adds a second BOS; kept, as the card does.
    """

    def __init__(self, checkpoint: Path, threads: int, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gram_local.grammar import ANSWER_SLOT_PREFIX

        self.torch = torch
        self.device = device
        torch.set_num_threads(threads)
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).to(device)
        self.model.eval()
        self.run = SeedRun(load_seconds=time.perf_counter() - started)
        closing = len(self.tokenizer("\n" + ANSWER_SLOT_PREFIX, add_special_tokens=False)["input_ids"])
        self.run.new_tokens = THINK_TOKENS + closing + 1

    def judge(self, question: str, a: str, b: str) -> float:
        """One judgment, timed; records prefill (to the first new token) and decode times."""
        from transformers.generation.streamers import BaseStreamer

        from gram_local.prompt import PAIRWISE_PROMPT

        torch, device, tokenizer, run = self.torch, self.device, self.tokenizer, self.run

        class Clock(BaseStreamer):
            """Timestamps of each generated token: the first marks the end of the prefill."""

            def __init__(self) -> None:
                self.calls = 0
                self.stamps: list[float] = []

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls > 1:  # the first call hands over the prompt
                    if device != "cpu":
                        torch.cuda.synchronize()
                    self.stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        messages = [{"role": "user", "content": PAIRWISE_PROMPT.format(user_input=question, response_1=a, response_2=b)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer([text], return_tensors="pt").to(device)
        run.prompt_tokens = int(inputs["input_ids"].shape[1])
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=run.new_tokens,
                min_new_tokens=run.new_tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=tokenizer.eos_token_id,
            )
        t1 = time.perf_counter()
        produced = int(out.shape[1] - inputs["input_ids"].shape[1])
        if produced != run.new_tokens:
            raise RuntimeError(f"the seed pipeline produced {produced} tokens, not {run.new_tokens}")
        run.judgments += 1
        run.seconds.append(t1 - t0)
        run.prefill_seconds.append(clock.stamps[0] - t0)
        run.decode_seconds.append(clock.stamps[-1] - clock.stamps[0])
        return t1 - t0

    def close(self) -> None:
        del self.model
        gc.collect()


# ------------------------------------------------------------------------------------ (d) binding


def run_binding(
    gguf: Path, prompt: list[int], *, n_ctx: int, threads: int, n_gpu_layers: int, flash_attn: bool, repeats: int, log: Any
) -> dict[str, list[float]]:
    """llama-cpp-python's own generator, 256 greedy tokens, without and with its grammar.

    A first one-token call evaluates the prompt (untimed); each timed call then reuses it through
    the binding's prefix matching, replays the last prompt token and runs 256 sample+decode steps:
    the same work as the bare loop, plus the binding's per-token Python and, with `grammar=`, its
    grammar sampler over the whole vocabulary.
    """
    from llama_cpp import Llama, LlamaGrammar

    from gram_local.grammar import think_grammar

    llm = Llama(
        model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
        n_threads_batch=threads, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, verbose=False, seed=0,
    )
    llm.create_completion(prompt, max_tokens=1, temperature=0.0)
    grammar_text = think_grammar(allow_close=False)
    out: dict[str, list[float]] = {"none": [], "grammar": [], "tokens_none": [], "tokens_grammar": []}
    for r in range(repeats):
        for kind in ("none", "grammar"):
            grammar = LlamaGrammar.from_string(grammar_text, verbose=False) if kind == "grammar" else None
            t0 = time.perf_counter()
            completion = llm.create_completion(prompt, max_tokens=THINK_TOKENS, temperature=0.0, grammar=grammar)
            seconds = time.perf_counter() - t0
            n = int(completion["usage"]["completion_tokens"])
            out[kind].append(n / seconds)
            out["tokens_" + kind].append(n)
            log(f"  llama-cpp-python {kind:>7}: {n / seconds:.2f} tok/s over {n} tokens (round {r + 1})")
    llm.close()
    return out


# ------------------------------------------------------------------------------------ (c) batch


def run_batch(judge: Any, runner: Any, n_pairs: int) -> dict[str, Any]:
    """n pairs, each with its own question, judged in both orders as one batch from a cold cache.

    A stream of different items shares only the instruction head, so the questions differ; the
    responses are the workload's (pair k shows responses 2k and 2k+1). This is the throughput a
    batch job gets, next to the single pair of `compare --swap`.
    """
    from gram_local.bench import fit_text, unique_prompt_tokens

    engine = judge.backend
    spec = runner.spec
    responses = runner.workload.responses

    def count(text: str) -> int:
        return len(engine.tokenize(text, special=False))

    questions = [fit_text(count, spec.question_tokens, seed=spec.seed * 1000 + 500 + k) for k in range(n_pairs)]
    items = [(questions[k], responses[(2 * k) % len(responses)], responses[(2 * k + 1) % len(responses)])
             for k in range(n_pairs)]
    prompts = [judge.renderer.prompt_tokens(q, x, y, judge.settings) for q, a, b in items for x, y in ((a, b), (b, a))]
    runner.prepare()
    engine.reserve(len(prompts), max(len(p) for p in prompts) + spec.think_tokens + 16)
    engine.clear_cache()
    before = engine.stats.snapshot()
    t0 = time.perf_counter()
    verdicts = list(judge.compare_many(items, swap=True))
    wall = time.perf_counter() - t0
    stats = engine.stats.since(before)
    judgments = [j for v in verdicts for j in getattr(v, "judgments", [])]
    if len(judgments) != 2 * n_pairs or any(j.think_tokens != spec.think_tokens for j in judgments):
        raise RuntimeError(f"batch: expected {2 * n_pairs} judgments of {spec.think_tokens} think tokens")
    return {
        "pairs": n_pairs,
        "wall_seconds": wall,
        "pairs_per_hour": 3600.0 * n_pairs / wall,
        "prompt_tokens_evaluated": stats.prompt_tokens,
        "prompt_tokens_unique": unique_prompt_tokens(prompts),
        "prefill_seconds": stats.prefill_seconds,
        "decode_seconds": stats.decode_seconds,
        "generated_tokens": stats.generated_tokens,
    }


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="HF checkpoint directory (bf16)")
    parser.add_argument("--gguf", type=Path, help="the same model as a GGUF (e.g. Q4_K_M)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only redraw the table and plot from a peer-bench.json of an earlier run")
    parser.add_argument("--seed-judgments", type=int, default=2, help="judgments the seed pipeline runs (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--ops", default="compare,swap", help="gram-local operations (see gram-local bench)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved bare / gram-local decode runs")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the gram-local operations")
    parser.add_argument("--batch-pairs", type=int, default=4,
                        help="also judge this many pairs with distinct questions, both orders, as one batch (0: skip)")
    parser.add_argument("--repack", action=argparse.BooleanOptionalAction, default=True,
                        help="repacked CPU weights (llama.cpp's default) for gram-local and the bare loop")
    parser.add_argument("--gl-flash-attn", action=argparse.BooleanOptionalAction, default=None,
                        help="gram-local's flash attention (default: the engine's: off on a CPU, on when offloaded)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-gpu-layers", type=int, default=None, help="default: all when the build can offload")
    parser.add_argument("--speculative-check", action="store_true",
                        help="also time warm compares with prompt-lookup speculation on and off")
    parser.add_argument("--seed-device", default="cpu", help="torch device for the seed pipeline (cpu, cuda)")
    parser.add_argument("--flash-attn", choices=["engine", "auto", "on", "off"], default="engine",
                        help="flash attention of the bare loop and the binding (default: what gram-local's engine uses)")
    parser.add_argument("--skip-binding", action="store_true", help="skip (d), llama-cpp-python's generator")
    parser.add_argument("--label", default="", help="machine label for the table (e.g. '2 shared CPU cores')")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        write_outputs(results, args.out)
        return 0
    if args.checkpoint is None or args.gguf is None:
        parser.error("--checkpoint and --gguf are required (unless --from-json)")

    from gram_local.bench import BenchRunner, WorkloadSpec, parse_operations
    from gram_local.config import EngineSettings, JudgeSettings
    from gram_local.engine import Engine
    from gram_local.engine.build import amx_compiled
    from gram_local.loading import load_judge

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "gguf": str(args.gguf),
        "checkpoint": str(args.checkpoint),
        "threads": args.threads,
        "machine": args.label or f"{platform.machine()}, {os.cpu_count()} cores",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seed_device": args.seed_device,
        "repack": args.repack,
    }

    # (c) gram-local: the operations, each cold.
    log("(c) gram-local: loading")
    judge = load_judge(
        args.gguf,
        settings=JudgeSettings(max_think_tokens=THINK_TOKENS, allow_close=False, position="fixed"),
        engine=EngineSettings(n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, speculative=False,
                              repack=args.repack, flash_attn=args.gl_flash_attn, head_cache=False),
    )
    engine = judge.backend
    assert isinstance(engine, Engine)
    runner = BenchRunner(judge, WorkloadSpec(think_tokens=THINK_TOKENS))
    runner.prepare()
    prompt = runner.prompt(0, 1)
    results["prompt_tokens"] = len(prompt)
    results["n_gpu_layers"] = engine.n_gpu_layers
    report = runner.run(parse_operations(args.ops), progress=lambda name: log(f"(c) gram-local {name}"),
                        rounds=args.rounds)
    results["gram_local"] = report.to_dict()
    for op in report.operations:
        log(f"  {op.name}: {op.wall_seconds:.1f} s, decode {op.decode_tokens_per_s or 0:.2f} tok/s, "
            f"grammar {100 * (op.grammar_share or 0):.2f}%")

    if args.batch_pairs > 0:
        log(f"(c) gram-local batch of {args.batch_pairs} pairs, both orders")
        results["gram_local_batch"] = run_batch(judge, runner, args.batch_pairs)
        log(f"  {results['gram_local_batch']['wall_seconds']:.1f} s, "
            f"{results['gram_local_batch']['pairs_per_hour']:.1f} pairs/hour")

    # (b) bare loop, interleaved with warm gram-local compares (prompt cached: decode only).
    log("(b) bare llama.cpp loop")
    n_ctx = -(-(len(prompt) + THINK_TOKENS + 16) // 256) * 256
    # The peers run with the engine's attention (off on a CPU with KV streams, on when offloaded)
    # unless told otherwise, so the ratios compare like with like.
    engine_fa = "auto" if engine.flash_attn else "off"
    fa_name = engine_fa if args.flash_attn == "engine" else args.flash_attn
    fa = {"auto": -1, "off": 0, "on": 1}[fa_name]
    results["flash_attn"] = {"engine": engine_fa, "peers": fa_name}
    bare = BareLoop(args.gguf, n_ctx=n_ctx, n_threads=args.threads, n_gpu_layers=engine.n_gpu_layers, flash_attn=fa,
                    repack=args.repack, model=engine.llama_model)
    bare_prefill = bare.prefill(prompt)
    w = runner.workload
    bare_decode: list[float] = []
    gl_decode: list[float] = []
    spec_on: list[float] = []
    spec_off: list[float] = []
    spec_info: dict[str, Any] = {}
    engine.clear_cache()
    judge.compare(w.question, w.responses[0], w.responses[1])  # caches the prompt for the warm runs
    def bare_round(first: bool) -> None:
        if not first:
            bare.rewind()
        bare_decode.append(THINK_TOKENS / bare.decode(THINK_TOKENS))

    for r in range(args.repeats):
        # Alternate which goes first, so a drifting load does not favour either.
        if r % 2 == 0:
            bare_round(r == 0)
        before = engine.stats.snapshot()
        t0 = time.perf_counter()
        res = judge.compare(w.question, w.responses[0], w.responses[1])
        wall = time.perf_counter() - t0
        stats = engine.stats.since(before)
        gl_decode.append(stats.generated_tokens / (wall - stats.prefill_seconds))
        if r % 2 == 1:
            bare_round(False)
        log(f"  round {r + 1}: bare {bare_decode[-1]:.2f} tok/s, gram-local {gl_decode[-1]:.2f} tok/s "
            f"(evaluated {stats.prompt_tokens} prompt tokens)")
        if args.speculative_check:
            for on in (True, False):
                engine.speculative = on
                before = engine.stats.snapshot()
                t0 = time.perf_counter()
                sres = judge.compare(w.question, w.responses[0], w.responses[1])
                wall = time.perf_counter() - t0
                stats = engine.stats.since(before)
                rate = stats.generated_tokens / (wall - stats.prefill_seconds)
                (spec_on if on else spec_off).append(rate)
                if on:
                    spec_info = {"drafted": stats.drafted, "accepted": stats.accepted, "decode_calls": stats.decode_calls,
                                 "same_text": sres.judgments[0].rationale == res.judgments[0].rationale}
                log(f"  speculative {'on ' if on else 'off'}: {rate:.2f} tok/s"
                    + (f" (drafted {stats.drafted}, accepted {stats.accepted})" if on else ""))
            engine.speculative = False
    bare.close()
    results["bare"] = {
        "prefill_seconds": bare_prefill,
        "prefill_tokens_per_s": len(prompt) / bare_prefill,
        "decode_tokens_per_s": bare_decode,
    }
    results["gram_local_warm_decode_tokens_per_s"] = gl_decode
    if args.speculative_check:
        results["speculative"] = {"on": spec_on, "off": spec_off} | spec_info

    # (a) the seed's pipeline, each pair of its judgments (both orders) followed by a cold
    # gram-local compare --swap, so the pairs/hour ratio is taken under the same load.
    if args.seed_judgments > 0:
        log(f"(a) seed pipeline: {args.seed_judgments} judgments, interleaved with gram-local --swap")
        seed = SeedPipeline(args.checkpoint, args.threads, device=args.seed_device)
        swaps: list[float] = []
        for k in range(args.seed_judgments):
            a, b = (w.responses[0], w.responses[1]) if k % 2 == 0 else (w.responses[1], w.responses[0])
            seconds = seed.judge(w.question, a, b)
            log(f"  seed judgment {k + 1}: {seconds:.1f} s ({seed.run.prompt_tokens} prompt tokens, "
                f"{seed.run.new_tokens} new)")
            if k % 2 == 1 or k == args.seed_judgments - 1:
                swaps.append(runner.run_operation("swap").wall_seconds)
                log(f"  gram-local compare --swap: {swaps[-1]:.1f} s")
        seed.close()
        results["seed"] = seed.run.__dict__
        results["gram_local_interleaved_swap_seconds"] = swaps

    engine.close()
    del judge, engine
    gc.collect()

    # (d) llama-cpp-python's generator and grammar.
    if not args.skip_binding and amx_compiled():
        # Llama() offers no way to keep the extra buffer types off, and AMX buffers crash.
        log("(d) llama-cpp-python skipped: this build has AMX kernels (llama.cpp issue 20824)")
    elif not args.skip_binding:
        log("(d) llama-cpp-python Llama.create_completion")
        results["binding"] = run_binding(args.gguf, prompt, n_ctx=n_ctx, threads=args.threads,
                                         n_gpu_layers=results["n_gpu_layers"], flash_attn=fa != 0,
                                         repeats=max(1, args.repeats // 2), log=log)

    write_outputs(results, args.out)
    return 0


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """peer-bench.json (raw numbers), peer-bench.md (the table) and peer-bench.png, into out."""
    summary = summarize(results)
    results["summary"] = summary
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer-bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results, summary)
    (out / "peer-bench.md").write_text(table)
    plot(summary, out / "peer-bench.png", f"{Path(results['gguf']).name}, {results['machine']}")
    print(table)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The table's rows and the target ratios, all from this one run."""
    gl = r["gram_local"]
    ops = {op["name"]: op for op in gl["operations"]}
    compare = ops.get("compare")
    swap = ops.get("swap")
    rows: list[dict[str, Any]] = []
    s: dict[str, Any] = {"rows": rows}
    seed = r.get("seed")
    if seed:
        per = statistics.mean(seed["seconds"])
        rows.append({
            "engine": f"seed: transformers bf16 generate on {r.get('seed_device', 'cpu')}, one judgment at a time "
                      f"(extrapolated from {seed['judgments']})",
            "prefill": r["prompt_tokens"] / statistics.mean(seed["prefill_seconds"]),
            "decode": (seed["new_tokens"] - 1) / statistics.mean(seed["decode_seconds"]),
            "judgment_s": per,
            "pairs_per_hour": 3600.0 / (2 * per),
        })
        s["seed_pairs_per_hour"] = 3600.0 / (2 * per)
    bare = r["bare"]
    bare_rate = _median(bare["decode_tokens_per_s"])
    bare_judgment = bare["prefill_seconds"] + THINK_TOKENS / bare_rate
    rows.append({
        "engine": "bare llama.cpp loop (no grammar, no reuse), one judgment at a time",
        "prefill": bare["prefill_tokens_per_s"], "decode": bare_rate,
        "judgment_s": bare_judgment, "pairs_per_hour": 3600.0 / (2 * bare_judgment),
    })
    binding = r.get("binding")
    if binding:
        rows.append({"engine": "llama-cpp-python Llama, no grammar", "decode": _median(binding["none"])})
        rows.append({"engine": "llama-cpp-python Llama + its grammar (think_grammar)", "decode": _median(binding["grammar"])})
        none, gram = _median(binding["none"]), _median(binding["grammar"])
        s["binding_grammar_cost"] = (none / gram - 1.0) if none and gram else None
    gl_rate = _median(r["gram_local_warm_decode_tokens_per_s"])
    if compare:
        # Decode as measured interleaved with the bare loop (same load), not in the cold compare.
        rows.append({
            "engine": "gram-local compare (one order; both orders = two compares in a row)",
            "prefill": compare["prefill_tokens_per_s"], "decode": gl_rate or compare["decode_wall_tokens_per_s"],
            "judgment_s": compare["wall_seconds"], "pairs_per_hour": 3600.0 / (2 * compare["wall_seconds"]),
        })
        s["gram_local_grammar_share"] = compare["grammar_share"]
        s["gram_local_grammar_ms_per_token"] = compare["grammar_ms_per_token"]
    if swap:
        rows.append({
            "engine": "gram-local compare --swap (both orders together)",
            "prefill": swap["prefill_tokens_per_s"], "decode": swap["decode_wall_tokens_per_s"],
            "judgment_s": swap["wall_seconds"] / 2, "pairs_per_hour": 3600.0 / swap["wall_seconds"],
        })
        s["gram_local_pairs_per_hour"] = 3600.0 / swap["wall_seconds"]
        if compare:
            s["swap_vs_compare"] = swap["wall_seconds"] / compare["wall_seconds"]
    batch = r.get("gram_local_batch")
    if batch:
        rows.append({
            "engine": f"gram-local batch of {batch['pairs']} pairs (own questions), both orders together",
            "prefill": batch["prompt_tokens_evaluated"] / batch["prefill_seconds"],
            "decode": batch["generated_tokens"] / (batch["wall_seconds"] - batch["prefill_seconds"]),
            "judgment_s": batch["wall_seconds"] / (2 * batch["pairs"]),
            "pairs_per_hour": batch["pairs_per_hour"],
        })
        if seed:
            s["batch_pairs_per_hour_vs_seed"] = batch["pairs_per_hour"] / s["seed_pairs_per_hour"]
        s["batch_evaluated_over_unique"] = batch["prompt_tokens_evaluated"] / batch["prompt_tokens_unique"]
    s["gram_local_warm_decode"] = gl_rate
    s["bare_decode"] = bare_rate
    s["decode_vs_bare"] = gl_rate / bare_rate if gl_rate and bare_rate else None
    interleaved = r.get("gram_local_interleaved_swap_seconds")
    if seed and interleaved:
        s["gram_local_interleaved_pairs_per_hour"] = 3600.0 / statistics.mean(interleaved)
        s["pairs_per_hour_vs_seed"] = s["gram_local_interleaved_pairs_per_hour"] / s["seed_pairs_per_hour"]
    elif seed and swap:
        s["pairs_per_hour_vs_seed"] = s["gram_local_pairs_per_hour"] / s["seed_pairs_per_hour"]
    spec = r.get("speculative")
    if spec and spec["on"] and spec["off"]:
        s["speculative_on_vs_off"] = _median(spec["on"]) / _median(spec["off"])
    return s


def _f(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(r: dict[str, Any], s: dict[str, Any]) -> str:
    lines = [
        f"# Peer benchmark: {Path(r['gguf']).name} ({r['machine']}, {r['threads']} threads)",
        "",
        f"Run {r['started']}. Workload: one GRAM-RR prompt of {r['prompt_tokens']} tokens (question 200, "
        f"responses 400 each), exactly {THINK_TOKENS} think tokens per judgment, greedy. Model load excluded. "
        f"Flash attention: gram-local {r['flash_attn']['engine']}, bare loop and llama-cpp-python {r['flash_attn']['peers']}. "
        f"Weights: {'repacked (llama.cpp default)' if r.get('repack', True) else 'plain (--no-repack)'} for gram-local and the bare loop. "
        "All numbers come from this one run; on a shared machine only the ratios are meaningful.",
        "",
        "| engine | prefill tok/s | decode tok/s (wall, after the prefill; summed over sequences decoded together) "
        "| s per judgment | judged pairs/hour, both orders |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in s["rows"]:
        lines.append(
            f"| {row['engine']} | {_f(row.get('prefill'), '.1f')} | {_f(row.get('decode'), '.2f')} | "
            f"{_f(row.get('judgment_s'), '.1f')} | {_f(row.get('pairs_per_hour'), '.1f')} |"
        )
    lines += ["", "| ratio (this run) | value | target |", "|---|---:|---:|"]
    ratios = [
        ("gram-local grammar time / decode time", s.get("gram_local_grammar_share"), ".2%", "<= 5%"),
        ("gram-local grammar ms per token", s.get("gram_local_grammar_ms_per_token"), ".2f", ""),
        ("llama-cpp-python grammar: extra decode time", s.get("binding_grammar_cost"), ".1%", ""),
        ("gram-local single-sequence decode / bare loop (warm, interleaved, wall)", s.get("decode_vs_bare"), ".3f", ">= 0.95"),
        ("compare --swap wall / one compare", s.get("swap_vs_compare"), ".2f", "<= 1.5"),
        ("judged pairs/hour both orders: gram-local compare --swap (one pair, interleaved with the seed's) / seed",
         s.get("pairs_per_hour_vs_seed"), ".2f", ">= 3"),
        ("judged pairs/hour both orders: gram-local batch / seed", s.get("batch_pairs_per_hour_vs_seed"), ".2f", ">= 3"),
        ("batch: prompt tokens evaluated / unique", s.get("batch_evaluated_over_unique"), ".3f", ""),
        ("speculative on / off, warm single compare (decode rate)", s.get("speculative_on_vs_off"), ".3f", ""),
    ]
    for name, value, fmt, target in ratios:
        if value is not None:
            lines.append(f"| {name} | {_f(value, fmt)} | {target} |")
    if r.get("seed"):
        seed = r["seed"]
        lines += ["", f"The seed pipeline ran {seed['judgments']} judgments ({seed['new_tokens']} new tokens each: "
                  f"{THINK_TOKENS} think tokens, the closing and the letter) and is extrapolated per judgment."]
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], path: Path, title: str) -> None:
    """Two bar charts for the README: judged pairs per hour, and decode tokens per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = {
        "seed": "seed\n(transformers)",
        "bare": "bare llama.cpp\nloop",
        "llama-cpp-python Llama, no": "llama-cpp-python\nno grammar",
        "llama-cpp-python Llama +": "llama-cpp-python\n+ its grammar",
        "gram-local compare (": "gram-local\ncompare",
        "gram-local compare --swap": "gram-local\n--swap",
        "gram-local batch": "gram-local\nbatch --swap",
    }

    def label(engine: str) -> str:
        return next((v for k, v in short.items() if engine.startswith(k)), engine)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    pairs = [(label(r["engine"]), r["pairs_per_hour"]) for r in s["rows"] if r.get("pairs_per_hour")]
    ax1.bar([p[0] for p in pairs], [p[1] for p in pairs], color="#4c72b0")
    ax1.set_title("judged pairs per hour, both orders")
    for i, (_, v) in enumerate(pairs):
        ax1.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    decode = [(label(r["engine"]), r["decode"]) for r in s["rows"] if r.get("decode") and "together" not in r["engine"]]
    ax2.bar([d[0] for d in decode], [d[1] for d in decode], color="#55a868")
    ax2.set_title("single-sequence decode tokens/s")
    for i, (_, v) in enumerate(decode):
        ax2.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"GRAM-RR workload — {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
