"""The fixed benchmark workload and its runner over a loaded Judge (no CLI here).

The workload is fixed so that ratios cannot be tuned: a GRAM-RR prompt whose question is 200 tokens
and whose responses are 400 tokens each, exactly 256 think tokens per judgment (the think block can
only close at the budget), and five operations (compare, compare --swap, vote -k 8 at temperature
0.6, best-of-8 by knockout, a round-robin ranking of 8). Texts are built from a seeded word list and
fitted to the exact token counts with the model's own tokenizer, so the workload has the same shape
on any vocabulary.

Each operation starts from an empty prefix cache (measured cold), after one warm-up generation that
pages the weights in, so model load and first-touch costs never land in a timed operation.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gram_local.backend import BackendStats, GenerationRequest
from gram_local.config import ANSWER_MARGIN
from gram_local.diagnostics import peak_rss_bytes
from gram_local.errors import InputError
from gram_local.judge import Judge
from gram_local.results import Judgment
from gram_local.workload import Workload, WorkloadSpec, build_workload, fit_text, unique_prompt_tokens

if TYPE_CHECKING:
    from gram_local.engine import Engine

OPERATIONS = ("compare", "swap", "vote", "best-of-8", "rank-8")
"""Operation names, in the order they run (compare first: every ratio is taken against it)."""

__all__ = [
    "OPERATIONS",
    "BenchReport",
    "BenchRunner",
    "OperationResult",
    "Workload",
    "WorkloadSpec",
    "build_workload",
    "fit_text",
    "format_report",
    "parse_operations",
    "unique_prompt_tokens",
]

@dataclass
class OperationResult:
    """What one operation cost, from the engine's counters and the wall clock."""

    name: str
    wall_seconds: float
    judgments: int
    think_tokens_exact: bool
    think_tokens_min: int
    think_tokens_max: int
    generated_tokens: int
    prompt_tokens_evaluated: int
    prompt_tokens_unique: int
    prompt_tokens_total: int
    prefill_seconds: float
    decode_seconds: float
    sample_seconds: float
    grammar_seconds: float
    grammar_fallbacks: int
    decode_calls: int
    drafted: int
    accepted: int
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    decode_wall_tokens_per_s: float | None = None
    grammar_share: float | None = None
    grammar_ms_per_token: float | None = None
    evaluated_over_unique: float | None = None
    wall_vs_compare: float | None = None
    verdict: str = ""
    round_wall_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefill_tokens_per_s = _ratio(self.prompt_tokens_evaluated, self.prefill_seconds)
        self.decode_tokens_per_s = _ratio(self.generated_tokens, self.decode_seconds)
        # Everything after the prefill, grammar, sampling and Python included: what a user waits for.
        self.decode_wall_tokens_per_s = _ratio(self.generated_tokens, self.wall_seconds - self.prefill_seconds)
        self.grammar_share = _ratio(self.grammar_seconds, self.decode_seconds)
        per_token = _ratio(self.grammar_seconds, self.generated_tokens)
        self.grammar_ms_per_token = None if per_token is None else per_token * 1000.0
        self.evaluated_over_unique = _ratio(self.prompt_tokens_evaluated, self.prompt_tokens_unique)
        if not self.round_wall_seconds:
            self.round_wall_seconds = [self.wall_seconds]


