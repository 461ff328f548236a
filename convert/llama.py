"""Llama-3.x Hugging Face checkpoint -> GGUF (llama.cpp's `llama` architecture), streamed.

`load_checkpoint` reads and checks everything (config, tokenizer, every tensor's name, dtype and
shape) so that a bad checkpoint is refused before a byte is written. `write_gguf` then writes the
metadata and converts the tensors one at a time, a slab of rows at a time, so memory stays at a
few hundred MB whatever the model size.

Two transformations make llama.cpp compute what transformers computes:
- Q and K projection rows are reordered: transformers rotates the two halves of each head
  (`rotate_half`), llama.cpp rotates adjacent pairs; permuting rows within each head makes the two
  agree (K uses the KV head count).
- llama3 rope scaling becomes the `rope_freqs.weight` tensor (see rope.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from gram_local.convert.config import LlamaConfig, read_config
from gram_local.convert.dtypes import float32_to_bf16
from gram_local.convert.errors import ConversionError
from gram_local.convert.progress import ProgressCallback
from gram_local.convert.rope import llama3_rope_factors
from gram_local.convert.safetensors import TensorEntry, TensorReader, index_checkpoint, row_slabs, to_float32
from gram_local.convert.vocab import PRE_TOKENIZER, Vocab, read_vocab

logger = logging.getLogger("gram_local.convert")

#: GGUF file types the writer produces directly: (tensor type for matrices, general.file_type).
DIRECT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
_ITEMSIZE = {gguf.GGMLQuantizationType.F32: 4, gguf.GGMLQuantizationType.F16: 2, gguf.GGMLQuantizationType.BF16: 2}
_NP_DTYPE = {
    gguf.GGMLQuantizationType.F32: np.float32,
    gguf.GGMLQuantizationType.F16: np.float16,
    gguf.GGMLQuantizationType.BF16: np.uint16,
}
_SLAB_ELEMS = 1 << 23
_F16_MAX = 65504.0
#: Tensors some exporters save that carry nothing the GGUF needs.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed every check: what `write_gguf` needs and nothing it must re-check."""

    path: Path
    config: LlamaConfig
    vocab: Vocab
    tensors: dict[str, TensorEntry]

    @property
    def lossless_type(self) -> str:
        """The GGUF type that holds every source weight exactly (the intermediate before quantizing)."""
        kinds = {e.dtype for e in self.tensors.values() if len(e.shape) == 2}
        return "BF16" if kinds == {"BF16"} else "F16" if kinds == {"F16"} else "F32"

    def gguf_nbytes(self, out_type: str) -> int:
        return sum(t.nbytes for t in plan_tensors(self, out_type))


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: where its values come from and how they are laid out."""

    name: str
    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType
    source: TensorEntry | None = None
    row_order: np.ndarray | None = None
    values: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * _ITEMSIZE[self.ggml_type]


def _hf_to_gguf_names(cfg: LlamaConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Hugging Face tensor name -> (GGUF name, expected shape), in GGUF file order."""
    h, f, d = cfg.hidden_size, cfg.ffn_size, cfg.head_dim
    q, kv = cfg.n_heads * d, cfg.n_kv_heads * d
    names: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("token_embd.weight", (cfg.vocab_size, h)),
    }
    for i in range(cfg.n_layers):
        hf, gg = f"model.layers.{i}.", f"blk.{i}."
        names.update(
            {
                hf + "input_layernorm.weight": (gg + "attn_norm.weight", (h,)),
                hf + "self_attn.q_proj.weight": (gg + "attn_q.weight", (q, h)),
                hf + "self_attn.k_proj.weight": (gg + "attn_k.weight", (kv, h)),
                hf + "self_attn.v_proj.weight": (gg + "attn_v.weight", (kv, h)),
                hf + "self_attn.o_proj.weight": (gg + "attn_output.weight", (h, q)),
                hf + "post_attention_layernorm.weight": (gg + "ffn_norm.weight", (h,)),
                hf + "mlp.gate_proj.weight": (gg + "ffn_gate.weight", (f, h)),
                hf + "mlp.up_proj.weight": (gg + "ffn_up.weight", (f, h)),
                hf + "mlp.down_proj.weight": (gg + "ffn_down.weight", (h, f)),
            }
        )
    names["model.norm.weight"] = ("output_norm.weight", (h,))
    if not cfg.tied_embeddings:
        names["lm_head.weight"] = ("output.weight", (cfg.vocab_size, h))
    return names


