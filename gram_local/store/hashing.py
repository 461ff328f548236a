"""SHA-256 of model files, remembered between runs.

Every judging command reports the SHA-256 of the GGUF it ran, and hashing a multi-gigabyte file
takes seconds, so digests are cached in a small JSON file (`paths.hash_cache_path()`), keyed by the
file's absolute path, size, mtime (ns) and inode: a file rewritten in any way gets a new key. The
cache is only an optimisation: a missing, corrupted or unwritable cache file is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from gram_local.paths import hash_cache_path
from gram_local.store.atomic import write_atomic

__all__ = ["CHUNK_SIZE", "copy_hashing", "hash_file", "remember_sha256", "sha256_file"]

CHUNK_SIZE = 4 * 1024 * 1024
_CACHE_VERSION = 1
_CACHE_MAX_ENTRIES = 256

logger = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """The hex SHA-256 of a file; `use_cache=False` re-reads it (and refreshes the cache), as `verify` must."""
    key, stamp = _identity(path)
    if use_cache:
        hit = _load_cache().get(key)
        if isinstance(hit, list) and len(hit) == 4 and hit[:3] == stamp and isinstance(hit[3], str):
            return hit[3]
    digest = hash_file(Path(key))
    _remember(key, stamp, digest)
    return digest


def remember_sha256(path: str | os.PathLike[str], digest: str) -> None:
    """Record a digest already known for `path` (a file hashed under another name, then renamed into place)."""
    _remember(*_identity(path), digest)


def copy_hashing(src: Path, dst: Path) -> str:
    """Copy and hash in one pass (an imported GGUF is read once, not twice)."""
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK_SIZE):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _identity(path: str | os.PathLike[str]) -> tuple[str, list[int]]:
    """The cache key (absolute path) and what must not have changed since (size, mtime, inode)."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return str(resolved), [st.st_size, st.st_mtime_ns, st.st_ino]


def hash_file(path: Path) -> str:
    """The hex SHA-256 of a file, read now and not remembered (a file still changing, say)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


def _load_cache() -> dict[str, object]:
    try:
        data = json.loads(hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _remember(key: str, stamp: list[int], digest: str) -> None:
    files = _load_cache()
    files.pop(key, None)
    files[key] = [*stamp, digest]
    # Oldest first (insertion order): keep the most recent entries only.
    kept = dict(list(files.items())[-_CACHE_MAX_ENTRIES:])
    try:
        payload = json.dumps({"version": _CACHE_VERSION, "files": kept}, indent=0)
        write_atomic(hash_cache_path(), payload.encode("utf-8"))
    except OSError as exc:
        logger.debug("could not update the sha256 cache: %s", exc)
