"""Is this GGUF a model gram-local can judge with? Checked before llama.cpp is given the file.

llama.cpp trusts a GGUF's header: a damaged one can crash the process, allocate absurd amounts of
memory, or load a model that cannot answer with `A` or `B`. `validate_gguf` reads only the header,
the metadata and the tensor table (never the weights) and refuses, with the reason, a file that is
not a GGUF, is truncated or damaged, is not a Llama, lacks the answer tokens, or whose tensors do
not have the shapes its own metadata implies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gram_local.errors import ModelFileError, ModelNotFoundError
from gram_local.store.gguf_header import (
    GgufHeader,
    TensorEntry,
    quant_label,
    read_header,
)

__all__ = ["ANSWER_TOKENS", "GgufSummary", "validate_gguf"]

ARCHITECTURE = "llama"
ANSWER_TOKENS = ("A", "B")
_TOKENS = "tokenizer.ggml.tokens"
_SPECIAL_IDS = ("bos", "eos", "eot", "eom", "unknown", "padding", "seperator", "cls", "mask")  # llama.cpp's spellings


@dataclass(frozen=True)
class GgufSummary:
    """What a valid file holds, from its header (no weights read)."""

    path: Path
    size: int
    version: int
    architecture: str
    file_type: str | None  # Q4_K_M, BF16...; None when the file does not say
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int | None
    n_tensors: int
    answer_token_ids: tuple[int, int]  # the tokens of "A" and "B"


def validate_gguf(path: str | os.PathLike[str]) -> GgufSummary:
    """Check a GGUF's header and tensor table before loading it; raise `ModelFileError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist" if not path.exists() else f"{path} is not a file")
    header = read_header(path, decode=(_TOKENS,))
    architecture = header.string("general.architecture")
    if architecture != ARCHITECTURE:
        found = "no general.architecture" if architecture is None else f"a {architecture!r} model"
        raise ModelFileError(path, f"it holds {found}; gram-local runs Llama-architecture models (GRAM-RR)")
    hp = _hyperparameters(header)
    tokens = header.metadata.get(_TOKENS)
    if not isinstance(tokens, list) or not tokens:
        raise ModelFileError(path, f"it has no vocabulary ({_TOKENS})")
    vocab_size = header.integer(f"{ARCHITECTURE}.vocab_size")
    if vocab_size is not None and vocab_size != len(tokens):
        raise ModelFileError(path, f"llama.vocab_size is {vocab_size} but the vocabulary has {len(tokens)} tokens")
    for kind in _SPECIAL_IDS:
        token_id = header.integer(f"tokenizer.ggml.{kind}_token_id")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise ModelFileError(path, f"the {kind} token id {token_id} is outside the vocabulary of {len(tokens)}")
    answer_ids = _answer_tokens(header, tokens)
    _check_tensors(header, {**hp, "n_vocab": len(tokens)})
    return GgufSummary(
        path=path,
        size=header.file_size,
        version=header.version,
        architecture=architecture,
        file_type=quant_label(header.integer("general.file_type")),
        n_vocab=len(tokens),
        n_embd=hp["n_embd"],
        n_layer=hp["n_layer"],
        n_head=hp["n_head"],
        n_head_kv=hp["n_head_kv"],
        n_ff=hp["n_ff"],
        n_ctx_train=header.integer(f"{ARCHITECTURE}.context_length"),
        n_tensors=len(header.tensors),
        answer_token_ids=answer_ids,
    )


