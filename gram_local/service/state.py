"""What the service's handlers share: the worker once the model is loaded, the limits, the key."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gram_local.config import RETRY_AFTER
from gram_local.errors import ServiceBusyError
from gram_local.service.bodies import Limits

if TYPE_CHECKING:
    from gram_local.judge import Judge
    from gram_local.service.worker import JudgeWorker


@dataclass
class ServiceOptions:
    """How the service treats requests (the `serve` command's options)."""

    max_queue: int
    max_body: int
    max_responses: int
    max_votes: int
    deadline: float | None
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    # Tasks of one /v1/batch request judged at once (the engine's `parallel`).
    batch_in_flight: int = 8


@dataclass
class ServiceState:
    options: ServiceOptions
    worker: JudgeWorker | None = None
    started: float = field(default_factory=time.monotonic)
    n_ctx_seq: int | None = None

    @property
    def ready(self) -> bool:
        return self.worker is not None

    def require_worker(self) -> JudgeWorker:
        if self.worker is None:
            raise ServiceBusyError("the model is still loading; retry shortly", RETRY_AFTER)
        return self.worker

    @property
    def judge(self) -> Judge:
        return self.require_worker().judge

    def limits(self) -> Limits:
        judge = self.judge
        return Limits(
            max_responses=self.options.max_responses,
            max_votes=self.options.max_votes,
            max_think_tokens=judge.settings.max_think_tokens,
        )

    def model_record(self) -> dict[str, Any]:
        judge = self.judge
        m = judge.model
        return {
            "id": m.name or Path(m.path).name,
            "object": "model",
            "path": m.path,
            "name": m.name,
            "sha256": m.sha256,
            "quantization": m.quantization,
            "chat_format": judge.chat_format,
            "n_ctx_seq": self.n_ctx_seq,
            "parallel": getattr(judge.backend, "parallel", None),
            "settings": judge.settings_record(),
        }
