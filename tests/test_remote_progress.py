"""A batch's progress line on a remote backend shows its requests in flight and failed attempts."""

from __future__ import annotations

import io
from types import SimpleNamespace

from gram_local.backend import BackendStats
from gram_local.cli.display import BatchProgress


def test_progress_line_shows_requests_in_flight_and_errors() -> None:
    stats = BackendStats(errors=2)
    backend = SimpleNamespace(remote=True, stats=stats, in_flight=lambda: 3)
    out = io.StringIO()
    progress = BatchProgress(out, tty=False, interval=0.0, backend=backend)
    progress.start(total=2, skipped=0)
    progress.advance(ok=False)
    progress.advance(ok=True)
    progress.finish()
    assert "1 failed, 3 in flight, 2 request errors" in out.getvalue()


def test_a_local_backend_adds_nothing() -> None:
    out = io.StringIO()
    progress = BatchProgress(out, tty=False, interval=0.0, backend=SimpleNamespace(remote=False))
    progress.start(total=1, skipped=0)
    progress.advance(ok=True)
    progress.finish()
    assert "in flight" not in out.getvalue()
