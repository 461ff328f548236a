"""A Llama checkpoint's `config.json`, read into the hyper-parameters the GGUF needs, or refused.

Missing keys take transformers' `LlamaConfig` defaults, because that is what the model saw when it
was trained and evaluated. Accepts both the transformers 4.x spelling (`rope_theta` plus
`rope_scaling`) and the 5.x one (`rope_parameters` holding both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gram_local.convert.errors import ConversionError

SUPPORTED_ARCHITECTURE = "LlamaForCausalLM"


@dataclass(frozen=True)
class Llama3RopeScaling:
    """The `rope_type: llama3` frequency scaling of Llama 3.1 and later."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context: int


@dataclass(frozen=True)
class LlamaConfig:
    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int
    tied_embeddings: bool
    rope_scaling: Llama3RopeScaling | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None


def _positive_int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConversionError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _number(cfg: dict[str, Any], key: str, default: float | None, where: str = "config.json") -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConversionError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ConversionError(f"config.json: token id {value!r} is neither an integer nor a list of integers")


def _rope(cfg: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise ConversionError("config.json: rope_parameters must be an object")
    if scaling is not None and not isinstance(scaling, dict):
        raise ConversionError("config.json: rope_scaling must be an object or null")
    rope = dict(scaling or {})
    rope.update(params or {})
    theta_source = rope if "rope_theta" in rope else cfg
    theta = _number(theta_source, "rope_theta", 10000.0)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type != "llama3":
        raise ConversionError(f"config.json: rope scaling type {rope_type!r} is not supported (only none and 'llama3')")
    where = "config.json rope scaling"
    low = _number(rope, "low_freq_factor", None, where)
    high = _number(rope, "high_freq_factor", None, where)
    if high <= low:
        raise ConversionError(f"{where}: high_freq_factor ({high}) must exceed low_freq_factor ({low})")
    original = rope.get("original_max_position_embeddings")
    if isinstance(original, bool) or not isinstance(original, int) or original <= 0:
        raise ConversionError(f"{where}: original_max_position_embeddings must be a positive integer")
    return theta, Llama3RopeScaling(_number(rope, "factor", None, where), low, high, original)


def read_config(checkpoint_dir: Path) -> LlamaConfig:
    """Read and check `config.json`; refuse anything llama.cpp's `llama` architecture cannot run."""
    path = checkpoint_dir / "config.json"
    if not checkpoint_dir.is_dir():
        raise ConversionError(f"not a checkpoint directory: {checkpoint_dir}")
    if not path.is_file():
        raise ConversionError(f"not a checkpoint directory: {checkpoint_dir} has no config.json")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path}: not a JSON object")

    architectures = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if architectures != [SUPPORTED_ARCHITECTURE] or model_type != "llama":
        found = ", ".join(map(str, architectures)) or "none listed"
        raise ConversionError(
            f"unsupported architecture {found} (model_type {model_type!r}): "
            f"only Llama-3.x checkpoints ({SUPPORTED_ARCHITECTURE}, model_type 'llama') can be converted"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ConversionError(f"config.json: {flag} is set; Llama-3.x has no biases and this converter writes none")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json: hidden_act {cfg.get('hidden_act')!r} is not supported (only silu)")

    hidden = _positive_int(cfg, "hidden_size")
    n_heads = _positive_int(cfg, "num_attention_heads")
    n_kv_heads = _positive_int(cfg, "num_key_value_heads", n_heads)
    head_dim = cfg.get("head_dim") or hidden // n_heads
    if n_heads % n_kv_heads:
        raise ConversionError(f"config.json: {n_heads} attention heads is not a multiple of {n_kv_heads} KV heads")
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ConversionError(f"config.json: head_dim must be a positive even integer, got {head_dim!r}")
    theta, scaling = _rope(cfg)
    return LlamaConfig(
        n_layers=_positive_int(cfg, "num_hidden_layers"),
        hidden_size=hidden,
        ffn_size=_positive_int(cfg, "intermediate_size"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        vocab_size=_positive_int(cfg, "vocab_size"),
        rms_norm_eps=_number(cfg, "rms_norm_eps", 1e-6),
        rope_theta=theta,
        context_length=_positive_int(cfg, "max_position_embeddings", 2048),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        bos_token_id=(_token_ids(cfg.get("bos_token_id")) or (None,))[0],
        eos_token_ids=_token_ids(cfg.get("eos_token_id")),
        pad_token_id=(_token_ids(cfg.get("pad_token_id")) or (None,))[0],
    )
