"""`gram-local mcp`: compare, vote, rank and best-of-n as Model Context Protocol tools over stdio.

The official SDK (the `mcp` extra) validates the typed inputs and runs each call on a worker
thread; every call goes to one judge, so calls an assistant makes at once share the engine's
batch. The model starts loading when the server starts and is loaded once; a call made before it
is ready waits for it. Results are the JSON of `--json`; a failure is a tool error with the
judge's message (never a traceback).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from gram_local import __version__
from gram_local.config import DEFAULT_VOTES
from gram_local.errors import GramLocalError, InputError

if TYPE_CHECKING:
    from gram_local.judge import Judge

Question = Annotated[str, Field(description="The question or instruction the responses answer.")]
Response = Annotated[str, Field(description="A response to judge.")]
Responses = Annotated[list[str], Field(description="The responses to judge (at least two).", min_length=2)]
Swap = Annotated[bool, Field(description="Judge both orders; when they disagree the verdict is a tie.")]
Budget = Annotated[int | None, Field(description="Think budget in tokens (default: the server's).", ge=0)]


class LazyJudge:
    """The judge, loaded once (in the background from the start); callers wait for it."""

    def __init__(self, load: Callable[[], Judge]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._judge: Judge | None = None
        self._error: BaseException | None = None

    def get(self) -> Judge:
        with self._lock:
            if self._judge is None and self._error is None:
                try:
                    self._judge = self._load()
                except BaseException as exc:  # noqa: BLE001 - every later call reports it
                    self._error = exc
            if self._error is not None:
                raise ToolError(f"the model could not be loaded: {self._error}")
            assert self._judge is not None
            return self._judge

    def preload(self) -> None:
        threading.Thread(target=self._preload, name="gram-local-load", daemon=True).start()

    def _preload(self) -> None:
        try:
            self.get()
        except ToolError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._judge is not None:
                self._judge.close()
                self._judge = None


def _judged(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = call().to_dict()
        return result
    except GramLocalError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc}") from None


def build_server(judge: LazyJudge, *, max_responses: int, max_votes: int) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer(
        name="gram-local",
        version=__version__,
        instructions="A local GRAM-RR judge: which response answers a question better, by reasoning first. "
                     "Results carry the verdict, P(a better) per judgment and the model's rationale.",
    )

    def responses_checked(responses: list[str]) -> list[str]:
        if len(responses) > max_responses:
            raise ToolError(f"{len(responses)} responses is over this server's limit of {max_responses}")
        return responses

    @server.tool(description="Which of two responses (a, b) answers the question better.")
    def compare(question: Question, a: Response, b: Response, swap: Swap = False, max_think_tokens: Budget = None) -> dict[str, Any]:
        return _judged(lambda: judge.get().compare(question, a, b, swap=swap, max_think_tokens=max_think_tokens))

    @server.tool(description="Majority of k sampled judgments of a against b (one order).")
    def vote(question: Question, a: Response, b: Response,
             k: Annotated[int, Field(description="Sampled judgments.", ge=1)] = DEFAULT_VOTES,
             max_think_tokens: Budget = None) -> dict[str, Any]:
        if k > max_votes:
            raise ToolError(f"k={k} is over this server's limit of {max_votes}")
        return _judged(lambda: judge.get().vote(question, a, b, k=k, max_think_tokens=max_think_tokens))

    @server.tool(description="Rank responses best first (indices 0-based, as given).")
    def rank(question: Question, responses: Responses,
             method: Annotated[Literal["sort", "round-robin"], Field(description="Comparison sort, or every pair.")] = "sort",
             swap: Swap = False, max_think_tokens: Budget = None) -> dict[str, Any]:
        texts = responses_checked(responses)
        return _judged(lambda: judge.get().rank(question, texts, method=method, swap=swap, max_think_tokens=max_think_tokens))

    @server.tool(name="best-of-n", description="The best response by knockout (n-1 comparisons; index 0-based).")
    def best_of_n(question: Question, responses: Responses, swap: Swap = False, max_think_tokens: Budget = None) -> dict[str, Any]:
        texts = responses_checked(responses)
        return _judged(lambda: judge.get().best_of_n(question, texts, swap=swap, max_think_tokens=max_think_tokens))

    return server


def run_mcp(load: Callable[[], Judge], *, max_responses: int, max_votes: int) -> None:
    """Serve MCP on stdin/stdout until the client closes them."""
    if max_responses < 2:
        raise InputError("max-responses must be at least 2")
    judge = LazyJudge(load)
    judge.preload()
    try:
        build_server(judge, max_responses=max_responses, max_votes=max_votes).run("stdio")
    finally:
        judge.close()
