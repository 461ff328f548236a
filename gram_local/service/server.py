"""Running the service: refuse an unsafe bind, listen at once, load the model meanwhile, stop cleanly.

The socket is bound before the model loads, so a tool can watch `/health` go from 503 to 200, and a
busy port fails in a second rather than after a minute of loading. SIGTERM and SIGINT stop
accepting connections, give requests in flight `grace` seconds, cancel the rest, free the model
and return (exit 0): uvicorn's own habit of re-raising the signal afterwards is left out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from gram_local.config import DEFAULT_SERVE_CTX
from gram_local.errors import GramLocalError, UnsafeBindError
from gram_local.service.app import create_app
from gram_local.service.state import ServiceOptions, ServiceState
from gram_local.service.worker import JudgeWorker

if TYPE_CHECKING:
    from gram_local.judge import Judge

log = logging.getLogger("gram_local.service")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Listening beyond this machine needs a key; refuse before anything is loaded or bound."""
    if not is_loopback(host) and not api_key:
        raise UnsafeBindError(
            f"refusing to listen on {host}: other machines could use the judge; give --api-key "
            "(or GRAM_LOCAL_API_KEY), or bind 127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise GramLocalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising a caught SIGTERM/SIGINT once it has shut down, plus
    winding the judge down before uvicorn's grace period ends (half-way, or three seconds before
    the end of a long one), so streams end with an `error` event, not a cut connection."""

    def __init__(self, config: uvicorn.Config, state: ServiceState, grace: int) -> None:
        super().__init__(config)
        self.state = state
        self.grace = grace
        self.wind_down: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.wind_down is None:
            log.info("stopping: in-flight requests get %d s", self.grace)
            self.wind_down = threading.Timer(max(self.grace - 3.0, self.grace / 2), self._wind_down)
            self.wind_down.daemon = True
            self.wind_down.start()

    def _wind_down(self) -> None:
        if self.state.worker is not None:
            self.state.worker.wind_down()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Catch SIGTERM/SIGINT while serving, and keep catching them until the process ends (the
        service is the process's last act): a signal during the cleanup after uvicorn returns (the
        model being freed) only repeats the request to stop, it never kills the process half-way."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
        yield


def prepare(judge: Judge, n_ctx: int | None, parallel: int) -> int:
    """Fix the per-sequence context and reserve it for `parallel` sequences now, so a request that
    arrives while others decode joins them instead of waiting for the context to grow."""
    n_ctx_seq = min(n_ctx or DEFAULT_SERVE_CTX, judge.backend.vocabulary.n_ctx_train)
    judge.settings = replace(judge.settings, n_ctx=n_ctx_seq)
    reserve = getattr(judge.backend, "reserve", None)
    if reserve is not None:
        reserve(parallel, n_ctx_seq)
    return n_ctx_seq


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s gram-local %(message)s", "%Y-%m-%dT%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run_service(load: Callable[[], Judge], *, host: str, port: int, options: ServiceOptions, n_ctx: int | None,
                parallel: int, grace: int) -> None:
    """Serve until SIGTERM/SIGINT; raises the load's error if the model could not be loaded."""
    check_bind(host, options.api_key)
    setup_logging()
    sock = bind(host, port)
    state = ServiceState(options)
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=grace, timeout_keep_alive=5)
    server = _Server(config, state, grace)
    failure: list[BaseException] = []
    judges: list[Judge] = []

    def load_model() -> None:
        try:
            judge = load()
            judges.append(judge)
            state.n_ctx_seq = prepare(judge, n_ctx, parallel)
            state.worker = JudgeWorker(judge, max_queue=options.max_queue)
            log.info("ready: %s (context %d per sequence, %d in parallel)", judge.model.path, state.n_ctx_seq, parallel)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread once the server stops
            failure.append(exc)
            server.should_exit = True

    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("listening on http://%s:%d (loading the model)", shown, bound_port)
    loader = threading.Thread(target=load_model, name="gram-local-load", daemon=True)
    loader.start()
    try:
        server.run(sockets=[sock])
    finally:
        if server.wind_down is not None:
            server.wind_down.cancel()
        sock.close()
        loader.join(grace)  # a stop while loading does not wait for the load to end
        if state.worker is not None:
            state.worker.stop()
        for judge in judges:
            judge.close()
        log.info("stopped")
    if failure:
        raise failure[0]
