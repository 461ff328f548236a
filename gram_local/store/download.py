"""The Hugging Face hub: download a pinned revision, and read what to pin from it.

Downloads go into the normal Hugging Face cache (resumable, and usable offline afterwards). Hub
failures become one-line messages a user can act on: offline, unreachable, no such repo or revision.
`huggingface_hub` is imported only when a function here runs, so listing and resolving never load it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import replace
from pathlib import Path

from gram_local.errors import ModelError, ModelStoreWarning
from gram_local.store.hashing import sha256_file
from gram_local.store.lock import SOURCE_PATTERNS, LockedFile, LockedModel

__all__ = ["discard_download", "download", "locked_sources", "one_line"]

logger = logging.getLogger(__name__)


def download(entry: LockedModel) -> tuple[Path, str]:
    """The snapshot folder in the Hugging Face cache, and the commit it holds."""
    from huggingface_hub import constants, snapshot_download

    revision = entry.revision or "main"
    patterns = [f.path for f in entry.files] if entry.files is not None else list(SOURCE_PATTERNS)
    cache = constants.HF_HUB_CACHE
    logger.info("downloading %s@%s into the Hugging Face cache (%s)", entry.repo, revision, cache)
    try:
        folder = snapshot_download(entry.repo, revision=revision, allow_patterns=patterns)
    except _hub_failure_types() as exc:
        reason = _hub_problem(exc, entry.repo, revision)
        if _cut_off(exc):
            raise ModelError(
                f"cannot pull {entry.name}: {reason} and {entry.repo}@{revision} is not (completely) in the "
                f"Hugging Face cache {cache}; run the pull with network access, or bring the checkpoint over "
                f"and run `gram-local models import PATH --name {entry.name}`"
            ) from exc
        raise ModelError(f"cannot pull {entry.name}: {reason}") from exc
    except OSError as exc:
        raise ModelError(f"cannot pull {entry.name}: {one_line(exc)}") from exc
    commit = Path(folder).name
    if entry.revision is None:
        warnings.warn(
            f"{entry.name} is not pinned in models.lock ({entry.unresolved.get('revision', 'no revision')}); "
            f"used '{revision}' as it is now (commit {commit}) without checking source hashes; "
            f"`gram-local models lock {entry.name}` pins it",
            ModelStoreWarning,
            stacklevel=3,
        )
    return Path(folder), commit


def locked_sources(entry: LockedModel, *, revision: str | None) -> LockedModel:
    """`entry` with the commit and the source files' sizes and SHA-256 (LFS: the hub's listing; others: downloaded)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    api = HfApi()
    wanted = revision or entry.revision or "main"
    try:
        commit = api.model_info(entry.repo, revision=wanted).sha
        listing = api.list_repo_tree(entry.repo, revision=commit, recursive=True)
        tree = [f for f in listing if isinstance(f, RepoFile)]
        selected = set(filter_repo_objects([f.path for f in tree], allow_patterns=list(SOURCE_PATTERNS)))
        files = []
        for f in sorted((f for f in tree if f.path in selected), key=lambda f: f.path):
            if f.lfs is not None:
                files.append(LockedFile(f.path, f.lfs.size, f.lfs.sha256))
            else:
                local = Path(hf_hub_download(entry.repo, f.path, revision=commit))
                files.append(LockedFile(f.path, local.stat().st_size, sha256_file(local)))
    except _hub_failure_types() as exc:
        advice = "; `gram-local models lock` needs network access" if _cut_off(exc) else ""
        raise ModelError(f"cannot lock {entry.name}: {_hub_problem(exc, entry.repo, wanted)}{advice}") from exc
    except OSError as exc:
        raise ModelError(f"cannot lock {entry.name}: {one_line(exc)}") from exc
    if commit is None or "config.json" not in selected or not any(p.endswith(".safetensors") for p in selected):
        raise ModelError(f"cannot lock {entry.name}: {entry.repo}@{commit} has no config.json and safetensors weights")
    unresolved = {k: v for k, v in entry.unresolved.items() if k not in ("revision", "files")}
    if commit == entry.revision and tuple(files) == entry.files:
        return replace(entry, unresolved=unresolved)
    # New sources: the old output pins describe other files.
    unresolved["outputs"] = (
        f"not converted from {commit} yet: run `gram-local models lock {entry.name} --outputs` "
        "(downloads and converts the model)"
    )
    return replace(
        entry,
        revision=commit,
        files=tuple(files),
        converter_version=None,
        outputs={q: None for q in entry.outputs},
        unresolved=unresolved,
    )


def discard_download(path: Path) -> None:
    """Drop a bad file from the Hugging Face cache: its snapshot entry and the blob behind it.

    Left in place it would be served from the cache to every later pull; the blob goes too because
    `huggingface_hub` reuses a blob by its ETag, and its bytes are wrong whoever links to them.
    """
    blob = path.resolve()
    for p in (path, blob):
        with contextlib.suppress(OSError):
            p.unlink()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _hub_failure_types() -> tuple[type[BaseException], ...]:
    """For `except _hub_failure_types():` (evaluated only when something is raised, so nothing loads early)."""
    import httpx
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    return (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.HTTPError)


def _cut_off(exc: BaseException) -> bool:
    """Offline or unreachable (as opposed to an answer from the hub)."""
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.TransportError))


def _hub_problem(exc: BaseException, repo: str, revision: str) -> str:
    """Why a request to the hub failed, in words a user can act on."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        return "offline mode is on (HF_HUB_OFFLINE)"
    if isinstance(exc, (LocalEntryNotFoundError, httpx.TransportError)):
        return f"the hub at {constants.ENDPOINT} cannot be reached"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision '{revision}' of {repo} does not exist on the hub"
    if isinstance(exc, RepositoryNotFoundError):
        return f"the repo {repo} does not exist on the hub, or needs a token"
    if isinstance(exc, HfHubHTTPError):
        return f"the hub answered {one_line(exc)}"
    return one_line(exc)
