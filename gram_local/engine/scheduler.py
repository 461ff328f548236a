"""The scheduler decides; it touches no native handle.

Each step it decides which waiting requests are admitted (and into which slot, copying which
cached prefix), which running sequences move down to keep one micro-batch, and which tokens of
which sequences go into the decode batch. The engine carries the decisions out.

Why these rules:
- With one KV stream per sequence, llama.cpp puts only ascending, consecutive sequence ids in one
  micro-batch, and each extra micro-batch reads all the weights again. So a new sequence takes the
  lowest free slot, running sequences are moved down when a gap opens, and the batch is written
  in slot order.
- Requests started together (the k samples of a vote, the two orders of a pair) share a long
  prefix; one that would recompute a prefix another running sequence is about to hold waits a
  step and copies it instead.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from gram_local.backend import RequestHandle, RequestState, common_prefix
from gram_local.engine.drafting import PromptLookup
from gram_local.engine.native import SamplerChain
from gram_local.engine.slots import SlotTable

WAIT_FOR_PREFIX = 32
"""Tokens of shared prefix worth holding a request back one prefill step for."""


@dataclass
class Sequence:
    """One admitted request bound to a KV slot, from its prompt to its answer slot."""

    handle: RequestHandle
    slot: int
    pending: list[int]  # tokens to feed next (prompt rest, then each sampled token)
    sampler: SamplerChain | None
    lookup: PromptLookup | None
    history: list[int]
    sampled: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    forced: list[int] = field(default_factory=list)
    forced_close: bool = False
    at_answer_slot: bool = False
    drafts: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def state(self) -> RequestState:
        return self.handle.state

    @property
    def generating(self) -> bool:
        return bool(self.sampled) or self.forced_close

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


@dataclass(frozen=True)
class Placement:
    slot: int
    source: int  # the slot whose cached prefix is reused (-1: none)
    reuse: int  # how many of its tokens


@dataclass(frozen=True)
class Feed:
    """Tokens of one sequence for the next decode; `all_logits` when drafts are verified."""

    sequence: Sequence
    tokens: list[int]
    all_logits: bool


class Scheduler:
    def __init__(self, *, kv_unified: bool, n_batch: int) -> None:
        self.kv_unified = kv_unified
        self.n_batch = n_batch

    def worth_waiting(self, prompt: Seq[int], running: Seq[Sequence], slots: SlotTable) -> bool:
        """Whether a running prefill is computing a long prefix this prompt could copy next step."""
        if not running:
            return False
        have = max((common_prefix(slots.tokens(s), prompt) for s in range(len(slots))), default=0)
        coming = max(
            (common_prefix(slots.tokens(s.slot) + s.pending, prompt) for s in running if s.state is RequestState.PREFILLING),
            default=0,
        )
        return coming - have >= WAIT_FOR_PREFIX

    def place(self, prompt: Seq[int], busy: set[int], slots: SlotTable) -> Placement:
        """The slot for a new sequence and the cached prefix it starts from."""
        free = {s for s in range(len(slots)) if s not in busy}
        source, reuse = slots.best_prefix(prompt, free)
        reuse = min(reuse, len(prompt) - 1)  # the last prompt token must be decoded for its logits
        if reuse <= 0:
            source, reuse = -1, 0
        if not self.kv_unified:
            slot = min(free)  # running sequences stay in the lowest slots; a copy keeps its source
        elif source in free and reuse > 0:
            slot = source
        else:
            slot = slots.least_recently_used(free)
        return Placement(slot, source, reuse)

    def moves(self, running: Seq[Sequence], n_slots: int) -> list[tuple[Sequence, int]]:
        """With KV streams: move the highest running sequences into lower free slots."""
        if self.kv_unified:
            return []
        busy = {s.slot for s in running}
        moves = []
        for seq in sorted(running, key=lambda s: -s.slot):
            lowest_free = min((s for s in range(n_slots) if s not in busy), default=None)
            if lowest_free is None or lowest_free > seq.slot:
                break
            busy.discard(seq.slot)
            busy.add(lowest_free)
            moves.append((seq, lowest_free))
        return moves

    def plan(self, running: Seq[Sequence]) -> list[Feed]:
        """Generating sequences first (one token each, plus drafts), then prompt chunks; in slot order."""
        feeds: list[Feed] = []
        n = 0
        for seq in sorted(running, key=lambda s: len(s.pending) > 1 + len(s.drafts)):
            room = self.n_batch - n
            if room <= 0:
                break
            tokens = seq.pending[:room]
            all_logits = False
            if seq.generating and seq.drafts and len(seq.pending) == 1:
                seq.drafts = seq.drafts[: max(0, room - 1)]
                tokens = seq.pending + seq.drafts
                all_logits = True
            else:
                seq.drafts = []
            if not tokens:
                continue
            feeds.append(Feed(seq, tokens, all_logits))
            n += len(tokens)
        return sorted(feeds, key=lambda f: f.sequence.slot)
