"""The two ways a conversion ends badly, kept apart so the CLI can tell the user whose fault it was.

`ConversionError` is the input's fault (not a checkpoint, an architecture or tokenizer we do not
support, a missing tensor, a shape that contradicts the config): exit code 2, and it is always
raised before anything is written. `ConversionFailed` is the machine's (llama.cpp refused to
quantize, the disk filled up): exit code 1.
"""

from __future__ import annotations

from gram_local.errors import GramLocalError, InputError


class ConversionError(InputError):
    """The checkpoint (or the request) cannot be converted as given; nothing was written."""


class ConversionFailed(GramLocalError):
    """The conversion was valid but failed while running; partial outputs were removed."""
