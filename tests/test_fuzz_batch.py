"""Fuzz: a batch JSONL file of any bytes parses to tasks, one per non-blank line, never an exception.

Each line becomes a task or a task carrying an error that starts with its line number (it becomes
an error record in OUT); every task can be written to OUT as UTF-8 JSON.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fuzz_settings import fuzz, fuzz_settings, hostile_text, text_with_surrogate
from hypothesis import example, given
from hypothesis import strategies as st

from gram_local.batch import parse_tasks, task_from_row

pytestmark = fuzz

KEYS = ("id", "op", "question", "a", "b", "responses", "swap", "votes", "method", "label")

valid_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
    st.sampled_from(["compare", "vote", "rank", "best-of-n", "sort", "round-robin", "", "x"]),
)


def _json(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | hostile_text, inner, max_size=5),
        max_leaves=12,
    )


valid_json_value = _json(valid_scalar)
json_value = _json(valid_scalar | text_with_surrogate())
# Rows shaped like tasks, with each field of a right or a wrong type.
row = st.dictionaries(st.sampled_from(KEYS), json_value, max_size=9) | st.fixed_dictionaries(
    {"question": hostile_text},
    optional={
        "id": st.one_of(st.integers(), hostile_text, text_with_surrogate()),
        "a": hostile_text,
        "b": hostile_text,
        "responses": st.lists(hostile_text, max_size=4),
        "op": st.sampled_from(["compare", "vote", "rank", "best-of-n", "other"]),
        "votes": st.integers(-2, 10**30),
        "swap": st.booleans(),
        "method": st.sampled_from(["sort", "round-robin", "other"]),
    },
)


@st.composite
def json_line(draw: st.DrawFn) -> bytes:
    """One row as a writer might put it: ASCII escapes or raw UTF-8 (surrogates then come out as
    CESU-style bytes), NaN and Infinity literals, spaces around."""
    text = json.dumps(draw(json_value | row), ensure_ascii=draw(st.booleans()), allow_nan=True)
    return (draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " ", "\r"]))).encode(
        "utf-8", "surrogatepass"
    )


@st.composite
def broken_line(draw: st.DrawFn) -> bytes:
    line = draw(json_line())
    kind = draw(st.sampled_from(["cut", "byte", "deep", "number", "duplicate", "bom", "garbage"]))
    if kind == "cut":
        return line[: draw(st.integers(0, len(line)))]
    if kind == "byte":
        at = draw(st.integers(0, len(line)))
        return line[:at] + draw(st.binary(min_size=1, max_size=3).filter(lambda b: b"\n" not in b)) + line[at:]
    if kind == "deep":
        depth = draw(st.integers(900, 1100) | st.integers(10_000, 100_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return b'{"question": "q", "a": "x", "b": "y", "label": ' + opener * depth + b"0" + closer * depth + b"}"
    if kind == "number":
        digits = draw(st.integers(4000, 20_000))
        field = draw(st.sampled_from(["id", "votes", "label"]))
        return b'{"question": "q", "a": "x", "b": "y", "%s": %s}' % (field.encode(), b"9" * digits)
    if kind == "duplicate":
        return b'{"question": "q", "a": "x", "a": 1, "b": "y", "b": "z", "id": 1, "id": "1"}'
    if kind == "bom":
        return b"\xef\xbb\xbf" + line
    return draw(st.binary(max_size=64).filter(lambda b: b"\n" not in b))


jsonl = st.lists(st.one_of(json_line(), broken_line(), st.sampled_from([b"", b" ", b"\r", b"\t \x0c"])), max_size=5).map(
    b"\n".join
)


def _writable(task: Any) -> None:
    """What OUT needs: every field of the task as UTF-8 JSON."""
    json.dumps(dataclasses.asdict(task), ensure_ascii=False).encode("utf-8")


def _check_task(task: Any, line_no: int | None) -> None:
    _writable(task)
    assert task.line == line_no
    if task.error is not None:
        assert isinstance(task.error, str)
        if line_no is not None:
            assert task.error.startswith(f"line {line_no}: ")
        return
    assert isinstance(task.id, (str, int)) and not isinstance(task.id, bool) and task.id != ""
    assert isinstance(task.question, str)
    if task.responses is not None:
        assert len(task.responses) >= 2 and all(isinstance(r, str) for r in task.responses)
    else:
        assert isinstance(task.a, str) and isinstance(task.b, str)


@fuzz_settings(400)
@example(b"[" * 100_000)
@example(b'{"question": "q", "a": "x", "b": "y", "label": ' + b"[" * 992 + b"]" * 992 + b"}")
@example(b'{"question": "q", "a": "x", "b": "y", "id": ' + b"9" * 5000 + b"}")
@example(b'{"question": "\\ud800", "a": "x", "b": "y"}')
@example(b'{"id": 1, "question": "q", "a": "\\udfff", "b": "y"}')
@example(b'{"id": "\\ud800", "question": "q", "a": "x", "b": "y"}')
@example(b'{"question": "\xed\xa0\x80", "a": "x", "b": "y"}')
@example(b'{"question": "q", "a": "x", "b": "y", "label": "\\ud83d"}')
@example(b'\xef\xbb\xbf{"question": "q", "a": "x", "b": "y"}\r\n\r\n{"id": NaN, "votes": Infinity}\n')
@given(jsonl)
def test_any_bytes_parse_to_one_task_per_line_or_a_line_numbered_error(data: bytes) -> None:
    tasks = parse_tasks(data)
    nonblank = [n for n, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    assert [t.line for t in tasks] == nonblank
    for task in tasks:
        _check_task(task, task.line)


@fuzz_settings(300)
@given(
    st.fixed_dictionaries(
        {"question": hostile_text.filter(str.strip), "a": hostile_text, "b": hostile_text},
        optional={"id": st.integers() | hostile_text.filter(bool), "label": valid_json_value},
    ),
    st.booleans(),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_a_valid_row_survives_bom_crlf_and_escapes(row: dict[str, Any], ascii_only: bool, newline: bytes, bom: bool) -> None:
    """The other side: what editors and tools do to a good file leaves its tasks as they were."""
    line = json.dumps(row, ensure_ascii=ascii_only).encode("utf-8")
    data = (b"\xef\xbb\xbf" if bom else b"") + newline.join([line, b"", line]) + newline
    tasks = parse_tasks(data)
    assert [t.line for t in tasks] == [1, 3]
    for task in tasks:
        assert task.error is None, task.error
        assert (task.question, task.a, task.b) == (row["question"], row["a"], row["b"])
    assert tasks[0].id == tasks[1].id


@fuzz_settings(500)
@example({"question": "\ud800", "a": "x", "b": "y"}, None)
@example({"id": "\udc80", "question": "q", "a": "x", "b": "y"}, 4)
@example(["\ud800"], 1)
@given(json_value | row, st.none() | st.integers(1, 10**6))
def test_any_json_value_is_a_task_or_an_error(value: Any, line_no: int | None) -> None:
    _check_task(task_from_row(value, line_no), line_no)
