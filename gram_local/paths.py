"""Where gram-local keeps things on disk: one function per place, read from the environment here only.

    store_home()/                  $GRAM_LOCAL_HOME, else the platform's per-user cache folder
      models/<name>/...            the model store (gram_local.store)
      kv-cache/head-*.kv           the instruction head's KV (gram_local.engine.prefix_store)
      sha256-cache.json            file hashes by size and mtime (gram_local.store.hashing)
      tmp/                         work in progress, on the same filesystem as models/

The model pins (`models.lock`) ship inside the package; `$GRAM_LOCAL_LOCK` names another file.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from gram_local.config import ENV_HOME, ENV_LOCK

LOCK_NAME = "models.lock"


def store_home() -> Path:
    """`$GRAM_LOCAL_HOME`, else the platform's per-user cache directory plus `gram-local`."""
    configured = os.environ.get(ENV_HOME)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "gram-local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gram-local"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gram-local"


def models_dir() -> Path:
    return store_home() / "models"


def tmp_dir() -> Path:
    return store_home() / "tmp"


def kv_cache_dir() -> Path:
    return store_home() / "kv-cache"


def hash_cache_path() -> Path:
    return store_home() / "sha256-cache.json"


def packaged_lock() -> Path:
    """The models.lock this version of gram-local was released with.

    Installed, it is package data. In a source checkout (an editable install included) the
    package folder has none, and the repository's own `models.lock`, next to the package, is it.
    """
    shipped = resources.files("gram_local").joinpath(LOCK_NAME)
    if shipped.is_file():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / LOCK_NAME


def lock_path() -> Path:
    """`$GRAM_LOCAL_LOCK` when set (the user's pins win), else the lock shipped with the package."""
    configured = os.environ.get(ENV_LOCK)
    if configured:
        return Path(configured).expanduser()
    return packaged_lock()
