"""Evaluations as resumable batch jobs: benchmark items become batch tasks, records become scores.

The per-item results live in the batch OUT file, so an eval that is interrupted, killed or rerun
with a bigger --limit continues where it stopped, and scoring can always be redone from that file.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gram_local.batch import BatchProgress, BatchSummary, load_records, run_batch
from gram_local.errors import DataError
from gram_local.evals import data as bench_data
from gram_local.evals.judgebench import judgments_from_records, pair_tasks, score_judgebench
from gram_local.evals.rmbench import cell_tasks, cells_from_records, score_rmbench

if TYPE_CHECKING:
    from gram_local.judge import Judge

T = TypeVar("T")


def first_per_group(items: Iterable[T], group: Callable[[T], Hashable], limit: int | None) -> list[T]:
    """The first `limit` items of each group, in file order: a short run still covers every category."""
    if limit is None:
        return list(items)
    counts: dict[Hashable, int] = {}
    kept: list[T] = []
    for item in items:
        key = group(item)
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            kept.append(item)
    return kept


@dataclass
class EvalRun:
    summary: BatchSummary
    result: dict[str, Any]  # what --json prints and the report renders

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code


def _model(records: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, Any] | None:
    """The model that produced the stored results (path, SHA-256, quantization), for the report's title."""
    for key in keys:
        record = records.get(key)
        if record and record.get("status") == "ok" and isinstance(record.get("model"), dict):
            return dict(record["model"])
    return None


def _run_facts(summary: BatchSummary, records: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Timing of this run and of the stored results, for the wall-time-per-pair figure."""
    stored = [records[k] for k in keys if k in records and records[k].get("status") == "ok"]
    judge_seconds = [float(r.get("timings", {}).get("seconds", 0.0)) for r in stored]
    return {
        "selected": summary.selected,
        "skipped": summary.skipped,
        "judged": summary.judged,
        "failed": summary.failed,
        "interrupted": summary.interrupted,
        "wall_seconds": summary.seconds,
        "wall_seconds_per_pair": summary.seconds / summary.judged if summary.judged else None,
        "mean_judge_seconds_per_pair": sum(judge_seconds) / len(judge_seconds) if judge_seconds else None,
        "out": summary.out,
    }


@dataclass
class JudgeBenchJob:
    """What a JudgeBench run will judge, loaded before the model so bad data fails fast."""

    split: bench_data.JudgeBenchSplit
    path: Path
    pairs: list[bench_data.JudgeBenchPair]
    limit: int | None


def judgebench_job(split: str = bench_data.DEFAULT_JUDGEBENCH_SPLIT, data: Path | None = None, limit: int | None = None) -> JudgeBenchJob:
    chosen = bench_data.resolve_split(split)
    path = bench_data.judgebench_path(chosen, data)
    loaded = bench_data.load_judgebench(path)
    # A file given by path could be the other split: scoring it under this split's name would mislead.
    models = {p.response_model for p in loaded if p.response_model}
    if models and models != {chosen.response_model}:
        raise DataError(
            f"{path} holds responses of {', '.join(sorted(models))}, not of the {chosen.name} split "
            f"({chosen.response_model}); pass the matching --split"
        )
    pairs = first_per_group(loaded, lambda p: p.category, limit)
    return JudgeBenchJob(chosen, path, pairs, limit)


def _judge_tasks(
    judge: Judge,
    tasks: Sequence[Any],
    out: Path,
    benchmark: str,
    *,
    force: bool,
    in_flight: int | None,
    progress: BatchProgress | None,
) -> tuple[BatchSummary, dict[str, dict[str, Any]]]:
    """Run a benchmark's tasks as a resumable batch job; return its summary and every record in OUT."""
    summary = run_batch(
        judge,
        tasks,
        out,
        force=force,
        in_flight=in_flight,
        progress=progress,
        extra_settings={"eval": {"benchmark": benchmark}},
    )
    return summary, load_records(out)


def run_judgebench(
    judge: Judge,
    job: JudgeBenchJob,
    out: Path,
    *,
    force: bool = False,
    in_flight: int | None = None,
    progress: BatchProgress | None = None,
) -> EvalRun:
    """Judge the pairs in both orders (resuming OUT) and score them by the official rule."""
    tasks = pair_tasks(job.pairs)
    summary, records = _judge_tasks(judge, tasks, out, "judgebench", force=force, in_flight=in_flight, progress=progress)
    scores = score_judgebench(job.pairs, judgments_from_records(job.pairs, records), split=job.split.name)
    result = {
        "benchmark": "judgebench",
        "split": job.split.name,
        "data": str(job.path),
        "limit_per_category": job.limit,
        "scores": scores.to_dict(),
        "run": _run_facts(summary, records, [t.key for t in tasks]),
        "model": _model(records, [t.key for t in tasks]),
        "settings": judge.settings_record(),
    }
    return EvalRun(summary, result)


@dataclass
class RMBenchJob:
    """What an RM-Bench run will judge, loaded before the model so bad data fails fast."""

    paths: list[Path]
    sources: list[str]  # the requested domains or domain files; empty: all present
    items: list[bench_data.RMBenchItem]
    limit: int | None


def rmbench_job(data: Sequence[Path] | None = None, domains: Sequence[str] = (), limit: int | None = None) -> RMBenchJob:
    """Items of the chosen domains; --limit keeps the first N prompts of each domain file."""
    sources = bench_data.parse_domains(domains)
    paths = bench_data.rmbench_paths(data)
    items = bench_data.load_rmbench_files(paths)
    if sources:
        absent = [name for name in sources if not any(bench_data.in_domains(item, [name]) for item in items)]
        if absent:
            raise DataError(f"no RM-Bench items for {', '.join(absent)} in {', '.join(map(str, paths))}")
        items = [item for item in items if bench_data.in_domains(item, sources)]
    return RMBenchJob(paths, sources, first_per_group(items, lambda item: item.source, limit), limit)


def run_rmbench(
    judge: Judge,
    job: RMBenchJob,
    out: Path,
    *,
    force: bool = False,
    in_flight: int | None = None,
    progress: BatchProgress | None = None,
) -> EvalRun:
    """Judge the 3x3 style matrix of each prompt in both orders (resuming OUT) and score it."""
    tasks = cell_tasks(job.items)
    summary, records = _judge_tasks(judge, tasks, out, "rm-bench", force=force, in_flight=in_flight, progress=progress)
    scores = score_rmbench(job.items, cells_from_records(job.items, records))
    result = {
        "benchmark": "rm-bench",
        "data": [str(p) for p in job.paths],
        "domains": job.sources or None,
        "limit_per_domain": job.limit,
        "scores": scores.to_dict(),
        "run": _run_facts(summary, records, [t.key for t in tasks]),
        "model": _model(records, [t.key for t in tasks]),
        "settings": judge.settings_record(),
    }
    return EvalRun(summary, result)
