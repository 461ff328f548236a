"""The in-process llama.cpp engine, in rooms:

- `native`: the llama.cpp handles (model, context, batch, samplers), logging, build facts;
- `plan`: how the engine runs here (threads, offload, KV layout, attention, repack), from settings;
- `metadata`: what a loaded model is, and what its KV bytes depend on;
- `vocab`: tokenizing with the model's vocabulary;
- `slots`: which tokens each KV sequence holds (it only tracks);
- `kv`: the one context, sized to the work, and its streams (copy, clear, evaluate);
- `scheduler`: admission, slot placement, compaction and batch composition (decisions only);
- `stepping`: one decode step: fill the batch, decode, act on every row of logits;
- `sampling`: the format grammar and the answer slot;
- `drafting`: prompt-lookup speculation;
- `prefix_store`: the instruction head's KV on disk (policy and mechanics);
- `core`: the `Engine`, the Backend: requests, their lifecycle, and the step loop.

Only this package imports llama_cpp (besides the converter's quantize step); everything else asks
`build` for the build's facts (tests/test_architecture.py keeps it so).
"""

from __future__ import annotations

from gram_local.backend import Generation, GenerationRequest, RequestHandle, RequestState, SamplerSpec, common_prefix
from gram_local.engine.core import Engine
from gram_local.engine.metadata import ModelMetadata

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
