"""Batch jobs under faults: a full disk, an unwritable OUT, SIGTERM, and 10,000 tasks in bounded
memory. Finished work is never lost and the error is one clear line."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from batch_fakes import FakeJudge
from click.testing import CliRunner

import gram_local.cli.batch as cli_batch
from gram_local.batch import load_records, run_batch

HERE = Path(__file__).resolve().parent


def write_tasks(path: Path, n: int, size: int = 3) -> Path:
    rows = [{"id": i, "question": f"q{i}", "a": "x" * (i % 7 + 1), "b": "y" * size} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: room for a handful of records only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_batch, "open_judge", lambda opts, **_: FakeJudge())


def _check_out_error(stderr: str, out: Path, reason: str) -> int:
    """One clear last line naming OUT and why; returns the number of records it says were kept."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in stderr and len(errors) == 1 and stderr.endswith(errors[0] + "\n"), stderr
    match = re.fullmatch(
        rf"error: cannot write {re.escape(str(out))}: {re.escape(reason)}; the (\d+) record\(s\) written before it "
        r"are kept: .*rerun the same command to resume",
        errors[0],
    )
    assert match is not None, errors[0]
    return int(match.group(1))


def _check_kept_then_resumed(src: Path, out: Path, said_kept: int) -> None:
    kept = load_records(out)  # whole lines only; a record cut by the failed write is not one
    assert 0 < len(kept) < 200 and said_kept == len(kept)
    summary = run_batch(FakeJudge(), src, out)  # the same job again: only the rest is judged
    assert summary.skipped == len(kept) and summary.judged == 200 - len(kept)
    records = [json.loads(line) for line in out.read_bytes().split(b"\n") if line]
    assert sorted(r["id"] for r in records) == list(range(200))


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_written(tmp_path: Path, small_disk: Path, fake_cli: None) -> None:
    src = write_tasks(tmp_path / "in.jsonl", 200)
    out = small_disk / "out.jsonl"
    result = CliRunner().invoke(cli_batch.batch_command, [str(src), "-o", str(out)])
    assert result.exit_code == 1, result.output
    said_kept = _check_out_error(result.stderr, out, os.strerror(errno.ENOSPC))  # "No space left on device"
    # Moved to a disk with room, the same command finishes the job without judging anything twice.
    moved = tmp_path / "out.jsonl"
    moved.write_bytes(out.read_bytes())
    _check_kept_then_resumed(src, moved, said_kept)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_file_size_limit_is_the_same_clear_error_and_keeps_what_was_written(tmp_path: Path) -> None:
    """Writes that cannot go on, as on a full disk, with no mount needed (so this never skips): the
    batch process runs under `ulimit -f` 64 KiB, and OUT's writes fail with EFBIG partway through a record."""
    src = write_tasks(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    limit = 64 * 1024
    done = subprocess.run([sys.executable, str(HERE / "batch_fakes.py"), str(src), "-o", str(out)],
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(limit))
    assert done.returncode == 1, done.stderr
    said_kept = _check_out_error(done.stderr, out, os.strerror(errno.EFBIG))  # "File too large"
    assert out.stat().st_size == limit and not out.read_bytes().endswith(b"\n")  # filled up: the last record is cut
    # Without the limit, the same command finishes the job in place without judging anything twice.
    _check_kept_then_resumed(src, out, said_kept)


def test_an_unwritable_out_is_a_clear_error(tmp_path: Path, fake_cli: None) -> None:
    if os.geteuid() == 0:
        locked = tmp_path / "ro"
        locked.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(locked)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("root ignores permissions, and no read-only mount could be made (the next test needs neither)")
    else:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
    try:
        src = write_tasks(tmp_path / "in.jsonl", 3)
        result = CliRunner().invoke(cli_batch.batch_command, [str(src), "-o", str(locked / "out.jsonl")])
        assert result.exit_code in (1, 2), result.output
        assert "Traceback" not in result.output and result.stderr.startswith("error: ")
        assert str(locked) in result.stderr
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(locked)], check=False)


def test_an_out_whose_folder_cannot_be_made_is_a_clear_error(tmp_path: Path, fake_cli: None) -> None:
    """OUT's folder is a regular file: making it fails with a real OSError for any user, root
    included, with no mount or permissions needed."""
    src = write_tasks(tmp_path / "in.jsonl", 3)
    plain = tmp_path / "plain"
    plain.write_text("not a folder\n")
    result = CliRunner().invoke(cli_batch.batch_command, [str(src), "-o", str(plain / "out.jsonl")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in result.output and len(errors) == 1 and result.stderr.endswith(errors[0] + "\n")
    assert str(plain) in errors[0] and os.strerror(errno.EEXIST) in errors[0]
    assert plain.read_text() == "not a folder\n"


def test_sigterm_stops_a_batch_cleanly_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    src = write_tasks(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "FAKE_DELAY": "0.02"}
    proc = subprocess.Popen([sys.executable, str(HERE / "batch_fakes.py"), str(src), "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (out.exists() and out.read_bytes().count(b"\n") >= 5):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    data = out.read_bytes()
    assert data.endswith(b"\n")  # the record being written when SIGTERM came was finished first
    written = len(load_records(out))
    assert 5 <= written < 60
    rest = run_batch(FakeJudge(), src, out)
    assert rest.skipped == written and rest.judged == 60 - written


def test_ten_thousand_tasks_run_in_bounded_memory(tmp_path: Path) -> None:
    """Programs are made only when the runner has room and records go straight to disk, so what a
    run holds beyond its input does not grow with the number of tasks."""
    from gram_local.batch import read_tasks

    n = 10_000
    tasks = read_tasks(write_tasks(tmp_path / "in.jsonl", n, size=2))
    judge = FakeJudge(max_think_tokens=1)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    summary = run_batch(judge, tasks, tmp_path / "out.jsonl")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert summary.judged == n and len(load_records(tmp_path / "out.jsonl")) == n
    # Per task the run keeps a key, a fingerprint and set entries (well under 1 KB); a run that
    # held results or programs would need tens of KB per task (each prompt alone is ~2k ints).
    assert peak - before < n * 1_000, f"{(peak - before) / n:.0f} bytes per task"
