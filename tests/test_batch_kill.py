"""kill -9 a real `gram-local batch` process at seeded random points, once inside a line; then resume.

The process is the real command (tests/batch_fakes.py runs it with the model-free judge), so the
kills hit the real writer, fsync and repair code; nothing is simulated but the model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from batch_fakes import TOO_LONG, FakeJudge

from gram_local.batch import load_records, run_batch

HERE = Path(__file__).parent


def task_rows() -> list[Any]:
    rows: list[Any] = []
    for i in range(60):
        row: dict[str, Any] = {"id": f"t{i}", "question": f"question {i}", "a": "a" * (i % 7 + 1), "b": "b" * 4}
        if i % 5 == 0:
            row["swap"] = True
        if i % 11 == 0:
            row = {"id": f"t{i}", "question": "q", "a": "aa", "b": "a", "votes": 2}
        rows.append(row)
    rows.append({"id": "ranked", "question": "q", "responses": ["a", "ccc", "bb"], "op": "rank"})
    rows.append({"id": "overflow", "question": "q", "a": TOO_LONG, "b": "b"})
    rows.append("{not json")
    return rows


def start(src: Path, out: Path, **env: str) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, **env}
    return subprocess.Popen(
        [sys.executable, str(HERE / "batch_fakes.py"), str(src), "-o", str(out)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def complete_lines(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def wait_for(condition: Any, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the batch ended before it was killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the batch"
        time.sleep(0.005)


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "timings"}


def test_kill_nine_anywhere_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rows = task_rows()
    src = tmp_path / "tasks.jsonl"
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"

    reference_out = tmp_path / "reference.jsonl"
    run_batch(FakeJudge(), src, reference_out)
    reference = {k: without_timings(r) for k, r in load_records(reference_out).items()}
    assert len(reference) == len(rows)

    rng = random.Random(1207)
    done_before = 0
    for _ in range(4):
        proc = start(src, out, FAKE_DELAY="0.02")
        wait_for(lambda before=done_before: complete_lines(out) > before, proc)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done_now = complete_lines(out)
        assert done_before < done_now < len(rows)
        done_before = done_now

    # Now inside a line: the third record of this run is written halfway, then the process hangs.
    # The run first drops the error records it retries, so two more than the ok records are whole.
    ok_before = sum(json.loads(raw)["status"] == "ok" for raw in out.read_bytes().split(b"\n") if raw.endswith(b"}"))
    marker = tmp_path / "mid-write"
    proc = start(src, out, FAKE_DELAY="0.02", FAKE_STALL_AT="3", FAKE_STALL_MARKER=str(marker))
    wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.read_bytes().endswith(b"\n"), "the kill should have left half a line"
    assert complete_lines(out) == ok_before + 2

    proc = start(src, out)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr.decode()  # finished, with the two failed rows
    assert b"cut-off last line" in stderr

    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(raw) for raw in data.split(b"\n") if raw]
    keys = [json.dumps(r["id"]) for r in records]
    assert len(keys) == len(set(keys)) == len(rows), "a result was lost or duplicated"
    assert {k: without_timings(r) for k, r in zip(keys, records)} == reference
    assert sum(r["status"] == "error" for r in records) == 2
