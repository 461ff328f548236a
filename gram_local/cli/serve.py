"""`gram-local serve` (HTTP) and `gram-local mcp` (Model Context Protocol over stdio): the model loaded once, for many requests."""

from __future__ import annotations

import os
from typing import Any

import click

from gram_local import config
from gram_local.cli.common import handle_errors, judge_options, open_judge, service_judge_options
from gram_local.config import env_name
from gram_local.errors import InputError


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"this command needs the {extra} extra: pip install 'gram-local[{extra}]'")


def api_key_from(value: str | None) -> str | None:
    """--api-key, else GRAM_LOCAL_API_KEY; an empty key is no key."""
    key = value if value is not None else os.environ.get(config.ENV_API_KEY)
    return key or None


@click.command("serve")
@click.option("--host", envvar=env_name("host"), show_envvar=True, default=config.DEFAULT_HOST, show_default=True,
              help="Address to listen on; any but a loopback address needs --api-key.")
@click.option("--port", envvar=env_name("port"), show_envvar=True, type=click.IntRange(0, 65535), default=config.DEFAULT_PORT,
              show_default=True, help="Port (0: any free one; the log says which).")
@click.option("--api-key", default=None, help=f"Bearer token every /v1/ request must carry [env var: {config.ENV_API_KEY}].")
@click.option("--cors-origin", "cors_origins", envvar=env_name("cors_origin"), show_envvar=True, multiple=True,
              help="Allow browser pages of this origin (repeatable; e.g. http://localhost:3000). Off by default.")
@click.option("--max-queue", envvar=env_name("max_queue"), show_envvar=True, type=click.IntRange(min=1),
              default=config.DEFAULT_MAX_QUEUE, show_default=True, help="Requests held at once; beyond it, 503 + Retry-After.")
@click.option("--max-body", envvar=env_name("max_body"), show_envvar=True, type=click.IntRange(min=1),
              default=config.DEFAULT_MAX_BODY, show_default=True, help="Bytes of a request body; beyond it, 413.")
@click.option("--max-responses", envvar=env_name("max_responses"), show_envvar=True, type=click.IntRange(min=2),
              default=config.DEFAULT_MAX_RESPONSES, show_default=True, help="Responses of a rank or best-of-n request.")
@click.option("--max-votes", envvar=env_name("max_votes"), show_envvar=True, type=click.IntRange(min=1),
              default=config.DEFAULT_MAX_VOTES, show_default=True, help="Samples of a vote request.")
@click.option("--deadline", envvar=env_name("deadline"), show_envvar=True, type=click.FloatRange(min=0, min_open=True),
              default=config.DEFAULT_DEADLINE, show_default=True, help="Seconds a request (a batch task) may run; then 504.")
@click.option("--grace", envvar=env_name("grace"), show_envvar=True, type=click.IntRange(min=0),
              default=config.DEFAULT_GRACE, show_default=True, help="Seconds requests in flight get on SIGTERM/SIGINT.")
@service_judge_options
@handle_errors
def serve_command(host: str, port: int, api_key: str | None, cors_origins: tuple[str, ...], max_queue: int, max_body: int,
                  max_responses: int, max_votes: int, deadline: float, grace: int, **opts: Any) -> None:
    """Judge over HTTP for local tools: one model load, every client's requests batched together.

    \b
    POST /v1/compare, /v1/vote, /v1/rank, /v1/best-of-n   bodies and results as `--json`
    POST /v1/batch     JSONL tasks in, one record per task out as each finishes
    GET  /v1/models, /health (503 while loading), /openapi.json, and a page at /
    --ctx is the context each sequence gets (reserved at start for --parallel sequences).
    """
    _require("starlette", "serve")
    _require("uvicorn", "serve")
    from gram_local.service.server import check_bind, run_service
    from gram_local.service.state import ServiceOptions

    key = api_key_from(api_key)
    check_bind(host, key)  # before the model is loaded
    parallel = opts.get("parallel") or config.DEFAULT_PARALLEL
    options = ServiceOptions(max_queue=max_queue, max_body=max_body, max_responses=max_responses, max_votes=max_votes,
                             deadline=deadline, api_key=key, cors_origins=cors_origins, batch_in_flight=parallel)
    run_service(lambda: open_judge(opts), host=host, port=port, options=options, n_ctx=opts.get("ctx"), parallel=parallel,
                grace=grace)


@click.command("mcp")
@click.option("--max-responses", envvar=env_name("max_responses"), show_envvar=True, type=click.IntRange(min=2),
              default=config.DEFAULT_MAX_RESPONSES, show_default=True, help="Responses of a rank or best-of-n call.")
@click.option("--max-votes", envvar=env_name("max_votes"), show_envvar=True, type=click.IntRange(min=1),
              default=config.DEFAULT_MAX_VOTES, show_default=True, help="Samples of a vote call.")
@judge_options
@handle_errors
def mcp_command(max_responses: int, max_votes: int, **opts: Any) -> None:
    """A Model Context Protocol server on stdio: compare, vote, rank and best-of-n as tools.

    The model loads once, at the first call; results are the JSON of `--json`.
    """
    _require("mcp", "mcp")
    from gram_local.service.mcp_server import run_mcp

    run_mcp(lambda: open_judge(opts), max_responses=max_responses, max_votes=max_votes)
