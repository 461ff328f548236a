"""Prompt-lookup drafting: guess the next tokens from where the current trigram occurred before.

Judges quote the responses they judge, so the tokens that followed an earlier occurrence of the
last three tokens are often the next ones. Verification samples each drafted position with the
sequence's own sampler, so the distribution is exactly plain decoding's.
"""

from __future__ import annotations

NGRAM = 3


class PromptLookup:
    """The trigram index of one sequence's history (prompt plus generated tokens)."""

    def __init__(self, history: list[int]) -> None:
        self.history = history
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed_upto = 0
        self.index_upto(len(history) - 1)

    def index_upto(self, upto: int) -> None:
        """Remember where each trigram of the history ending at or before `upto` ended."""
        history = self.history
        for end in range(max(self._indexed_upto + 1, NGRAM), upto + 1):
            self._index[tuple(history[end - NGRAM:end])] = end
        self._indexed_upto = max(self._indexed_upto, upto)

    def draft(self, limit: int) -> list[int]:
        """The tokens that followed the last earlier occurrence of the current trigram."""
        history = self.history
        if limit <= 0 or len(history) < NGRAM + 1:
            return []
        end = self._index.get(tuple(history[-NGRAM:]))
        if end is None or end >= len(history):
            return []
        return history[end:end + limit]