@dataclass
class BenchReport:
    """The whole run: model, machine, workload, per-operation costs and the target ratios."""

    model: dict[str, Any]
    machine: dict[str, Any]
    workload: dict[str, Any]
    prompt_tokens_per_judgment: int
    operations: list[OperationResult] = field(default_factory=list)
    rounds: int = 1
    # After the run: the process's peak RSS and the KV cache the engine's context holds.
    memory: dict[str, Any] = field(default_factory=dict)

    def operation(self, name: str) -> OperationResult | None:
        return next((op for op in self.operations if op.name == name), None)

    def summary(self) -> dict[str, Any]:
        """The headline numbers: single-sequence rates from compare, the rest as ratios to it."""
        compare = self.operation("compare")
        swap = self.operation("swap")
        vote = self.operation("vote")
        best = self.operation("best-of-8")
        rank = self.operation("rank-8")
        return {
            "prefill_tokens_per_s": compare.prefill_tokens_per_s if compare else None,
            "decode_tokens_per_s": compare.decode_tokens_per_s if compare else None,
            "decode_wall_tokens_per_s": compare.decode_wall_tokens_per_s if compare else None,
            "grammar_share": compare.grammar_share if compare else None,
            "grammar_ms_per_token": compare.grammar_ms_per_token if compare else None,
            "pairs_per_hour_one_order": _ratio(3600.0, compare.wall_seconds) if compare else None,
            "pairs_per_hour_both_orders": _ratio(3600.0, swap.wall_seconds) if swap else None,
            "swap_vs_compare": swap.wall_vs_compare if swap else None,
            "vote_vs_compare": vote.wall_vs_compare if vote else None,
            "best_of_8_evaluated_over_unique": best.evaluated_over_unique if best else None,
            "rank_8_evaluated_over_unique": rank.evaluated_over_unique if rank else None,
            "all_think_tokens_exact": all(op.think_tokens_exact for op in self.operations),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "machine": self.machine,
            "workload": self.workload,
            "prompt_tokens_per_judgment": self.prompt_tokens_per_judgment,
            "rounds": self.rounds,
            "operations": [asdict(op) for op in self.operations],
            "summary": self.summary(),
            "memory": self.memory,
        }


_TIMES = ("wall_seconds", "prefill_seconds", "decode_seconds", "sample_seconds", "grammar_seconds")


