"""Fuzz: a benchmark file given with --data loads, or fails with a DataError, before any model runs.

What loads must be usable downstream without surprises: every text is Unicode that UTF-8 (and so
the batch OUT file) can hold, and JudgeBench's `response_model` is a name or nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from fuzz_settings import fuzz, fuzz_settings, hostile_text, text_with_surrogate
from hypothesis import example, given
from hypothesis import strategies as st

from gram_local.errors import DataError
from gram_local.evals.run import judgebench_job, rmbench_job

pytestmark = fuzz

JUDGEBENCH_FILE = "dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
GOOD_PAIR = {
    "pair_id": "p1",
    "source": "mmlu-pro-math",
    "question": "Q?",
    "response_A": "a",
    "response_B": "b",
    "label": "A>B",
    "response_model": "gpt-4o-2024-05-13",
}
GOOD_ITEM = {"id": 1, "domain": "chat", "prompt": "P?", "chosen": ["c1", "c2", "c3"], "rejected": ["r1", "r2", "r3"]}

text = st.one_of(hostile_text, text_with_surrogate())
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


def _variant(good: dict[str, Any], choices: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """The good record with some fields replaced by a right or wrong value, or removed."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        record = dict(good)
        for key in draw(st.lists(st.sampled_from(sorted(choices)), unique=True, max_size=2)):
            how = draw(st.integers(0, 5))
            if how == 0:
                record.pop(key, None)
            else:
                record[key] = draw(any_json if how == 1 else choices[key])
        return record

    return build()


judgebench_row = _variant(
    GOOD_PAIR,
    {
        "pair_id": st.one_of(text, st.integers()),
        "source": st.sampled_from(["mmlu-pro-x", "livebench-reasoning", "livebench-math", "livecodebench", "other"]),
        "question": text,
        "response_A": text,
        "response_B": text,
        "label": st.sampled_from(["A>B", "B>A", "A=B", ""]),
        "response_model": st.sampled_from(["gpt-4o-2024-05-13", "claude-3-5-sonnet-20240620", ""]) | text | st.none(),
    },
)
rmbench_item = _variant(
    GOOD_ITEM,
    {
        "id": st.one_of(st.integers(), text),
        "domain": st.sampled_from(["chat", "math", "code", "safety-refuse", "safety-response", "safety"]),
        "prompt": text,
        "chosen": st.lists(text, min_size=3, max_size=3),
        "rejected": st.lists(text, min_size=3, max_size=3),
    },
)


def _dumps(value: Any, ascii_only: bool = False) -> bytes:
    """JSON as a writer might put it: `\\u` escapes, or raw UTF-8 (a surrogate as its CESU bytes)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(_dumps, values, st.booleans())


@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> bytes:
    kind = draw(st.sampled_from(["cut", "byte", "deep", "number", "garbage"]))
    if kind == "cut":
        return good[: draw(st.integers(0, len(good)))]
    if kind == "byte":
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(st.binary(min_size=1, max_size=3)) + good[at:]
    if kind == "deep":
        depth = draw(st.integers(900, 1100) | st.integers(10_000, 50_000))
        return b'{"pair_id": "p", "x": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "number":
        return b'{"pair_id": ' + b"7" * draw(st.integers(4000, 20_000)) + b"}"
    return draw(st.binary(max_size=64))


def _check_loaded(records: list[Any]) -> None:
    for record in records:
        json.dumps(dataclasses.asdict(record), ensure_ascii=False).encode("utf-8")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-eval-data")


@fuzz_settings(250)
@example(lines=[_dumps(GOOD_PAIR | {"response_model": ["gpt-4o-2024-05-13"]})], limit=None)
@example(lines=[_dumps(GOOD_PAIR | {"response_model": 5})], limit=None)
@example(lines=[_dumps(GOOD_PAIR | {"question": "\ud800"})], limit=None)
@example(lines=[_dumps(GOOD_PAIR | {"pair_id": "\udfff"})], limit=1)
@example(lines=[b"[" * 100_000], limit=None)
@example(lines=[b'{"pair_id": "p", "x": ' + b"[" * 990 + b"]" * 990 + b"}"], limit=None)
@example(lines=[b'{"pair_id": ' + b"7" * 5000 + b"}"], limit=None)
@given(
    st.lists(st.one_of(_encoded(judgebench_row), damaged(_dumps(GOOD_PAIR)), st.just(b"")), max_size=4),
    st.none() | st.integers(1, 3),
)
def test_judgebench_file_loads_or_is_a_data_error(folder: Path, lines: list[bytes], limit: int | None) -> None:
    path = folder / JUDGEBENCH_FILE
    path.write_bytes(b"\n".join(lines))
    try:
        job = judgebench_job("gpt-4o", data=path, limit=limit)
    except DataError as exc:
        assert str(exc)
        return
    _check_loaded(job.pairs)
    assert all(p.response_model is None or isinstance(p.response_model, str) for p in job.pairs)


@fuzz_settings(200)
@example(content=_dumps([GOOD_ITEM | {"prompt": "\ud800"}]), name="chat_filtered.json", domains=[])
@example(content=_dumps([GOOD_ITEM | {"chosen": ["a", "\udc00", "c"]}]), name="chat_filtered.json", domains=[])
@example(content=_dumps([GOOD_ITEM | {"id": "\ud800"}]), name="total_dataset.json", domains=["chat"])
@example(content=b"[" * 100_000, name="total_dataset.json", domains=[])
@example(content=b"[" + b"7" * 5000 + b"]", name="total_dataset.json", domains=[])
@example(content=b"\xef\xbb\xbf[]", name="total_dataset.json", domains=[])
@given(
    st.one_of(_encoded(st.lists(rmbench_item, min_size=1, max_size=3) | any_json), damaged(_dumps([GOOD_ITEM]))),
    st.sampled_from(["total_dataset.json", "chat_filtered.json", "safety-refuse_filtered.json", "other.json"]),
    st.lists(st.sampled_from(["chat", "math", "safety", "safety-refuse", "code"]), max_size=2),
)
def test_rmbench_file_loads_or_is_a_data_error(folder: Path, content: bytes, name: str, domains: list[str]) -> None:
    path = folder / name
    path.write_bytes(content)
    try:
        job = rmbench_job([path], domains=domains)
    except DataError as exc:
        assert str(exc)
        return
    finally:
        path.unlink()
    _check_loaded(job.items)
