"""vLLM's OpenAI-compatible `/v1/completions` as a backend.

The same two requests as on llama-server (the think text under the grammar up to the budget, then
one token at the answer slot), with the prompt as token ids and every token returned as
`token_id:N` (`return_tokens_as_token_ids`). The grammar field depends on the server's version:

- vLLM 0.8.0 to 0.10.1: `guided_grammar` (GBNF through xgrammar, the V1 engine's default);
- vLLM 0.10.2 and later 0.x: `structured_outputs: {"grammar": ...}`; from 0.12 the old `guided_*`
  fields are silently ignored (the request succeeds unconstrained);

anything else is refused at start. vLLM ignores request fields it does not know, so every think
reply is checked to follow the format: one that does not is an error, never a verdict.

P(A) comes from the answer slot's `top_logprobs`. vLLM returns the raw distribution by default
(`--logprobs-mode raw_logprobs`); a mode that masks or rescales before reporting keeps the ratio of
A to B unless it cuts one of them, and then the reply lacks it and this is an error. Both must be
among the top `logprobs` (vLLM caps these at `--max-logprobs`, 20 by default).
"""

from __future__ import annotations

import re
from typing import Any

from gram_local.backend import GenerationRequest
from gram_local.errors import BackendError
from gram_local.grammar import think_grammar
from gram_local.remote.base import RemoteBackend, Think, pair_logprobs
from gram_local.remote.http import HttpStatusError, Lease, Replica

