"""Model-free judges for batch and eval tests (the real Judge over the scripted backend), and a
CLI driver.

Run as a script, it is `gram-local batch` with this judge in place of the model, so the kill tests
exercise the real command in a real process:

    python tests/batch_fakes.py IN -o OUT [batch options]

Environment: FAKE_DELAY (seconds per generation), FAKE_STALL_AT / FAKE_STALL_MARKER (the n-th
record write stops halfway, creates the marker file and hangs: a window to kill -9 inside a line).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_backend import ScriptedBackend, scripted_judge  # noqa: E402

from gram_local.judge import Judge  # noqa: E402

TOO_LONG = "too long " * 800  # over the scripted model's 4,096-token context


def FakeJudge(*, seed: int = 0, max_think_tokens: int = 8, bias: float = 0.0, delay: float = 0.0, parallel: int = 8) -> Judge:  # noqa: N802
    """Deterministic verdicts: the longer response is better, plus `bias` towards the one shown first."""
    return scripted_judge(seed=seed, max_think_tokens=max_think_tokens, bias=bias, delay=delay, parallel=parallel)


def Interrupting(after: int, **kwargs: Any) -> Judge:  # noqa: N802
    """Ctrl-C (KeyboardInterrupt) once `after` generations have finished."""
    judge = FakeJudge(**kwargs)
    backend = judge.backend
    assert isinstance(backend, ScriptedBackend)
    backend.interrupt_after = after
    return judge


def _stalling_writer(stall_at: int, marker: Path) -> Any:
    """Replaces the batch's record writer: the n-th record is cut in half and the process hangs."""
    count = 0

    def write_all(fd: int, data: bytes) -> None:
        nonlocal count
        count += 1
        if count < stall_at:
            os.write(fd, data)
            return
        os.write(fd, data[: len(data) // 2])
        os.fsync(fd)
        marker.write_text("writing")
        time.sleep(120)
        os.write(fd, data[len(data) // 2 :])

    return write_all


def main(argv: list[str]) -> None:
    """`gram-local batch` with the scripted judge: the real command, the real process, no model."""
    import gram_local.batch.outfile
    import gram_local.cli.batch

    judge = FakeJudge(delay=float(os.environ.get("FAKE_DELAY", "0")))
    gram_local.cli.batch.open_judge = lambda opts, **_: judge  # type: ignore[assignment]
    if os.environ.get("FAKE_STALL_AT"):
        gram_local.batch.outfile._write_all = _stalling_writer(  # type: ignore[assignment]
            int(os.environ["FAKE_STALL_AT"]), Path(os.environ["FAKE_STALL_MARKER"])
        )
    gram_local.cli.batch.batch_command.main(args=argv, prog_name="gram-local batch")


if __name__ == "__main__":
    main(sys.argv[1:])
