"""Servers on 127.0.0.1 for the remote-backend tests: a real llama-server, and small stubs.

Nothing here talks to anything but the loopback interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gram_local.config import ENV_CI, ENV_LLAMA_SERVER
from gram_local.cpu import parse_system_info
from gram_local.engine.build import amx_compiled


def llama_server_binary() -> Path:
    """The llama-server binary from GRAM_LOCAL_LLAMA_SERVER (or PATH); a failure in CI when absent."""
    value = os.environ.get(ENV_LLAMA_SERVER) or shutil.which("llama-server")
    if value and Path(value).is_file():
        return Path(value)
    message = f"no llama-server binary: set {ENV_LLAMA_SERVER} to one built from the llama-cpp-python sdist"
    if os.environ.get(ENV_CI):
        pytest.fail(message)
    pytest.skip(message)


def server_cpu_features(binary: Path, model: Path, timeout: float = 60.0) -> tuple[str, ...]:
    """The instruction sets a llama-server build uses (from its system info, which it prints only
    at debug verbosity: a short run that stops once the line is out)."""
    args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(free_port()), "-c", "256",
            "-t", "1", "--no-webui", "-lv", "4"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        for line in process.stdout:
            text = line.decode("utf-8", "replace")
            if "system_info:" in text:
                return parse_system_info(text.split("system_info:", 1)[1])
            if time.monotonic() > deadline:
                break
        raise RuntimeError("llama-server printed no system_info line")
    finally:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One llama-server process on a free loopback port."""

    def __init__(self, binary: Path, model: Path, *, slots: int = 1, ctx_per_slot: int = 2048, threads: int = 1,
                 log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                "-c", str(ctx_per_slot * slots), "-np", str(slots), "-fa", "off", "-t", str(threads), "--no-webui"]
        if amx_compiled():  # the weights as the local engine holds them: AMX buffers crash (issue 20824)
            args.append("--no-repack")
        self._log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("llama-server did not become ready")

    def kill(self) -> None:
        """As a crash would: no goodbye to clients."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, **kwargs: Any) -> Iterator[LlamaServer]:
    server = LlamaServer(binary, model, **kwargs)
    try:
        yield server
    finally:
        server.stop()


Route = Callable[[str, str, Any], "tuple[int, dict[str, str], Any] | None"]


class StubServer:
    """A loopback HTTP server whose answers come from `route(method, path, body)`; a route that
    returns None forwards the request to `upstream` (a tiny proxy). Every request is logged with
    its arrival time."""

    def __init__(self, route: Route, upstream: str | None = None) -> None:
        self.route = route
        self.upstream = upstream
        self.log: list[tuple[float, str, str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                stub.log.append((time.monotonic(), method, self.path, body))
                answer = stub.route(method, self.path, body)
                if answer is None:
                    status, headers, payload = stub.forward(method, self.path, raw)
                else:
                    status, headers, data = answer
                    payload = json.dumps(data).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def forward(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.upstream is not None, f"no route for {method} {path}"
        request = urllib.request.Request(self.upstream + path, data=raw or None, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as reply:
                return reply.status, {}, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {}, exc.read()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
