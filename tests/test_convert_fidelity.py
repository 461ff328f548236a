"""The converted model computes what transformers computes, and the check would notice if it did not.

A tiny random checkpoint with every feature of the real one (bf16 shards with an index, GQA,
llama3 rope scaling, tied embeddings or a separate lm_head, the real Llama-3 vocabulary) is
converted to F32 and run by llama.cpp with an F32 KV cache; its logits are compared with
transformers' LlamaForCausalLM in float64 (the bf16 weights are exact in both) on the same token
ids, over the first 64 positions and past 8,192, where llama3 rope scaling changes the
long-wavelength rotations.

The bounds sit between float32 arithmetic and a missing transformation. A run without the rope
frequency factors is off by about 0.09 in the first 64 positions and 4.6 past 8,192, one without
the q/k permutation by 6; the F32 model itself was within 1e-5 of the reference on one machine
and 1.5e-3 (first positions) on another, CPU unknown: the bounds leave room for that spread.

llama.cpp runs with flash attention off: its CPU flash-attention kernel alone moves the logits by
about 3e-3 at position 0 (where rope plays no part), which would hide what we test here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from random_checkpoint import default_tokenizer_json, write_random_checkpoint

from gram_local.convert import convert_checkpoint
from gram_local.convert.gguf_info import read_gguf_info
from gram_local.convert.llama import load_checkpoint, write_gguf
from gram_local.engine.build import amx_compiled

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHORT_BOUND, LONG_BOUND = 1e-2, 1e-1
N_TOKENS = 8256
FIRST = list(range(64))
LONG = list(range(8192, N_TOKENS, 4))  # 16 positions past the original context of 8,192


def _tokens(n: int) -> list[int]:
    return np.random.default_rng(7).integers(0, 128000, n).tolist()


def llama_cpp_logits(gguf_path: Path, tokens: list[int], positions: list[int]) -> np.ndarray:
    """Logits at `positions` only: decode in chunks and flag just the rows we read."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback obeys this
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.use_extra_bufts = not amx_compiled()  # as the engine does: AMX buffers crash
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
    assert model, f"llama.cpp could not load {gguf_path}"
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = len(tokens)
    params.n_batch = params.n_ubatch = 512
    params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.n_threads = params.n_threads_batch = 2
    ctx = llama_cpp.llama_init_from_model(model, params)
    assert ctx
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    wanted, found = set(positions), {}
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    try:
        for start in range(0, len(tokens), 512):
            chunk = tokens[start : start + 512]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i], batch.pos[i] = token, start + i
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
                batch.logits[i] = (start + i) in wanted
            assert llama_cpp.llama_decode(ctx, batch) == 0
            for i in range(len(chunk)):
                if start + i in wanted:
                    row = llama_cpp.llama_get_logits_ith(ctx, i)
                    found[start + i] = np.ctypeslib.as_array(row, shape=(n_vocab,)).copy()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return np.stack([found[p] for p in positions])


def transformers_logits(
    checkpoint: Path, tokens: list[int], positions: list[int], dtype: torch.dtype = torch.float64
) -> np.ndarray:
    model = transformers.LlamaForCausalLM.from_pretrained(checkpoint, dtype=dtype)
    assert model.config.rope_parameters["rope_type"] == "llama3"  # the reference really scales rope
    with torch.no_grad():
        out = model(torch.tensor([tokens]), logits_to_keep=torch.tensor(positions))
    return out.logits[0].numpy()


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tied"), tokenizer_json=default_tokenizer_json())


@pytest.fixture(scope="module")
def tied_reference(tied: Path) -> np.ndarray:
    return transformers_logits(tied, _tokens(N_TOKENS), FIRST + LONG)


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got - ref)
    return float(diff[: len(FIRST)].max()), float(diff[len(FIRST) :].max())


def test_tied_checkpoint_features(tied: Path) -> None:
    cfg = load_checkpoint(tied).config
    assert (tied / "model.safetensors.index.json").is_file()
    assert len(list(tied.glob("model-0000?-of-00002.safetensors"))) == 2
    assert cfg.tied_embeddings and cfg.n_kv_heads < cfg.n_heads and cfg.rope_scaling is not None
    assert cfg.vocab_size == 128257


def test_f32_logits_match_transformers_up_to_long_context(
    tied: Path, tied_reference: np.ndarray, tmp_path: Path
) -> None:
    out = convert_checkpoint(tied, tmp_path / "tiny-f32.gguf", quant="F32")
    got = llama_cpp_logits(out, _tokens(N_TOKENS), FIRST + LONG)
    short, long = _errors(got, tied_reference)
    assert np.abs(tied_reference).max() > 1.0  # logits are not degenerate
    if short > SHORT_BOUND or long > LONG_BOUND:  # say which side drifts: torch's own float32 run
        torch_f32 = _errors(transformers_logits(tied, _tokens(N_TOKENS), FIRST + LONG, torch.float32), tied_reference)
        worst = np.abs(got - tied_reference)[: len(FIRST)].max(axis=1)
        pytest.fail(f"llama.cpp F32 off by {short:.3g} (first positions, worst at {int(worst.argmax())}) and "
                    f"{long:.3g} (past 8,192); transformers float32: {torch_f32[0]:.3g} and {torch_f32[1]:.3g}")


@pytest.mark.parametrize("skip", ["qk_permutation", "rope_freqs"])
def test_the_comparison_catches_a_missing_transformation(
    skip: str, tied: Path, tied_reference: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / f"without-{skip}.gguf"
    write_gguf(load_checkpoint(tied), out, "F32", _skip=frozenset({skip}))
    short, long = _errors(llama_cpp_logits(out, _tokens(N_TOKENS), FIRST + LONG), tied_reference)
    assert short > SHORT_BOUND, short
    assert long > LONG_BOUND, long


def test_separate_lm_head_logits_match(tmp_path: Path) -> None:
    ckpt = write_random_checkpoint(tmp_path / "untied", tokenizer_json=default_tokenizer_json(), tied=False, seed=3)
    assert not load_checkpoint(ckpt).config.tied_embeddings
    out = convert_checkpoint(ckpt, tmp_path / "untied-f32.gguf", quant="F32")
    tokens = _tokens(len(FIRST))
    ref = transformers_logits(ckpt, tokens, FIRST)
    got = llama_cpp_logits(out, tokens, FIRST)
    assert np.abs(got - ref).max() <= SHORT_BOUND
    # the lm_head really differs from the embeddings, so a writer that tied them would fail above
    model = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_quantized_model_still_tracks_the_reference(tied: Path, tmp_path: Path) -> None:
    """Q8_0 through llama.cpp's quantizer: near the reference (Q8_0 also rounds activations)."""
    out = convert_checkpoint(tied, tmp_path / "tiny-q8_0.gguf", quant="Q8_0")
    tokens = _tokens(len(FIRST))
    ref = transformers_logits(tied, tokens, FIRST)
    got = llama_cpp_logits(out, tokens, FIRST)
    assert {t.type_name for t in read_gguf_info(out).tensors if len(t.shape) == 2} == {"Q8_0"}
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999
    assert np.abs(got - ref).mean() < 0.05
