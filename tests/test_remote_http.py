"""The replicas' HTTP plumbing against loopback stubs: choice, caps, retries, what is never retried."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from servers import StubServer, free_port

from gram_local.config import RemoteSettings
from gram_local.errors import BackendError, InputError
from gram_local.remote.http import HttpStatusError, ReplicaPool, public_url, retry_after


def pool_for(*urls: str, **settings: Any) -> ReplicaPool:
    events: list[str] = []
    pool = ReplicaPool(RemoteSettings(base_urls=urls, backoff=0.01, backoff_max=0.05, **settings), on_event=events.append)
    pool.events = events  # type: ignore[attr-defined]
    return pool


def ok(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
    return 200, {}, {"path": path, "body": body}


def test_public_url_drops_credentials_and_trailing_slash() -> None:
    assert public_url("http://user:pw@10.0.0.5:8080/v1/") == "http://10.0.0.5:8080/v1"
    assert public_url("https://host") == "https://host"
    with pytest.raises(InputError, match="not an http"):
        ReplicaPool(RemoteSettings(base_urls=("ftp://x",)))


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after(httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after(httpx.Headers({})) is None


def test_least_outstanding_replica_is_chosen_and_the_cap_holds() -> None:
    pool = pool_for("http://127.0.0.1:1", "http://127.0.0.1:2")
    pool.replicas[0].capacity, pool.replicas[1].capacity = 2, 1
    with pool.lease() as first, pool.lease() as second, pool.lease() as third:
        assert {first.replica.public, second.replica.public} == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
        assert third.replica is pool.replicas[0]
        assert pool.in_flight() == 3
        blocked = threading.Event()

        def fourth() -> None:
            with pool.lease():
                blocked.set()

        worker = threading.Thread(target=fourth)
        worker.start()
        assert not blocked.wait(0.2)  # every place is taken
    worker.join(5)
    assert blocked.is_set() and pool.in_flight() == 0
    pool.close()


def test_a_refused_connection_moves_the_request_to_another_replica() -> None:
    live = StubServer(ok)
    dead = f"http://127.0.0.1:{free_port()}"
    pool = pool_for(dead, live.url)
    try:
        with pool.lease() as lease:
            if lease.replica.url != dead:  # make the first attempt land on the dead one
                pool._release(lease.replica)
                lease.replica = pool.replicas[0]
                lease.replica.outstanding += 1
            reply = pool.post(lease, "/completion", lambda current: {"slot": current.replica.url == dead})
            assert lease.moved and lease.replica.url == live.url
        assert reply["body"] == {"slot": False}  # the body was built anew for the new replica
        assert pool.events == ["request", "error", "retry", "request"]  # type: ignore[attr-defined]
    finally:
        live.close()
        pool.close()


def test_429_and_503_are_retried_other_errors_are_not() -> None:
    answers = [(429, {"Retry-After": "0"}), (503, {}), (200, {})]

    def route(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if path == "/bad":
            return 400, {}, {"error": {"message": "failed to parse grammar"}}
        status, headers = answers.pop(0)
        return status, headers, {"n": len(answers)}

    stub = StubServer(route)
    pool = pool_for(stub.url)
    try:
        with pool.lease() as lease:
            assert pool.post(lease, "/x", lambda _: {}) == {"n": 0}
            with pytest.raises(HttpStatusError, match="HTTP 400: failed to parse grammar"):
                pool.post(lease, "/bad", lambda _: {})
        assert [p for _, _, p, _ in stub.log] == ["/x", "/x", "/x", "/bad"]  # the 400 was sent once
    finally:
        stub.close()
        pool.close()


def test_retries_run_out_with_a_clear_error() -> None:
    stub = StubServer(lambda method, path, body: (503, {}, {"error": {"message": "busy"}}))
    pool = pool_for(stub.url, retries=2)
    try:
        with pool.lease() as lease, pytest.raises(BackendError, match="busy.*gave up after 3 attempts"):
            pool.post(lease, "/x", lambda _: {})
        assert len(stub.log) == 3
    finally:
        stub.close()
        pool.close()

