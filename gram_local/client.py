"""A client of `gram-local serve` with the judge's methods, so a tool switches with one line:

    judge = gram_local.load_judge("gram-rr-3b")              # in this process
    judge = gram_local.client.Client("http://127.0.0.1:8765")  # the service

Results are the same dataclasses (rebuilt from the service's JSON), errors the same classes where
the service names one (a prompt over the context is a ContextOverflowError with its numbers).
Standard library only: no web stack needed on the client side.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gram_local.config import DEFAULT_RANK_METHOD, DEFAULT_VOTES, ENV_API_KEY
from gram_local.errors import (
    BackendError,
    Cancelled,
    ContextOverflowError,
    DeadlineExceededError,
    GramLocalError,
    InputError,
    PayloadTooLargeError,
    RequestSyntaxError,
    ServiceBusyError,
    UnauthorizedError,
)
from gram_local.operations import ThinkCallback
from gram_local.results import BestOfNResult, CompareResult, JudgeResult, ModelInfo, PromptView, RankResult, VoteResult

J = TypeVar("J", bound=JudgeResult)


def error_from(status: int, body: Any) -> GramLocalError:
    """The error a service response stands for (its JSON `{"error": {type, message, ...}}`)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        return BackendError(f"the service answered {status} without an error object")
    kind, message = str(detail.get("type", "")), str(detail.get("message", ""))
    if kind == "ContextOverflowError" and isinstance(detail.get("n_tokens"), int) and isinstance(detail.get("limit"), int):
        return ContextOverflowError(detail["n_tokens"], detail["limit"])
    if status == 401:
        return UnauthorizedError(message)
    if status == 413:
        return PayloadTooLargeError(int(detail.get("limit") or 0))
    if status == 400:
        return RequestSyntaxError(message)
    if status == 503:
        return ServiceBusyError(message, int(detail.get("retry_after") or 1))
    if status == 504:
        return DeadlineExceededError(float(detail.get("seconds") or 0))
    if 400 <= status < 500:
        return InputError(message)
    if kind == "Cancelled":
        return Cancelled(message)
    return BackendError(f"the service failed ({status} {kind}): {message}")


