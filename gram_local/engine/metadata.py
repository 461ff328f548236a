"""What a loaded model is, and what the values in its KV cache depend on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gram_local.engine.build import devices, system_info
from gram_local.engine.native import LlamaModel, ModelShape


@dataclass(frozen=True)
class ModelMetadata:
    architecture: str
    name: str
    n_params: int
    n_ctx_train: int
    n_vocab: int
    n_layer: int
    file_type: str
    chat_template: str | None
    values: dict[str, str]


def read_metadata(model: LlamaModel, shape: ModelShape, n_vocab: int) -> ModelMetadata:
    values = model.metadata()
    return ModelMetadata(
        architecture=values.get("general.architecture", "?"),
        name=values.get("general.name", Path(model.path).stem),
        n_params=shape.n_params,
        n_ctx_train=shape.n_ctx_train,
        n_vocab=n_vocab,
        n_layer=shape.n_layer,
        file_type=model.description(),
        chat_template=model.chat_template(),
        values={k: v for k, v in values.items() if not k.startswith("tokenizer.ggml.")},
    )


def kv_identity(version: str, *, repack: bool, n_gpu_layers: int, flash_attn: bool, kv_type: str) -> str:
    """Besides the model and the tokens, what the bytes of a KV cache depend on: a cached head
    written under any other value of these is not reused."""
    found = devices() or []
    return "|".join([
        version,
        system_info(),
        ",".join(d.name for d in found),
        f"repack={repack}",
        f"gpu_layers={n_gpu_layers}",
        f"flash_attn={'auto' if flash_attn else 'off'}",
        f"kv={kv_type}",
    ])
