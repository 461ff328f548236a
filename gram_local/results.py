"""Result types: plain dataclasses whose `to_dict()` is the JSON other tools rely on.

`a`/`b` and response indices always refer to the inputs as the caller gave them (indices 0-based);
the order a pair was shown to the model in is recorded per judgment, never leaked into verdicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

Order = Literal["AB", "BA"]
Letter = Literal["A", "B"]
Side = Literal["a", "b"]
Winner = Literal["a", "b", "tie"]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        return cast("dict[str, Any]", _plain(self))  # subclasses are dataclasses: _plain gives their fields' dict


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `cls` found in `data` (a newer service may send more; they are left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class ModelInfo(_Serializable):
    path: str
    name: str | None
    sha256: str
    quantization: str | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Judgment(_Serializable):
    """One generation by the model on one ordering of one pair."""

    order: Order
    answer: Letter
    prefers: Side
    p_a: float
    rationale: str
    think_tokens: int
    forced_close: bool
    # For rank and best-of-n: the response indices shown as input a and input b.
    pair: tuple[int, int] | None = None
    # The full reply as the model produced it, `<think>` to `</answer>`.
    output: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Judgment:
        fields = _known(cls, data)
        if fields.get("pair") is not None:
            fields["pair"] = tuple(fields["pair"])
        return cls(**fields)


@dataclass(frozen=True)
class Comparison(_Serializable):
    """One pair of responses in a ranking, with the verdict of its judgments."""

    a: int
    b: int
    winner: Winner
    p_a: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(**_known(cls, data))


@dataclass
class Timings(_Serializable):
    seconds: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    # Prompt tokens whose KV was read from the on-disk head cache instead of computed.
    restored_tokens: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timings:
        return cls(**_known(cls, data))


J = TypeVar("J", bound="JudgeResult")


@dataclass
class JudgeResult(_Serializable):
    """What every judging operation's result carries beside its verdict."""

    model: ModelInfo | None = field(default=None, kw_only=True)
    settings: dict[str, Any] = field(default_factory=dict, kw_only=True)
    timings: Timings = field(default_factory=Timings, kw_only=True)

    @classmethod
    def from_dict(cls: type[J], data: Mapping[str, Any]) -> J:
        """The result a `to_dict()` came from (what the service sends back)."""
        fields = _known(cls, data)
        fields["model"] = ModelInfo.from_dict(data["model"]) if data.get("model") else None
        fields["settings"] = dict(data.get("settings") or {})
        fields["timings"] = Timings.from_dict(data.get("timings") or {})
        if "judgments" in fields:
            fields["judgments"] = [Judgment.from_dict(j) for j in fields["judgments"]]
        if "comparisons" in fields:
            fields["comparisons"] = [Comparison.from_dict(c) for c in fields["comparisons"]]
        return cls(**fields)


@dataclass
class CompareResult(JudgeResult):
    winner: Winner
    p_a: float
    judgments: list[Judgment]


@dataclass
class VoteResult(JudgeResult):
    winner: Winner
    votes: dict[str, int]
    p_a: float
    judgments: list[Judgment]


@dataclass
class RankResult(JudgeResult):
    ranking: list[int]
    scores: list[float]
    comparisons: list[Comparison]
    judgments: list[Judgment]


@dataclass
class BestOfNResult(JudgeResult):
    best: int
    comparisons: list[Comparison]
    judgments: list[Judgment]


@dataclass
class PromptView(_Serializable):
    text: str
    tokens: list[int]
    model: ModelInfo | None = None
