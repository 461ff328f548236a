"""What the CLI draws while the model works: the batch progress line and the live think text."""

from __future__ import annotations

import io

from gram_local.cli.display import BatchProgress, ThinkDisplay


def test_batch_progress_plain_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    progress = BatchProgress(stream, tty=False, interval=0.0)
    progress.start(3, skipped=2)
    for ok in (True, False, True):
        progress.advance(ok)
    progress.finish()
    text = stream.getvalue()
    assert "\r" not in text  # a log file reads line by line
    assert "2 task(s) already done in OUT; 3 to judge" in text
    assert "3/3 (100.0%)" in text and "1 failed" in text and "ETA" in text


def test_batch_progress_counts_failures_only_when_there_are_some() -> None:
    stream = io.StringIO()
    progress = BatchProgress(stream, tty=False, interval=0.0)
    progress.start(2, skipped=0)
    progress.advance(True)
    progress.advance(True)
    progress.finish()
    text = stream.getvalue()
    assert "2 task(s) to judge" in text and "2/2" in text and "failed" not in text


def test_think_display_streams_whole_lines_with_labels() -> None:
    stream = io.StringIO()
    with ThinkDisplay(["AB", "BA"], budget=10, stream=True, out=stream) as display:
        display(0, "Feedback: good")
        display(1, "Feedback: bad\nConclusion")
        display(0, " enough\nComparison")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[BA] Feedback: bad"
    assert "[AB] Feedback: good enough" in lines and "[AB] Comparison" in lines and "[BA] Conclusion" in lines


def test_think_display_is_silent_off_a_terminal_without_stream() -> None:
    stream = io.StringIO()
    with ThinkDisplay(["AB"], budget=10, stream=False, out=stream) as display:
        display(0, "text\n")
    assert stream.getvalue() == ""
