"""The two ways a conversion ends badly (defined with every other error in `gram_local.errors`).

`ConversionError` is the input's fault (not a checkpoint, an architecture or tokenizer we do not
support, a missing tensor, a shape that contradicts the config): exit code 2, and it is always
raised before anything is written. `ConversionFailed` is the machine's (llama.cpp refused to
quantize, the disk filled up): exit code 1.
"""

from __future__ import annotations

from gram_local.errors import ConversionError, ConversionFailed

__all__ = ["ConversionError", "ConversionFailed"]
