"""Batch judging over JSONL files that never loses finished work.

Why it is built this way: a batch of thousands of pairs runs for hours on machines that sleep, crash
or get killed. So every finished task is appended to OUT as one line and fsync'd before the next one
is written; a rerun reads OUT back, drops a line cut short by a kill, and judges only what is missing.

Input (one task per line):
  comparison   {"id", "question", "a", "b"}                 optional "swap", "votes" (then a vote)
  ranking      {"id", "question", "responses": [...], "op": "rank" | "best-of-n"}   optional "swap",
               and for rank "method" ("sort" | "round-robin")
`op` may also be "compare" or "vote" explicitly. Other fields are ignored, so rows can carry labels.
A row without an id gets `sha256:` + the first 16 hex digits of the SHA-256 of its content
(canonical JSON; the raw line for a row that is not JSON): stable when rows move or the file is
edited elsewhere, unlike a line number, which would silently pair an old result with a new task.

Output (one record per input id, in the order tasks finish):
  {"id", "op", "status": "ok", <the result fields of the single command>, "task_sha256", "run_settings"}
  {"id", "op", "status": "error", "error": {"type", "message"}, "line", "task_sha256", "run_settings"}
`run_settings` is the judge's settings record plus the batch defaults; a rerun whose settings differ
from those of the records in OUT is refused, naming the keys. `task_sha256` identifies the task's
content: a record whose task has changed since is judged again.
"""

from gram_local.batch.records import error_record, load_records, ok_record, settings_differences
from gram_local.batch.run import BatchProgress, BatchSummary, refuse_same_file, run_batch
from gram_local.batch.tasks import (
    Task,
    TaskDefaults,
    dedupe,
    id_key,
    parse_shard,
    parse_tasks,
    read_tasks,
    select,
    shard_of,
    task_from_row,
)
from gram_local.errors import BatchUsageError, SettingsMismatchError

__all__ = [
    "BatchProgress",
    "BatchSummary",
    "BatchUsageError",
    "SettingsMismatchError",
    "Task",
    "TaskDefaults",
    "dedupe",
    "error_record",
    "id_key",
    "load_records",
    "ok_record",
    "parse_shard",
    "parse_tasks",
    "read_tasks",
    "refuse_same_file",
    "run_batch",
    "select",
    "settings_differences",
    "shard_of",
    "task_from_row",
]
