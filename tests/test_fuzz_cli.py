"""Fuzz: how the judging commands read their texts (`@file`, `@-`, stdin JSON) fails clearly.

Whatever the argument or the bytes behind it, `read_text` and `read_stdin_json` give text (or an
object) or an InputError, never another exception; and what they give, the judge takes or refuses
with an InputError (empty, lone surrogates), before any model runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_settings import fuzz, fuzz_settings, hostile_text, text_with_surrogate
from hypothesis import example, given
from hypothesis import strategies as st

from gram_local.cli.common import read_stdin_json, read_text
from gram_local.errors import InputError

pytestmark = fuzz


@contextlib.contextmanager
def _stdin(data: bytes, errors: str = "strict") -> Iterator[None]:
    """Standard input holding `data`, decoded as Python does in a UTF-8 locale (or a POSIX one)."""
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors)
    try:
        yield
    finally:
        sys.stdin = saved


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-cli-files")
    (folder / "folder").mkdir()
    (folder / "empty.txt").write_bytes(b"")
    return folder


def _judge_takes_or_refuses(judge: Any, text: str) -> None:
    """The judge accepts the text as a question, or refuses it with an InputError."""
    try:
        judge.prompt(text, "a", "b")
    except InputError:
        pass


argument_path = st.one_of(
    st.sampled_from(["missing.txt", "folder", "empty.txt", "", ".", "..", "/", "/dev/null"]),
    hostile_text,
    text_with_surrogate(),
    st.text(st.sampled_from("ab/\x00"), min_size=1, max_size=6),
    st.integers(256, 5000).map(lambda n: "x" * n),
)
file_bytes = st.one_of(
    st.binary(max_size=64),
    hostile_text.map(lambda t: t.encode("utf-8")),
    hostile_text.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8")),
    text_with_surrogate().map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@fuzz_settings(300)
@example(path="a\x00b", content=None)
@example(path="\ud800", content=None)
@example(path="folder", content=None)
@example(path="missing.txt", content=None)
@example(path="", content=None)
@example(path="written.txt", content=b"\xff\xfe\x00")
@example(path="written.txt", content=b"")
@given(argument_path, st.none() | file_bytes)
def test_at_file_gives_its_text_or_an_input_error(files: Path, llama3_judge: Any, path: str, content: bytes | None) -> None:
    if content is not None:
        path = "written.txt"
        (files / path).write_bytes(content)
    argument = "@" + (path if path.startswith("/") or not path else str(files / path))
    try:
        text = read_text(argument, "question")
    except InputError as exc:
        assert "question" in str(exc)
        return
    assert isinstance(text, str)
    if content is not None:  # read as text: universal newlines
        assert text == content.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    _judge_takes_or_refuses(llama3_judge, text)


@fuzz_settings(300)
@example("@@<|eot_id|>")
@example("\ud800")
@example("")
@example("   ")
@given(st.one_of(hostile_text, text_with_surrogate(), hostile_text.map(lambda t: "@@" + t)))
def test_a_plain_argument_is_the_text_itself(llama3_judge: Any, value: str) -> None:
    text = read_text(value, "question")
    assert text == (value[1:] if value.startswith("@@") else value)
    _judge_takes_or_refuses(llama3_judge, text)


@fuzz_settings(300)
@example(b"\xff\xfe", "strict")
@example(b"caf\xc3", "strict")
@example(b"\xed\xa0\x80", "surrogateescape")
@example(b"", "strict")
@given(file_bytes, st.sampled_from(["strict", "surrogateescape"]))
def test_at_stdin_gives_its_text_or_an_input_error(llama3_judge: Any, data: bytes, errors: str) -> None:
    with _stdin(data, errors):
        try:
            text = read_text("@-", "question")
        except InputError as exc:
            assert "question" in str(exc)
            return
    assert isinstance(text, str)
    _judge_takes_or_refuses(llama3_judge, text)


json_document = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text | text_with_surrogate(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["question", "a", "b", "responses"]), inner),
    max_leaves=10,
).map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
stdin_bytes = st.one_of(
    json_document,
    st.binary(max_size=64),
    st.integers(1, 50_000).map(lambda n: b"[" * n),
    st.integers(4000, 20_000).map(lambda n: b'{"question": ' + b"7" * n + b"}"),
    st.sampled_from([b"", b"\n", b" \t\r\n", b"\xef\xbb\xbf{}", b"NaN", b'{"a": Infinity}', b'{"a": 1, "a": 2}']),
)


@fuzz_settings(300)
@example(b"[" * 100_000, "strict")
@example(b'{"question": ' + b"7" * 5000 + b"}", "strict")
@example(b'{"question": "\xff"}', "strict")
@example(b'{"question": "\xff"}', "surrogateescape")
@given(stdin_bytes, st.sampled_from(["strict", "surrogateescape"]))
def test_stdin_json_is_an_object_or_an_input_error(data: bytes, errors: str) -> None:
    with _stdin(data, errors):
        try:
            value = read_stdin_json("-q/--question, -a and -b")
        except InputError as exc:
            assert str(exc)
            return
    assert isinstance(value, dict)
