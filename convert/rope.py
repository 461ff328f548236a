"""The `rope_freqs` tensor: llama3 rope scaling expressed the way llama.cpp applies it.

transformers bakes llama3 scaling into its inverse frequencies; llama.cpp instead divides each
rotary frequency by a per-pair factor read from `rope_freqs.weight`. Without that tensor the model
still loads and runs, but every long-wavelength pair rotates up to `factor` times too fast, which
shows as drifting logits, worst beyond the original context.
"""

from __future__ import annotations

import numpy as np

from gram_local.convert.config import Llama3RopeScaling


def llama3_rope_factors(head_dim: int, theta: float, scaling: Llama3RopeScaling) -> np.ndarray:
    """One divisor per frequency pair: 1 for short wavelengths, `factor` for long ones.

    Wavelengths between `original_context / high_freq_factor` and `original_context /
    low_freq_factor` blend the two, linearly in `original_context / wavelength`.
    """
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * np.pi / inv_freq
    short_limit = scaling.original_context / scaling.high_freq_factor
    long_limit = scaling.original_context / scaling.low_freq_factor
    blend = (scaling.original_context / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    # frequency multiplier (1 - blend) / factor + blend, and llama.cpp wants its reciprocal
    blended = 1.0 / ((1.0 - blend) / scaling.factor + blend)
    factors = np.where(wavelength < short_limit, 1.0, np.where(wavelength > long_limit, scaling.factor, blended))
    return factors.astype(np.float32)