class Client:
    """The service's judge: `compare`, `vote`, `rank`, `best_of_n`, `compare_many`, `prompt`, `close`, as on `Judge`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8765", api_key: str | None = None, *, timeout: float | None = None,
                 in_flight: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.in_flight = in_flight

    @classmethod
    def from_env(cls, base_url: str = "http://127.0.0.1:8765") -> Client:
        """A client whose key comes from GRAM_LOCAL_API_KEY (as the service's does)."""
        import os

        return cls(base_url, os.environ.get(ENV_API_KEY) or None)

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: bytes | None = None, *, accept: str = "application/json",
                 content_type: str = "application/json") -> Any:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 - the caller's own service URL
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"null")
            except ValueError:
                payload = None
            raise error_from(exc.code, payload) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"cannot reach the gram-local service at {self.base_url}: {reason}") from None

    def _get(self, path: str) -> Any:
        with self._request("GET", path) as response:
            return json.loads(response.read())

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/health")
        return result

    def models(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._get("/v1/models")["data"]
        return data

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        with self._request("POST", path, json.dumps(payload).encode()) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def _call(self, op: str, body: dict[str, Any], on_think: ThinkCallback | None) -> dict[str, Any]:
        payload = {k: v for k, v in body.items() if v is not None}
        if on_think is None:
            return self._post(f"/v1/{op}", payload)
        payload["stream"] = True
        with self._request("POST", f"/v1/{op}", json.dumps(payload).encode(), accept="text/event-stream") as response:
            for event, data in _events(response):
                if event == "think":
                    on_think(int(data["index"]), str(data["delta"]))
                elif event == "result":
                    return dict(data)
                elif event == "error":
                    raise error_from(_status_of(data), data)
        raise BackendError("the service's event stream ended without a result")

    # ------------------------------------------------------------ the judge's methods

    def prompt(self, question: str, response_a: str, response_b: str, **overrides: Any) -> PromptView:
        """Exactly what the model is fed for the order a, b (rendered and tokenized by the service)."""
        body = {"question": question, "a": response_a, "b": response_b, **overrides}
        data = self._post("/v1/prompt", {k: v for k, v in body.items() if v is not None})
        model = data.get("model")
        return PromptView(text=str(data["text"]), tokens=[int(t) for t in data["tokens"]],
                          model=ModelInfo.from_dict(model) if isinstance(model, dict) else None)

    def compare(self, question: str, a: str, b: str, *, swap: bool = False, on_think: ThinkCallback | None = None,
                **overrides: Any) -> CompareResult:
        """Which of a and b answers the question better; with swap, both orders (disagreement: tie)."""
        body = {"question": question, "a": a, "b": b, "swap": swap, **overrides}
        return CompareResult.from_dict(self._call("compare", body, on_think))

    def vote(self, question: str, a: str, b: str, *, k: int = DEFAULT_VOTES, temperature: float | None = None,
             top_p: float | None = None, on_think: ThinkCallback | None = None, **overrides: Any) -> VoteResult:
        """k sampled judgments in one order; the majority wins."""
        body = {"question": question, "a": a, "b": b, "votes": k, "temperature": temperature, "top_p": top_p, **overrides}
        return VoteResult.from_dict(self._call("vote", body, on_think))

    def rank(self, question: str, responses: Sequence[str], *, method: str = DEFAULT_RANK_METHOD, swap: bool = False,
             on_think: ThinkCallback | None = None, **overrides: Any) -> RankResult:
        """All responses best first."""
        body = {"question": question, "responses": list(responses), "method": method, "swap": swap, **overrides}
        return RankResult.from_dict(self._call("rank", body, on_think))

    def best_of_n(self, question: str, responses: Sequence[str], *, swap: bool = False, on_think: ThinkCallback | None = None,
                  **overrides: Any) -> BestOfNResult:
        """The best response by knockout."""
        body = {"question": question, "responses": list(responses), "swap": swap, **overrides}
        return BestOfNResult.from_dict(self._call("best-of-n", body, on_think))

    def compare_many(self, items: Iterable[tuple[str, str, str]], *, swap: bool = False,
                     **overrides: Any) -> Iterator[CompareResult | GramLocalError]:
        """Many comparisons in flight at once (the service batches them), yielded in input order;
        a bad item yields its error instead of a result."""
        source = iter(items)
        with ThreadPoolExecutor(max_workers=max(self.in_flight, 1)) as pool:
            window: list[Future[CompareResult]] = []
            try:
                while True:
                    while len(window) < max(self.in_flight, 1):
                        item = next(source, None)
                        if item is None:
                            break
                        q, a, b = item
                        window.append(pool.submit(self.compare, q, a, b, swap=swap, **overrides))
                    if not window:
                        return
                    future = window.pop(0)
                    try:
                        yield future.result()
                    except InputError as exc:
                        yield exc
            finally:
                for future in window:
                    future.cancel()

    def batch(self, rows: Iterable[Mapping[str, Any]], *, swap: bool = False, votes: int | None = None,
              method: str = DEFAULT_RANK_METHOD) -> Iterator[dict[str, Any]]:
        """`gram-local batch` rows in, their records out as each task finishes (the service's order)."""
        body = b"".join(json.dumps(dict(row), ensure_ascii=False).encode() + b"\n" for row in rows)
        query = f"?swap={'true' if swap else 'false'}&method={method}" + (f"&votes={votes}" if votes else "")
        with self._request("POST", "/v1/batch" + query, body, accept="application/x-ndjson",
                           content_type="application/x-ndjson") as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)

    def close(self) -> None:
        """As `Judge.close`, so code written for a judge runs unchanged. A client holds nothing
        between calls (each opens its own connection): there is nothing to release, and calling it
        again is harmless."""


def _status_of(data: Mapping[str, Any]) -> int:
    kind = str(data.get("error", {}).get("type", ""))
    return {"DeadlineExceededError": 504, "ServiceBusyError": 503}.get(kind, 500)


def _events(response: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of a server-sent event stream."""
    event, data = "message", ""
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].lstrip(" ")
