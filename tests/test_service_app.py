"""The service's app in this process over the scripted backend: routes, errors, key, CORS, streams."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("starlette")
from fake_backend import scripted_judge  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from gram_local.errors import InputError, RequestSyntaxError, UnsafeBindError  # noqa: E402
from gram_local.results import BestOfNResult, CompareResult, PromptView, RankResult, VoteResult  # noqa: E402
from gram_local.service.app import create_app  # noqa: E402
from gram_local.service.bodies import _COMMON, _FIELDS, PROMPT_FIELDS, Limits, parse_call, parse_json  # noqa: E402
from gram_local.service.openapi import openapi_document  # noqa: E402
from gram_local.service.server import check_bind  # noqa: E402
from gram_local.service.state import ServiceOptions, ServiceState  # noqa: E402
from gram_local.service.streams import ThinkQueue, judge_events  # noqa: E402
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


class _SlowClientWorker:
    """The two things `judge_events` asks of a worker: an outcome to await, nothing else."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def outcome(self, future: Any, *, deadline: float | None = None) -> CompareResult:
        await self.done.wait()
        return CompareResult(winner="a", p_a=0.9, judgments=[])


def test_think_text_that_arrives_while_a_slow_client_reads_is_sent_before_the_result() -> None:
    """The judgment can end while the stream waits on its reader; what the model wrote meanwhile
    must still reach the client, ahead of the verdict (it was once dropped)."""

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        worker = _SlowClientWorker()
        thinks = ThinkQueue(asyncio.get_running_loop())
        call = parse_call("compare", PAIR | {"swap": True, "stream": True}, LIMITS)
        watch = SimpleNamespace(stamp=lambda result: result)
        ticket = SimpleNamespace(release=lambda: None)
        events = judge_events(worker, call, SimpleNamespace(done=lambda: True), thinks,  # type: ignore[arg-type]
                              watch, ticket, None, {})  # type: ignore[arg-type]
        thinks(0, "first ")
        received = [await events.__anext__()]
        # The reader is slow: before it asks for more, the rest of both thinks arrives and the
        # judgment ends.
        for index, text in [(0, "second "), (1, "other "), (0, "third")]:
            thinks(index, text)
        worker.done.set()
        await asyncio.sleep(0.01)
        received += [chunk async for chunk in events]
        parsed = []
        for chunk in received:
            name, data = chunk.decode().strip().split("\n")
            parsed.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        return parsed

    events = asyncio.run(scenario())
    assert [name for name, _ in events] == ["think", "think", "think", "result"]
    text = {0: "", 1: ""}
    for _, data in events[:-1]:
        text[data["index"]] += data["delta"]
    assert text == {0: "first second third", 1: "other "}


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
        assert set(schemas[name]["properties"]) == {f.name for f in dataclasses.fields(kind)}
    assert {"/v1/batch", "/v1/models", "/health", "/"} <= set(doc["paths"])
    assert set(schemas["PromptRequest"]["properties"]) == PROMPT_FIELDS
    assert doc["paths"]["/v1/prompt"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("PromptRequest")
    assert set(schemas["PromptView"]["properties"]) == {f.name for f in dataclasses.fields(PromptView)}


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


def test_openapi_json_is_served_and_is_the_document_every_path_of_which_is_routed(service: tuple[TestClient, ServiceState]) -> None:
    client, _ = service
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    served = json.loads(response.content)
    assert {"/v1/compare", "/v1/vote", "/v1/rank", "/v1/best-of-n", "/v1/batch", "/v1/prompt", "/v1/models",
            "/health"} <= set(served["paths"])
    assert served == openapi_document()
    for path, methods in served["paths"].items():  # the document names no route the app lacks
        for method in methods:
            answer = client.request(method.upper(), path, content=b"{}")
            assert answer.status_code not in (404, 405), (method, path, answer.text)


# ---------------------------------------------------------------- /v1/prompt and the client's methods


def test_prompt_is_what_the_judge_feeds_the_model_for_the_order_a_b(service: tuple[TestClient, ServiceState]) -> None:
    client, state = service
    judge = state.require_worker().judge
    plain = client.post("/v1/prompt", json=PAIR)
    assert plain.status_code == 200, plain.text
    assert plain.json() == judge.prompt(PAIR["question"], PAIR["a"], PAIR["b"]).to_dict()
    dated = client.post("/v1/prompt", json=PAIR | {"date": "2025-01-02"}).json()
    assert dated == judge.prompt(PAIR["question"], PAIR["a"], PAIR["b"], date="2025-01-02").to_dict()
    assert "02 Jan 2025" in dated["text"] and "02 Jan 2025" not in plain.json()["text"]
    assert dated["text"].index(PAIR["a"]) < dated["text"].index(PAIR["b"]) and dated["tokens"]
    assert dated["model"] == {"path": "scripted.gguf", "name": "fake", "sha256": "f" * 64, "quantization": "F16"}
    for body, needle in [
        (PAIR | {"stream": True}, "unknown field(s) for prompt: stream"),
        (PAIR | {"swap": True}, "unknown field(s) for prompt: swap"),
        ({"question": "q", "a": "x"}, "missing 'b'"),
        (PAIR | {"max_think_tokens": 65}, "limit of 64"),
        ({"question": "q", "a": "", "b": "y"}, "response a"),
    ]:
        bad = client.post("/v1/prompt", json=body)
        assert bad.status_code == 422 and needle in bad.json()["error"]["message"], (body, bad.text)
    assert client.get("/health").json()["queue"] == 0  # each prompt gave its place in the queue back


def test_prompt_is_503_while_loading() -> None:
    with TestClient(create_app(ServiceState(options()))) as client:
        busy = client.post("/v1/prompt", json=PAIR)
        assert busy.status_code == 503 and busy.json()["error"]["type"] == "ServiceBusyError"


# Judge methods that run programs on the engine or describe its settings: a service client has no
# engine; every other public method of Judge must have its counterpart on Client.
ENGINE_SIDE = {"run", "run_many", "compare_program", "vote_program", "rank_program", "best_of_n_program", "head_tokens",
               "settings_record", "vote_settings"}
JUDGING = {"compare", "vote", "rank", "best_of_n", "compare_many", "prompt", "close"}


def test_the_client_has_every_judging_method_of_judge_with_the_same_parameters() -> None:
    import inspect

    from gram_local.client import Client
    from gram_local.judge import Judge

    public = {name for name, value in vars(Judge).items() if callable(value) and not name.startswith("_")}
    assert public - ENGINE_SIDE == JUDGING
    for name in sorted(JUDGING):
        ours, theirs = inspect.signature(getattr(Client, name)), inspect.signature(getattr(Judge, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in theirs.parameters.values()], name
        assert ours.return_annotation == theirs.return_annotation, name
    client = Client("http://127.0.0.1:9")  # nothing listens there: close needs no service, and twice is fine
    client.close()
    client.close()


# ---------------------------------------------------------------- the log and the page


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_log_has_a_line_per_request_and_never_the_texts(service: tuple[TestClient, ServiceState]) -> None:
    client, _ = service
    marker = "Zebra-Marker-5512"
    pair = {"question": f"{marker}: which is longer?", "a": f"{marker} a long answer here", "b": f"{marker} b"}
    responses = [f"{marker} one", f"{marker} three words here", f"{marker} two"]
    logger = logging.getLogger("gram_local.service")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        sent: list[tuple[str, int]] = []
        for path, body in [("/v1/compare", pair | {"swap": True}), ("/v1/vote", pair | {"votes": 3}),
                           ("/v1/rank", {"question": pair["question"], "responses": responses}),
                           ("/v1/best-of-n", {"question": pair["question"], "responses": responses}),
                           ("/v1/prompt", pair), ("/v1/compare", pair | {"b": ""})]:
            answer = client.post(path, json=body)
            sent.append((answer.headers["x-request-id"], answer.status_code))
        with client.stream("POST", "/v1/compare", json=pair | {"stream": True},
                           headers={"Accept": "text/event-stream"}) as streamed:
            assert "event: result" in "".join(streamed.iter_lines())
            sent.append((streamed.headers["x-request-id"], 200))
        batch = client.post("/v1/batch", content=json.dumps({"id": "t1"} | pair) + "\n")
        assert json.loads(batch.text)["status"] == "ok"
        sent.append((batch.headers["x-request-id"], 200))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [status for _, status in sent] == [200] * 5 + [422, 200, 200]
    for request_id, status in sent:
        line = [line for line in handler.lines if line.startswith(f"request {request_id} POST /v1/")]
        assert len(line) == 1 and f" status={status}" in line[0], (request_id, handler.lines)
    assert handler.lines and not [line for line in handler.lines if marker in line]


class _PageLinks(HTMLParser):
    """Every URL a page (or an HTML snippet in its script) would load or point at, and its scripts' and styles' text."""

    URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "data", "background", "cite", "manifest", "ping",
                      "xlink:href", "srcset", "imagesrcset"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("srcset", "imagesrcset"):
                self.urls += [part.split()[0] for part in value.split(",") if part.strip()]
            elif name in self.URL_ATTRIBUTES:
                self.urls.append(value)
            elif name == "style":
                self.styles.append(value)
            elif tag == "meta" and name == "content" and "url=" in value.lower():
                self.urls.append(value[value.lower().index("url=") + 4:])
        if tag in ("script", "style"):
            self._inside = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inside:
            self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside == "script":
            self.scripts.append(data)
        elif self._inside == "style":
            self.styles.append(data)


_JS_STRING = re.compile(r"""'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"|`(?:\\.|[^`\\])*`""")
_JS_LOADS = re.compile(r"""\b(?:fetch|import|importScripts|EventSource|WebSocket|Worker|SharedWorker|sendBeacon|open)\s*\(\s*("""
                       + _JS_STRING.pattern + ")")
_JS_IMPORT_FROM = re.compile(r"""\bimport\b[^;'"`]*?(?:\bfrom\s*)?(""" + _JS_STRING.pattern + ")")
_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)|@import\s+(['"])([^'"]*)\3""", re.IGNORECASE)


def _is_external(url: str) -> bool:
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    return url.startswith("//") or bool(parts.netloc) or parts.scheme.lower() not in ("", "data", "blob")


def page_references(html: str) -> tuple[list[str], list[str]]:
    """(every URL the page refers to, the targets of its scripts' fetch/import calls)."""
    page = _PageLinks()
    page.feed(html)
    page.close()
    urls, loads = list(page.urls), []
    for script in page.scripts:
        literals = [m.group(0)[1:-1] for m in _JS_STRING.finditer(script)]
        loads += [m.group(1)[1:-1] for m in _JS_LOADS.finditer(script)]
        loads += [m.group(1)[1:-1] for m in _JS_IMPORT_FROM.finditer(script)]
        for text in literals:
            if "<" in text:  # markup a script writes (innerHTML): its attributes count too
                urls += page_references(text)[0]
            elif re.match(r"\s*(?:[a-z][a-z0-9+.-]*:)?//", text, re.IGNORECASE):
                urls.append(text)
    for style in page.styles:
        for m in _CSS_URL.finditer(style):
            urls.append(m.group(2) if m.group(2) is not None else m.group(4))
    return urls + loads, loads


@pytest.mark.parametrize("snippet", [
    '<script src="https://cdn.example/vue.js"></script>',
    '<link rel="stylesheet" href="//fonts.example/inter.css">',
    '<img srcset="/a.png 1x, http://img.example/a@2x.png 2x">',
    '<script type="module">import { h } from "https://esm.example/preact";</script>',
    "<script>const mod = await import('https://esm.example/x.js');</script>",
    '<script>fetch("http://api.example/v1/compare", {method: "POST"});</script>',
    "<script>box.innerHTML = '<img src=\"//cdn.example/a.png\">';</script>",
    "<style>@import url(https://fonts.example/a.css); body { color: red; }</style>",
    '<div style="background: url(\'https://img.example/bg.png\')"></div>',
])
def test_the_no_external_url_check_finds_what_a_cdn_would_add(snippet: str) -> None:
    urls, _ = page_references(f"<!doctype html><html><head></head><body>{snippet}</body></html>")
    assert any(_is_external(u) for u in urls), urls


def test_the_page_loads_nothing_from_outside_the_service(service: tuple[TestClient, ServiceState]) -> None:
    client, _ = service
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls, loads = page_references(response.text)
    assert [u for u in urls if _is_external(u)] == []
    assert "/health" in loads and any(t.startswith("/v1/") for t in loads)  # the checker saw the page's own calls
    assert all(t.startswith("/") and not t.startswith("//") for t in loads), loads
