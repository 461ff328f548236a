"""The service's HTTP face (Starlette): routes, errors as JSON, the key, CORS, one log line per request.

Every failure a client can cause is a JSON `{"error": {"type", "message", ...}}` with a 4xx status
(400 not JSON, 401 key, 404/405 route, 413 body, 422 fields or limits, the prompt's token counts
included); 503 + Retry-After while loading or when the queue is full; 504 past the deadline. Texts
are never logged: a request's line has its id, operation, own generated tokens, seconds, status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gram_local.batch.tasks import TaskDefaults, dedupe, parse_tasks
from gram_local.config import DEFAULT_RANK_METHOD, LOADING_RETRY_AFTER, RETRY_AFTER
from gram_local.errors import (
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
from gram_local.operations import METHODS, OPERATIONS
from gram_local.service.bodies import parse_call, parse_json, parse_prompt
from gram_local.service.openapi import openapi_document
from gram_local.service.state import ServiceState
from gram_local.service.streams import Stopwatch, ThinkQueue, batch_lines, error_body, judge_events, own_tokens
from gram_local.service.worker import Ticket

log = logging.getLogger("gram_local.service")
CLIENT_CLOSED = 499  # the client went away before the answer (nginx's convention; never sent)


def status_of(error: BaseException) -> int:
    if isinstance(error, RequestSyntaxError):
        return 400
    if isinstance(error, UnauthorizedError):
        return 401
    if isinstance(error, PayloadTooLargeError):
        return 413
    if isinstance(error, InputError):
        return 422
    if isinstance(error, ServiceBusyError):
        return 503
    if isinstance(error, DeadlineExceededError):
        return 504
    return 500


def error_response(error: BaseException) -> JSONResponse:
    headers = {}
    if isinstance(error, ServiceBusyError):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(error), status_code=status_of(error), headers=headers)


def _log_fields(request: Request) -> dict[str, Any]:
    fields: dict[str, Any] = request.scope.setdefault("gram_local.log", {})
    return fields


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read: only a disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ---------------------------------------------------------------- handlers


async def judge_endpoint(request: Request) -> Response:
    op = request.path_params["op"]
    if op not in OPERATIONS:
        raise HTTPException(404)
    fields = _log_fields(request)
    fields["op"] = op
    state: ServiceState = request.app.state.service
    worker = state.require_worker()
    raw = await read_body(request, state.options.max_body)
    call = parse_call(op, parse_json(raw), state.limits())
    ticket: Ticket | None = worker.admit()
    try:
        thinks = ThinkQueue(asyncio.get_running_loop()) if call.stream else None
        watch = Stopwatch(worker.judge.backend)
        future = await asyncio.to_thread(worker.start, call.program(worker.judge, thinks))
        if future.done() and future.error is not None:
            raise future.error  # bad input found while rendering: a plain 4xx, even when streaming was asked
        if thinks is not None:
            assert ticket is not None
            events = judge_events(worker, call, future, thinks, watch, ticket, state.options.deadline, fields)
            ticket = None  # the stream gives it back
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        waiter = asyncio.ensure_future(worker.outcome(future, deadline=state.options.deadline))
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not waiter.done():
                waiter.cancel()
                future.cancel()
        if not waiter.done() or waiter.cancelled():
            fields["outcome"] = "client gone"
            return Response(status_code=CLIENT_CLOSED)
        result = watch.stamp(waiter.result())
        fields["tokens"] = own_tokens(result)
        return JSONResponse(result.to_dict())
    finally:
        if ticket is not None:
            ticket.release()


async def prompt_endpoint(request: Request) -> Response:
    """What the model is fed for the order a, b (`gram-local prompt --json`): rendered, tokenized and
    checked against the context off the event loop; nothing is generated."""
    _log_fields(request)["op"] = "prompt"
    state: ServiceState = request.app.state.service
    worker = state.require_worker()
    raw = await read_body(request, state.options.max_body)
    call = parse_prompt(parse_json(raw), state.limits())
    with worker.admit():
        view = await asyncio.to_thread(worker.judge.prompt, call.question, call.a, call.b, **call.overrides)
    return JSONResponse(view.to_dict())


def _query_flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InputError(f"query parameter {name!r} must be true or false")
    return value in ("true", "1")


def _batch_defaults(request: Request, max_votes: int) -> TaskDefaults:
    votes_text = request.query_params.get("votes")
    votes = None
    if votes_text is not None:
        if not votes_text.isdigit() or not 1 <= int(votes_text) <= max_votes:
            raise InputError(f"query parameter 'votes' must be an integer from 1 to {max_votes}")
        votes = int(votes_text)
    method = request.query_params.get("method", DEFAULT_RANK_METHOD)
    if method not in METHODS:
        raise InputError(f"query parameter 'method' must be one of {', '.join(METHODS)}")
    swap = _query_flag(request, "swap")
    if swap and votes:
        raise InputError("'swap' and 'votes' cannot be combined: a vote judges one order")
    return TaskDefaults(swap=swap, votes=votes, method=method)


async def batch_endpoint(request: Request) -> Response:
    fields = _log_fields(request)
    fields["op"] = "batch"
    state: ServiceState = request.app.state.service
    worker = state.require_worker()
    defaults = _batch_defaults(request, state.options.max_votes)
    raw = await read_body(request, state.options.max_body)
    tasks = [t.resolved(defaults) for t in parse_tasks(raw)]
    limits = state.limits()
    for task in tasks:
        if task.responses is not None and len(task.responses) > limits.max_responses:
            raise InputError(f"task {task.id!r} has {len(task.responses)} responses, over this service's limit of {limits.max_responses}")
        if task.votes is not None and task.votes > limits.max_votes:
            raise InputError(f"task {task.id!r} asks for {task.votes} votes, over this service's limit of {limits.max_votes}")
    tasks = dedupe(tasks)
    ticket = worker.admit()
    lines = batch_lines(worker, tasks, defaults, in_flight=state.options.batch_in_flight, deadline=state.options.deadline,
                        ticket=ticket, log=fields)
    return StreamingResponse(lines, media_type="application/x-ndjson")


async def models_endpoint(request: Request) -> Response:
    state: ServiceState = request.app.state.service
    _log_fields(request)["op"] = "models"
    return JSONResponse({"object": "list", "data": [state.model_record()]})


async def health_endpoint(request: Request) -> Response:
    state: ServiceState = request.app.state.service
    _log_fields(request)["op"] = "health"
    if state.worker is None:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": str(LOADING_RETRY_AFTER)})
    stats = state.judge.backend.stats
    return JSONResponse({
        "status": "ok",
        "model": state.judge.model.name or state.judge.model.path,
        "queue": state.worker.admitted,
        "max_queue": state.worker.max_queue,
        "uptime_s": round(time.monotonic() - state.started, 1),
        # The engine's counters since start: a cancelled request shows in `cancelled`.
        "engine": {k: getattr(stats, k) for k in ("steps", "prompt_tokens", "generated_tokens", "cancelled")},
    })


async def openapi_endpoint(request: Request) -> Response:
    _log_fields(request)["op"] = "openapi"
    return JSONResponse(openapi_document())


async def page_endpoint(request: Request) -> Response:
    _log_fields(request)["op"] = "page"
    page = resources.files("gram_local.service").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------- middleware


class RequestLog:
    """One log line per request, with an id the client also gets (X-Request-Id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{next(self.ids):06d}"
        fields: dict[str, Any] = scope.setdefault("gram_local.log", {})
        status = {"code": CLIENT_CLOSED}
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # Only a stopping server cancels a request's task (after its grace period): say so
            # to a client still waiting for its answer, and end quietly.
            fields["outcome"] = "cancelled: the service is stopping"
            if status["code"] == CLIENT_CLOSED:
                with contextlib.suppress(Exception):
                    await error_response(ServiceBusyError("the service stopped before this request finished", RETRY_AFTER))(
                        scope, receive, send_with_id)
        except BaseException:
            status["code"] = 500 if status["code"] == CLIENT_CLOSED else status["code"]
            raise
        finally:
            log.info(
                "request %s %s %s op=%s tokens=%s seconds=%.3f status=%s%s",
                request_id, scope.get("method", "?"), scope.get("path", "?"), fields.get("op", "-"), fields.get("tokens", 0),
                time.perf_counter() - started, status["code"], f" ({fields['outcome']})" if "outcome" in fields else "",
            )


class BearerGuard:
    """With a key, every /v1/ request must carry `Authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is not None and scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), self.key):
                await error_response(UnauthorizedError("a valid API key is required: Authorization: Bearer <key>"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- the app


async def _gram_error(request: Request, exc: Exception) -> Response:
    fields = _log_fields(request)
    fields["outcome"] = type(exc).__name__
    if isinstance(exc, ContextOverflowError):
        fields["outcome"] += f" {exc.n_tokens}>{exc.limit}"
    if isinstance(exc, Cancelled) and not isinstance(exc, DeadlineExceededError):
        return Response(status_code=CLIENT_CLOSED)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"no such path {request.url.path!r}"
    return JSONResponse({"error": {"type": "HTTPError", "message": detail}}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("request failed unexpectedly: %s: %s", type(exc).__name__, exc, exc_info=exc)
    _log_fields(request)["outcome"] = type(exc).__name__
    return JSONResponse({"error": {"type": "InternalError", "message": "the service failed on this request; see its log"}},
                        status_code=500)


def create_app(state: ServiceState) -> Starlette:
    """The ASGI app over a service state (whose worker appears once the model has loaded)."""
    middleware = [Middleware(RequestLog)]
    if state.options.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(state.options.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(BearerGuard, api_key=state.options.api_key))
    routes = [
        Route("/", page_endpoint, methods=["GET"]),
        Route("/health", health_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        Route("/v1/models", models_endpoint, methods=["GET"]),
        Route("/v1/batch", batch_endpoint, methods=["POST"]),
        Route("/v1/prompt", prompt_endpoint, methods=["POST"]),
        Route("/v1/{op:str}", judge_endpoint, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={GramLocalError: _gram_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.service = state
    return app
