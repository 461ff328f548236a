"""Judge operations: turn questions and responses into verdicts through the engine.

compare, vote, rank and best-of-n all reduce to pairwise generations; this module renders the
prompts, asks the engine for many generations at once, and maps every answer back to the inputs
as given (a judgment shown in order "BA" prefers input b when the model writes A).
"""

from __future__ import annotations

import hashlib
import os
import time
from array import array
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Iterator, Literal, Sequence

from gram_local import __version__
from gram_local.engine import Engine, EngineStats, Generation, GenerationRequest, SamplerSpec, common_prefix
from gram_local.errors import ContextOverflowError, GramLocalError, InputError, ModelError
from gram_local.grammar import ANSWER_CLOSE, ANSWER_SLOT_PREFIX, parse_reply
from gram_local.prompt import (
    DEFAULT_DATE,
    THINK_OPEN,
    Piece,
    fill_pairwise,
    is_llama3_template,
    merge_text,
    normalize_date,
    pieces_text,
    render_chat_template,
    render_llama3,
    with_reply_opening,
)
from gram_local.ranking import PairOutcome, bradley_terry, knockout, merge_sort, order_by_scores, round_robin
from gram_local.results import (
    BestOfNResult,
    Comparison,
    CompareResult,
    Judgment,
    ModelInfo,
    PromptView,
    RankResult,
    Timings,
    VoteResult,
)

RankMethod = Literal["sort", "round-robin"]
_ANSWER_MARGIN = 16  # tokens kept free after the think budget for the closing and the answer