def rope_row_order(n_heads: int, head_dim: int) -> np.ndarray:
    """Row i of the GGUF projection is row order[i] of the Hugging Face one.

    Within a head, transformers keeps the first and second rotary halves apart ([x0..x(d/2-1)],
    [y0..y(d/2-1)]); llama.cpp wants the pairs interleaved (x0, y0, x1, y1, ...).
    """
    return np.arange(n_heads * head_dim).reshape(n_heads, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


def load_checkpoint(checkpoint_dir: Path) -> Checkpoint:
    """Read a checkpoint folder and refuse, with a reason, anything the writer would get wrong."""
    checkpoint_dir = Path(checkpoint_dir)
    cfg = read_config(checkpoint_dir)
    tensors = index_checkpoint(checkpoint_dir)
    expected = _hf_to_gguf_names(cfg)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConversionError(f"missing tensor {missing[0]}{more} in {checkpoint_dir}")
    for name, entry in tensors.items():
        if name in expected:
            want = expected[name][1]
            if entry.shape != want:
                raise ConversionError(
                    f"tensor {name} has shape {list(entry.shape)}, but config.json implies {list(want)}"
                )
        elif name == "lm_head.weight" and cfg.tied_embeddings:
            logger.info("config.json ties the embeddings: lm_head.weight is ignored, as transformers ignores it")
        elif not name.endswith(_IGNORED_SUFFIXES):
            raise ConversionError(
                f"unexpected tensor {name}: not part of a Llama-3.x checkpoint as config.json describes it"
            )
    vocab = read_vocab(checkpoint_dir, cfg)
    return Checkpoint(checkpoint_dir, cfg, vocab, tensors)


def plan_tensors(ckpt: Checkpoint, out_type: str, skip: frozenset[str] = frozenset()) -> list[PlannedTensor]:
    """The GGUF's tensors in file order. `skip` is a test-only switch (see `write_gguf`)."""
    cfg = ckpt.config
    matrix_type = DIRECT_TYPES[out_type][0]
    planned: list[PlannedTensor] = []
    if cfg.rope_scaling is not None and "rope_freqs" not in skip:
        factors = llama3_rope_factors(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        planned.append(PlannedTensor("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32, values=factors))
    permute = "qk_permutation" not in skip
    for hf_name, (name, shape) in _hf_to_gguf_names(cfg).items():
        order = None
        if permute and name.endswith(".attn_q.weight"):
            order = rope_row_order(cfg.n_heads, cfg.head_dim)
        elif permute and name.endswith(".attn_k.weight"):
            order = rope_row_order(cfg.n_kv_heads, cfg.head_dim)
        ggml_type = matrix_type if len(shape) == 2 else gguf.GGMLQuantizationType.F32
        planned.append(PlannedTensor(name, shape, ggml_type, source=ckpt.tensors[hf_name], row_order=order))
    return planned


def _add_metadata(w: gguf.GGUFWriter, cfg: LlamaConfig, vocab: Vocab, file_type: gguf.LlamaFileType) -> None:
    w.add_type("model")
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_size)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    for add, token_id in (
        (w.add_bos_token_id, vocab.bos_id),
        (w.add_eos_token_id, vocab.eos_id),
        (w.add_eot_token_id, vocab.eot_id),
        (w.add_eom_token_id, vocab.eom_id),
        (w.add_pad_token_id, vocab.pad_id),
    ):
        if token_id is not None:
            add(token_id)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def _encode(raw: np.ndarray, src_dtype: str, ggml_type: gguf.GGMLQuantizationType, name: str) -> np.ndarray:
    """Raw source words -> the output type; exact wherever the output type can hold the value."""
    same = {
        "BF16": gguf.GGMLQuantizationType.BF16,
        "F16": gguf.GGMLQuantizationType.F16,
        "F32": gguf.GGMLQuantizationType.F32,
    }[src_dtype]
    if same == ggml_type:
        return raw
    values = to_float32(raw, src_dtype)
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return values
    if ggml_type == gguf.GGMLQuantizationType.BF16:
        return float32_to_bf16(values)
    peak = float(np.abs(values).max(initial=0.0))
    if not peak <= _F16_MAX:
        raise ConversionError(
            f"tensor {name} has values beyond float16's range (|x| up to {peak:.4g}); convert to BF16 or F32 instead"
        )
    return values.astype(np.float16)


def _tensor_slabs(t: PlannedTensor, reader: TensorReader) -> Iterator[np.ndarray]:
    if t.values is not None:
        yield t.values.astype(_NP_DTYPE[t.ggml_type])
        return
    entry = t.source
    assert entry is not None
    if t.row_order is not None:
        # Q/K projections are at most a few tens of MB: permute them whole.
        raw = reader.read_all(entry)[t.row_order]
        for start, stop in row_slabs(entry.n_rows, entry.row_elems, _SLAB_ELEMS):
            yield _encode(raw[start:stop], entry.dtype, t.ggml_type, t.name)
        return
    for start, stop in row_slabs(entry.n_rows, entry.row_elems, _SLAB_ELEMS):
        yield _encode(reader.read_rows(entry, start, stop), entry.dtype, t.ggml_type, t.name)


def write_gguf(
    ckpt: Checkpoint,
    out_path: Path,
    out_type: str,
    *,
    on_progress: ProgressCallback | None = None,
    _skip: frozenset[str] = frozenset(),
) -> None:
    """Write `ckpt` as an F32, F16 or BF16 GGUF at `out_path` (overwritten; callers stage it).

    The one refusal that can only happen here: F16 output of weights beyond float16's range, found
    while converting (scanning the checkpoint first would double the reading time).

    `_skip` exists for the fidelity tests only: {"qk_permutation", "rope_freqs"} leave out one
    transformation each, to show that the logit comparison catches the mistake.
    """
    if out_type not in DIRECT_TYPES:
        raise ConversionError(f"the GGUF writer produces {', '.join(DIRECT_TYPES)}, not {out_type}")
    planned = plan_tensors(ckpt, out_type, _skip)
    writer = gguf.GGUFWriter(out_path, "llama")
    _add_metadata(writer, ckpt.config, ckpt.vocab, DIRECT_TYPES[out_type][1])
    for t in planned:
        writer.add_tensor_info(t.name, t.shape, np.dtype(_NP_DTYPE[t.ggml_type]), t.nbytes, raw_dtype=t.ggml_type)
    total, done = float(sum(t.nbytes for t in planned)), 0.0
    try:
        writer.write_header_to_file(out_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None and len(writer.fout) == 1
        fout = writer.fout[0]
        align = writer.data_alignment
        with TensorReader() as reader:
            for t in planned:
                fout.write(b"\0" * (-fout.tell() % align))
                written = 0
                for slab in _tensor_slabs(t, reader):
                    data = np.ascontiguousarray(slab)
                    fout.write(data.data.cast("B"))
                    written += data.nbytes
                    done += data.nbytes
                    if on_progress is not None:
                        on_progress("converting", done, total, "bytes")
                if written != t.nbytes:
                    raise AssertionError(f"{t.name}: wrote {written} bytes, planned {t.nbytes}")
            fout.write(b"\0" * (-fout.tell() % align))
    finally:
        writer.close()
