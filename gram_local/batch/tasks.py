"""Batch tasks: the rows of an input JSONL file, validated, with stable ids, sharded and deduplicated."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gram_local.config import DEFAULT_RANK_METHOD, DEFAULT_VOTES
from gram_local.errors import BatchUsageError
from gram_local.operations import METHODS, OPERATIONS


@dataclass(frozen=True)
class TaskDefaults:
    """Batch-wide choices for rows that do not set their own (the CLI's --swap, --votes, --method)."""

    swap: bool = False
    votes: int | None = None  # set: rows with a and b and no op become votes of this many samples
    method: str = DEFAULT_RANK_METHOD

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    """One row of a batch. A row that cannot be judged carries `error` and becomes an error record."""

    id: str | int
    op: str | None = None  # None: "compare", or "vote" when votes are set
    question: str = ""
    a: str | None = None
    b: str | None = None
    responses: tuple[str, ...] | None = None
    swap: bool | None = None
    votes: int | None = None
    method: str | None = None
    line: int | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return id_key(self.id)

    def resolved(self, defaults: TaskDefaults) -> Task:
        """The task with the batch defaults filled in: what is actually judged."""
        if self.error is not None:
            return self
        op = self.op
        if op is None:
            op = "vote" if (self.votes or defaults.votes) else "compare"
        if op == "vote":
            return replace(self, op=op, swap=False, votes=self.votes or defaults.votes or DEFAULT_VOTES)
        swap = defaults.swap if self.swap is None else self.swap
        method = (self.method or defaults.method) if op == "rank" else None
        return replace(self, op=op, swap=swap, method=method)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of what decides the result (of a resolved task); the id and line are not part of it."""
        content = {
            "op": self.op,
            "question": self.question,
            "a": self.a,
            "b": self.b,
            "responses": list(self.responses) if self.responses is not None else None,
            "swap": self.swap,
            "votes": self.votes,
            "method": self.method,
            "error": self.error,
        }
        return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


def id_key(task_id: Any) -> str:
    """The index key of an id: its JSON text, so the id 8 and the id "8" stay distinct."""
    return json.dumps(task_id, ensure_ascii=False)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _stable_id(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()[:16]


def parse_tasks(data: bytes) -> list[Task]:
    """Rows of a JSONL file as tasks; blank lines are skipped, bad rows come back with `error` set."""
    tasks: list[Task] = []
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except RecursionError:
            tasks.append(_unreadable_row(raw, line_no, "JSON nested too deeply"))
            continue
        except ValueError as exc:  # bad JSON or UTF-8, or an integer over Python's digit limit
            tasks.append(_unreadable_row(raw, line_no, f"not valid JSON ({exc})"))
            continue
        try:
            tasks.append(task_from_row(row, line_no))
        except RecursionError:  # parsed, but too deep to encode again for its id
            tasks.append(_unreadable_row(raw, line_no, "JSON nested too deeply"))
    return tasks


def _unreadable_row(raw: bytes, line_no: int, reason: str) -> Task:
    return Task(id=_stable_id(raw.strip()), line=line_no, error=f"line {line_no}: {reason}")


def read_tasks(path: str | Path) -> list[Task]:
    """Tasks of a JSONL file, or of standard input for "-"."""
    if str(path) == "-":
        return parse_tasks(sys.stdin.buffer.read())
    try:
        return parse_tasks(Path(path).read_bytes())
    except OSError as exc:
        raise BatchUsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def task_from_row(row: Any, line_no: int | None = None) -> Task:
    where = f"line {line_no}: " if line_no is not None else ""
    canonical = _canonical(row)
    try:
        content = canonical.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows a lone `\ud800`; UTF-8, the judge and OUT do not
        surrogate = f"U+{ord(canonical[exc.start]):04X}"
        return Task(
            id=_stable_id(canonical.encode("utf-8", "surrogatepass")),
            line=line_no,
            error=f"{where}the row holds a lone surrogate ({surrogate}), which is not Unicode text",
        )
    if not isinstance(row, dict):
        return Task(id=_stable_id(content), line=line_no, error=f"{where}a task must be a JSON object")
    task_id = row.get("id")
    if task_id is None:
        task_id = _stable_id(content)
    elif isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or task_id == "":
        return Task(id=_stable_id(content), line=line_no, error=f"{where}'id' must be a non-empty string or an integer")

    def bad_row(reason: str) -> Task:
        return Task(id=task_id, op=row.get("op") if row.get("op") in OPERATIONS else None, line=line_no, error=where + reason)

    op = row.get("op")
    if op is not None and op not in OPERATIONS:
        return bad_row(f"'op' must be one of {', '.join(OPERATIONS)}, got {op!r}")
    question = row.get("question")
    if not isinstance(question, str):
        return bad_row("missing or non-string 'question'")
    swap = row.get("swap")
    if swap is not None and not isinstance(swap, bool):
        return bad_row("'swap' must be true or false")
    votes = row.get("votes")
    if votes is not None and (isinstance(votes, bool) or not isinstance(votes, int) or votes < 1):
        return bad_row("'votes' must be a positive integer")
    method = row.get("method")
    if method is not None and method not in METHODS:
        return bad_row(f"'method' must be one of {', '.join(METHODS)}")

    if op in ("rank", "best-of-n"):
        responses = row.get("responses")
        if not (isinstance(responses, list) and all(isinstance(r, str) for r in responses)):
            return bad_row("'responses' must be a list of strings")
        if len(responses) < 2:
            return bad_row(f"{op} needs at least 2 responses, got {len(responses)}")
        if votes is not None:
            return bad_row(f"'votes' does not apply to {op}")
        if method is not None and op != "rank":
            return bad_row("'method' applies to rank only")
        return Task(id=task_id, op=op, question=question, responses=tuple(responses), swap=swap, method=method, line=line_no)

    if op is None and "a" not in row and "b" not in row:
        if "responses" in row:
            return bad_row("a task with 'responses' needs 'op': 'rank' or 'best-of-n'")
        return bad_row("a task needs 'a' and 'b', or 'responses' with an 'op'")
    a, b = row.get("a"), row.get("b")
    if not isinstance(a, str) or not isinstance(b, str):
        return bad_row("'a' and 'b' must both be strings")
    if method is not None:
        return bad_row("'method' applies to rank only")
    if op == "compare" and votes is not None:
        return bad_row("'votes' makes a vote, not a compare")
    if (op == "vote" or votes is not None) and swap:
        return bad_row("a vote judges one order: 'swap' cannot be combined with 'votes'")
    return Task(id=task_id, op=op, question=question, a=a, b=b, swap=swap, votes=votes, line=line_no)


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise BatchUsageError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise BatchUsageError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_of(task_id: str | int, count: int) -> int:
    """Stable across machines and Python versions (unlike hash()): SHA-256 of the id's key."""
    digest = hashlib.sha256(id_key(task_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(tasks: Sequence[Task], *, shard: tuple[int, int] | None = None, limit: int | None = None) -> list[Task]:
    """The shard's tasks, then the first `limit` of them, in input order."""
    chosen = [t for t in tasks if shard is None or shard_of(t.id, shard[1]) == shard[0]]
    return chosen if limit is None else chosen[: max(limit, 0)]


def dedupe(tasks: Sequence[Task], notes: list[str] | None = None) -> list[Task]:
    """One task per id. A repeated identical row is judged once; the same id on different rows is refused.

    Invalid rows are never "judged": a repeat of one is reported once, and noted as such.
    """
    first: dict[str, Task] = {}
    out: list[Task] = []
    for task in tasks:
        seen = first.get(task.key)
        if seen is None:
            first[task.key] = task
            out.append(task)
            continue
        same = replace(seen, line=None, error=None) == replace(task, line=None, error=None)
        if same and seen.error is None and task.error is None:
            if notes is not None:
                notes.append(f"line {task.line} repeats line {seen.line} (id {task.id}); judged once")
            continue
        if same and seen.error is not None and task.error is not None:
            if notes is not None:
                notes.append(f"line {task.line} repeats invalid line {seen.line} (id {task.id}); reported once")
            continue
        raise BatchUsageError(
            f"id {task.id!r} is used by line {seen.line} and line {task.line} for different tasks; ids must be unique"
        )
    return out
