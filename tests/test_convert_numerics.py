"""The converter's arithmetic against torch/transformers: rope factors, bf16 rounding, row order."""

from __future__ import annotations

import numpy as np
import pytest

from gram_local.convert.config import Llama3RopeScaling
from gram_local.convert.dtypes import bf16_to_float32, float32_to_bf16
from gram_local.convert.llama import rope_row_order
from gram_local.convert.rope import llama3_rope_factors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("head_dim", "factor"),
    [(16, 32.0), (64, 32.0), (128, 32.0), (128, 8.0)],  # tiny, small, Llama-3.2-3B, Llama-3.1-8B
)
def test_rope_factors_match_transformers_llama3_scaling(head_dim: int, factor: float) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    config = transformers.LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters=rope,
        max_position_embeddings=131072,
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    expected = (plain / scaled).numpy()
    ours = llama3_rope_factors(head_dim, 500000.0, Llama3RopeScaling(factor, 1.0, 4.0, 8192))
    assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
    np.testing.assert_allclose(ours, expected, rtol=2e-6)
    assert ours[0] == 1.0 and ours[-1] == factor  # short wavelengths untouched, long ones scaled fully
    if head_dim >= 64:
        assert ours[(ours > 1.0) & (ours < factor)].min() > 1.0  # and some pairs blended in between


def test_bf16_rounding_matches_torch() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(100_000).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 100_000),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, 1.00390625, 1.01171875], dtype=np.float32),
            # exact ties between two bf16 values: round to even
            (np.arange(1000, dtype=np.uint32) << 16 | 0x8000).view(np.float32),
        ]
    )
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16(values), expected)
    nan = float32_to_bf16(np.array([np.nan], dtype=np.float32))
    assert np.isnan(bf16_to_float32(nan)).all()


def test_bf16_widening_is_exact() -> None:
    words = np.arange(0, 1 << 16, dtype=np.uint16)
    widened = bf16_to_float32(words)
    finite = np.isfinite(widened)
    expected = torch.from_numpy(words.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(widened[finite], expected[finite])
    np.testing.assert_array_equal(float32_to_bf16(widened[finite]), words[finite])


def test_rope_row_order_interleaves_the_two_halves_of_each_head() -> None:
    assert rope_row_order(2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert rope_row_order(1, 8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
