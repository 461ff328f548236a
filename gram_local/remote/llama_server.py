"""llama.cpp's `llama-server` as a backend.

One generation is two requests to `POST /completion`, both with the prompt as token ids:
1. the think text, under the project's grammar, with `n_predict` set to the think budget, the
   request's sampler and seed, and every non-end-of-generation special token banned (the local
   engine never samples one either);
2. the answer slot: the prompt, the generated ids and any closing the budget forced, one token,
   with `n_probs` top log-probabilities. These are the model's raw probabilities (before grammar,
   temperature and bias), so P(A) is A's against B's. A request cannot both stop at a budget and
   read the slot after a forced closing, and the server reports nothing for an end token it
   samples, so the slot is always read this way, pinned to the slot that holds the prefix.
"""

from __future__ import annotations

import time
from typing import Any

from gram_local.backend import GenerationRequest
from gram_local.config import ANSWER_TOP_K
from gram_local.errors import BackendError
from gram_local.grammar import think_grammar
from gram_local.remote.base import RemoteBackend, Think, pair_logprobs
from gram_local.remote.http import HttpStatusError, Lease, Replica

_PROBES = ("A", "B", " A", "</think>\n<answer>\n", "Hello, world! 123", "日本語 café — naïve\t\n\n", "<|im_end|>")
_LOADING_WAIT = 120.0


