"""How often answering at once (`--no-think`) agrees with judging after a think block.

Usage: python benchmarks/no_think_agreement.py MODEL.gguf DATA.jsonl [--think-tokens N] [--limit N]
DATA is JudgeBench-style JSONL (question, response_A, response_B). Each pair is judged in both
orders both ways; prints agreement of verdicts and of per-order answers, and the time of each mode.
Label the model when quoting the numbers: this measures that model, not GRAM-RR in general.
"""

from __future__ import annotations

import argparse
import json
import time

from gram_local import load_judge
from gram_local.config import JudgeSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--think-tokens", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()][: args.limit]
    items = [(r["question"], r["response_A"], r["response_B"]) for r in rows]
    judge = load_judge(args.model, settings=JudgeSettings(max_think_tokens=args.think_tokens))
    timings = {}
    results = {}
    for mode, budget in (("no-think", 0), ("think", args.think_tokens)):
        started = time.perf_counter()
        results[mode] = list(judge.compare_many(items, swap=True, max_think_tokens=budget))
        timings[mode] = time.perf_counter() - started
    verdicts = sum(a.winner == b.winner for a, b in zip(results["no-think"], results["think"]))
    answers = sum(
        ja.answer == jb.answer
        for a, b in zip(results["no-think"], results["think"])
        for ja, jb in zip(a.judgments, b.judgments)
    )
    print(json.dumps({
        "model": judge.model.path,
        "pairs": len(items),
        "think_tokens": args.think_tokens,
        "verdict_agreement": verdicts / len(items),
        "answer_agreement": answers / (2 * len(items)),
        "seconds_per_pair": {k: v / len(items) for k, v in timings.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
