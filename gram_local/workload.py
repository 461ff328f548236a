"""The benchmark's fixed workload: a GRAM-RR prompt of exact token counts on any vocabulary.

Texts are built from a seeded word list and fitted to the exact token counts with the model's own
tokenizer, so the workload has the same shape on any vocabulary and ratios cannot be tuned.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gram_local.config import DEFAULT_VOTES, VOTE_TEMPERATURE, VOTE_TOP_P
from gram_local.errors import InputError
from gram_local.judge import Judge

# Plain, common words that most vocabularies hold as single tokens, so fitting converges quickly.
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more "
    "can about out up time into only other new some could these two may first then do any like my "
    "now over such our man me even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under never day "
    "same another know while last might us great old year off come since against go came right used "
    "take three light water house small place number part found around give home large city "
    "river stone garden market table window letter answer method reason simple result system value "
    "model paper figure test sample order level point rate line group field plan share price"
).split()


@dataclass(frozen=True)
class WorkloadSpec:
    """The sizes of the workload; the defaults are the reference workload of the throughput issue."""

    question_tokens: int = 200
    response_tokens: int = 400
    n_responses: int = 8
    think_tokens: int = 256
    votes: int = DEFAULT_VOTES
    vote_temperature: float = VOTE_TEMPERATURE
    vote_top_p: float = VOTE_TOP_P
    seed: int = 0

    def __post_init__(self) -> None:
        if self.question_tokens < 1 or self.response_tokens < 1:
            raise InputError("the question and responses need at least one token each")
        if self.n_responses < 2:
            raise InputError("the workload needs at least two responses")
        if self.think_tokens < 1:
            raise InputError("--think-tokens must be at least 1 (the benchmark measures decoding)")
        if self.votes < 1:
            raise InputError("the vote needs at least one sample")

    @property
    def is_reference(self) -> bool:
        """Whether these are the issue's sizes (results comparable with other machines' runs)."""
        return self == WorkloadSpec(seed=self.seed)


@dataclass(frozen=True)
class Workload:
    """The texts of the workload, fitted to the spec's token counts for one model."""

    spec: WorkloadSpec
    question: str
    responses: tuple[str, ...]


def _word_stream(seed: int) -> Iterable[str]:
    """An endless, seeded sequence of words with sentence capitals and full stops."""
    rng = random.Random(seed)
    start_sentence = True
    while True:
        word = rng.choice(_WORDS)
        if start_sentence:
            word = word.capitalize()
            start_sentence = False
        elif rng.random() < 0.08:
            word += "."
            start_sentence = True
        yield word


def fit_text(count_tokens: Callable[[str], int], target: int, seed: int) -> str:
    """Text of exactly `target` tokens under `count_tokens`, built from seeded words.

    Words are appended while the count stays within the target; a word that would overshoot is
    skipped for the next one. The text starts and ends with a letter (no trailing full stop), so the
    tokens at its edges do not merge with the newlines around it in the prompt.
    """
    words: list[str] = []
    count = 0
    skipped = 0
    stream = iter(_word_stream(seed))
    while count < target:
        word = next(stream)
        candidate = " ".join([*words, word])
        n = count_tokens(candidate)
        if n <= target and not (n == target and word.endswith(".")):
            words.append(word)
            count = n
            skipped = 0
        else:
            skipped += 1
            if skipped > 200:
                raise RuntimeError(f"cannot fit a text to exactly {target} tokens with this vocabulary")
    text = " ".join(words)
    if count_tokens(text) != target:  # pragma: no cover - the loop above guarantees it
        raise RuntimeError(f"fitted text has {count_tokens(text)} tokens, not {target}")
    return text


def build_workload(judge: Judge, spec: WorkloadSpec | None = None) -> Workload:
    """The question and responses of the workload, with exact token counts on this model."""
    spec = spec or WorkloadSpec()
    engine = judge.backend

    def count(text: str) -> int:
        return len(engine.tokenize(text, special=False))

    question = fit_text(count, spec.question_tokens, seed=spec.seed * 1000 + 1)
    responses = tuple(fit_text(count, spec.response_tokens, seed=spec.seed * 1000 + 100 + i) for i in range(spec.n_responses))
    return Workload(spec=spec, question=question, responses=responses)


def unique_prompt_tokens(prompts: Iterable[Sequence[int]]) -> int:
    """Nodes of the prefix trie of the prompts: what a perfect prefix cache has to evaluate.

    In lexicographic order, the longest prefix a prompt shares with any earlier prompt is the one
    it shares with its predecessor, so the trie size is the sum of lengths less those prefixes.
    """
    ordered = sorted(set(tuple(p) for p in prompts))
    total = 0
    previous: tuple[int, ...] = ()
    for prompt in ordered:
        shared = 0
        for x, y in zip(previous, prompt):
            if x != y:
                break
            shared += 1
        total += len(prompt) - shared
        previous = prompt
    return total
