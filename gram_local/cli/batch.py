"""`gram-local batch`: judge a JSONL file of tasks, resumably (see gram_local.batch for the formats)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gram_local.batch import BatchSummary, TaskDefaults, parse_shard, read_tasks, refuse_same_file, run_batch
from gram_local.cli.common import handle_errors, judge_options, open_judge
from gram_local.cli.display import BatchProgress
from gram_local.config import DEFAULT_PARALLEL, DEFAULT_RANK_METHOD

if TYPE_CHECKING:
    from gram_local.judge import Judge
from gram_local.operations import METHODS


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a plain `kill`, a closing session) stops a run as cleanly as Ctrl-C does."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def in_flight_for(opts: dict[str, Any], chunk_size: int | None, judge: Judge | None = None) -> int:
    """Tasks judged at once: as many as the engine decodes together, unless told otherwise; on
    servers, twice their places in flight, so a place freed is taken at once."""
    if chunk_size:
        return chunk_size
    if judge is not None and judge.backend.remote:
        return 2 * max(getattr(judge.backend, "parallel", 1), 1)
    return opts.get("parallel") or DEFAULT_PARALLEL


def report_summary(summary: BatchSummary) -> None:
    """Notes and the interrupted/failed line on stderr, where they do not mix with --json."""
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    if summary.interrupted:
        click.echo(
            f"interrupted: {summary.judged} judged this run, {summary.remaining} left; every finished result is in "
            f"{summary.out}; rerun the same command to resume",
            err=True,
        )
    elif summary.failed:
        click.echo(f"{summary.failed} task(s) failed: see their error records in {summary.out}; a rerun retries them", err=True)


@click.command("batch")
@click.argument("input_path", metavar="IN.jsonl", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Results JSONL (resumed if it exists).")
@click.option("--swap", is_flag=True, default=False, help="Judge both orders (a row's own 'swap' wins).")
@click.option("-k", "--votes", type=click.IntRange(min=1), default=None, help="Rows with a and b become votes of K samples.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_RANK_METHOD, show_default=True, help="Ranking method of rank rows.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Only the first N tasks (after --shard).")
@click.option("--shard", default=None, metavar="i/n", help="Only the tasks whose id hashes to shard i of n (0-based).")
@click.option("--force", is_flag=True, default=False, help="Start over; OUT is replaced only once the new run is complete.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Tasks judged at once [default: --parallel].")
@judge_options
@handle_errors
def batch_command(
    input_path: str,
    out: str,
    swap: bool,
    votes: int | None,
    method: str,
    limit: int | None,
    shard: str | None,
    force: bool,
    chunk_size: int | None,
    **opts: Any,
) -> None:
    """Judge every task of IN.jsonl into OUT, one record per task id; rerun to resume.

    \b
    A task per line:
      {"id": ..., "question": ..., "a": ..., "b": ...}             optional "swap", "votes"
      {"id": ..., "question": ..., "responses": [...], "op": "rank" | "best-of-n"}
    A row without an id gets a stable one from its content ("sha256:<16 hex>").
    Exit codes: 0 all done, 3 done with failed rows, 1 runtime failure, 2 bad usage, 130 interrupted.
    """
    if swap and votes:
        raise click.UsageError("--swap and --votes cannot be combined: a vote judges one order")
    shard_spec = parse_shard(shard) if shard is not None else None
    refuse_same_file(input_path, Path(out))  # before anything is read or loaded, whatever the flags
    tasks = read_tasks(input_path)
    defaults = TaskDefaults(swap=swap, votes=votes, method=method)
    with terminate_as_interrupt():
        judge = open_judge(opts)
        summary = run_batch(
            judge,
            tasks,
            Path(out),
            force=force,
            limit=limit,
            shard=shard_spec,
            defaults=defaults,
            in_flight=in_flight_for(opts, chunk_size, judge),
            progress=BatchProgress(backend=judge.backend),
            source=input_path,
        )
    report_summary(summary)
    if opts.get("as_json"):
        click.echo(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        click.echo(
            f"{summary.out}: {summary.selected - summary.remaining} of {summary.selected} task(s) have a record "
            f"({summary.judged} judged now, {summary.skipped} already done, {summary.failed} failed) "
            f"in {summary.seconds:.1f} s"
        )
    sys.exit(summary.exit_code)
