"""A model-free judge with the real Judge's surface, for batch and eval tests; and a CLI driver.

Run as a script, it is `gram-local batch` with this fake in place of the model, so the kill tests
exercise the real command in a real process:

    python tests/batch_fakes.py IN -o OUT [batch options]

Environment: FAKE_DELAY (seconds per generation), FAKE_STALL_AT / FAKE_STALL_MARKER (the n-th
record write stops halfway, creates the marker file and hangs: a window to kill -9 inside a line).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gram_local.errors import ContextOverflowError, GramLocalError, InputError
from gram_local.results import BestOfNResult, CompareResult, Comparison, Judgment, ModelInfo, RankResult, Timings, VoteResult

TOO_LONG = "TOO_LONG"  # a text containing this overflows the fake's context


class FakeJudge:
    """Deterministic verdicts: the longer response is better, plus `bias` towards the one shown first."""

    def __init__(self, *, seed: int = 0, max_think_tokens: int = 8, bias: float = 0.0, delay: float = 0.0) -> None:
        self.seed = seed
        self.max_think_tokens = max_think_tokens
        self.bias = bias
        self.delay = delay
        self.calls: list[tuple[str, int]] = []  # (operation, number of items)
        self.model = ModelInfo(path="fake.gguf", name="fake", sha256="f" * 64, quantization="F16")

    def settings_record(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model.sha256,
            "quantization": self.model.quantization,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": self.seed,
            "max_think_tokens": self.max_think_tokens,
            "date": "26 Jul 2024",
            "gram_local_version": "test",
        }

    # ------------------------------------------------------------------ one generation

    def _check(self, *texts: str) -> None:
        for text in texts:
            if not text.strip():
                raise InputError("a text is empty")
            if TOO_LONG in text:
                raise ContextOverflowError(9000, 4000)

    def _judgment(self, question: str, shown_a: str, shown_b: str, order: str, pair: tuple[int, int] | None = None) -> Judgment:
        if self.delay:
            time.sleep(self.delay)
        p_shown_a = 0.5 + 0.45 * math.tanh((len(shown_a) - len(shown_b)) / 8.0) + self.bias
        p_shown_a = min(max(p_shown_a, 0.0), 1.0)
        answer = "A" if p_shown_a >= 0.5 else "B"
        if order == "AB":
            prefers, p_a = ("a" if answer == "A" else "b"), p_shown_a
        else:
            prefers, p_a = ("b" if answer == "A" else "a"), 1.0 - p_shown_a
        rationale = f"Feedback: lengths {len(shown_a)} and {len(shown_b)}.\u2028Conclusion: {answer}."
        return Judgment(
            order=order,  # type: ignore[arg-type]
            answer=answer,  # type: ignore[arg-type]
            prefers=prefers,  # type: ignore[arg-type]
            p_a=p_a,
            rationale=rationale,
            think_tokens=min(self.max_think_tokens, 5),
            forced_close=False,
            pair=pair,
            output=f"<think>\n{rationale}</think>\n<answer>\n{answer}\n</answer>",
        )

    def _stamp(self, result: Any, **extra: Any) -> Any:
        result.model = self.model
        result.settings = self.settings_record() | extra
        result.timings = Timings(seconds=self.delay)
        return result

    def _pair(self, question: str, a: str, b: str, swap: bool, pair: tuple[int, int] | None = None) -> list[Judgment]:
        self._check(question, a, b)
        judgments = [self._judgment(question, a, b, "AB", pair)]
        if swap:
            judgments.append(self._judgment(question, b, a, "BA", pair))
        return judgments

    # ------------------------------------------------------------------ the Judge surface

    def compare(self, question: str, a: str, b: str, *, swap: bool = False) -> CompareResult:
        self.calls.append(("compare", 1))
        judgments = self._pair(question, a, b, swap)
        return self._stamp(_compare_result(judgments), swap=swap)

    def compare_many(self, items: Iterable[tuple[str, str, str]], *, swap: bool = False) -> Iterator[CompareResult | GramLocalError]:
        items = list(items)
        self.calls.append(("compare_many", len(items)))
        for question, a, b in items:
            try:
                judgments = self._pair(question, a, b, swap)
            except InputError as exc:
                yield exc
                continue
            yield self._stamp(_compare_result(judgments), swap=swap)

    def vote(self, question: str, a: str, b: str, *, k: int = 8, temperature: float | None = None, top_p: float | None = None) -> VoteResult:
        self.calls.append(("vote", 1))
        self._check(question, a, b)
        judgments = [self._judgment(question, a, b, "AB") for _ in range(k)]
        votes = {"a": sum(j.prefers == "a" for j in judgments), "b": sum(j.prefers == "b" for j in judgments)}
        p_a = sum(j.p_a for j in judgments) / k
        winner = "a" if votes["a"] > votes["b"] else "b" if votes["b"] > votes["a"] else "tie"
        return self._stamp(VoteResult(winner=winner, votes=votes, p_a=p_a, judgments=judgments), votes=k)  # type: ignore[arg-type]

    def rank(self, question: str, responses: Sequence[str], *, method: str = "sort", swap: bool = False) -> RankResult:
        self.calls.append(("rank", 1))
        self._check(question, *responses)
        if len(responses) < 2:
            raise InputError("need at least two responses to rank")
        judgments = [j for i in range(len(responses) - 1) for j in self._pair(question, responses[i], responses[i + 1], swap, (i, i + 1))]
        ranking = sorted(range(len(responses)), key=lambda i: -len(responses[i]))
        scores = [float(len(r)) for r in responses]
        comparisons = [Comparison(i, i + 1, "a" if len(responses[i]) > len(responses[i + 1]) else "b", 0.5) for i in range(len(responses) - 1)]
        return self._stamp(RankResult(ranking=ranking, scores=scores, comparisons=comparisons, judgments=judgments), method=method, swap=swap)

    def best_of_n(self, question: str, responses: Sequence[str], *, swap: bool = False) -> BestOfNResult:
        self.calls.append(("best_of_n", 1))
        self._check(question, *responses)
        ranking = sorted(range(len(responses)), key=lambda i: -len(responses[i]))
        judgments = self._pair(question, responses[0], responses[1], swap, (0, 1))
        return self._stamp(BestOfNResult(best=ranking[0], comparisons=[], judgments=judgments), swap=swap)


class Interrupting(FakeJudge):
    """Ctrl-C (KeyboardInterrupt) after `after` generations."""

    def __init__(self, after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after = after

    def _judgment(self, *args: Any, **kwargs: Any) -> Any:
        if self.after == 0:
            raise KeyboardInterrupt
        self.after -= 1
        return super()._judgment(*args, **kwargs)


def _compare_result(judgments: list[Judgment]) -> CompareResult:
    preferred = {j.prefers for j in judgments}
    winner = preferred.pop() if len(preferred) == 1 else "tie"
    return CompareResult(winner=winner, p_a=sum(j.p_a for j in judgments) / len(judgments), judgments=judgments)  # type: ignore[arg-type]


def _stalling_writer(stall_at: int, marker: Path) -> Any:
    """Replaces the batch's record writer: the n-th record is cut in half and the process hangs."""
    count = 0

    def write_all(fd: int, data: bytes) -> None:
        nonlocal count
        count += 1
        if count < stall_at:
            os.write(fd, data)
            return
        os.write(fd, data[: len(data) // 2])
        os.fsync(fd)
        marker.write_text("writing")
        time.sleep(120)
        os.write(fd, data[len(data) // 2 :])

    return write_all


def main(argv: list[str]) -> None:
    """`gram-local batch` with the fake judge: the real command, the real process, no model."""
    import gram_local.batch
    import gram_local.cli.batch

    judge = FakeJudge(delay=float(os.environ.get("FAKE_DELAY", "0")))
    gram_local.cli.batch.open_judge = lambda opts, **_: judge  # type: ignore[assignment]
    if os.environ.get("FAKE_STALL_AT"):
        gram_local.batch._write_all = _stalling_writer(int(os.environ["FAKE_STALL_AT"]), Path(os.environ["FAKE_STALL_MARKER"]))  # type: ignore[assignment]
    gram_local.cli.batch.batch_command.main(args=argv, prog_name="gram-local batch")


if __name__ == "__main__":
    main(sys.argv[1:])
