"""The slot table: which tokens each KV sequence (slot) holds, and which slots are in use.

It only tracks; the engine changes the KV cache and tells the table. A slot that no running
sequence owns keeps its tokens as a cached prefix until it is reused or evicted.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterable, Sequence

from gram_local.backend import common_prefix


class SlotTable:
    def __init__(self, n_slots: int = 0) -> None:
        self._tokens: list[list[int]] = [[] for _ in range(n_slots)]
        self._used: list[float] = [0.0] * n_slots

    def __len__(self) -> int:
        return len(self._tokens)

    def reset(self, n_slots: int) -> None:
        """A new context: every slot empty."""
        self._tokens = [[] for _ in range(n_slots)]
        self._used = [0.0] * n_slots

    def forget_all(self) -> None:
        self.reset(len(self._tokens))

    def tokens(self, slot: int) -> list[int]:
        return self._tokens[slot]

    def set(self, slot: int, tokens: Iterable[int]) -> None:
        self._tokens[slot] = list(tokens)
        self.touch(slot)

    def extend(self, slot: int, tokens: Iterable[int]) -> None:
        self._tokens[slot].extend(tokens)

    def truncate(self, slot: int, n: int) -> None:
        del self._tokens[slot][n:]

    def touch(self, slot: int) -> None:
        self._used[slot] = time.monotonic()

    def last_used(self, slot: int) -> float:
        return self._used[slot]

    def holds_prefix(self, tokens: Sequence[int]) -> bool:
        return any(common_prefix(t, tokens) == len(tokens) for t in self._tokens)

    def best_prefix(self, prompt: Sequence[int], free: Container[int]) -> tuple[int, int]:
        """The slot (running or idle) holding the longest prefix of `prompt`, and its length;
        among equals a free one, so the prefix can be taken over in place. (-1, 0) if none."""
        best_src, best_len = -1, 0
        for slot, tokens in enumerate(self._tokens):
            n = common_prefix(tokens, prompt)
            if n > best_len or (n == best_len and n > 0 and slot in free and best_src not in free):
                best_src, best_len = slot, n
        return best_src, best_len

    def least_recently_used(self, candidates: Iterable[int]) -> int:
        return min(candidates, key=lambda s: self._used[s])