@dataclass(frozen=True)
class JudgeSettings:
    """Everything besides the model that decides a verdict; recorded with every result."""

    date: str = DEFAULT_DATE
    max_think_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    vote_temperature: float = 0.6
    vote_top_p: float = 0.9
    # Per-sequence context; None sizes it to the prompts at hand (up to the model's own).
    n_ctx: int | None = None
    # False: the model cannot end its think block; the budget does (benchmarks only).
    allow_close: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "date", normalize_date(self.date))
        if self.max_think_tokens < 0:
            raise InputError("--max-think-tokens must be 0 or more")
        for name in ("temperature", "vote_temperature"):
            if getattr(self, name) < 0:
                raise InputError(f"{name.replace('_', '-')} must be 0 or more")
        for name in ("top_p", "vote_top_p"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(f"{name.replace('_', '-')} must be in (0, 1]")


@dataclass
class _Task:
    """One generation to run: which inputs, in which order, with which sampler."""

    pair: tuple[int, int] | None
    order: Literal["AB", "BA"]
    request: GenerationRequest


class Judge:
    """A GRAM-RR judge over one loaded model. Not thread-safe: one operation at a time."""

    def __init__(
        self,
        engine: Engine,
        *,
        model: ModelInfo,
        settings: JudgeSettings | None = None,
        head_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.settings = settings or JudgeSettings()
        # Where the instruction head's KV is kept between processes (None: in memory only).
        self.head_cache_dir = Path(head_cache_dir) if head_cache_dir is not None else None
        self._heads: dict[str, list[int]] = {}
        self._pruned = False
        template = engine.metadata.chat_template
        if is_llama3_template(template) or (template is None and "<|start_header_id|>" in engine.special_texts):
            self.chat_format = "llama-3"
        elif template:
            self.chat_format = "gguf-template"
        else:
            raise ModelError(f"{model.path} has no chat template and is not a Llama-3 model; cannot render the prompt")
        if self.settings.n_ctx is not None:
            if self.settings.n_ctx > engine.n_ctx_train:
                raise InputError(f"--ctx {self.settings.n_ctx} is over the model's context of {engine.n_ctx_train}")
            engine.ensure_context(self.settings.n_ctx)

    # ---------------------------------------------------------------- prompts

    def render(self, question: str, response_a: str, response_b: str, *, settings: JudgeSettings | None = None) -> list[Piece]:
        """The prompt pieces the model sees for one ordering, up to `<think>\\n` (or the answer slot)."""
        settings = settings or self.settings
        _require_text("question", question)
        _require_text("response a", response_a)
        _require_text("response b", response_b)
        content = fill_pairwise(question, response_a, response_b)
        if self.chat_format == "llama-3":
            pieces = render_llama3(content, date=settings.date)
        else:
            engine = self.engine
            pieces = render_chat_template(
                engine.metadata.chat_template or "",
                content,
                special_tokens=engine.special_texts,
                bos_token=engine.token_text(engine.bos_id) if engine.bos_id >= 0 else "",
                date=settings.date,
            )
        pieces = with_reply_opening(pieces)
        if settings.max_think_tokens == 0:
            pieces = merge_text([*pieces, Piece(ANSWER_SLOT_PREFIX)])
        return pieces

    def tokenize_pieces(self, pieces: Sequence[Piece]) -> list[int]:
        """Template special tokens by id; every text piece with special-token parsing off.

        A text piece that still produced a special id would mean user text could steer the
        chat structure; that is checked, not assumed.
        """
        engine = self.engine
        tokens: list[int] = []
        bos_text = engine.token_text(engine.bos_id) if engine.bos_id >= 0 else None
        if engine.add_bos and not (pieces and pieces[0].special and pieces[0].text == bos_text):
            tokens.append(engine.bos_id)
        for piece in pieces:
            if piece.special:
                ids = engine.tokenize(piece.text, special=True)
                if len(ids) != 1 or not engine.is_special(ids[0]):
                    raise ModelError(f"the model has no special token {piece.text!r} its chat template uses")
            else:
                ids = engine.tokenize(piece.text, special=False)
                if any(engine.is_special(t) for t in ids):  # pragma: no cover - llama.cpp guarantees it
                    raise InputError("text tokenized to a special token; refusing to judge it")
            tokens.extend(ids)
        return tokens

    def prompt(self, question: str, response_a: str, response_b: str) -> PromptView:
        """Exactly what the model is fed for the order a, b."""
        pieces = self.render(question, response_a, response_b)
        tokens = self.tokenize_pieces(pieces)
        self._check_fits(len(tokens), self.settings)
        return PromptView(text=pieces_text(pieces), tokens=tokens, model=self.model)

    def head_tokens(self, settings: JudgeSettings | None = None) -> list[int]:
        """The tokens every prompt starts with: the chat header and the instructions before the question.

        Found as the common prefix of prompts for unlike questions, so a question whose first
        characters merge with the text before it (BPE) cannot make the head wrong.
        """
        settings = settings or self.settings
        if settings.date not in self._heads:
            probes = ("x", "\n\n1", " !", "]", "日本")
            prompts = [self.tokenize_pieces(self.render(q, "y", "z", settings=settings)) for q in probes]
            n = min(common_prefix(prompts[0], p) for p in prompts[1:])
            self._heads[settings.date] = prompts[0][:n]
        return self._heads[settings.date]

    def head_cache_path(self, settings: JudgeSettings | None = None) -> Path | None:
        """The file for the head's KV: keyed by the model's SHA-256, what shapes the KV values
        (weights layout, offload, llama.cpp version) and the head's tokens."""
        if self.head_cache_dir is None or not self.model.sha256:
            return None
        key = hashlib.sha256()
        key.update(f"{self.model.sha256}|{self.engine.kv_identity}|".encode())
        key.update(array("i", self.head_tokens(settings)).tobytes())
        return self.head_cache_dir / f"head-{key.hexdigest()[:32]}.kv"

    def _prepare_head(self, settings: JudgeSettings) -> None:
        path = self.head_cache_path(settings)
        self.engine.keep_prefix_on_disk(self.head_tokens(settings) if path else None, path)
        if path is not None and not self._pruned:
            self._pruned = True
            _prune_head_cache(path.parent, keep=path)

    def _check_fits(self, n_tokens: int, settings: JudgeSettings) -> None:
        limit = settings.n_ctx or self.engine.n_ctx_train
        room = limit - settings.max_think_tokens - _ANSWER_MARGIN
        if n_tokens > room:
            raise ContextOverflowError(n_tokens, max(room, 0))

    def _request(
        self, question: str, shown_a: str, shown_b: str, sampler: SamplerSpec, settings: JudgeSettings
    ) -> GenerationRequest:
        tokens = self.tokenize_pieces(self.render(question, shown_a, shown_b, settings=settings))
        self._check_fits(len(tokens), settings)
        return GenerationRequest(
            prompt=tokens,
            sampler=sampler,
            max_think_tokens=settings.max_think_tokens,
            allow_close=settings.allow_close,
            at_answer_slot=settings.max_think_tokens == 0,
        )

    # ---------------------------------------------------------------- running

    def _run(self, tasks: list[_Task], settings: JudgeSettings) -> tuple[list[Judgment], Timings]:
        started = time.perf_counter()
        before = self.engine.stats.snapshot()
        self._prepare_head(settings)
        generations = self.engine.generate([t.request for t in tasks])
        timings = _timings(self.engine.stats.since(before), time.perf_counter() - started)
        return [self._judgment(t, g, settings) for t, g in zip(tasks, generations)], timings

    def _judgment(self, task: _Task, gen: Generation, settings: JudgeSettings) -> Judgment:
        prefilled = ANSWER_SLOT_PREFIX if task.request.at_answer_slot else ""
        output = THINK_OPEN + gen.text + prefilled + gen.answer + ANSWER_CLOSE
        parsed = parse_reply(output)  # the engine guarantees the format; verify, never trust
        p_shown_a = gen.p_answer_a
        if task.order == "AB":
            prefers, p_a = ("a" if parsed.answer == "A" else "b"), p_shown_a
        else:
            prefers, p_a = ("b" if parsed.answer == "A" else "a"), 1.0 - p_shown_a
        return Judgment(
            order=task.order,
            answer=parsed.answer,  # type: ignore[arg-type]
            prefers=prefers,  # type: ignore[arg-type]
            p_a=p_a,
            rationale=parsed.rationale,
            think_tokens=gen.think_tokens,
            forced_close=gen.forced_close,
            pair=task.pair,
            output=output,
        )

    def _sampler(self, settings: JudgeSettings, offset: int = 0) -> SamplerSpec:
        return SamplerSpec(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed + offset)

    def _pair_tasks(
        self, question: str, a: str, b: str, *, swap: bool, settings: JudgeSettings, pair: tuple[int, int] | None = None, seed_offset: int = 0
    ) -> list[_Task]:
        tasks = [_Task(pair, "AB", self._request(question, a, b, self._sampler(settings, seed_offset), settings))]
        if swap:
            tasks.append(_Task(pair, "BA", self._request(question, b, a, self._sampler(settings, seed_offset + 1), settings)))
        return tasks

    def _stamp(self, result: Any, settings: JudgeSettings, timings: Timings, **extra: Any) -> Any:
        result.model = self.model
        result.settings = self.settings_record(settings) | extra
        result.timings = timings
        return result

    def settings_record(self, settings: JudgeSettings | None = None) -> dict[str, Any]:
        """What produced a result: enough to tell whether two results are comparable."""
        s = settings or self.settings
        return {
            "model_sha256": self.model.sha256,
            "quantization": self.model.quantization,
            "chat_format": self.chat_format,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "max_think_tokens": s.max_think_tokens,
            "think_may_close": s.allow_close,
            "date": s.date,
            "gram_local_version": __version__,
        }

    def _with(self, **overrides: Any) -> JudgeSettings:
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.settings, **changes) if changes else self.settings

    # ---------------------------------------------------------------- operations

    def compare(self, question: str, a: str, b: str, *, swap: bool = False, **overrides: Any) -> CompareResult:
        """Which of a and b answers the question better; with swap, both orders (disagreement: tie)."""
        settings = self._with(**overrides)
        judgments, timings = self._run(self._pair_tasks(question, a, b, swap=swap, settings=settings), settings)
        result = _compare_result(judgments)
        return self._stamp(result, settings, timings, swap=swap)

    def compare_many(
        self, items: Iterable[tuple[str, str, str]], *, swap: bool = False, **overrides: Any
    ) -> Iterator[CompareResult | GramLocalError]:
        """Many comparisons decoded together, yielded in input order as soon as each is done.

        A bad item yields its error instead of a result; the others go on.
        """
        settings = self._with(**overrides)
        prepared: list[list[_Task] | GramLocalError] = []
        for question, a, b in items:
            try:
                prepared.append(self._pair_tasks(question, a, b, swap=swap, settings=settings))
            except InputError as exc:
                prepared.append(exc)
        flat: list[_Task] = []
        owner: list[int] = []
        for item, p in enumerate(prepared):
            if isinstance(p, list):
                flat += p
                owner += [item] * len(p)
        done: dict[int, dict[int, Judgment]] = {}
        next_item = 0
        clock = _Clock(self.engine)

        def ready() -> Iterator[CompareResult | GramLocalError]:
            nonlocal next_item, clock
            finished: list[CompareResult | GramLocalError] = []
            while next_item < len(prepared):
                p = prepared[next_item]
                if isinstance(p, list):
                    mine = done.get(next_item, {})
                    if len(mine) < len(p):
                        break
                    finished.append(_compare_result([mine[k] for k in sorted(mine)]))
                else:
                    finished.append(p)
                next_item += 1
            results = [r for r in finished if isinstance(r, CompareResult)]
            if results:  # the time since the last yield, shared by what it finished
                share = _scale_timings(clock.timings(), 1.0 / len(results))
                clock = _Clock(self.engine)
                for r in results:
                    self._stamp(r, settings, share, swap=swap)
            yield from finished

        yield from ready()
        self._prepare_head(settings)
        for index, generation in self.engine.generate_iter([t.request for t in flat]):
            done.setdefault(owner[index], {})[index] = self._judgment(flat[index], generation, settings)
            yield from ready()

    def vote(
        self,
        question: str,
        a: str,
        b: str,
        *,
        k: int = 8,
        temperature: float | None = None,
        top_p: float | None = None,
        **overrides: Any,
    ) -> VoteResult:
        """k sampled judgments in one order; the majority wins, an even split goes to the mean p_a."""
        if k < 1:
            raise InputError("--votes must be at least 1")
        settings = self._with(**overrides)
        settings = replace(
            settings,
            temperature=settings.vote_temperature if temperature is None else temperature,
            top_p=settings.vote_top_p if top_p is None else top_p,
        )
        tasks = [
            _Task(None, "AB", self._request(question, a, b, self._sampler(settings, i), settings)) for i in range(k)
        ]
        judgments, timings = self._run(tasks, settings)
        votes = {"a": sum(j.prefers == "a" for j in judgments), "b": sum(j.prefers == "b" for j in judgments)}
        p_a = sum(j.p_a for j in judgments) / len(judgments)
        if votes["a"] != votes["b"]:
            winner = "a" if votes["a"] > votes["b"] else "b"
        else:
            winner = "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"
        result = VoteResult(winner=winner, votes=votes, p_a=p_a, judgments=judgments)
        return self._stamp(result, settings, timings, votes=k)

    def rank(
        self, question: str, responses: Sequence[str], *, method: RankMethod = "sort", swap: bool = False, **overrides: Any
    ) -> RankResult:
        """All responses best first: a comparison sort, or round-robin with Bradley-Terry scores."""
        settings = self._with(**overrides)
        self._check_responses(question, responses)
        judge_pairs, judgments, clock = self._pair_judge(question, responses, swap, settings)
        if method == "sort":
            ranking, outcomes = merge_sort(len(responses), judge_pairs)
            scores = bradley_terry(len(responses), outcomes)
        elif method == "round-robin":
            ranking, scores, outcomes = round_robin(len(responses), judge_pairs)
        else:
            raise InputError(f"unknown ranking method {method!r}: use 'sort' or 'round-robin'")
        result = RankResult(
            ranking=ranking,
            scores=[float(s) for s in scores],
            comparisons=[Comparison(o.a, o.b, o.winner, o.p_a) for o in outcomes],
            judgments=judgments,
        )
        return self._stamp(result, settings, clock.timings(), method=method, swap=swap)

    def best_of_n(self, question: str, responses: Sequence[str], *, swap: bool = False, **overrides: Any) -> BestOfNResult:
        """The best response by knockout, in n-1 comparisons."""
        settings = self._with(**overrides)
        self._check_responses(question, responses)
        judge_pairs, judgments, clock = self._pair_judge(question, responses, swap, settings)
        best, outcomes = knockout(len(responses), judge_pairs)
        result = BestOfNResult(
            best=best, comparisons=[Comparison(o.a, o.b, o.winner, o.p_a) for o in outcomes], judgments=judgments
        )
        return self._stamp(result, settings, clock.timings(), swap=swap)

    def _check_responses(self, question: str, responses: Sequence[str]) -> None:
        _require_text("question", question)
        if len(responses) < 2:
            raise InputError(f"need at least two responses, got {len(responses)}")
        for i, response in enumerate(responses):
            _require_text(f"response {i}", response)

    def _pair_judge(
        self, question: str, responses: Sequence[str], swap: bool, settings: JudgeSettings
    ) -> tuple[Any, list[Judgment], "_Clock"]:
        judgments: list[Judgment] = []
        clock = _Clock(self.engine)

        def judge_pairs(pairs: list[tuple[int, int]]) -> list[PairOutcome]:
            tasks: list[_Task] = []
            for i, j in pairs:
                tasks += self._pair_tasks(question, responses[i], responses[j], swap=swap, settings=settings, pair=(i, j))
            made, _ = self._run(tasks, settings)
            judgments.extend(made)
            per = 2 if swap else 1
            outcomes = []
            for k, (i, j) in enumerate(pairs):
                summary = _compare_result(made[k * per:(k + 1) * per])
                outcomes.append(PairOutcome(i, j, summary.winner, summary.p_a))
            return outcomes

        return judge_pairs, judgments, clock


class _Clock:
    """Timings of a multi-round operation: wall time and engine counters since it started."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started = time.perf_counter()
        self.before = engine.stats.snapshot()

    def timings(self) -> Timings:
        return _timings(self.engine.stats.since(self.before), time.perf_counter() - self.started)


def _compare_result(judgments: list[Judgment]) -> CompareResult:
    preferred = {j.prefers for j in judgments}
    winner = preferred.pop() if len(preferred) == 1 else "tie"
    p_a = sum(j.p_a for j in judgments) / len(judgments)
    return CompareResult(winner=winner, p_a=p_a, judgments=judgments)  # type: ignore[arg-type]


def _require_text(name: str, text: str) -> None:
    if not isinstance(text, str):
        raise InputError(f"{name} must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{name} is empty")


def _timings(stats: EngineStats, wall: float) -> Timings:
    return Timings(
        seconds=round(wall, 4),
        prompt_tokens=stats.prompt_tokens,
        generated_tokens=stats.generated_tokens,
        prefill_seconds=round(stats.prefill_seconds, 4),
        decode_seconds=round(stats.decode_seconds, 4),
        prefill_tokens_per_s=round(stats.prompt_tokens / stats.prefill_seconds, 2) if stats.prefill_seconds else None,
        decode_tokens_per_s=round(stats.generated_tokens / stats.decode_seconds, 2) if stats.decode_seconds else None,
        restored_tokens=stats.restored_tokens,
    )


def _scale_timings(t: Timings, factor: float) -> Timings:
    return replace(
        t,
        seconds=round(t.seconds * factor, 4),
        prompt_tokens=round(t.prompt_tokens * factor),
        generated_tokens=round(t.generated_tokens * factor),
        prefill_seconds=round(t.prefill_seconds * factor, 4),
        decode_seconds=round(t.decode_seconds * factor, 4),
        restored_tokens=round(t.restored_tokens * factor),
    )


#: Head files kept in the cache folder (one per model, date and build; ~50 MB each for 3B).
HEAD_CACHE_FILES = 8


def _prune_head_cache(folder: Path, *, keep: Path) -> None:
    """Remove all but the newest (most recently used) head files, and temporary files that an
    interrupted write left (old ones only: another process may be writing a new one)."""
    now = time.time()
    heads: list[tuple[float, Path]] = []
    leftovers: list[Path] = []
    try:
        entries = [p for p in folder.glob("head-*") if p != keep]
    except OSError:
        return
    for p in entries:
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if p.suffix == ".kv":
            heads.append((mtime, p))
        elif now - mtime > 600:
            leftovers.append(p)
    heads.sort(reverse=True)
    for stale in leftovers + [p for _, p in heads[HEAD_CACHE_FILES - 1:]]:
        try:
            stale.unlink()
        except OSError:
            pass


def load_judge(
    model: str | os.PathLike[str],
    *,
    quant: str | None = None,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int | None = None,
    n_parallel: int = 8,
    speculative: bool | None = None,
    repack: bool = True,
    flash_attn: bool | None = None,
    kv_unified: bool | None = None,
    head_cache: bool | str | os.PathLike[str] = True,
    date: str = DEFAULT_DATE,
    max_think_tokens: int = 2048,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    vote_temperature: float = 0.6,
    vote_top_p: float = 0.9,
    allow_close: bool = True,
) -> Judge:
    """Load a GGUF (a path, or a model name from the store) as a judge."""
    from gram_local.store import resolve_model, validate_gguf

    try:
        settings = JudgeSettings(
            date=date,
            max_think_tokens=max_think_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            vote_temperature=vote_temperature,
            vote_top_p=vote_top_p,
            n_ctx=n_ctx,
            allow_close=allow_close,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    resolved = resolve_model(model, quant=quant)
    validate_gguf(resolved.path)  # llama.cpp trusts the header: a damaged one must not reach it
    engine = Engine(
        resolved.path,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        n_parallel=n_parallel,
        speculative=speculative,
        repack=repack,
        flash_attn=flash_attn,
        kv_unified=kv_unified,
    )
    info = ModelInfo(
        path=str(resolved.path), name=resolved.name, sha256=resolved.sha256, quantization=resolved.quant or _quant_name(engine)
    )
    if head_cache is True:
        from gram_local.paths import kv_cache_dir

        head_cache_dir: str | os.PathLike[str] | None = kv_cache_dir()
    else:
        head_cache_dir = head_cache or None
    return Judge(engine, model=info, settings=settings, head_cache_dir=head_cache_dir)


def _quant_name(engine: Engine) -> str | None:
    """The file type llama.cpp reports (e.g. `Q4_K - Medium`), as the quantization of a bare path."""
    desc = engine.metadata.file_type
    parts = desc.split(" ", 2)
    return parts[2] if len(parts) == 3 else desc or None
