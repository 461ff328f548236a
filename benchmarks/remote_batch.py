"""Batch throughput through llama-server replicas against the in-process engine (a script, not a test).

The same pairs, judged in both orders with the same think length, in one run:

1. `run_batch` over the in-process engine (`--threads`, `--slots` sequences together);
2. a plain client: one `/completion` per judgment on one llama-server with `--slots` slots, the
   rendered token ids and the project's grammar, `--slots` requests in flight (what llama-server
   does for this work with nothing of gram-local's around it, the answer slot not read);
3. `run_batch` over the llama-server backend with one replica (`--slots` slots, `--threads`);
4. the same with two replicas (`--slots` slots each, the threads split between them);
5. two replicas again, one killed once a third of the tasks are written: what the batch did.

Every judgment thinks exactly `--think-tokens` tokens (the model may not close its think block
earlier; `JudgeSettings.allow_close=False`), so each path does the same work. Results: one JSON
line per path on stdout, pairs/hour and the ratio to the in-process engine.

    python benchmarks/remote_batch.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --server ~/.cache/gram-local/llama-server --pairs 16 --think-tokens 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import LlamaServer  # noqa: E402

from gram_local.batch.run import run_batch  # noqa: E402
from gram_local.batch.tasks import Task  # noqa: E402
from gram_local.config import EngineSettings, JudgeSettings, RemoteSettings  # noqa: E402
from gram_local.grammar import think_grammar  # noqa: E402
from gram_local.judge import Judge  # noqa: E402
from gram_local.loading import connect_judge, load_judge  # noqa: E402

TOPICS = ["the tides", "photosynthesis", "rainbows", "volcanoes", "inflation", "vaccines", "gravity", "tea",
          "glaciers", "bridges", "bees", "the moon", "printing", "sleep", "coffee", "salt"]


def make_tasks(n: int) -> list[Task]:
    tasks = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        tasks.append(Task(
            id=f"pair-{i}",
            question=f"In two sentences, explain {topic} (#{i}).",
            a=f"A careful, correct explanation of {topic}: it follows from well-known physical causes.",
            b=f"{topic.capitalize()} is not real, and nobody has ever seen it.",
            swap=True,
        ))
    return tasks


def timed_batch(judge: Judge, tasks: list[Task], out: Path, label: str) -> dict[str, Any]:
    before = judge.backend.stats.snapshot()
    started = time.perf_counter()
    summary = run_batch(judge, tasks, out)
    seconds = time.perf_counter() - started
    stats = judge.backend.stats
    result = {"path": label, "pairs": summary.judged, "failed": summary.failed, "seconds": round(seconds, 2),
              "pairs_per_hour": round(summary.judged * 3600 / seconds, 1),
              "generated_tokens": stats.generated_tokens - before.generated_tokens}
    for name in ("requests", "retries", "errors"):  # a remote backend's counters
        if hasattr(stats, name):
            result[name] = getattr(stats, name) - getattr(before, name)
    return result


def plain_client(judge: Judge, server: LlamaServer, tasks: list[Task], settings: JudgeSettings, slots: int) -> dict[str, Any]:
    """One think request per judgment, both orders, `slots` in flight; nothing else."""
    grammar = think_grammar(allow_close=False)
    bodies = []
    for task in tasks:
        q, a, b = task.question, task.a, task.b
        assert q is not None and a is not None and b is not None
        for shown_a, shown_b in ((a, b), (b, a)):
            prompt = judge.renderer.prompt_tokens(q, shown_a, shown_b, settings)
            bodies.append({"prompt": prompt, "n_predict": settings.max_think_tokens, "grammar": grammar,
                           "cache_prompt": True, "temperature": 0.0, "samplers": ["temperature"], "stream": False})

    def post(body: dict[str, Any]) -> int:
        request = urllib.request.Request(server.url + "/completion", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return int(json.load(reply)["timings"]["predicted_n"])

    started = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        generated = sum(pool.map(post, bodies))
    seconds = time.perf_counter() - started
    return {"path": "llama-server, plain client (think only), 1 replica", "pairs": len(tasks), "failed": 0,
            "seconds": round(seconds, 2), "pairs_per_hour": round(len(tasks) * 3600 / seconds, 1),
            "generated_tokens": generated}


@contextlib.contextmanager
def served(args: argparse.Namespace, settings: JudgeSettings, replicas: int) -> Iterator[tuple[Judge, list[LlamaServer]]]:
    """Fresh llama-servers (the threads split between them) and a judge over them. Each path gets
    servers of its own: llama-server keeps each slot's last prompt, which a later path would reuse."""
    threads = max(1, args.threads // replicas)
    servers: list[LlamaServer] = []
    try:
        for _ in range(replicas):
            servers.append(LlamaServer(args.server, args.model, slots=args.slots, ctx_per_slot=args.ctx_per_slot,
                                       threads=threads))
        judge = connect_judge(str(args.model), backend="llama-server", settings=settings,
                              remote=RemoteSettings(base_urls=tuple(s.url for s in servers)))
        try:
            yield judge, servers
        finally:
            judge.close()
    finally:
        for server in servers:
            server.stop()


def killed_replica_run(args: argparse.Namespace, tasks: list[Task], settings: JudgeSettings, out: Path) -> dict[str, Any]:
    with served(args, settings, 2) as (judge, (first, _)):
        killed_at: dict[str, float] = {}

        def kill_after_a_third() -> None:
            started = time.perf_counter()
            while time.perf_counter() - started < 3600:
                lines = out.read_text(encoding="utf-8").count("\n") if out.exists() else 0
                if lines >= max(1, len(tasks) // 3):
                    first.kill()
                    killed_at["rows_written"] = lines
                    killed_at["second"] = round(time.perf_counter() - started, 2)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_after_a_third, daemon=True)
        killer.start()
        result = timed_batch(judge, tasks, out, "llama-server backend, 2 replicas, one killed at a third")
        killer.join(timeout=5)
        killed_exit = first.process.returncode
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    result.update(killed_after_rows=killed_at.get("rows_written"), killed_at_s=killed_at.get("second"),
                  records=len(records), error_records=sum(1 for r in records if r.get("error")), killed_exit=killed_exit)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--server", type=Path, required=True, help="the llama-server binary")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--think-tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, default=8, help="sequences together: engine --parallel, server -np")
    parser.add_argument("--threads", type=int, default=2, help="threads in all (split between two replicas)")
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--skip", default="", help="comma-separated paths to leave out: local,plain,one,two,kill")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    tasks = make_tasks(args.pairs)
    settings = JudgeSettings(max_think_tokens=args.think_tokens, allow_close=False)
    work = Path(tempfile.mkdtemp(prefix="remote-batch-"))
    results: list[dict[str, Any]] = []

    def report(result: dict[str, Any]) -> None:
        base = results[0]["pairs_per_hour"] if results and results[0]["path"].startswith("in-process") else None
        if base and result is not results[0]:
            result["vs_in_process"] = round(result["pairs_per_hour"] / base, 3)
        results.append(result)
        print(json.dumps(result), flush=True)

    if "local" not in skip:
        judge = load_judge(str(args.model), settings=settings,
                           engine=EngineSettings(n_threads=args.threads, parallel=args.slots))
        try:
            report(timed_batch(judge, tasks, work / "local.jsonl", f"in-process, --parallel {args.slots}"))
        finally:
            judge.close()

    if "plain" not in skip:
        with served(args, settings, 1) as (judge, (server,)):
            report(plain_client(judge, server, tasks, settings, args.slots))
    if "one" not in skip:
        with served(args, settings, 1) as (judge, _):
            report(timed_batch(judge, tasks, work / "one.jsonl", "llama-server backend, 1 replica"))
    if "two" not in skip:
        with served(args, settings, 2) as (judge, _):
            threads = max(1, args.threads // 2)
            report(timed_batch(judge, tasks, work / "two.jsonl", f"llama-server backend, 2 replicas ({threads} thread(s) each)"))
    if "kill" not in skip:
        report(killed_replica_run(args, tasks, settings, work / "kill.jsonl"))


if __name__ == "__main__":
    main()
