"""`gram-local bench`: the fixed throughput workload on any model (model load excluded)."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from click.core import ParameterSource

from gram_local.cli.common import engine_settings, handle_errors, judge_options
from gram_local.workload import WorkloadSpec

# Judge options that would change the fixed workload; the benchmark sets them itself.
_WORKLOAD_OPTIONS = {
    "temperature": "--temperature",
    "top_p": "--top-p",
    "max_think_tokens": "--max-think-tokens",
    "no_think": "--no-think",
}


@click.command("bench")
@click.option("--ops", default="compare,swap,vote,best-of-8,rank-8", show_default=True,
              help="Operations to run, comma-separated (compare, swap, vote, best-of-8, rank-8).")
@click.option("--think-tokens", type=click.IntRange(min=1), default=WorkloadSpec.think_tokens, show_default=True,
              help="Think tokens per judgment; the think block closes exactly at this budget.")
@click.option("--question-tokens", type=click.IntRange(min=1), default=WorkloadSpec.question_tokens, show_default=True,
              help="Question length in tokens (not the reference workload if changed).")
@click.option("--response-tokens", type=click.IntRange(min=1), default=WorkloadSpec.response_tokens, show_default=True,
              help="Length of each response in tokens (not the reference workload if changed).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the operations this many times, interleaved, and report mean times (noisy machines).")
@click.option("--speculative/--no-speculative", default=None,
              help="Prompt-lookup speculative decoding [default: on only with GPU offload].")
@judge_options
@handle_errors
def bench_command(
    ops: str,
    think_tokens: int,
    question_tokens: int,
    response_tokens: int,
    rounds: int,
    speculative: bool | None,
    **opts: Any,
) -> None:
    """Time the fixed workload: compare, compare --swap, vote -k 8, best-of-8, a round-robin rank of 8.

    Every judgment has exactly --think-tokens think tokens; greedy except the vote (temperature
    0.6, top-p 0.9). Each operation starts with an empty prefix cache. Prints prefill and decode
    tokens/s, the grammar's share of decode time, wall time per operation and its ratio to one
    compare, and prompt tokens evaluated against the unique prompt tokens of the operation.
    The on-disk head cache is not used (--head-cache is ignored): the head is part of the cold cost.
    """
    from gram_local.bench import BenchRunner, WorkloadSpec, format_report, parse_operations
    from gram_local.config import JudgeSettings
    from gram_local.loading import load_judge

    ctx = click.get_current_context()
    given = [flag for name, flag in _WORKLOAD_OPTIONS.items()
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(
            f"{', '.join(given)} would change the fixed workload; the benchmark is greedy except the vote "
            "(temperature 0.6, top-p 0.9) and uses --think-tokens for the budget"
        )
    if opts.get("backend", "llama.cpp") != "llama.cpp" or opts.get("base_urls"):
        raise click.UsageError("bench measures the in-process engine; time a server with `gram-local batch --backend ...`")
    operations = parse_operations(ops)
    spec = WorkloadSpec(question_tokens=question_tokens, response_tokens=response_tokens,
                        think_tokens=think_tokens, seed=opts["seed"])
    started = time.perf_counter()
    judge = load_judge(
        opts["model"],
        quant=opts.get("quant"),
        settings=JudgeSettings(
            date=opts["date"],
            max_think_tokens=think_tokens,
            allow_close=False,
            seed=opts["seed"],
            n_ctx=opts.get("ctx"),
            position="fixed",  # the reference workload shows each pair in input order
        ),
        # every operation starts cold, the instruction head included
        engine=engine_settings(opts, speculative=speculative, head_cache=False),
    )
    load_seconds = time.perf_counter() - started
    runner = BenchRunner(judge, spec)

    def progress(name: str) -> None:
        if not opts["as_json"]:
            click.echo(f"running {name} ...", err=True)

    report = runner.run(operations, progress=progress, rounds=rounds)
    if opts["as_json"]:
        click.echo(json.dumps(report.to_dict() | {"load_seconds": round(load_seconds, 3)}))
    else:
        click.echo(format_report(report))
        click.echo(f"model load (excluded from every timing): {load_seconds:.1f} s")
