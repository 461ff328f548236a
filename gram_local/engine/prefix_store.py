"""The instruction head's KV kept on disk, so a new process skips its prefill.

Every prompt starts with the same chat header and instructions (the request's `shared_prefix`).
The first process computes their KV once and writes it here; later ones read it back. A file is
named by a hash of the model's SHA-256, of everything the KV values depend on (the llama.cpp build
and CPU features, weights layout, offload, attention, KV type) and of the tokens. llama.cpp checks
a file's layout when reading it; the tokens and positions it filled are checked here, so a file
of another build, cut short or recording other tokens is recomputed and replaced, never trusted.
Only the newest few files are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

from gram_local.backend import BackendStats, GenerationRequest
from gram_local.config import HEAD_CACHE_FILES
from gram_local.engine.kv import KvCache
from gram_local.engine.native import LlamaContext, take_log_messages

_STALE_TEMP_SECONDS = 600


class PrefixStore:
    def __init__(self, folder: Path, *, model_id: str, kv_identity: str, keep: int = HEAD_CACHE_FILES) -> None:
        self.folder = Path(folder)
        self.model_id = model_id
        self.kv_identity = kv_identity
        self.keep = keep
        self._pruned = False

    def restore(self, kv: KvCache, request: GenerationRequest, busy: set[int], stats: BackendStats) -> None:
        """Make some free slot hold the request's shared prefix, unless one holds it already:
        read from disk, or computed once and written there."""
        n = request.shared_prefix
        if n < 2 or n >= kv.n_ctx_seq:
            return
        tokens = list(request.prompt[:n])
        if kv.slots.holds_prefix(tokens):
            return
        free = [s for s in range(kv.n_slots) if s not in busy]
        if not free:
            return
        slot = kv.slots.least_recently_used(free)
        kv.clear_slot(slot)
        if self.load(kv.context(), slot, tokens):
            kv.slots.set(slot, tokens)
            stats.restored_tokens += len(tokens)
            return
        started = time.perf_counter()
        kv.evaluate(tokens, slot)
        stats.prefill_seconds += time.perf_counter() - started
        stats.prompt_tokens += len(tokens)
        kv.slots.set(slot, tokens)
        self.save(kv.context(), slot, tokens)

    def path_for(self, tokens: Sequence[int]) -> Path:
        key = hashlib.sha256()
        key.update(f"{self.model_id}|{self.kv_identity}|".encode())
        key.update(array("i", tokens).tobytes())
        return self.folder / f"head-{key.hexdigest()[:32]}.kv"

    def load(self, ctx: LlamaContext, slot: int, tokens: list[int]) -> bool:
        """Read the file for `tokens` into `slot` if it holds exactly them at positions 0..n-1.
        On refusal the slot is left empty."""
        path = self.path_for(tokens)
        self._prune_once(path)
        try:
            read = ctx.load_sequence(path, slot, len(tokens) + 1) if path.is_file() else None
        except OSError:
            read = None
        ok = read == tokens and ctx.seq_pos_range(slot) == (0, len(tokens) - 1)
        if not ok:
            ctx.seq_rm(slot)
            take_log_messages()  # what llama.cpp said about a refused file is not the next error's cause
            return False
        with contextlib.suppress(OSError):
            os.utime(path)  # pruning keeps the files in use
        return True

    def save(self, ctx: LlamaContext, slot: int, tokens: list[int]) -> None:
        """Write under a temporary name, then rename: readers never see half a file. The file is
        only a cache: failing to write it is not an error."""
        path = self.path_for(tokens)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            os.close(fd)
        except OSError:
            return
        tmp = Path(name)
        try:
            if ctx.save_sequence(tmp, slot, tokens):
                os.replace(tmp, path)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._prune_once(path)

    def _prune_once(self, keep: Path) -> None:
        if not self._pruned:
            self._pruned = True
            prune(self.folder, keep=keep, files=self.keep)


def prune(folder: Path, *, keep: Path, files: int = HEAD_CACHE_FILES) -> None:
    """Remove all but the newest (most recently used) head files, and temporary files that an
    interrupted write left (old ones only: another process may be writing a new one)."""
    now = time.time()
    heads: list[tuple[float, Path]] = []
    leftovers: list[Path] = []
    try:
        entries = [p for p in folder.glob("head-*") if p != keep]
    except OSError:
        return
    for p in entries:
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if p.suffix == ".kv":
            heads.append((mtime, p))
        elif now - mtime > _STALE_TEMP_SECONDS:
            leftovers.append(p)
    heads.sort(reverse=True)
    for stale in leftovers + [p for _, p in heads[files - 1:]]:
        with contextlib.suppress(OSError):
            stale.unlink()
