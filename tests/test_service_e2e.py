"""The real `gram-local serve` process on 127.0.0.1 with SmolLM2, driven by real HTTP clients."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from service_process import REPO, ServiceProcess, get, post  # noqa: E402

from gram_local.client import Client  # noqa: E402
from gram_local.errors import ContextOverflowError, ServiceBusyError, UnauthorizedError  # noqa: E402
from gram_local.results import BestOfNResult, Comparison, Judgment, PromptView, RankResult, VoteResult  # noqa: E402

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France.", "The capital of France is Lyon."),
    ("What is 2+2?", "4", "5"),
    ("Name a primary colour.", "Red.", "Green is a primary colour of paint."),
    ("Is water wet?", "Water makes things wet.", "No."),
]


@pytest.fixture(scope="module")
def server(smollm2_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(smollm2_path, "--ctx", "1024", "--parallel", "4", "--max-think-tokens", "16",
                             "--max-body", "65536", "--max-responses", "4")
    try:
        yield service.wait_ready()
    finally:
        assert service.stop() == 0, service.log
    assert "Traceback" not in service.log, service.log


def test_concurrent_clients_get_their_own_results_equal_to_alone_runs(server: ServiceProcess) -> None:
    """Greedy: what four clients get at once is what each gets alone, answer and probability; the
    think text too unless the batch shape moved a near-tied token (see test_judge_e2e)."""
    client = Client(server.url)
    alone = [client.compare(q, a, b, swap=True) for q, a, b in PAIRS]
    together: list[Any] = [None] * len(PAIRS)

    def run(i: int) -> None:
        together[i] = Client(server.url).compare(*PAIRS[i], swap=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PAIRS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for one, many in zip(alone, together):
        assert many is not None
        assert [j.order for j in many.judgments] == ["AB", "BA"]
        assert [j.answer for j in many.judgments] == [j.answer for j in one.judgments]
        assert many.winner == one.winner
        assert [j.p_a for j in many.judgments] == pytest.approx([j.p_a for j in one.judgments], abs=0.02)
    exact = [client.compare(q, a, b, swap=True, max_think_tokens=0) for q, a, b in PAIRS]
    answered = list(client.compare_many(PAIRS, swap=True, max_think_tokens=0))
    for one, many in zip(exact, answered):  # answering at once: no think text to drift
        assert not isinstance(many, Exception)
        assert [j.answer for j in many.judgments] == [j.answer for j in one.judgments]
        assert [j.p_a for j in many.judgments] == pytest.approx([j.p_a for j in one.judgments], abs=0.01)


def test_bad_requests_get_a_documented_4xx_and_never_a_500(server: ServiceProcess) -> None:
    url = server.url
    cases: list[tuple[str, bytes, int, str]] = [
        ("/v1/compare", b'{"question": "q", "a": ', 400, "RequestSyntaxError"),
        ("/v1/compare", json.dumps({"question": ["q"], "a": "x", "b": "y"}).encode(), 422, "InputError"),
        ("/v1/compare", json.dumps({"question": "q", "a": "x", "b": "y", "swap": 1}).encode(), 422, "InputError"),
        ("/v1/compare", json.dumps({"question": "q" * 70000, "a": "x", "b": "y"}).encode(), 413, "PayloadTooLargeError"),
        ("/v1/rank", json.dumps({"question": "q", "responses": list("abcde")}).encode(), 422, "InputError"),
        ("/v1/compare", json.dumps({"question": "word " * 3000, "a": "x", "b": "y"}).encode(), 422, "ContextOverflowError"),
    ]
    for path, raw, status, kind in cases:
        got, headers, body = post(url + path, None, raw=raw)
        assert got == status, (path, raw[:60], body)
        assert body["error"]["type"] == kind and body["error"]["message"]
        assert headers["content-type"] == "application/json"
    _, _, overflow = post(url + "/v1/compare", {"question": "word " * 3000, "a": "x", "b": "y"})
    assert overflow["error"]["n_tokens"] > overflow["error"]["limit"] == 1024 - 16 - 16
    with pytest.raises(ContextOverflowError) as caught:
        Client(url).compare("word " * 3000, "x", "y")
    assert caught.value.n_tokens == overflow["error"]["n_tokens"]
    assert get(url + "/v1/models")[1]["data"][0]["n_ctx_seq"] == 1024


def test_client_streams_the_reasoning_as_it_is_generated(server: ServiceProcess) -> None:
    deltas: dict[int, list[str]] = {}
    result = Client(server.url).compare(*PAIRS[0], swap=True, on_think=lambda i, text: deltas.setdefault(i, []).append(text))
    assert set(deltas) == {0, 1}
    for index, judgment in enumerate(result.judgments):
        assert judgment.output.startswith("<think>\n" + "".join(deltas[index]))
    batch = list(Client(server.url).batch([{"id": "x", "question": PAIRS[1][0], "a": "4", "b": "5"}, {"id": "y", "question": "q"}]))
    assert {r["id"]: r["status"] for r in batch} == {"x": "ok", "y": "error"}


def test_client_vote_rank_best_of_n_and_prompt_rebuild_as_the_judges_dataclasses(server: ServiceProcess,
                                                                                 smollm2_path: Path) -> None:
    client = Client(server.url)
    question, responses = "What is 2+2?", ["4", "5", "four"]
    vote = client.vote(question, "4", "5", k=3, max_think_tokens=2)
    assert isinstance(vote, VoteResult) and len(vote.judgments) == 3 and all(isinstance(j, Judgment) for j in vote.judgments)
    assert vote.votes == {"a": sum(j.prefers == "a" for j in vote.judgments), "b": sum(j.prefers == "b" for j in vote.judgments)}
    assert vote.winner in ("a", "b") and vote.votes[vote.winner] >= 2  # three votes cannot split evenly
    assert vote.settings["max_think_tokens"] == 2 and vote.settings["temperature"] > 0  # sampled, as Judge.vote does
    assert all(j.order == "AB" and j.think_tokens <= 2 for j in vote.judgments)

    rank = client.rank(question, responses, method="round-robin", max_think_tokens=0)
    assert isinstance(rank, RankResult) and sorted(rank.ranking) == [0, 1, 2] and len(rank.scores) == 3
    assert all(isinstance(c, Comparison) for c in rank.comparisons)
    assert sorted(sorted((c.a, c.b)) for c in rank.comparisons) == [[0, 1], [0, 2], [1, 2]]  # every pair, once
    assert [rank.scores[i] for i in rank.ranking] == sorted(rank.scores, reverse=True)
    assert rank.settings["method"] == "round-robin" and rank.model is not None and rank.model.path == str(smollm2_path)

    best = client.best_of_n(question, responses, max_think_tokens=0)
    assert isinstance(best, BestOfNResult) and best.best in (0, 1, 2) and len(best.comparisons) == 2 == len(best.judgments)
    final = best.comparisons[-1]
    assert final.winner in ("a", "b") and best.best == (final.a if final.winner == "a" else final.b)

    view = client.prompt(question, "4", "5")
    assert isinstance(view, PromptView) and view.model is not None and view.model.path == str(smollm2_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = subprocess.run([sys.executable, "-m", "gram_local", "prompt", "-m", str(smollm2_path), "-q", question, "-a", "4",
                          "-b", "5", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert view.to_dict() == json.loads(cli.stdout)  # what `gram-local prompt --json` prints
    with pytest.raises(ContextOverflowError):
        client.prompt("word " * 3000, "4", "5")
    client.close()
    client.close()


def test_the_service_log_has_each_request_and_never_the_texts(server: ServiceProcess) -> None:
    marker = "Okapi-Marker-8841"
    pair = {"question": f"{marker}: what is 2+2?", "a": f"4 ({marker})", "b": f"5 ({marker})", "max_think_tokens": 2}
    sent = []
    for path, body, status in [("/v1/compare", pair, 200), ("/v1/prompt", pair, 200), ("/v1/compare", pair | {"b": ""}, 422)]:
        got, headers, answer = post(server.url + path, body)
        assert got == status, answer
        sent.append((headers["x-request-id"], path, status))
    for request_id, path, status in sent:
        expected = f"request {request_id} POST {path} op={path.rsplit('/', 1)[1]} "
        deadline = time.monotonic() + 30  # the line is written once the response has gone out
        while not [line for line in server.lines if expected in line] and time.monotonic() < deadline:
            time.sleep(0.05)
        line = [line for line in server.lines if expected in line]
        assert len(line) == 1 and f" status={status}" in line[0], (expected, server.log)
    assert marker not in server.log, server.log


def test_sigint_lets_a_request_in_flight_finish_then_exits_cleanly(smollm2_path: Path) -> None:
    service = ServiceProcess(smollm2_path, "--ctx", "1024", "--parallel", "1", "--max-think-tokens", "64", "--threads", "1",
                             "--grace", "30").wait_ready()
    try:
        conn, response = _open_stream(service.url, {"question": "Explain in detail how rainbows form.",
                                                    "a": "Light refracts in droplets.", "b": "Magic."})
        service.proc.send_signal(signal.SIGINT)
        rest = response.read()  # the stream goes on to its result: the grace period is not cut short
        conn.close()
        assert b"event: result" in rest and b"event: error" not in rest, rest[-500:]
        # Ctrl-C pressed again and again while it shuts down: the cleanup (freeing the model) still
        # runs to its end and the exit is clean (a signal once landed between uvicorn's exit and
        # the cleanup, and killed the process with -15).
        assert service.wait_exit(60, nudge=signal.SIGINT) == 0, service.log
        log = service.log
        assert "stopping: in-flight requests get 30 s" in log and "stopped" in log, log
        request = [line for line in service.lines if "POST /v1/compare op=compare" in line]
        assert len(request) == 1 and " status=200" in request[0], log
        # The request was still in flight when the signal arrived: its line comes after the stop began.
        assert service.lines.index(request[0]) > [i for i, line in enumerate(service.lines) if "stopping:" in line][0], log
        assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    finally:
        service.stop()


def _open_stream(url: str, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streamed compare, read up to its first think event (so it is running in the engine)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    conn.request("POST", "/v1/compare", json.dumps(body | {"stream": True}),
                 {"Content-Type": "application/json", "Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    while True:
        line = response.readline()
        assert line, "the stream ended before any think event"
        if line.startswith(b"event: think"):
            return conn, response


def test_disconnect_frees_the_slot_a_full_queue_is_503_and_sigterm_exits_cleanly(smollm2_path: Path) -> None:
    # A budget no machine finishes before the wind-down (one second into --grace 2), so the second
    # stream is surely cut by it, however fast the CPU.
    budget = 6000
    service = ServiceProcess(smollm2_path, "--ctx", "8192", "--parallel", "1", "--max-queue", "1", "--threads", "1",
                             "--max-think-tokens", str(budget), "--grace", "2").wait_ready()
    try:
        long_pair = {"question": "Explain in detail how rainbows form.", "a": "Light refracts in droplets.", "b": "Magic."}
        conn, _ = _open_stream(service.url, long_pair)
        status, headers, body = post(service.url + "/v1/compare", {"question": "q", "a": "x", "b": "y"})
        assert status == 503 and int(headers["retry-after"]) > 0 and "queue is full" in body["error"]["message"]
        with pytest.raises(ServiceBusyError):
            Client(service.url).compare("q", "x", "y")

        conn.close()  # the client goes away mid-stream
        quick = Client(service.url).compare("What is 2+2?", "4", "5", max_think_tokens=0)  # one slot: it waits for none
        assert quick.judgments[0].answer in ("A", "B")
        engine = get(service.url + "/health")[1]["engine"]
        assert engine["cancelled"] == 1
        assert engine["generated_tokens"] < budget  # the abandoned judgment stopped before its budget

        conn, response = _open_stream(service.url, long_pair)
        service.proc.send_signal(signal.SIGTERM)
        rest = response.read()  # the stream ends whole, with an error event, rather than cut off or hanging
        assert b"event: error" in rest and b"ServiceBusyError" in rest and b"the service stopped" in rest
        conn.close()
        assert service.wait_exit(60, nudge=signal.SIGTERM) == 0, service.log
        assert "stopped" in service.log and "Traceback" not in service.log, service.log
    finally:
        service.stop()


def test_a_key_is_required_and_memory_stays_flat_over_1000_requests(smollm2_path: Path) -> None:
    # One thread: on a shared machine llama.cpp's spinning thread barriers make two threads far slower.
    service = ServiceProcess(smollm2_path, "--ctx", "512", "--parallel", "8", "--max-think-tokens", "0", "--threads", "1",
                             env={"GRAM_LOCAL_API_KEY": "k3y"}).wait_ready()
    try:
        assert get(service.url + "/v1/models")[0] == 401
        assert get(service.url + "/v1/models", headers={"Authorization": "Bearer k3x"})[0] == 401
        assert get(service.url + "/health")[0] == 200
        with pytest.raises(UnauthorizedError):
            Client(service.url, api_key="wrong").compare("q", "x", "y")
        client = Client(service.url, api_key="k3y")

        def run(n: int) -> None:
            for i in range(n):
                client.compare(f"What is {i} + 1?", str(i + 1), str(i + 2))

        run(100)  # warm: the context, the prefix cache, the allocator's pools
        before = service.rss_kib()
        threads = [threading.Thread(target=run, args=(150,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = service.rss_kib()
        growth_mib = (after - before) / 1024
        print(f"RSS {before / 1024:.1f} MiB after 100 requests, {after / 1024:.1f} MiB after 1,000 ({growth_mib:+.1f} MiB)")
        assert growth_mib < 32, f"RSS grew {growth_mib:.1f} MiB over 900 requests"
        assert service.log.count("status=200") >= 1000
    finally:
        assert service.stop() == 0


def test_listening_beyond_loopback_without_a_key_refuses_to_start(smollm2_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRAM_LOCAL_API_KEY"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "gram_local", "serve", "-m", str(smollm2_path), "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr and "--api-key" in done.stderr
    assert "Traceback" not in done.stderr
