"""The in-process llama.cpp engine, in rooms:

- `native`: the llama.cpp handles (model, context, batch, samplers), logging, build facts;
- `vocab`: tokenizing with the model's vocabulary;
- `slots`: which tokens each KV sequence holds;
- `scheduler`: admission, slot placement, compaction and batch composition (decisions only);
- `sampling`: the format grammar and the answer slot;
- `drafting`: prompt-lookup speculation;
- `prefix_store`: the instruction head's KV on disk;
- `core`: the `Engine`, which carries out the scheduler's decisions step by step.

Only this package imports llama_cpp (and `gram_local.cpu`, which reads the build's features).
"""

from __future__ import annotations

from gram_local.backend import Generation, GenerationRequest, RequestHandle, RequestState, SamplerSpec, common_prefix
from gram_local.engine.core import Engine, ModelMetadata

__all__ = [
    "Engine",
    "Generation",
    "GenerationRequest",
    "ModelMetadata",
    "RequestHandle",
    "RequestState",
    "SamplerSpec",
    "common_prefix",
]