OLDEST = (0, 8, 0)
STRUCTURED_FROM = (0, 10, 2)
NEWEST_MAJOR = 0
ANSWER_LOGPROBS = 20
DEFAULT_PER_REPLICA = 8
_PROBES = ("A", "B", " A", "</think>\n<answer>\n", "Hello, world! 123", "日本語 café — naïve\t\n\n")
_TOKEN_ID = re.compile(r"\Atoken_id:(-?\d+)\Z")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`0.10.1.1`, `0.11.0rc2`, `0.10.2+cu128` -> (major, minor, patch); None if not a version."""
    match = re.match(r"\A(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def grammar_field(version: tuple[int, int, int]) -> str | None:
    """Which request field carries a grammar on this vLLM version (None: not a version we know)."""
    if version[0] > NEWEST_MAJOR or version < OLDEST:
        return None
    return "structured_outputs" if version >= STRUCTURED_FROM else "guided_grammar"


def token_id(text: str) -> int:
    match = _TOKEN_ID.match(text)
    if match is None:
        raise BackendError(f"the server returned a token as {text[:40]!r}, not 'token_id:N' (return_tokens_as_token_ids ignored?)")
    return int(match[1])


class OpenAIBackend(RemoteBackend):
    kind = "openai"

    # ------------------------------------------------------------ start-up

    def _connect(self) -> tuple[dict[str, Any], int]:
        seen = [self._check_replica(r) for r in self.pool.replicas]
        if len({(s["served_model"]["id"], s["field"]) for s in seen}) > 1:
            listing = "; ".join(
                f"{r.public}: {s['served_model']['id']} (vLLM {s['server_version']})" for r, s in zip(self.pool.replicas, seen)
            )
            raise BackendError(f"the replicas differ in model or grammar field ({listing})")
        self._model_id = seen[0]["served_model"]["id"]
        self._field = seen[0]["field"]
        self._bias = {str(t): -100 for t in sorted(self.vocab.special_set) if not self.vocab.is_eog(t)}
        self._grammars = {close: think_grammar(allow_close=close) for close in (True, False)}
        versions = sorted({s["server_version"] for s in seen})
        identity = {
            "kind": self.kind,
            "base_urls": [r.public for r in self.pool.replicas],
            "server": "vllm",
            "server_version": versions[0] if len(versions) == 1 else versions,
            "served_model": seen[0]["served_model"],
            "grammar_field": self._field,
        }
        return identity, min(int(s["n_ctx"]) for s in seen)

    def _check_replica(self, replica: Replica) -> dict[str, Any]:
        try:
            version_reply = self.pool.get(replica, "/version")
        except HttpStatusError as exc:
            raise BackendError(f"{replica.public} has no /version ({exc.status}): only vLLM is supported as an openai backend") from exc
        text = str(version_reply.get("version", "")) if isinstance(version_reply, dict) else ""
        version = parse_version(text)
        field = grammar_field(version) if version else None
        if field is None:
            raise BackendError(
                f"{replica.public} reports version {text or version_reply!r}: not a vLLM version gram-local knows how to "
                f"constrain (0.8.0 up to 0.x); refusing to judge without the reply format enforced"
            )
        models = self.pool.get(replica, "/v1/models")
        try:
            model = models["data"][0]
            served = {"id": str(model["id"]), "root": model.get("root"), "max_model_len": model.get("max_model_len")}
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{replica.public}/v1/models lists no model") from exc
        n_ctx = int(served["max_model_len"] or self.n_ctx_train)
        self._check_vocabulary(replica, served)
        replica.capacity = self.settings.per_replica or DEFAULT_PER_REPLICA
        return {"served_model": served, "server_version": text, "field": field, "n_ctx": n_ctx}

    def _check_vocabulary(self, replica: Replica, served: dict[str, Any]) -> None:
        for text in _PROBES:
            reply = self.pool.post_once(replica, "/tokenize", {"model": served["id"], "prompt": text, "add_special_tokens": False})
            theirs = reply.get("tokens") if isinstance(reply, dict) else None
            ours = self.vocab.tokenize(text)
            if theirs != ours:
                raise BackendError(
                    f"{replica.public} serves another model than {self.model_path} ({served['id']}): it tokenizes "
                    f"{text!r} as {theirs}, the local model as {ours}; pass the served model's GGUF as --model"
                )

    # ------------------------------------------------------------ one generation

    def _think(self, lease: Lease, request: GenerationRequest) -> Think:
        sampler = request.sampler
        grammar = self._grammars[request.allow_close]
        body: dict[str, Any] = {
            "model": self._model_id,
            "prompt": list(request.prompt),
            "max_tokens": request.max_think_tokens,
            "temperature": 0.0 if sampler.greedy else sampler.temperature,
            "top_p": sampler.top_p,
            "seed": sampler.seed,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "logit_bias": self._bias,
        }
        if self._field == "structured_outputs":
            body["structured_outputs"] = {"grammar": grammar}
        else:
            body["guided_grammar"] = grammar
        reply = self.pool.post(lease, "/v1/completions", lambda _: body)
        choice = _choice(reply, lease)
        try:
            tokens = [token_id(t) for t in choice["logprobs"]["tokens"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(f"{lease.replica.public}/v1/completions returned no tokens with logprobs") from exc
        while tokens and self.vocab.is_eog(tokens[-1]):
            tokens.pop()
        self._count_usage(reply, generated=True)
        return Think(tokens, stopped=str(choice.get("finish_reason")))

    def _answer_logprobs(self, lease: Lease, tokens: list[int], pin: Any) -> tuple[float, float]:
        body = {"model": self._model_id, "prompt": tokens, "max_tokens": 1, "temperature": 0.0, "logprobs": ANSWER_LOGPROBS,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False}
        reply = self.pool.post(lease, "/v1/completions", lambda _: body)
        self._count_usage(reply, generated=False)
        choice = _choice(reply, lease)
        try:
            top = choice["logprobs"]["top_logprobs"][0]
            pairs = [(token_id(k), float(v)) for k, v in top.items()]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise BackendError(f"{lease.replica.public}/v1/completions returned no top log-probabilities at the answer slot") from exc
        found = pair_logprobs(pairs, self.vocab.token_a, self.vocab.token_b)
        if found is None:
            raise BackendError(
                f"{lease.replica.public}: A or B is not among the answer slot's top {ANSWER_LOGPROBS} log-probabilities; "
                "the served model does not answer in the GRAM-RR format"
            )
        return found

    def _count_usage(self, reply: Any, *, generated: bool) -> None:
        usage = reply.get("usage") if isinstance(reply, dict) else None
        if isinstance(usage, dict):
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            self.count(
                prompt_tokens=int(usage.get("prompt_tokens") or 0) - cached,
                reused_tokens=cached,
                generated_tokens=int(usage.get("completion_tokens") or 0) if generated else 0,
            )


def _choice(reply: Any, lease: Lease) -> dict[str, Any]:
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"{lease.replica.public}/v1/completions returned no choices") from exc
    if not isinstance(choice, dict):
        raise BackendError(f"{lease.replica.public}/v1/completions returned a malformed choice")
    return choice
