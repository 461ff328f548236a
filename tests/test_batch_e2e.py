"""`gram-local batch` as a user runs it: the installed console script on the real SmolLM2 GGUF."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXE = shutil.which("gram-local")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(EXE is None, reason="the gram-local console script is not installed")]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], check=False, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env={**os.environ}
    )


def test_real_batch_records_resumes_and_refuses_other_settings(smollm2_path: Path, tmp_path: Path) -> None:
    rows = [
        {"id": "swapped", "question": "What is 2+2?", "a": "4", "b": "5", "swap": True},
        {"id": 2, "question": "Name a colour.", "a": "Blue.", "b": "A table."},
        {"id": "empty", "question": "q", "a": "", "b": "x"},
    ]
    src = tmp_path / "tasks.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    common = ["--model", str(smollm2_path), "--max-think-tokens", "8", "--threads", "2", "--parallel", "4"]

    first = run("batch", str(src), "-o", str(out), *common)
    assert first.returncode == 3, first.stderr  # the empty response is a failed row
    records = {json.dumps(r["id"]): r for r in map(json.loads, out.read_bytes().split(b"\n")[:-1])}
    assert set(records) == {'"swapped"', "2", '"empty"'}
    swapped = records['"swapped"']
    assert swapped["status"] == "ok" and [j["order"] for j in swapped["judgments"]] == ["AB", "BA"]
    assert swapped["winner"] in ("a", "b", "tie") and 0.0 <= swapped["p_a"] <= 1.0
    assert all(j["think_tokens"] <= 8 for j in swapped["judgments"])
    settings = swapped["run_settings"]
    assert settings["model_sha256"] == hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert (settings["max_think_tokens"], settings["seed"], settings["quantization"]) == (8, 0, "Q4_1")
    assert records["2"]["status"] == "ok" and len(records["2"]["judgments"]) == 1
    assert records['"empty"']["status"] == "error" and "empty" in records['"empty"']["error"]["message"]

    ok_lines = [line for line in out.read_bytes().split(b"\n") if b'"status":"ok"' in line]
    again = run("batch", str(src), "-o", str(out), *common)
    assert again.returncode == 3, again.stderr
    assert "2 task(s) already done" in again.stderr
    lines = out.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 3 and [line for line in lines if b'"status":"ok"' in line] == ok_lines

    other = run("batch", str(src), "-o", str(out), *common, "--seed", "1")
    assert other.returncode == 2 and "seed: 0 in OUT, 1 now" in other.stderr