def _hyperparameters(header: GgufHeader) -> dict[str, int]:
    """The sizes the tensor shapes must agree with, each checked for presence and sense."""

    def positive(key: str, default: int | None = None) -> int:
        value = header.integer(f"{ARCHITECTURE}.{key}")
        if value is None and default is not None:
            return default
        if value is None or value <= 0:
            shown = "missing" if value is None else str(value)
            raise ModelFileError(header.path, f"{ARCHITECTURE}.{key} is {shown}, not a positive integer")
        return value

    n_embd = positive("embedding_length")
    n_head = positive("attention.head_count")
    n_head_kv = positive("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise ModelFileError(header.path, f"{n_head} attention heads cannot share {n_head_kv} key/value heads")
    if header.integer(f"{ARCHITECTURE}.attention.key_length") is None and n_embd % n_head:
        raise ModelFileError(header.path, f"the embedding width {n_embd} is not a multiple of {n_head} heads")
    head_k = positive("attention.key_length", n_embd // n_head)
    return {
        "n_embd": n_embd,
        "n_layer": positive("block_count"),
        "n_ff": positive("feed_forward_length"),
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "head_k": head_k,
        "head_v": positive("attention.value_length", head_k),
    }


def _answer_tokens(header: GgufHeader, tokens: list[str]) -> tuple[int, int]:
    """The ids of `A` and `B` as whole tokens, the way llama.cpp's tokenizer will find them."""
    model = header.string("tokenizer.ggml.model")
    space_prefix = header.metadata.get("tokenizer.ggml.add_space_prefix", True)
    prefix = "\u2581" if model == "llama" and space_prefix is not False else ""  # SentencePiece: "▁A"
    index: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if len(t) <= 2:
            index.setdefault(t, i)
    ids = []
    for answer in ANSWER_TOKENS:
        token_id = index.get(prefix + answer)
        if token_id is None:
            raise ModelFileError(
                header.path,
                f"its vocabulary has no single token for the answer {answer!r}, so it cannot be a GRAM-RR judge",
            )
        ids.append(token_id)
    return ids[0], ids[1]


def _check_tensors(header: GgufHeader, hp: dict[str, int]) -> None:
    """Every tensor llama.cpp's Llama loader requires, with the shape the metadata implies."""
    n_embd, n_vocab, n_ff = hp["n_embd"], hp["n_vocab"], hp["n_ff"]
    q_width, kv_k, kv_v = hp["n_head"] * hp["head_k"], hp["n_head_kv"] * hp["head_k"], hp["n_head_kv"] * hp["head_v"]
    expected: dict[str, tuple[tuple[int, ...], str]] = {
        "token_embd.weight": ((n_embd, n_vocab), "embedding width x vocabulary size"),
        "output_norm.weight": ((n_embd,), "embedding width"),
    }
    for i in range(hp["n_layer"]):
        blk = f"blk.{i}."
        expected |= {
            blk + "attn_norm.weight": ((n_embd,), "embedding width"),
            blk + "attn_q.weight": ((n_embd, q_width), "embedding width x heads x head size"),
            blk + "attn_k.weight": ((n_embd, kv_k), "embedding width x key/value heads x head size"),
            blk + "attn_v.weight": ((n_embd, kv_v), "embedding width x key/value heads x head size"),
            blk + "attn_output.weight": ((q_width, n_embd), "heads x head size x embedding width"),
            blk + "ffn_norm.weight": ((n_embd,), "embedding width"),
            blk + "ffn_gate.weight": ((n_embd, n_ff), "embedding width x feed-forward width"),
            blk + "ffn_up.weight": ((n_embd, n_ff), "embedding width x feed-forward width"),
            blk + "ffn_down.weight": ((n_ff, n_embd), "feed-forward width x embedding width"),
        }
    optional = {"output.weight": ((n_embd, n_vocab), "embedding width x vocabulary size")}
    by_name: dict[str, TensorEntry] = {t.name: t for t in header.tensors}
    for name, (shape, meaning) in (expected | optional).items():
        tensor = by_name.get(name)
        if tensor is None:
            if name in expected:
                raise ModelFileError(header.path, f"the tensor {name} is missing")
            continue
        if tensor.dims != shape:
            raise ModelFileError(
                header.path,
                f"the tensor {name} has shape {list(tensor.dims)}, but the metadata implies {list(shape)} ({meaning})",
            )
    for tensor in header.tensors:
        if tensor.name.startswith("blk.") and tensor.name.split(".")[1].isdigit():
            layer = int(tensor.name.split(".")[1])
            if layer >= hp["n_layer"]:
                raise ModelFileError(
                    header.path, f"the tensor {tensor.name} belongs to layer {layer} of a {hp['n_layer']}-layer model"
                )