def _mean_of(results: list[OperationResult]) -> OperationResult:
    """One operation over several rounds: mean times, the first round's counts and verdict.

    The tokens evaluated and generated repeat exactly from round to round (the votes' samples
    differ, not their number); counters such as grammar fallbacks are the first round's.
    """
    first = results[0]
    if len(results) == 1:
        return first
    means = {k: sum(getattr(r, k) for r in results) / len(results) for k in _TIMES}
    return replace(first, **means, round_wall_seconds=[r.wall_seconds for r in results])


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def parse_operations(text: str) -> list[str]:
    """`compare,swap,...` into canonical order; unknown names are a usage error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown or not names:
        raise InputError(f"unknown operation(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(OPERATIONS)}")
    return [op for op in OPERATIONS if op in names]


class BenchRunner:
    """Runs the workload's operations on one judge and measures each from a cold prefix cache."""

    def __init__(self, judge: Judge, spec: WorkloadSpec | None = None) -> None:
        from gram_local.engine import Engine  # here: importing the bench module needs no llama.cpp

        if not isinstance(judge.backend, Engine):
            raise InputError(f"the benchmark measures the llama.cpp engine; this judge runs a {judge.backend.kind} backend")
        self.judge = judge
        self.engine: Engine = judge.backend
        # Every operation starts cold, the instruction head included: no KV read from disk.
        self.engine.prefix_store = None
        self.spec = spec or WorkloadSpec()
        if judge.settings.max_think_tokens != self.spec.think_tokens or judge.settings.allow_close:
            raise InputError(
                "the benchmark needs a judge loaded with max_think_tokens equal to the workload's think tokens "
                "and allow_close=False, so every judgment has exactly the budgeted think tokens"
            )
        self.workload = build_workload(judge, self.spec)
        self._warm = False

    # ------------------------------------------------------------ prompts

    def prompt(self, a: int, b: int) -> list[int]:
        """The token ids the model is fed when response a is shown as A and response b as B."""
        w = self.workload
        judge = self.judge
        return judge.renderer.prompt_tokens(w.question, w.responses[a], w.responses[b], judge.settings)

    def _prompt_of(self, judgment: Judgment, default_pair: tuple[int, int]) -> list[int]:
        i, j = judgment.pair if judgment.pair is not None else default_pair
        return self.prompt(i, j) if judgment.order == "AB" else self.prompt(j, i)

    def prepare(self) -> None:
        """Size the context for the longest prompt and page the weights in, outside any timing."""
        if self._warm:
            return
        engine = self.engine
        n = self.spec.n_responses
        longest = max(len(self.prompt(i, j)) for i in range(n) for j in range(n) if i != j)
        # Every operation runs in a context of the same shape, made here, outside the timings.
        engine.reserve(engine.parallel, longest + self.spec.think_tokens + ANSWER_MARGIN)
        warm = self.prompt(0, 1)
        engine.generate([GenerationRequest(prompt=warm[:64], max_think_tokens=2, allow_close=False)])
        engine.clear_cache()
        self._warm = True

    # ------------------------------------------------------------ operations

    def run(
        self,
        operations: Sequence[str] = OPERATIONS,
        progress: Callable[[str], None] | None = None,
        rounds: int = 1,
    ) -> BenchReport:
        """Every named operation, each from an empty prefix cache; ratios against compare.

        With `rounds` > 1 the whole list runs that many times, interleaved (compare, swap, ...,
        compare, swap, ...), and each operation reports its mean times: on a shared machine the
        load drifts over minutes, and interleaving spreads the drift over every operation alike.
        """
        if rounds < 1:
            raise InputError("rounds must be at least 1")
        self.prepare()
        judge = self.judge
        engine = self.engine
        report = BenchReport(
            model=judge.model.to_dict(),
            machine={
                "threads": engine.n_threads,
                "cpu_count": os.cpu_count(),
                "n_gpu_layers": engine.n_gpu_layers,
                "gpu_offload": engine.gpu_offload,
                "n_parallel": engine.parallel,
                "n_batch": engine.settings.n_batch,
                "kv_type": engine.kv_type,
                "speculative": engine.speculative,
                "repack": engine.repack,
                "flash_attn": engine.flash_attn,
                "kv_unified": engine.kv_unified,
            },
            workload=asdict(self.spec) | {"reference": self.spec.is_reference},
            prompt_tokens_per_judgment=len(self.prompt(0, 1)),
            rounds=rounds,
        )
        runs: dict[str, list[OperationResult]] = {name: [] for name in operations}
        for r in range(rounds):
            for name in operations:
                if progress:
                    progress(name if rounds == 1 else f"{name} (round {r + 1}/{rounds})")
                runs[name].append(self.run_operation(name))
        report.operations = [_mean_of(runs[name]) for name in operations]
        report.memory = {
            "peak_rss_bytes": peak_rss_bytes(),
            "kv_streams": engine.n_slots,
            "kv_cells_per_stream": engine.n_ctx_seq,
            "kv_bytes": engine.kv_bytes(engine.n_slots, engine.n_ctx_seq),
        }
        compare = report.operation("compare")
        if compare is not None:
            for op in report.operations:
                op.wall_vs_compare = op.wall_seconds / compare.wall_seconds
        return report

    def run_operation(self, name: str) -> OperationResult:
        """One operation, timed from a cold prefix cache (the engine forgets every cached prompt)."""
        self.prepare()
        w = self.workload
        judge = self.judge
        engine = self.engine
        engine.clear_cache()
        before: BackendStats = engine.stats.snapshot()
        started = time.perf_counter()
        if name == "compare":
            result: Any = judge.compare(w.question, w.responses[0], w.responses[1])
            verdict = f"winner {result.winner}"
        elif name == "swap":
            result = judge.compare(w.question, w.responses[0], w.responses[1], swap=True)
            verdict = f"winner {result.winner}"
        elif name == "vote":
            result = judge.vote(
                w.question,
                w.responses[0],
                w.responses[1],
                k=self.spec.votes,
                temperature=self.spec.vote_temperature,
                top_p=self.spec.vote_top_p,
            )
            verdict = f"winner {result.winner} ({result.votes['a']}-{result.votes['b']})"
        elif name == "best-of-8":
            result = judge.best_of_n(w.question, list(w.responses))
            verdict = f"best {result.best}"
        elif name == "rank-8":
            result = judge.rank(w.question, list(w.responses), method="round-robin")
            verdict = "ranking " + ",".join(str(i) for i in result.ranking)
        else:
            raise InputError(f"unknown operation {name!r}: choose from {', '.join(OPERATIONS)}")
        wall = time.perf_counter() - started
        stats = engine.stats.since(before)
        judgments: list[Judgment] = list(result.judgments)
        prompts = [self._prompt_of(j, (0, 1)) for j in judgments]
        think = [j.think_tokens for j in judgments]
        budget = self.spec.think_tokens
        return OperationResult(
            name=name,
            wall_seconds=wall,
            judgments=len(judgments),
            think_tokens_exact=all(t == budget for t in think) and all(j.forced_close for j in judgments),
            think_tokens_min=min(think),
            think_tokens_max=max(think),
            generated_tokens=stats.generated_tokens,
            prompt_tokens_evaluated=stats.prompt_tokens,
            prompt_tokens_unique=unique_prompt_tokens(prompts),
            prompt_tokens_total=sum(len(p) for p in prompts),
            prefill_seconds=stats.prefill_seconds,
            decode_seconds=stats.decode_seconds,
            sample_seconds=stats.sample_seconds,
            grammar_seconds=stats.grammar_seconds,
            grammar_fallbacks=stats.grammar_fallbacks,
            decode_calls=stats.decode_calls,
            drafted=stats.drafted,
            accepted=stats.accepted,
            verdict=verdict,
        )


