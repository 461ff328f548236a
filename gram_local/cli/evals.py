"""`gram-local eval judgebench | rm-bench`: the benchmarks as resumable batch jobs, officially scored."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gram_local.cli.batch import in_flight_for, report_summary, terminate_as_interrupt
from gram_local.cli.common import handle_errors, judge_options, open_judge
from gram_local.cli.display import BatchProgress
from gram_local.evals.data import DEFAULT_JUDGEBENCH_SPLIT, JUDGEBENCH_SPLITS
from gram_local.evals.plot import plot_result, require_matplotlib
from gram_local.evals.report import render
from gram_local.evals.run import EvalRun, judgebench_job, rmbench_job, run_judgebench, run_rmbench

F = TypeVar("F", bound=Callable[..., Any])


def eval_options(func: F) -> F:
    """Options every benchmark shares: where results go, how much to run, what to write."""
    options = [
        click.option("-o", "--output", "out", type=click.Path(dir_okay=False), default=None,
                     help="Per-item results JSONL, resumed if it exists "
                          "[default: bench-out/judgebench-<split>.jsonl or bench-out/rm-bench.jsonl]."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Only the first N items of each category (JudgeBench) or domain file (RM-Bench)."),
        click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write the tables as Markdown."),
        click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
                     help="Write PNG plots into this folder (needs the plot extra: matplotlib)."),
        click.option("--force", is_flag=True, default=False, help="Judge everything again (OUT replaced once complete)."),
        click.option("--chunk-size", type=click.IntRange(min=1), default=None,
                     help="Pairs per engine call [default: --parallel]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _finish(run: EvalRun, *, as_json: bool, report: str | None, plot_dir: str | None) -> None:
    """Print the scores, write the report and plots; exit 0, 3 (failed items) or 130 (interrupted)."""
    report_summary(run.summary)
    if run.summary.interrupted:
        sys.exit(run.exit_code)
    if as_json:
        click.echo(json.dumps(run.result, ensure_ascii=False))
    else:
        click.echo(render(run.result, markdown=False), nl=False)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(render(run.result, markdown=True), encoding="utf-8")
        click.echo(f"report: {report}", err=True)
    if plot_dir:
        for path in plot_result(run.result, Path(plot_dir)):
            click.echo(f"plot: {path}", err=True)
    sys.exit(run.exit_code)


@click.group("eval")
def eval_group() -> None:
    """Benchmarks with their official scoring, beside the GRAM-RR-3B paper's numbers.

    Each runs as a resumable batch job: rerun the same command after an interruption and only what
    is missing is judged. Data comes from the hub once (huggingface_hub) or from --data offline.
    """


@eval_group.command("judgebench")
@click.option("--split", default=DEFAULT_JUDGEBENCH_SPLIT, show_default=True,
              help=f"Response-model split: {', '.join(JUDGEBENCH_SPLITS)} (or gpt, claude).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="A local JudgeBench .jsonl, or a folder holding the split's file.")
@eval_options
@judge_options
@handle_errors
def judgebench_command(
    split: str, data: Path | None, out: str | None, limit: int | None, report: str | None,
    plot_dir: str | None, force: bool, chunk_size: int | None, **opts: Any,
) -> None:
    """JudgeBench: each pair judged in both orders; a pair counts only when the orders agree on the label.

    Prints the official pair-weighted overall and the category mean the GRAM papers report.
    """
    if plot_dir:
        require_matplotlib()
    job = judgebench_job(split, data, limit)
    out_path = Path(out or f"bench-out/judgebench-{job.split.name}.jsonl")
    click.echo(f"JudgeBench {job.split.name}: {len(job.pairs)} pairs from {job.path}; results in {out_path}", err=True)
    with terminate_as_interrupt():
        judge = open_judge(opts)
        run = run_judgebench(
            judge, job, out_path, force=force, in_flight=in_flight_for(opts, chunk_size, judge),
            progress=BatchProgress(label="judgebench", backend=judge.backend)
        )
    _finish(run, as_json=opts.get("as_json", False), report=report, plot_dir=plot_dir)


@eval_group.command("rm-bench")
@click.option("--domain", "domains", multiple=True,
              help="chat, math, code, safety (both safety files), safety-refuse or safety-response; repeat or comma-separate.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="RM-Bench files (<domain>_filtered.json, total_dataset.json) or folders; repeatable.")
@eval_options
@judge_options
@handle_errors
def rmbench_command(
    domains: tuple[str, ...], data: tuple[Path, ...], out: str | None, limit: int | None, report: str | None,
    plot_dir: str | None, force: bool, chunk_size: int | None, **opts: Any,
) -> None:
    """RM-Bench: the 3x3 style matrix of every prompt, each cell judged in both orders.

    Prints hard / normal / easy and the domain scores (the two safety files pool into one domain).
    """
    if plot_dir:
        require_matplotlib()
    job = rmbench_job(list(data) or None, domains, limit)
    out_path = Path(out or "bench-out/rm-bench.jsonl")
    click.echo(
        f"RM-Bench: {len(job.items)} prompts ({len(job.items) * 9} cells) from {', '.join(map(str, job.paths))}; "
        f"results in {out_path}",
        err=True,
    )
    with terminate_as_interrupt():
        judge = open_judge(opts)
        run = run_rmbench(
            judge, job, out_path, force=force, in_flight=in_flight_for(opts, chunk_size, judge),
            progress=BatchProgress(label="rm-bench", backend=judge.backend)
        )
    _finish(run, as_json=opts.get("as_json", False), report=report, plot_dir=plot_dir)
