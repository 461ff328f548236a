"""Batch records: one JSON object per finished task in OUT, and reading them back."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gram_local.batch.tasks import Task, id_key


def ok_record(task: Task, result: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    body = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return {
        "id": task.id,
        "op": task.op,
        "status": "ok",
        **body,
        "task_sha256": task.fingerprint,
        "run_settings": dict(settings),
    }


def error_record(task: Task, error: str | BaseException, settings: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(error, BaseException):
        detail = {"type": type(error).__name__, "message": str(error)}
    else:
        detail = {"type": "InvalidRow", "message": error}
    return {
        "id": task.id,
        "op": task.op,
        "status": "error",
        "error": detail,
        "line": task.line,
        "task_sha256": task.fingerprint,
        "run_settings": dict(settings),
    }


def is_record(value: Any) -> bool:
    return isinstance(value, dict) and "id" in value and value.get("status") in ("ok", "error")


def load_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """The records of an OUT file by id key (the last one per id wins; a cut-off last line is ignored)."""
    records: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if is_record(value):
                records[id_key(value["id"])] = value
    return records


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1] if prefix else "": value}


RESUMABLE_ACROSS = frozenset({"server.base_urls"})
"""Recorded but free to change between runs of one job: a resumed job may run on other replicas."""


def settings_differences(old: Any, new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two settings records (missing keys show as None)."""
    old_flat = _flatten(old if isinstance(old, dict) else {})
    new_flat = _flatten(dict(new))
    return {
        key: (old_flat.get(key), new_flat.get(key))
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key) and key not in RESUMABLE_ACROSS
    }