def format_report(report: BenchReport) -> str:
    """A readable table of the report (what `gram-local bench` prints without --json)."""
    spec = report.workload
    model = report.model
    lines = [
        f"model: {model.get('path')} ({model.get('quantization')})",
        f"workload: question {spec['question_tokens']} tokens, responses {spec['response_tokens']} tokens "
        f"x {spec['n_responses']}, {spec['think_tokens']} think tokens per judgment, "
        f"{report.prompt_tokens_per_judgment} prompt tokens per judgment"
        + ("" if spec.get("reference") else "  [NOT the reference workload: not comparable]"),
        f"machine: {report.machine['threads']} threads, {report.machine['n_gpu_layers']} GPU layers, "
        f"{report.machine['n_parallel']} sequences, speculative {'on' if report.machine['speculative'] else 'off'}, "
        f"weights {'repacked' if report.machine.get('repack', True) else 'plain'}, "
        f"flash attention {'on' if report.machine.get('flash_attn', True) else 'off'}, "
        f"KV {'unified' if report.machine.get('kv_unified', True) else 'one stream per sequence'}"
        + (f", mean of {report.rounds} interleaved rounds" if report.rounds > 1 else ""),
        "",
        f"{'operation':<10} {'wall s':>8} {'x cmp':>6} {'judg':>5} {'prefill t/s':>11} {'decode t/s':>10} "
        f"{'grammar':>8} {'ms/tok':>6} {'evaluated':>9} {'unique':>7} {'ev/uniq':>7}  verdict",
    ]
    for op in report.operations:
        lines.append(
            f"{op.name:<10} {op.wall_seconds:>8.2f} {_fmt(op.wall_vs_compare, '.2f'):>6} {op.judgments:>5} "
            f"{_fmt(op.prefill_tokens_per_s, '.1f'):>11} {_fmt(op.decode_tokens_per_s, '.2f'):>10} "
            f"{_fmt(op.grammar_share, '.2%'):>8} {_fmt(op.grammar_ms_per_token, '.2f'):>6} "
            f"{op.prompt_tokens_evaluated:>9} {op.prompt_tokens_unique:>7} {_fmt(op.evaluated_over_unique, '.3f'):>7}  "
            f"{op.verdict}" + ("" if op.think_tokens_exact else f"  [think tokens {op.think_tokens_min}-{op.think_tokens_max}!]")
        )
    s = report.summary()
    lines += [
        "",
        "decode t/s: generated tokens / decode time (aggregate over the sequences decoded together); "
        "grammar: grammar time / decode time and ms per generated token; evaluated: prompt tokens the "
        "engine computed; unique: size of the prefix trie of the operation's prompts.",
    ]
    if s["pairs_per_hour_both_orders"] is not None:
        lines.append(f"judged pairs per hour, both orders: {s['pairs_per_hour_both_orders']:.1f}")
    m = report.memory
    if m:
        lines.append(
            f"memory: peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB; KV {m['kv_bytes'] / 2**30:.2f} GiB "
            f"({m['kv_streams']} streams x {m['kv_cells_per_stream']} cells: the bench reserves --parallel streams up front)"
        )
    if s["decode_wall_tokens_per_s"] is not None:
        lines.append(
            f"single-sequence decode, wall clock after the prefill (grammar, sampling, Python included): "
            f"{s['decode_wall_tokens_per_s']:.2f} tok/s"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
