"""A small Hugging Face hub stand-in for tests: enough of the HTTP API for `huggingface_hub` downloads.

It serves model repositories from memory on 127.0.0.1, so `pull` and `lock` are tested through the
real `huggingface_hub` client (set `HF_ENDPOINT` to `FakeHub.url`). What `huggingface_hub` 1.x asks:

- `GET /api/models/{repo}/revision/{rev}`: the repo's info; `sha` is the commit a branch resolves to.
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: the file listing, with git blob ids and, for LFS
  files, the LFS SHA-256 and size.
- `HEAD` and `GET /{repo}/resolve/{rev}/{path}`: the file; the HEAD headers `X-Repo-Commit`, `ETag`
  (or `X-Linked-Etag`, `X-Linked-Size` for LFS files) are what the client caches by, and a GET
  with `Range: bytes=N-` resumes an interrupted download.
- Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), which the
  client turns into its typed exceptions.

Faults for tests: `cut_once(repo, path, after=N)` drops the connection after N bytes of the next
full GET of that file; `fail_downloads(repo, path, after=N, then=...)` does the same and then fails
every later GET of it (an HTTP error, or a connection dropped before any byte) until `heal`;
`put_file` replaces a file's bytes under the same commit (a corrupted mirror).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
_LFS_MIN_SIZE = 1 << 20


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob: what the hub reports as `oid` and as the ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _File:
    data: bytes
    name_is_lfs: bool = False

    @property
    def is_lfs(self) -> bool:
        """Weights, and anything large, live in LFS on the hub (tokenizer.json does too)."""
        return self.name_is_lfs or len(self.data) >= _LFS_MIN_SIZE

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    def etag(self) -> str:
        return self.sha256 if self.is_lfs else git_blob_id(self.data)


@dataclass
class _Repo:
    commit: str
    files: dict[str, _File]
    branches: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """One request the hub received, for assertions on what the client asked."""

    method: str
    path: str
    range: str | None


class FakeHub:
    """An in-memory hub on a random local port; use as a context manager."""

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._cuts: dict[tuple[str, str], int] = {}
        self._failing: dict[tuple[str, str], list[int | None]] = {}  # [cut of the next full GET, then]
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add_repo(self, repo_id: str, folder: Path) -> str:
        """Publish every file under `folder` as `repo_id` at a new commit on `main`; returns the commit."""
        files = {
            p.relative_to(folder).as_posix(): _File(p.read_bytes(), name_is_lfs=p.name.endswith(_LFS_SUFFIXES))
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        listing = json.dumps(sorted((path, f.etag()) for path, f in files.items())).encode()
        commit = hashlib.sha1(repo_id.encode() + b"\0" + listing).hexdigest()
        with self._lock:
            self._repos[repo_id] = _Repo(commit=commit, files=files, branches={"main": commit})
        return commit

    def put_file(self, repo_id: str, path: str, data: bytes) -> None:
        """Serve other bytes for `path` under the same commit, as a corrupted or tampered mirror would."""
        with self._lock:
            old = self._repos[repo_id].files[path]
            self._repos[repo_id].files[path] = _File(data, name_is_lfs=old.name_is_lfs)

    def cut_once(self, repo_id: str, path: str, *, after: int) -> None:
        """Drop the connection after `after` bytes of the next GET of `path` that starts at byte 0."""
        with self._lock:
            self._cuts[(repo_id, path)] = after

    def fail_downloads(self, repo_id: str, path: str, *, after: int, then: int | None = 500) -> None:
        """The next GET of `path` from byte 0 sends `after` bytes and drops the connection; every GET of
        it after that (a resumed one too) is answered with HTTP `then`, or with `then=None` dropped
        before any byte of the body, until `heal`. HEAD requests still answer: the file exists."""
        with self._lock:
            self._failing[(repo_id, path)] = [after, then]

    def heal(self, repo_id: str, path: str) -> None:
        with self._lock:
            self._failing.pop((repo_id, path), None)

    def downloads(self, path_suffix: str) -> list[Request]:
        """The GET requests for files whose URL ends with `path_suffix`."""
        return [
            r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(path_suffix)
        ]

    # Lookups used by the handler.
    def _resolve(self, repo_id: str, revision: str) -> tuple[_Repo | None, str | None]:
        repo = self._repos.get(repo_id)
        if repo is None:
            return None, None
        if revision == repo.commit:
            return repo, revision
        return repo, repo.branches.get(revision)

    def _take_cut(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            return self._cuts.pop((repo_id, path), None)

    def _download_fault(self, repo_id: str, path: str, start: int | None) -> tuple[str, int] | None:
        """("cut", bytes to send) or ("status", HTTP status) for a GET of a failing file; None if it is not."""
        with self._lock:
            failing = self._failing.get((repo_id, path))
            if failing is None:
                return None
            first_cut, then = failing
            if start is None and first_cut is not None:
                failing[0] = None
                return "cut", first_cut
            return ("status", then) if then is not None else ("cut", 0)


def _split_repo(rest: str) -> tuple[str, str]:
    """`ns/name/<tail>` -> (`ns/name`, `<tail>`)."""
    parts = rest.split("/", 2)
    if len(parts) < 3:
        return "/".join(parts), ""
    return f"{parts[0]}/{parts[1]}", parts[2]


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            pass

        def do_HEAD(self) -> None:
            self._dispatch(send_body=False)

        def do_GET(self) -> None:
            self._dispatch(send_body=True)

        def _dispatch(self, *, send_body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append(Request(self.command, path, self.headers.get("Range")))
            if path.startswith("/api/models/"):
                repo_id, tail = _split_repo(path[len("/api/models/") :])
                kind, _, rest = tail.partition("/")
                if kind == "revision":
                    self._info(repo_id, rest, blobs="blobs" in parse_qs(url.query))
                elif kind == "tree":
                    revision, _, _ = rest.partition("/")
                    self._tree(repo_id, revision)
                else:
                    self._error(404, "RepoNotFound")
                return
            repo_id, tail = _split_repo(path.lstrip("/"))
            kind, _, rest = tail.partition("/")
            if kind != "resolve":
                self._error(404, "RepoNotFound")
                return
            revision, _, filename = rest.partition("/")
            self._file(repo_id, revision, filename, send_body=send_body)

        def _found(self, repo_id: str, revision: str) -> tuple[_Repo, str] | None:
            repo, commit = hub._resolve(repo_id, revision)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None
            if commit is None:
                self._error(404, "RevisionNotFound")
                return None
            return repo, commit

        def _info(self, repo_id: str, revision: str, *, blobs: bool) -> None:
            found = self._found(repo_id, revision)
            if found is None:
                return
            repo, commit = found
            siblings = []
            for name, f in repo.files.items():
                sibling: dict[str, object] = {"rfilename": name}
                if blobs:
                    sibling.update(size=len(f.data), blobId=git_blob_id(f.data))
                    if f.is_lfs:
                        sibling["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer())}
                siblings.append(sibling)
            self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings})

        def _tree(self, repo_id: str, revision: str) -> None:
            found = self._found(repo_id, revision)
            if found is None:
                return
            repo, _ = found
            entries = []
            for name, f in repo.files.items():
                entry: dict[str, object] = {"type": "file", "path": name, "size": len(f.data)}
                if f.is_lfs:
                    entry["oid"] = git_blob_id(f.pointer())
                    entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer())}
                else:
                    entry["oid"] = git_blob_id(f.data)
                entries.append(entry)
            self._json(entries)

        def _file(self, repo_id: str, revision: str, filename: str, *, send_body: bool) -> None:
            found = self._found(repo_id, revision)
            if found is None:
                return
            repo, commit = found
            f = repo.files.get(filename)
            if f is None:
                self._error(404, "EntryNotFound", commit=commit)
                return
            data = f.data
            start = _range_start(self.headers.get("Range"))
            if start is not None and start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            fault = hub._download_fault(repo_id, filename, start) if send_body else None
            if fault is not None and fault[0] == "status":
                self._server_error(fault[1])
                return
            status = 200 if start is None else 206
            body = data if start is None else data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{f.etag()}"')
            if f.is_lfs:
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not send_body:
                return
            cut = hub._take_cut(repo_id, filename) if start is None else None
            if fault is not None:
                cut = fault[1]
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _json(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _server_error(self, status: int) -> None:
            body = json.dumps({"error": f"fault injected by the test hub ({status})"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, *, commit: str | None = None) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _range_start(header: str | None) -> int | None:
    """The first byte of a `bytes=N-` range (the only form `huggingface_hub` sends when resuming)."""
    if not header or not header.startswith("bytes="):
        return None
    first, _, _ = header[len("bytes=") :].partition("-")
    return int(first) if first.isdigit() else None
