"""The service's OpenAPI 3.1 document, written out by hand from the bodies and results it serves.

By hand because the request checks live in `bodies.py` (plain code, no schema library) and the
results are `results.py`'s dataclasses; tests check this document against both.
"""

from __future__ import annotations

from typing import Any

from gram_local import __version__
from gram_local.config import DEFAULT_VOTES, POSITIONS
from gram_local.operations import METHODS

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_SETTINGS = {
    "max_think_tokens": {**_INT, "minimum": 0, "description": "Think budget of this request (at most the service's)."},
    "temperature": {**_NUM, "minimum": 0},
    "top_p": {**_NUM, "exclusiveMinimum": 0, "maximum": 1},
    "seed": _INT,
    "date": {**_STR, "description": "Date in the Llama-3 system block ('26 Jul 2024' or '2024-07-26')."},
    "position": {"enum": list(POSITIONS)},
    "stream": {**_BOOL, "description": "Server-sent events: `think` deltas, then `result` (or `error`); "
                                         "send Accept: text/event-stream."},
}


def _body(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required,
            "properties": {"question": _STR, **props, **_SETTINGS}}


_PAIR = {"a": _STR, "b": _STR}
_LIST = {"responses": {"type": "array", "items": _STR, "minItems": 2}}

_JUDGMENT = {
    "type": "object",
    "properties": {
        "order": {"enum": ["AB", "BA"]},
        "answer": {"enum": ["A", "B"]},
        "prefers": {"enum": ["a", "b"]},
        "p_a": _NUM,
        "rationale": _STR,
        "think_tokens": _INT,
        "forced_close": _BOOL,
        "pair": {"type": ["array", "null"], "items": _INT},
        "output": _STR,
    },
}
_COMPARISON = {"type": "object", "properties": {"a": _INT, "b": _INT, "winner": {"enum": ["a", "b", "tie"]}, "p_a": _NUM}}
_COMMON_RESULT = {"model": {"type": ["object", "null"]}, "settings": {"type": "object"}, "timings": {"type": "object"}}


def _result(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {**props, "judgments": {"type": "array", "items": _ref("Judgment")}, **_COMMON_RESULT}}


_SCHEMAS: dict[str, Any] = {
    "CompareRequest": _body(["question", "a", "b"], **_PAIR, swap=_BOOL),
    "VoteRequest": _body(["question", "a", "b"], **_PAIR, votes={**_INT, "minimum": 1, "default": DEFAULT_VOTES}),
    "RankRequest": _body(["question", "responses"], **_LIST, method={"enum": list(METHODS)}, swap=_BOOL),
    "BestOfNRequest": _body(["question", "responses"], **_LIST, swap=_BOOL),
    "PromptRequest": {"type": "object", "additionalProperties": False, "required": ["question", "a", "b"],
                      "properties": {"question": _STR, **_PAIR, **{k: v for k, v in _SETTINGS.items() if k != "stream"}}},
    "PromptView": {"type": "object", "properties": {"text": _STR, "tokens": {"type": "array", "items": _INT},
                                                    "model": {"type": ["object", "null"]}}},
    "Judgment": _JUDGMENT,
    "Comparison": _COMPARISON,
    "CompareResult": _result(winner={"enum": ["a", "b", "tie"]}, p_a=_NUM),
    "VoteResult": _result(winner={"enum": ["a", "b", "tie"]}, votes={"type": "object"}, p_a=_NUM),
    "RankResult": _result(ranking={"type": "array", "items": _INT}, scores={"type": "array", "items": _NUM},
                          comparisons={"type": "array", "items": _ref("Comparison")}),
    "BestOfNResult": _result(best=_INT, comparisons={"type": "array", "items": _ref("Comparison")}),
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["type", "message"], "properties": {
            "type": _STR, "message": _STR,
            "n_tokens": {**_INT, "description": "ContextOverflowError: the prompt's tokens."},
            "limit": {**_INT, "description": "ContextOverflowError: tokens the prompt may have."},
            "retry_after": _INT,
        }}},
    },
}

_ERRORS = {
    "400": "The body is not JSON.",
    "401": "The API key is missing or wrong.",
    "413": "The body is over the size limit.",
    "422": "Fields missing, of the wrong type, unknown, or over a limit (responses, votes, think budget); "
           "a prompt over the context (with n_tokens and limit).",
    "503": "The model is loading or the queue is full (see Retry-After).",
    "504": "The request ran past the deadline and was cancelled.",
}


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    errors = {code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}} for code, text in _ERRORS.items()}
    return {"200": ok, **errors}


def _operation(op: str, request: str, result: str, summary: str) -> dict[str, Any]:
    return {"post": {
        "operationId": op.replace("-", "_"),
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": _responses({
            "description": f"The {result} (what `gram-local {op} --json` prints), or with stream: events.",
            "content": {"application/json": {"schema": _ref(result)}, "text/event-stream": {"schema": _STR}},
        }),
    }}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "gram-local", "version": __version__,
                 "description": "A local GRAM-RR judge: one model, loaded once, shared by every client."},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/compare": _operation("compare", "CompareRequest", "CompareResult", "Which of two responses is better."),
            "/v1/vote": _operation("vote", "VoteRequest", "VoteResult", "Majority of k sampled judgments (one order)."),
            "/v1/rank": _operation("rank", "RankRequest", "RankResult", "Rank responses, best first."),
            "/v1/best-of-n": _operation("best-of-n", "BestOfNRequest", "BestOfNResult", "The best response by knockout."),
            "/v1/prompt": {"post": {
                "operationId": "prompt",
                "summary": "Exactly what the model is fed for the order a, b: the text and its token ids (nothing is generated).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PromptRequest")}}},
                "responses": {code: answer for code, answer in _responses({
                    "description": "The prompt (what `gram-local prompt --json` prints).",
                    "content": {"application/json": {"schema": _ref("PromptView")}},
                }).items() if code != "504"},
            }},
            "/v1/batch": {"post": {
                "operationId": "batch",
                "summary": "JSONL tasks in (the rows of `gram-local batch`), one record per task out as each finishes.",
                "parameters": [
                    {"name": "swap", "in": "query", "schema": _BOOL},
                    {"name": "votes", "in": "query", "schema": {**_INT, "minimum": 1}},
                    {"name": "method", "in": "query", "schema": {"enum": list(METHODS)}},
                ],
                "requestBody": {"required": True, "content": {"application/x-ndjson": {"schema": _STR}}},
                "responses": _responses({"description": "One JSON record per line.",
                                         "content": {"application/x-ndjson": {"schema": _STR}}}),
            }},
            "/v1/models": {"get": {"operationId": "models", "summary": "The model this service judges with.",
                                   "responses": {"200": {"description": "A list of one model."}}}},
            "/health": {"get": {"operationId": "health", "summary": "200 once the model is loaded; 503 while loading.",
                                "security": [{}], "responses": {"200": {"description": "Ready."},
                                                                 "503": {"description": "Loading."}}}},
            "/": {"get": {"operationId": "page", "summary": "A page to judge by hand.", "security": [{}],
                          "responses": {"200": {"description": "HTML.", "content": {"text/html": {"schema": _STR}}}}}},
        },
    }