class LlamaServerBackend(RemoteBackend):
    kind = "llama-server"

    # ------------------------------------------------------------ start-up

    def _connect(self) -> tuple[dict[str, Any], int]:
        seen: list[dict[str, Any]] = []
        for replica in self.pool.replicas:
            seen.append(self._check_replica(replica))
        models = {_model_key(s) for s in seen}
        if len(models) > 1:
            listing = "; ".join(f"{r.public}: {s['served_model']}" for r, s in zip(self.pool.replicas, seen))
            raise BackendError(f"the replicas serve different models ({listing})")
        versions = sorted({str(s["server_version"]) for s in seen})
        identity = {
            "kind": self.kind,
            "base_urls": [r.public for r in self.pool.replicas],
            "server_version": versions[0] if len(versions) == 1 else versions,
            "served_model": seen[0]["served_model"],
        }
        self._banned = [[t, False] for t in sorted(self.vocab.special_set) if not self.vocab.is_eog(t)]
        self._grammars = {close: think_grammar(allow_close=close) for close in (True, False)}
        return identity, min(int(s["n_ctx"]) for s in seen)

    def _check_replica(self, replica: Replica) -> dict[str, Any]:
        self._wait_loaded(replica)
        props = self.pool.get(replica, "/props")
        models = self.pool.get(replica, "/v1/models")
        try:
            meta = models["data"][0].get("meta") or {}
            n_ctx = int(props["default_generation_settings"]["n_ctx"])
            slots = int(props["total_slots"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(f"{replica.public} does not look like llama-server (/props or /v1/models lack {exc})") from exc
        served = {
            "id": models["data"][0].get("id"),
            "path": props.get("model_path"),
            "n_vocab": meta.get("n_vocab"),
            "n_params": meta.get("n_params"),
            "size": meta.get("size"),
            "ftype": meta.get("ftype") or props.get("model_ftype"),
        }
        self._check_vocabulary(replica, served)
        replica.capacity = self.settings.per_replica or max(slots, 1)
        return {"served_model": served, "server_version": props.get("build_info", "?"), "n_ctx": n_ctx}

    def _wait_loaded(self, replica: Replica) -> None:
        """`/health` answers 503 while the server loads its model: wait for it, a while."""
        deadline = time.monotonic() + _LOADING_WAIT
        while True:
            try:
                self.pool.get(replica, "/health")
                return
            except HttpStatusError as exc:
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def _check_vocabulary(self, replica: Replica, served: dict[str, Any]) -> None:
        """The server must tokenize exactly as the local GGUF does, or our token ids mean other words."""
        local_n = self.vocab.n_vocab
        problem = None
        if served.get("n_vocab") is not None and int(served["n_vocab"]) != local_n:
            problem = f"its vocabulary has {served['n_vocab']} tokens, the local model's {local_n}"
        else:
            for text in _PROBES:
                theirs = self._server_tokens(replica, text)
                ours = self.vocab.tokenize(text)
                if theirs != ours:
                    problem = f"it tokenizes {text!r} as {theirs[:8]}, the local model as {ours[:8]}"
                    break
            specials = [t for t in sorted(self.vocab.special_set)][:16]
            for token in specials if problem is None else []:
                text = self.vocab.token_text(token)
                theirs = self._server_tokens(replica, text, special=True)
                if theirs != [token]:
                    problem = f"its special token {text!r} is {theirs}, the local model's is {token}"
                    break
        if problem is not None:
            raise BackendError(
                f"{replica.public} serves another model than {self.model_path} ({served.get('path') or served.get('id')}): "
                f"{problem}; start the server with the same GGUF, or pass the served model's GGUF as --model"
            )

    def _server_tokens(self, replica: Replica, text: str, *, special: bool = False) -> list[int]:
        reply = self.pool.post_once(replica, "/tokenize", {"content": text, "add_special": False, "parse_special": special})
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        if not isinstance(tokens, list):
            raise BackendError(f"{replica.public}/tokenize did not answer a token list")
        return [t if isinstance(t, int) else int(t["id"]) for t in tokens]

    # ------------------------------------------------------------ one generation

    def _think(self, lease: Lease, request: GenerationRequest) -> Think:
        reply = self.pool.post(lease, "/completion", lambda _: self._think_body(list(request.prompt), request))
        tokens, slot = self._read_think(reply, lease)
        pin = (lease.replica, slot) if isinstance(slot, int) and not lease.moved else None
        return Think(tokens, stopped=str(reply.get("stop_type")), pin=pin)

    def _think_body(self, prompt: list[int], request: GenerationRequest) -> dict[str, Any]:
        sampler = request.sampler
        return {
            "prompt": prompt,
            "n_predict": request.max_think_tokens,
            "grammar": self._grammars[request.allow_close],
            "cache_prompt": True,
            "return_tokens": True,
            "stream": False,
            "seed": sampler.seed & 0xFFFFFFFF,
            "temperature": 0.0 if sampler.greedy else sampler.temperature,
            "top_p": sampler.top_p,
            "samplers": ["temperature"] if sampler.greedy or sampler.top_p >= 1.0 else ["temperature", "top_p"],
            "logit_bias": self._banned,
            "n_probs": 0,
        }

    def _read_think(self, reply: Any, lease: Lease) -> tuple[list[int], int | None]:
        try:
            tokens = [int(t) for t in reply["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{lease.replica.public}/completion returned no token ids (a llama-server too old?)") from exc
        while tokens and self.vocab.is_eog(tokens[-1]):
            tokens.pop()
        self._count_timings(reply)
        slot = reply.get("id_slot")
        return tokens, slot if isinstance(slot, int) else None

    def _answer_logprobs(self, lease: Lease, tokens: list[int], pin: Any) -> tuple[float, float]:
        pinned: tuple[Replica, int] | None = pin
        top_k = ANSWER_TOP_K
        vocab = self.vocab
        while True:
            def body(current: Lease, k: int = top_k) -> dict[str, Any]:
                slot = pinned[1] if pinned is not None and pinned[0] is current.replica else -1
                return {"prompt": tokens, "n_predict": 1, "n_probs": k, "cache_prompt": True, "temperature": 0.0,
                        "samplers": ["temperature"], "id_slot": slot, "stream": False}

            reply = self.pool.post(lease, "/completion", body)
            self._count_timings(reply, generated=False)
            try:
                top = reply["completion_probabilities"][0]["top_logprobs"]
                pairs = [(int(c["id"]), float(c["logprob"])) for c in top]
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise BackendError(f"{lease.replica.public}/completion returned no top log-probabilities") from exc
            found = pair_logprobs(pairs, vocab.token_a, vocab.token_b)
            if found is not None:
                return found
            if top_k >= vocab.n_vocab:
                raise BackendError(f"{lease.replica.public} reported no probability for A or B at the answer slot")
            top_k = min(vocab.n_vocab, top_k * 64)

    def _count_timings(self, reply: Any, *, generated: bool = True) -> None:
        timings = reply.get("timings") if isinstance(reply, dict) else None
        if not isinstance(timings, dict):
            return
        self.count(
            prompt_tokens=int(timings.get("prompt_n", 0)),
            reused_tokens=int(timings.get("cache_n", 0)),
            generated_tokens=int(timings.get("predicted_n", 0)) if generated else 0,
            prefill_seconds=float(timings.get("prompt_ms", 0.0)) / 1000.0,
            decode_seconds=float(timings.get("predicted_ms", 0.0)) / 1000.0,
        )


def _model_key(seen: dict[str, Any]) -> tuple[Any, ...]:
    served = seen["served_model"]
    return served.get("n_vocab"), served.get("n_params"), served.get("size"), served.get("ftype")
