"""The seed's pipeline alone, in a process of its own (no llama.cpp loaded beside torch's CUDA).

Usage: python seed_gpu.py CHECKPOINT WORKLOAD.json DEVICE [JUDGMENTS]
WORKLOAD.json holds {"question": ..., "responses": [...]}, the texts gram-local bench judged.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_bench import SeedPipeline  # noqa: E402


def main() -> None:
    checkpoint, workload_path, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    judgments = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    workload = json.loads(workload_path.read_text(encoding="utf-8"))
    q, responses = workload["question"], workload["responses"]
    texts = [(q, responses[i % len(responses)], responses[(i + 1) % len(responses)]) for i in range(judgments)]
    seed = SeedPipeline(checkpoint, threads=16, device=device)
    for k, (question, a, b) in enumerate(texts):
        print(f"judgment {k + 1} of {len(texts)}: {seed.judge(question, a, b):.1f} s", file=sys.stderr, flush=True)
    run = seed.run
    seed.close()
    per = sum(run.seconds) / len(run.seconds)
    print(json.dumps({**asdict(run), "device": device, "seconds_per_judgment": per,
                      "pairs_per_hour_both_orders": 3600 / (2 * per)}))


if __name__ == "__main__":
    main()
