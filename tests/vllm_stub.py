"""A loopback stand-in for vLLM's OpenAI-compatible server: its request and reply schema, scripted words.

What it mirrors of vLLM (vllm/entrypoints/openai/protocol.py and serving_completion.py):
- `GET /version` -> `{"version": "..."}`; `GET /v1/models` -> `{"object": "list", "data": [{"id", "root",
  "max_model_len", ...}]}`; `POST /tokenize` `{"model", "prompt", "add_special_tokens"}` ->
  `{"count", "max_model_len", "tokens"}`.
- `POST /v1/completions`: `prompt` may be a list of token ids; unknown fields are ignored (vLLM's
  request models allow extra fields and only log them); `logprobs` over `--max-logprobs` (20) is
  HTTP 400; a prompt over `max_model_len` is HTTP 400.
- Grammar fields by version: `guided_grammar` honoured before 0.12 (removed in 0.12, then ignored),
  `structured_outputs: {"grammar"}` from 0.10.2.
- `logprobs` in the legacy completions shape `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`;
  with `return_tokens_as_token_ids` every token is `token_id:N`. `finish_reason` is "stop" at an end
  token, "length" at `max_tokens`.

It enforces nothing else. The "model" is scripted: a fixed rationale, then (under a grammar it
honours) the closing of the think block and an end token, or (unconstrained) a free-text verdict.
At one-token requests it reports fixed log-probabilities for A and B.
"""

from __future__ import annotations

import threading
from typing import Any

from servers import StubServer

from gram_local.engine.native import LlamaModel
from gram_local.engine.vocab import LlamaVocab

MAX_LOGPROBS = 20
RATIONALE = "The first response answers the question; the second does not."
LOGPROB_A, LOGPROB_B = -0.25, -1.6


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:3])


class VllmStub:
    def __init__(self, gguf: str, *, version: str = "0.10.1", model_id: str = "gram-rr", max_model_len: int = 4096,
                 honour_grammar: bool = True, answer_in_top: bool = True, delay: float = 0.0) -> None:
        self.model = LlamaModel(gguf, vocab_only=True)
        self.vocab = LlamaVocab(self.model)
        self.version = version
        self.model_id = model_id
        self.max_model_len = max_model_len
        self.honour_grammar = honour_grammar
        self.answer_in_top = answer_in_top
        self.delay = delay  # seconds each completion takes (a busy server)
        self.completions: list[dict[str, Any]] = []
        # Handler threads outlive the HTTP server's shutdown: the model is freed only under this
        # lock, and a handler answers 503 instead of tokenizing once it is gone.
        self._model_lock = threading.Lock()
        self._closing = threading.Event()
        self.server = StubServer(self.route)
        self.url = self.server.url

    def close(self) -> None:
        self._closing.set()
        self.server.close()
        with self._model_lock:
            self.model.close()

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if method == "POST" and path == "/v1/completions":
            self.completions.append(body)
            self._closing.wait(self.delay)
        with self._model_lock:
            if not self.model.ptr:
                return 503, {}, {"detail": "the stub is closed"}
            return self._route(method, path, body)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if (method, path) == ("GET", "/version"):
            return 200, {}, {"version": self.version}
        if (method, path) == ("GET", "/v1/models"):
            card = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "vllm", "root": self.model_id,
                    "parent": None, "max_model_len": self.max_model_len, "permission": []}
            return 200, {}, {"object": "list", "data": [card]}
        if (method, path) == ("POST", "/tokenize"):
            tokens = self.vocab.tokenize(body["prompt"], special=True)
            if body.get("add_special_tokens", True) and self.vocab.add_bos:
                tokens = [self.vocab.bos_id, *tokens]
            return 200, {}, {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens}
        if (method, path) == ("POST", "/v1/completions"):
            return self.complete(body)
        return 404, {}, {"detail": "Not Found"}

    def _grammar(self, body: dict[str, Any]) -> str | None:
        if not self.honour_grammar:
            return None
        version = _version(self.version)
        structured = body.get("structured_outputs")
        if version >= (0, 10, 2) and isinstance(structured, dict) and structured.get("grammar"):
            return str(structured["grammar"])
        if version < (0, 12, 0) and body.get("guided_grammar"):
            return str(body["guided_grammar"])
        return None

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if body.get("model") not in (None, self.model_id):
            return 404, {}, {"object": "error", "message": f"The model `{body.get('model')}` does not exist.", "code": 404}
        prompt = body["prompt"]
        max_tokens = int(body.get("max_tokens") or 16)
        logprobs = body.get("logprobs")
        if logprobs is not None and logprobs > MAX_LOGPROBS:
            message = f"Requested sample logprobs of {logprobs}, which is greater than max allowed: {MAX_LOGPROBS}"
            return 400, {}, {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
        if len(prompt) + max_tokens > self.max_model_len:
            return 400, {}, {"object": "error", "message": "This model's maximum context length is exceeded", "code": 400}
        if max_tokens == 1:
            tokens, finish = [self.vocab.token_a], "length"
        else:
            if self._grammar(body) is not None:
                words = self.vocab.tokenize(RATIONALE + "\n</think>\n<answer>\n")
            else:
                words = self.vocab.tokenize(RATIONALE + " So the answer is A.")
            words.append(self._eos())
            tokens = words[:max_tokens]
            finish = "length" if len(words) > max_tokens else "stop"
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choice: dict[str, Any] = {
            "index": 0,
            "text": self.vocab.detokenize(t for t in tokens if not self.vocab.is_eog(t)),
            "logprobs": None if logprobs is None else self._logprobs(tokens, int(logprobs), as_ids),
            "finish_reason": finish,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(tokens), "total_tokens": len(prompt) + len(tokens),
                 "prompt_tokens_details": None}
        return 200, {}, {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": self.model_id,
                         "choices": [choice], "usage": usage}

    def _eos(self) -> int:
        return next(t for t in sorted(self.vocab.special_set) if self.vocab.is_eog(t))

    def _name(self, token: int, as_ids: bool) -> str:
        return f"token_id:{token}" if as_ids else self.vocab.token_text(token)

    def _logprobs(self, tokens: list[int], k: int, as_ids: bool) -> dict[str, Any]:
        top: list[dict[str, float]] = []
        for token in tokens:
            if len(tokens) == 1:
                candidates = {self.vocab.token_a: LOGPROB_A}
                if self.answer_in_top:
                    candidates[self.vocab.token_b] = LOGPROB_B
                for filler in self.vocab.tokenize(" the of and to in is"):
                    candidates.setdefault(filler, -6.0 - len(candidates))
            else:
                candidates = {token: -0.1}
            ranked = sorted(candidates.items(), key=lambda kv: -kv[1])[: max(k, 1)]
            top.append({self._name(t, as_ids): lp for t, lp in ranked})
        return {
            "text_offset": list(range(len(tokens))),
            "token_logprobs": [-0.1 if len(tokens) > 1 else LOGPROB_A for _ in tokens],
            "tokens": [self._name(t, as_ids) for t in tokens],
            "top_logprobs": top,
        }
