"""The Hugging Face hub: download a pinned revision, and read what to pin from it.

Downloads go into the normal Hugging Face cache (usable offline afterwards). Hub failures become
one-line messages a user can act on: offline, unreachable, no such repo or revision.
`huggingface_hub` is imported only when a function here runs, so listing and resolving never load it.

Resuming: `huggingface_hub` retries a broken transfer within one run, but deletes the partial file
when it gives up, so a rerun would start a multi-gigabyte file over. Large weight files fetched over
plain HTTP are therefore downloaded here first, into `blobs/<sha256>.incomplete` of the cache (the
name `hf cache` reports as an incomplete download), kept when the download fails or is interrupted,
continued from where it stopped by the next pull, and checked against their SHA-256 before being
moved into place; `snapshot_download` then finds them cached. Files served through Xet (when
`hf_xet` is installed) are left to `huggingface_hub`; HF_HUB_DISABLE_XET=1 brings them here too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from gram_local.errors import ModelError, ModelStoreWarning
from gram_local.store.hashing import hash_file, remember_sha256, sha256_file
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
        if not constants.HF_HUB_OFFLINE:
            _fetch_large_files(entry, revision, patterns)
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


def _fetch_large_files(entry: LockedModel, revision: str, patterns: list[str]) -> None:
    """Download the large LFS files of the snapshot resumably (see the module's docstring).

    A listing or metadata request that fails is not an error here: `snapshot_download` runs next
    and says what is wrong, or serves the files from the cache.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    try:
        info = HfApi().model_info(entry.repo, revision=revision, files_metadata=True)
    except _hub_failure_types() + (OSError,):
        return
    if info.sha is None:
        return
    siblings = info.siblings or []
    wanted = set(filter_repo_objects([s.rfilename for s in siblings], allow_patterns=patterns))
    for sibling in siblings:
        lfs = sibling.lfs
        if sibling.rfilename in wanted and lfs is not None and lfs.size > constants.DOWNLOAD_CHUNK_SIZE:
            _fetch_resumable(entry, revision, info.sha, sibling.rfilename, lfs.size, lfs.sha256)


def _fetch_resumable(entry: LockedModel, revision: str, commit: str, path: str, size: int, sha256: str) -> None:
    """One file into `blobs/<sha256>` of the cache, continuing `blobs/<sha256>.incomplete` if there is one."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers  # type: ignore[attr-defined]

    cache = Path(constants.HF_HUB_CACHE)
    repo_folder = repo_folder_name(repo_id=entry.repo, repo_type="model")
    blob = cache / repo_folder / "blobs" / sha256
    if blob.exists():
        return
    url = hf_hub_url(entry.repo, path, revision=commit)
    headers = build_hf_headers()
    try:
        meta = get_hf_file_metadata(url, headers=headers)
    except _hub_failure_types() + (OSError,):
        return
    xet = meta.xet_file_data is not None and not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None
    if meta.etag != sha256 or meta.size != size or xet:
        return  # not the file the listing named, or one huggingface_hub fetches through Xet: its own way
    location = meta.location
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
    part = blob.with_name(f"{sha256}.incomplete")
    lock = cache / ".locks" / repo_folder / f"{sha256}.lock"  # the lock huggingface_hub takes for this blob
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if blob.exists():
            return
        with os.fdopen(os.open(part, os.O_RDWR | os.O_CREAT, 0o666), "r+b") as handle:
            have = handle.seek(0, os.SEEK_END)
            if have > size:
                handle.seek(0)
                handle.truncate()
                have = 0
            if have:
                logger.info("resuming %s at byte %d of %d", path, have, size)
            try:
                http_get(location, handle, resume_size=have, headers=headers, expected_size=size, displayed_filename=path)
            except _hub_failure_types() + (OSError,) as exc:
                handle.flush()
                kept = handle.seek(0, os.SEEK_END)
                raise ModelError(
                    f"cannot pull {entry.name}: downloading {path} failed: {_transfer_problem(exc, entry.repo, revision)}; "
                    f"{kept} of {size} bytes are kept in the Hugging Face cache ({part}): "
                    "rerun the same command to resume"
                ) from exc
        digest = hash_file(part)
        if digest != sha256:
            part.unlink()
            raise ModelError(
                f"cannot pull {entry.name}: the download of {path} has sha256 {digest}, the hub lists {sha256}; "
                "the bad bytes were removed: rerun the same command to download the file again"
            )
        os.replace(part, blob)
    remember_sha256(blob, digest)  # the source check after the download hashes it again otherwise


def _transfer_problem(exc: BaseException, repo: str, revision: str) -> str:
    """Why a file transfer stopped: a broken connection is not an unreachable hub."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, httpx.TransportError):
        return f"the connection to {constants.ENDPOINT} broke off ({one_line(exc)})"
    if isinstance(exc, HfHubHTTPError):
        answered = f"the hub answered HTTP {exc.response.status_code} {exc.response.reason_phrase}".rstrip()
        return answered + (f" ({one_line(Exception(exc.server_message))})" if exc.server_message else "")
    return _hub_problem(exc, repo, revision)


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
