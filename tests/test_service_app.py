"""The service's app in this process over the scripted backend: routes, errors, key, CORS, streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
from fake_backend import scripted_judge  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from gram_local.errors import InputError, RequestSyntaxError, UnsafeBindError  # noqa: E402
from gram_local.results import BestOfNResult, CompareResult, RankResult, VoteResult  # noqa: E402
from gram_local.service.app import create_app  # noqa: E402
from gram_local.service.bodies import _COMMON, _FIELDS, Limits, parse_call, parse_json  # noqa: E402
from gram_local.service.openapi import openapi_document  # noqa: E402
from gram_local.service.server import check_bind  # noqa: E402
from gram_local.service.state import ServiceOptions, ServiceState  # noqa: E402
from gram_local.service.worker import JudgeWorker  # noqa: E402

LIMITS = Limits(max_responses=4, max_votes=5, max_think_tokens=64)
PAIR = {"question": "Which is longer?", "a": "a long answer here", "b": "short"}


def options(**changes: Any) -> ServiceOptions:
    base: dict[str, Any] = {"max_queue": 8, "max_body": 4096, "max_responses": 4, "max_votes": 5, "deadline": 60.0}
    return ServiceOptions(**(base | changes))


@pytest.fixture
def service() -> Iterator[tuple[TestClient, ServiceState]]:
    state = ServiceState(options())
    state.worker = JudgeWorker(scripted_judge(max_think_tokens=64), max_queue=8)
    try:
        with TestClient(create_app(state)) as client:
            yield client, state
    finally:
        state.worker.stop()


def test_while_loading_health_and_operations_are_503_with_retry_after() -> None:
    with TestClient(create_app(ServiceState(options()))) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"} and "retry-after" in health.headers
        busy = client.post("/v1/compare", json=PAIR)
        assert busy.status_code == 503 and busy.json()["error"]["type"] == "ServiceBusyError"
        assert int(busy.headers["retry-after"]) > 0


def test_results_are_the_cli_json_and_rebuild_as_the_same_dataclasses(service: tuple[TestClient, ServiceState]) -> None:
    client, state = service
    judge = state.require_worker().judge
    expected = judge.compare(PAIR["question"], PAIR["a"], PAIR["b"], swap=True).to_dict()
    got = client.post("/v1/compare", json=PAIR | {"swap": True}).json()
    assert got["winner"] == expected["winner"] == "a"
    assert got["judgments"] == expected["judgments"] and got["settings"] == expected["settings"]
    assert CompareResult.from_dict(got).to_dict() == got
    responses = ["one", "three words here", "two words"]
    cases = [("vote", {"a": "long answer", "b": "x", "votes": 3}, VoteResult),
             ("rank", {"responses": responses}, RankResult),
             ("best-of-n", {"responses": responses}, BestOfNResult)]
    for op, body, kind in cases:
        data = client.post(f"/v1/{op}", json={"question": "q"} | body).json()
        assert kind.from_dict(data).to_dict() == data
    assert client.post("/v1/rank", json={"question": "q", "responses": responses}).json()["ranking"] == [1, 2, 0]


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (json.dumps({"question": 3, "a": "x", "b": "y"}).encode(), 422, "'question' must be a string"),
    (json.dumps(PAIR | {"swap": "yes"}).encode(), 422, "'swap' must be true or false"),
    (json.dumps(PAIR | {"max_think_token": 5}).encode(), 422, "unknown field(s) for compare: max_think_token"),
    (json.dumps(PAIR | {"max_think_tokens": 65}).encode(), 422, "limit of 64"),
    (json.dumps(PAIR | {"temperature": -1}).encode(), 422, "temperature must be 0 or more"),
    (json.dumps({"question": "q", "a": "", "b": "y"}).encode(), 422, "response a"),
    (b"x" * 5000, 413, "4096 bytes"),
])
def test_bad_bodies_get_a_json_4xx(service: tuple[TestClient, ServiceState], body: bytes, status: int, needle: str) -> None:
    client, _ = service
    response = client.post("/v1/compare", content=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


def test_limits_on_responses_and_votes_and_unknown_routes(service: tuple[TestClient, ServiceState]) -> None:
    client, _ = service
    many = client.post("/v1/rank", json={"question": "q", "responses": ["a", "b", "c", "d", "e"]})
    assert many.status_code == 422 and "5 responses is over this service's limit of 4" in many.json()["error"]["message"]
    votes = client.post("/v1/vote", json=PAIR | {"votes": 6})
    assert votes.status_code == 422 and "limit of 5" in votes.json()["error"]["message"]
    assert client.post("/v1/judge", json=PAIR).status_code == 404
    wrong_method = client.get("/v1/compare")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "HTTPError"


def test_streamed_compare_sends_think_deltas_per_order_then_the_result(service: tuple[TestClient, ServiceState]) -> None:
    client, _ = service
    events = []
    with client.stream("POST", "/v1/compare", json=PAIR | {"swap": True, "stream": True},
                       headers={"Accept": "text/event-stream"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[-1][0] == "result" and all(n == "think" for n, _ in events[:-1])
    result = events[-1][1]
    for index, order in enumerate(["AB", "BA"]):
        deltas = [d for n, d in events if n == "think" and d["index"] == index]
        assert deltas and {d["order"] for d in deltas} == {order}
        assert result["judgments"][index]["output"].startswith("<think>\n" + "".join(d["delta"] for d in deltas))


def test_batch_streams_one_record_per_task_bad_rows_included(service: tuple[TestClient, ServiceState]) -> None:
    client, _ = service
    rows = [{"id": 1} | PAIR, {"id": 2, "question": "q"}, {"id": 3, "question": "q", "responses": ["x", "yy", "zzz"], "op": "rank"}]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    response = client.post("/v1/batch", content=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    records = {r["id"]: r for r in map(json.loads, response.text.split("\n")[:-1])}
    assert records[1]["status"] == "ok" and records[1]["winner"] == "a"
    assert records[2]["status"] == "error" and "needs 'a' and 'b'" in records[2]["error"]["message"]
    assert records[3]["status"] == "ok" and records[3]["ranking"] == [2, 1, 0]
    too_many = client.post("/v1/batch", content=json.dumps({"question": "q", "responses": list("abcde"), "op": "rank"}))
    assert too_many.status_code == 422


def test_a_full_queue_is_503_with_retry_after() -> None:
    state = ServiceState(options(max_queue=1))
    state.worker = JudgeWorker(scripted_judge(max_think_tokens=64), max_queue=1)
    try:
        ticket = state.worker.admit()  # one request in flight
        with TestClient(create_app(state)) as client:
            full = client.post("/v1/compare", json=PAIR)
            assert full.status_code == 503 and "queue is full" in full.json()["error"]["message"]
            assert full.headers["retry-after"].isdigit()
            ticket.release()
            assert client.post("/v1/compare", json=PAIR).status_code == 200
    finally:
        state.worker.stop()


def test_the_key_guards_v1_but_not_health_or_the_page() -> None:
    state = ServiceState(options(api_key="s3cret"))
    state.worker = JudgeWorker(scripted_judge(), max_queue=4)
    try:
        with TestClient(create_app(state)) as client:
            assert client.post("/v1/compare", json=PAIR).status_code == 401
            wrong = client.post("/v1/compare", json=PAIR, headers={"Authorization": "Bearer s3cre"})
            assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "UnauthorizedError"
            assert wrong.headers["www-authenticate"] == "Bearer"
            assert client.get("/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401
            assert client.post("/v1/compare", json=PAIR, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert client.get("/health").status_code == 200
            assert "<title>gram-local</title>" in client.get("/").text
    finally:
        state.worker.stop()


def test_cors_is_off_unless_an_origin_is_allowed() -> None:
    preflight = {"Origin": "http://tool.local:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    with TestClient(create_app(ServiceState(options()))) as client:
        assert "access-control-allow-origin" not in client.options("/v1/compare", headers=preflight).headers
        assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "http://tool.local:3000"}).headers
    with TestClient(create_app(ServiceState(options(cors_origins=("http://tool.local:3000",))))) as client:
        allowed = client.options("/v1/compare", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "http://tool.local:3000"
        other = client.options("/v1/compare", headers=preflight | {"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_binding_beyond_loopback_needs_a_key() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "my-host"):
        with pytest.raises(UnsafeBindError, match="--api-key"):
            check_bind(host, None)
        check_bind(host, "key")


def test_parse_call_checks_types_and_limits() -> None:
    call = parse_call("vote", {"question": "q", "a": "x", "b": "y", "votes": 3, "temperature": 0.5, "seed": 2}, LIMITS)
    assert (call.op, call.votes, dict(call.overrides)) == ("vote", 3, {"temperature": 0.5, "seed": 2})
    with pytest.raises(RequestSyntaxError):
        parse_json(b'{"a": ')
    for op, body, needle in [
        ("compare", {"question": "q", "a": "x"}, "missing 'b'"),
        ("vote", {"question": "q", "a": "x", "b": "y", "votes": True}, "positive integer"),
        ("rank", {"question": "q", "responses": ["x", 1]}, "list of strings"),
        ("rank", {"question": "q", "responses": ["x", "y"], "method": "bubble"}, "'method'"),
        ("best-of-n", {"question": "q", "responses": ["x", "y"], "method": "sort"}, "unknown field"),
        ("compare", {"question": "q", "a": "x", "b": "y", "seed": 1.5}, "'seed' must be an integer"),
        ("compare", {"question": "q", "a": "x", "b": "y", "top_p": float("nan")}, "'top_p' must be a number"),
        ("compare", {"question": "q", "a": "x", "b": "y", "position": "left"}, "'position'"),
    ]:
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            parse_call(op, body, LIMITS)


def test_the_openapi_document_describes_the_bodies_the_service_takes() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    for op, schema in [("compare", "CompareRequest"), ("vote", "VoteRequest"), ("rank", "RankRequest"), ("best-of-n", "BestOfNRequest")]:
        assert set(schemas[schema]["properties"]) == _FIELDS[op] | _COMMON
        assert doc["paths"][f"/v1/{op}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(schema)
    for name, kind in [("CompareResult", CompareResult), ("VoteResult", VoteResult), ("RankResult", RankResult),
                       ("BestOfNResult", BestOfNResult)]:
        import dataclasses

        assert set(schemas[name]["properties"]) == {f.name for f in dataclasses.fields(kind)}
    assert {"/v1/batch", "/v1/models", "/health", "/"} <= set(doc["paths"])


def test_a_request_past_its_deadline_is_504_and_gives_its_place_back() -> None:
    state = ServiceState(options(deadline=0.2))
    judge = scripted_judge(max_think_tokens=64, delay=1.0)  # each generation takes a second to finish
    state.worker = JudgeWorker(judge, max_queue=4)
    try:
        with TestClient(create_app(state)) as client:
            late = client.post("/v1/compare", json=PAIR | {"swap": True})
            assert late.status_code == 504 and late.json()["error"]["type"] == "DeadlineExceededError"
            assert "deadline of 0.2 s" in late.json()["error"]["message"]
            assert client.get("/health").json()["queue"] == 0  # its place in the queue was given back
    finally:
        state.worker.stop()
