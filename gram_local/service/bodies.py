"""Request bodies of the service: JSON in, a checked call on the judge out. No web stack here.

A body holds the texts the CLI reads from stdin (`question` with `a` and `b`, or `responses`), the
options of the matching command (`swap`, `votes`, `method`) and, optionally, settings that override
the service's for this request only. Unknown fields are refused rather than ignored: a misspelt
`max_think_token` must not silently judge with the default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gram_local.config import DEFAULT_RANK_METHOD, DEFAULT_VOTES, POSITIONS
from gram_local.errors import InputError, RequestSyntaxError
from gram_local.operations import METHODS, OPERATIONS, ThinkCallback, with_overrides

if TYPE_CHECKING:
    from gram_local.judge import Judge
    from gram_local.runner import Program

# Settings a request may override, with the JSON type each must have.
OVERRIDES: dict[str, tuple[type, ...]] = {
    "max_think_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": (int,),
    "date": (str,),
    "position": (str,),
}

_FIELDS: dict[str, set[str]] = {
    "compare": {"a", "b", "swap"},
    "vote": {"a", "b", "votes"},
    "rank": {"responses", "method", "swap"},
    "best-of-n": {"responses", "swap"},
}
_COMMON = {"question", "stream"} | set(OVERRIDES)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service."""

    max_responses: int
    max_votes: int
    max_think_tokens: int


@dataclass(frozen=True)
class JudgeCall:
    """One checked request: which operation, on which texts, with which options."""

    op: str
    question: str
    a: str = ""
    b: str = ""
    responses: tuple[str, ...] = ()
    swap: bool = False
    votes: int = DEFAULT_VOTES
    method: str = DEFAULT_RANK_METHOD
    overrides: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False

    def program(self, judge: Judge, on_think: ThinkCallback | None = None) -> Program[Any]:
        """The judge's program for this call (rendering and the context check run when it starts)."""
        overrides = dict(self.overrides)
        if self.op == "vote":
            temperature, top_p = overrides.pop("temperature", None), overrides.pop("top_p", None)
            settings = judge.vote_settings(temperature, top_p, **overrides)
            return judge.vote_program(self.question, self.a, self.b, k=self.votes, settings=settings, on_think=on_think)
        settings = with_overrides(judge.settings, **overrides)
        if self.op == "compare":
            return judge.compare_program(self.question, self.a, self.b, swap=self.swap, settings=settings, on_think=on_think)
        if self.op == "rank":
            return judge.rank_program(self.question, self.responses, method=self.method, swap=self.swap, settings=settings,
                                      on_think=on_think)
        return judge.best_of_n_program(self.question, self.responses, swap=self.swap, settings=settings, on_think=on_think)

    def order_of(self, index: int) -> str | None:
        """The order judgment `index` shows the pair in, where it is known before it is made."""
        if self.op == "compare":
            return "BA" if self.swap and index == 1 else "AB"
        if self.op == "vote":
            return "AB"
        return None  # rank and best-of-n: a coin per pair; the result's judgments say


@dataclass(frozen=True)
class PromptCall:
    """One checked `/v1/prompt` request: the pair, and the settings that shape its prompt."""

    question: str
    a: str
    b: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


PROMPT_FIELDS = {"question", "a", "b"} | set(OVERRIDES)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A body as one JSON object (400 for what is not JSON, 422 for JSON that is not an object)."""
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise RequestSyntaxError("the body's JSON is nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise RequestSyntaxError("the body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise RequestSyntaxError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:  # an integer over Python's digit limit
        raise RequestSyntaxError(f"the body's JSON cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    return data


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InputError(f"'{key}' must be a string" if key in data else f"missing '{key}'")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"'{key}' must be true or false")
    return value


def _overrides(data: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, types in OVERRIDES.items():
        if key not in data or data[key] is None:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types) or (isinstance(value, float) and not math.isfinite(value)):
            kind = "an integer" if types == (int,) else "a number" if float in types else "a string"
            raise InputError(f"'{key}' must be {kind}")
        found[key] = value
    budget = found.get("max_think_tokens")
    if budget is not None and not 0 <= budget <= limits.max_think_tokens:
        raise InputError(f"'max_think_tokens' must be between 0 and this service's limit of {limits.max_think_tokens}, got {budget}")
    if "position" in found and found["position"] not in POSITIONS:
        raise InputError(f"'position' must be one of {', '.join(POSITIONS)}")
    return found


def parse_call(op: str, data: Mapping[str, Any], limits: Limits) -> JudgeCall:
    """Check a body for `op` against the fields it may have and the service's limits."""
    if op not in _FIELDS:
        raise InputError(f"unknown operation {op!r}: use one of {', '.join(OPERATIONS)}")
    unknown = sorted(set(data) - _FIELDS[op] - _COMMON)
    if unknown:
        raise InputError(f"unknown field(s) for {op}: {', '.join(unknown)}")
    question = _text(data, "question")
    stream = _flag(data, "stream")
    overrides = _overrides(data, limits)
    if op in ("compare", "vote"):
        a, b = _text(data, "a"), _text(data, "b")
        if op == "compare":
            return JudgeCall(op, question, a, b, swap=_flag(data, "swap"), overrides=overrides, stream=stream)
        votes = data.get("votes", DEFAULT_VOTES)
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
            raise InputError("'votes' must be a positive integer")
        if votes > limits.max_votes:
            raise InputError(f"'votes' is {votes}, over this service's limit of {limits.max_votes}")
        return JudgeCall(op, question, a, b, votes=votes, overrides=overrides, stream=stream)
    responses = data.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise InputError("'responses' must be a list of strings")
    if len(responses) < 2:
        raise InputError(f"{op} needs at least 2 responses, got {len(responses)}")
    if len(responses) > limits.max_responses:
        raise InputError(f"{len(responses)} responses is over this service's limit of {limits.max_responses}")
    method = data.get("method", DEFAULT_RANK_METHOD)
    if method not in METHODS:
        raise InputError(f"'method' must be one of {', '.join(METHODS)}")
    return JudgeCall(op, question, responses=tuple(responses), swap=_flag(data, "swap"), method=method, overrides=overrides,
                     stream=stream)


def parse_prompt(data: Mapping[str, Any], limits: Limits) -> PromptCall:
    """Check a `/v1/prompt` body: the pair of `compare` and its settings (nothing to stream)."""
    unknown = sorted(set(data) - PROMPT_FIELDS)
    if unknown:
        raise InputError(f"unknown field(s) for prompt: {', '.join(unknown)}")
    return PromptCall(_text(data, "question"), _text(data, "a"), _text(data, "b"), overrides=_overrides(data, limits))
