"""A real `gram-local serve` process for the service tests: started on a free port, its log kept."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class ServiceProcess:
    """`python -m gram_local serve ... --port 0`; `url` once it listens, `wait_ready()` once loaded."""

    def __init__(self, model: Path | str, *args: str, env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
        environment.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gram_local", "serve", "-m", str(model), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._listening.set()
        self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 120.0) -> ServiceProcess:
        assert self._listening.wait(timeout) and self.url, f"the service did not start:\n{self.log}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the service exited with {self.proc.returncode}:\n{self.log}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the service did not become ready:\n{self.log}")

    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def wait_exit(self, timeout: float = 60.0, *, nudge: int | None = None) -> int:
        """Wait for the service to exit by itself; with `nudge`, send that signal every 50 ms until it
        logs "stopped" (a user pressing Ctrl-C again and again while it shuts down; after its last
        line the interpreter's own teardown takes signals as it always does)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if nudge is not None and not any(line.endswith("gram-local stopped") for line in self.lines):
                self.proc.send_signal(nudge)
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            raise AssertionError(f"the service did not exit within {timeout} s:\n{self.log}")
        self._reader.join(5)
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the service did not stop within {timeout} s:\n{self.log}") from None
        finally:
            self._reader.join(5)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def post(url: str, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None,
         timeout: float = 300.0) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of a POST; an error status is returned, not raised."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(text) if text else None


def get(url: str, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
