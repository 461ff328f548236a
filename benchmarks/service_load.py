"""Load on `gram-local serve` (a script, not a test): throughput and latency by concurrency, and memory.

Starts the service on a free loopback port, then sends the same `--requests`
compares with 1 client (one after another), then 4 and 8 concurrent clients, and prints
requests/minute and p50/p95 latency for each. With `--rss-requests N` it also sends N small
answer-at-once compares (4 clients) and prints the service's RSS before and after. Then it fills
the queue and disconnects a stream, and says what the service answered.

    python benchmarks/service_load.py --model SmolLM2-135M-Instruct.Q4_1.gguf --requests 16 \
        --max-think-tokens 32 --threads 1 --rss-requests 1000

(the command of benchmarks/results/service-load-smollm2.txt: one llama.cpp thread, as on a shared
2-core machine its spinning thread barriers make two threads far slower)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_process import ServiceProcess, get, post  # noqa: E402

from gram_local.client import Client  # noqa: E402

TOPICS = ["the tides", "photosynthesis", "rainbows", "volcanoes", "inflation", "vaccines", "gravity", "tea",
          "glaciers", "bridges", "bees", "the moon", "printing", "sleep", "coffee", "salt"]


def pairs(n: int) -> list[tuple[str, str, str]]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        out.append((f"In two sentences, explain {topic} (#{i}).", f"A careful, correct explanation of {topic}.",
                    f"{topic.capitalize()} is not real."))
    return out


def run_level(client: Client, work: list[tuple[str, str, str]], clients: int, budget: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    queue = list(work)

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                q, a, b = queue.pop(0)
            started = time.perf_counter()
            client.compare(q, a, b, max_think_tokens=budget)
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "requests_per_min": round(60 * len(latencies) / wall, 1),
        "p50_s": round(statistics.median(ordered), 2),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    }


def rss_run(service: ServiceProcess, client: Client, n: int) -> dict[str, float]:
    def send(count: int, offset: int) -> None:
        for i in range(count):
            client.compare(f"What is {offset + i} + 1?", str(offset + i + 1), str(offset + i + 2), max_think_tokens=0)

    send(50, 0)
    before = service.rss_kib() / 1024
    per = n // 4
    threads = [threading.Thread(target=send, args=(per, 1000 * (k + 1))) for k in range(4)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = service.rss_kib() / 1024
    return {"requests": per * 4, "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1),
            "growth_mib": round(after - before, 1), "seconds": round(time.perf_counter() - started, 1)}


def queue_and_disconnect(model: str) -> dict[str, object]:
    """A one-slot, one-place service: what a second request and a dropped stream get."""
    import http.client
    import urllib.parse

    with ServiceProcess(model, "--ctx", "2048", "--parallel", "1", "--max-queue", "1", "--max-think-tokens", "400") as service:
        service.wait_ready()
        parts = urllib.parse.urlsplit(service.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        body = {"question": "Explain how rainbows form.", "a": "Refraction.", "b": "Magic.", "stream": True}
        conn.request("POST", "/v1/compare", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        while not response.readline().startswith(b"event: think"):
            pass
        status, headers, error = post(service.url + "/v1/compare", {"question": "q", "a": "x", "b": "y"})
        dropped = time.perf_counter()
        conn.close()
        Client(service.url).compare("What is 2+2?", "4", "5", max_think_tokens=0)
        after_drop = time.perf_counter() - dropped
        engine = get(service.url + "/health")[1]["engine"]
        return {"full_queue": {"status": status, "retry_after": headers.get("retry-after"), "error": error["error"]},
                "disconnect": {"next_request_s": round(after_drop, 2), "engine_after": engine}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-think-tokens", type=int, default=32)
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--rss-requests", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    extra = ["--threads", str(args.threads)] if args.threads else []
    report: dict[str, object] = {}
    with ServiceProcess(args.model, "--ctx", "1024", "--parallel", "8", "--max-think-tokens", str(args.max_think_tokens),
                        *extra) as service:
        service.wait_ready()
        client = Client(service.url)
        client.compare("warm up", "a", "b", max_think_tokens=args.max_think_tokens)
        work = pairs(args.requests)
        levels = []
        for clients in (int(x) for x in args.levels.split(",")):
            level = run_level(client, work, clients, args.max_think_tokens)
            print(json.dumps(level), flush=True)
            levels.append(level)
        report["levels"] = levels
        if args.rss_requests:
            report["rss"] = rss_run(service, client, args.rss_requests)
            print(json.dumps(report["rss"]), flush=True)
    report["queue_and_disconnect"] = queue_and_disconnect(args.model)
    print(json.dumps(report["queue_and_disconnect"]), flush=True)


if __name__ == "__main__":
    main()
