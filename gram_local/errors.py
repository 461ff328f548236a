"""Errors gram-local raises on purpose.

Each carries the exit code the CLI uses for it, so front ends never need to guess whether a failure
was the user's input (2) or the machine (1).
"""

from __future__ import annotations


class GramLocalError(Exception):
    """Base class: a failure with a message fit to show a user as it is."""

    exit_code = 1


class InputError(GramLocalError):
    """The input cannot be judged as given (empty text, too few responses, bad JSON...)."""

    exit_code = 2


class ContextOverflowError(InputError):
    """The prompt does not fit the context window; never truncated silently."""

    def __init__(self, n_tokens: int, limit: int, what: str = "prompt") -> None:
        self.n_tokens = n_tokens
        self.limit = limit
        super().__init__(
            f"the {what} is {n_tokens} tokens, over the limit of {limit} tokens "
            "(the context size less the think budget and answer); shorten the texts, "
            "lower --max-think-tokens or raise --ctx"
        )


class ModelError(GramLocalError):
    """The model cannot be found, read or loaded."""

    exit_code = 1


class ModelNotFoundError(ModelError):
    """A model name or path that resolves to nothing usable; a usage problem, hence exit 2."""

    exit_code = 2


class ChecksumError(ModelError):
    """A file's SHA-256 differs from the pinned one."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")
