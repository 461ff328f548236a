"""HTTP to a set of replicas: least outstanding requests first, a cap in flight per replica, retries.

A request is retried only while no reply to it has been parsed: after a connection error, a 429 or a
503, with exponential backoff and jitter (at least the server's `Retry-After`), on whichever replica
is then least busy. Any other HTTP status, a timeout or a reply that is not JSON is final. A replica
that failed to connect is left alone for the backoff, so a dead one stops drawing work.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from gram_local.config import RemoteSettings
from gram_local.errors import BackendError, InputError

RETRY_STATUSES = frozenset({429, 503})


class HttpStatusError(BackendError):
    """A server answered with an error status that is not worth retrying (or retries ran out)."""

    def __init__(self, url: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{url} answered HTTP {status}: {_error_message(body)}")


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(body)[:300]


def public_url(url: str) -> str:
    """A base URL without credentials or a trailing slash: fit for a result record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--base-url {public_url(url) or url!r} is not an http(s) URL")
    return url.rstrip("/")


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait (`Retry-After` as seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter over its upper half: never all clients at once."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling * (0.5 + 0.5 * rng.random())


@dataclass(eq=False)
class Replica:
    url: str
    public: str
    capacity: int = 1
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0


class Lease:
    """A place on one replica, held across the requests of one generation (same server, same slot)."""

    def __init__(self, pool: ReplicaPool, replica: Replica) -> None:
        self.pool = pool
        self.replica = replica
        self.moved = False  # the replica changed after a failure: server-side state is gone


class ReplicaPool:
    """The replicas of one backend and the HTTP client they share."""

    def __init__(self, settings: RemoteSettings, *, on_event: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.replicas = [Replica(check_base_url(u), public_url(u)) for u in settings.base_urls]
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._client = httpx.Client(timeout=settings.timeout, headers=headers, limits=httpx.Limits(max_connections=None))
        self._cond = threading.Condition()
        self._rng = random.Random()
        self._on_event = on_event or (lambda kind: None)

    @property
    def capacity(self) -> int:
        return sum(r.capacity for r in self.replicas)

    def in_flight(self) -> int:
        with self._cond:
            return sum(r.outstanding for r in self.replicas)

    # ------------------------------------------------------------ choosing a replica

    def _pick(self, now: float) -> Replica | None:
        free = [r for r in self.replicas if r.outstanding < r.capacity]
        up = [r for r in free if r.down_until <= now]
        if not up:
            return None
        return min(up, key=lambda r: (r.outstanding / r.capacity, r.outstanding, r.failures))

    def _acquire(self) -> Replica:
        with self._cond:
            while True:
                now = time.monotonic()
                replica = self._pick(now)
                if replica is not None:
                    replica.outstanding += 1
                    return replica
                downs = [r.down_until for r in self.replicas if r.outstanding < r.capacity and r.down_until > now]
                self._cond.wait(min(downs) - now if downs else None)

    def _release(self, replica: Replica) -> None:
        with self._cond:
            replica.outstanding -= 1
            self._cond.notify_all()

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        lease = Lease(self, self._acquire())
        try:
            yield lease
        finally:
            self._release(lease.replica)

    def _mark_down(self, replica: Replica, delay: float) -> None:
        """Leave a failing replica alone for a while: longer the more often it failed in a row."""
        s = self.settings
        with self._cond:
            delay = max(delay, backoff_delay(replica.failures, s.backoff, s.backoff_max, self._rng))
            replica.failures += 1
            replica.down_until = max(replica.down_until, time.monotonic() + delay)
            self._cond.notify_all()

    def _mark_up(self, replica: Replica) -> None:
        if replica.failures or replica.down_until:
            with self._cond:
                replica.failures = 0
                replica.down_until = 0.0

    # ------------------------------------------------------------ requests

    def get(self, replica: Replica, path: str) -> Any:
        """One GET with no retry (start-up checks: a server that is not there should say so)."""
        return self._parse(replica, self._send(replica, "GET", path, None))

    def post_once(self, replica: Replica, path: str, body: dict[str, Any]) -> Any:
        return self._parse(replica, self._send(replica, "POST", path, body))

    def post(self, lease: Lease, path: str, body: Callable[[Lease], dict[str, Any]]) -> Any:
        """POST with retries; `body` is asked anew for each attempt (it may depend on the replica)."""
        s = self.settings
        attempt = 0
        while True:
            replica = lease.replica
            self._on_event("request")
            try:
                response = self._send(replica, "POST", path, body(lease))
            except BackendError as exc:
                if not isinstance(exc.__cause__, httpx.TransportError) or isinstance(exc.__cause__, httpx.TimeoutException):
                    self._on_event("error")
                    raise
                delay, error = backoff_delay(attempt, s.backoff, s.backoff_max, self._rng), exc
            else:
                if response.status_code not in RETRY_STATUSES:
                    self._mark_up(replica)
                    return self._parse(replica, response)
                delay = max(backoff_delay(attempt, s.backoff, s.backoff_max, self._rng), retry_after(response.headers) or 0.0)
                error = HttpStatusError(replica.public, response.status_code, _json_or_text(response))
            self._on_event("error")
            if attempt >= s.retries:
                raise BackendError(f"{error} (gave up after {attempt + 1} attempts)") from error
            attempt += 1
            self._on_event("retry")
            self._mark_down(replica, delay)
            self._move(lease)

    def _move(self, lease: Lease) -> None:
        """Give up the lease's place and take the least busy one (maybe the same, once it is up)."""
        self._release(lease.replica)
        replica = self._acquire()
        if replica is not lease.replica:
            lease.moved = True
        lease.replica = replica

    def _send(self, replica: Replica, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        try:
            return self._client.request(method, replica.url + path, json=body)
        except httpx.TimeoutException as exc:
            raise BackendError(f"{replica.public}{path}: no reply within {self.settings.timeout:g} s") from exc
        except httpx.TransportError as exc:
            raise BackendError(f"cannot reach {replica.public}{path}: {exc or type(exc).__name__}") from exc

    def _parse(self, replica: Replica, response: httpx.Response) -> Any:
        body = _json_or_text(response)
        if response.status_code >= 400:
            raise HttpStatusError(replica.public + response.request.url.path, response.status_code, body)
        if isinstance(body, str):
            raise BackendError(f"{replica.public}{response.request.url.path} did not answer JSON: {body[:200]!r}")
        return body

    def close(self) -> None:
        self._client.close()


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
