"""The instruction head's KV kept on disk: reused by a new process, verified, never trusted blindly."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_judge

from gram_local.config import HEAD_CACHE_FILES

QUESTION = "10 words to apologize for being late."
GOOD = "My sincere apologies for being late today."
BAD = "Apologies for making you wait; punctuality isn't my strong suit."


def head_path(judge, settings=None):
    """Where the judge's engine keeps the instruction head's KV (None when it keeps none)."""
    store = judge.backend.prefix_store
    return None if store is None else store.path_for(judge.head_tokens(settings))


def _load(model: Path, cache: Path, **kw):
    return make_judge(model, max_think_tokens=12, parallel=2, head_cache=str(cache), **kw)


@pytest.mark.parametrize("model", ["smollm2_path", "tiny_llama3_gguf"])
def test_head_is_a_prefix_of_every_prompt(request, model: str, tmp_path: Path) -> None:
    judge = _load(request.getfixturevalue(model), tmp_path)
    head = judge.head_tokens()
    assert len(head) > 100  # the chat header and the instructions, not a token or two
    for question in ("\n\nLeading newlines?", " leading space", "]", "é?", "<|eot_id|>", QUESTION):
        prompt = judge.prompt(question, GOOD, BAD).tokens
        assert prompt[: len(head)] == head, question
    other_date = judge._with(date="01 Jan 2025")
    if model == "tiny_llama3_gguf":  # the Llama-3 header carries the date (SmolLM2's template does not)
        assert judge.head_tokens(other_date) != head
        assert head_path(judge, other_date) != head_path(judge)


def test_a_new_process_restores_the_head_and_decides_the_same(smollm2_path: Path, tmp_path: Path) -> None:
    first = _load(smollm2_path, tmp_path)
    n_head = len(first.head_tokens())
    cold = first.compare(QUESTION, GOOD, BAD)
    files = list(tmp_path.glob("head-*.kv"))
    assert [p.name for p in files] == [head_path(first).name]
    assert cold.timings.restored_tokens == 0
    first.backend.close()

    # Another judge over the same model (as a new process would be): the head comes from the file.
    second = _load(smollm2_path, tmp_path)
    warm = second.compare(QUESTION, GOOD, BAD)
    assert warm.timings.restored_tokens == n_head
    assert warm.timings.prompt_tokens == cold.timings.prompt_tokens - n_head
    # On the CPU the logits do not depend on batch shape, so the verdict, the text and p_a are
    # exactly those of the cold run.
    assert warm.judgments[0].output == cold.judgments[0].output
    assert warm.judgments[0].p_a == pytest.approx(cold.judgments[0].p_a, abs=1e-6)

    # Within one judge the head stays in memory: no second read.
    again = second.compare(QUESTION, BAD, GOOD)
    assert again.timings.restored_tokens == 0
    second.backend.close()


def test_a_damaged_file_is_recomputed_and_replaced(smollm2_path: Path, tmp_path: Path) -> None:
    judge = _load(smollm2_path, tmp_path)
    reference = judge.compare(QUESTION, GOOD, BAD)
    path = head_path(judge)
    assert path is not None and path.is_file()
    size = path.stat().st_size
    judge.backend.close()

    path.write_bytes(b"\x00garbage" * 64)
    judge = _load(smollm2_path, tmp_path)
    r = judge.compare(QUESTION, GOOD, BAD)
    assert r.timings.restored_tokens == 0
    assert r.judgments[0].output == reference.judgments[0].output
    assert path.stat().st_size == size  # written again, whole
    judge.backend.clear_cache()
    r = judge.compare(QUESTION, GOOD, BAD)
    assert r.timings.restored_tokens == len(judge.head_tokens())
    judge.backend.close()


def test_a_file_for_other_tokens_is_not_used(smollm2_path: Path, tmp_path: Path) -> None:
    """A file that loads but records other tokens (a key collision, a copied file) is refused."""
    judge = _load(smollm2_path, tmp_path)
    reference = judge.compare(QUESTION, GOOD, BAD)
    path = head_path(judge)
    judge.backend.close()
    # The sequence file: magic, version, token count (uint32 each), then the tokens (int32).
    data = bytearray(path.read_bytes())
    count = struct.unpack_from("<I", data, 8)[0]
    assert count == len(judge.head_tokens())
    assert list(struct.unpack_from(f"<{count}i", data, 12)) == judge.head_tokens()
    struct.pack_into("<i", data, 12 + 4 * 5, judge.head_tokens()[5] + 1)
    path.write_bytes(bytes(data))

    judge = _load(smollm2_path, tmp_path)
    r = judge.compare(QUESTION, GOOD, BAD)
    assert r.timings.restored_tokens == 0
    assert r.judgments[0].output == reference.judgments[0].output
    judge.backend.close()


def test_old_files_are_pruned_and_off_means_off(smollm2_path: Path, tmp_path: Path) -> None:
    for k in range(HEAD_CACHE_FILES + 3):
        stale = tmp_path / f"head-{k:032d}.kv"
        stale.write_bytes(b"old")
        os.utime(stale, (1_000_000 + k, 1_000_000 + k))
    (tmp_path / "head-x.kv.123.tmp").write_bytes(b"partial")  # left by a killed run, long ago
    os.utime(tmp_path / "head-x.kv.123.tmp", (1_000_000, 1_000_000))
    (tmp_path / "head-y.kv.456.tmp").write_bytes(b"")  # another process writing right now
    judge = _load(smollm2_path, tmp_path)
    judge.compare(QUESTION, GOOD, BAD)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in left if n.endswith(".kv")]) == HEAD_CACHE_FILES and head_path(judge).name in left
    assert "head-x.kv.123.tmp" not in left and f"head-{0:032d}.kv" not in left
    assert "head-y.kv.456.tmp" in left
    judge.backend.close()

    default_place = Path(os.environ["GRAM_LOCAL_HOME"]) / "kv-cache"
    before = set(default_place.glob("*")) if default_place.exists() else set()
    judge = make_judge(smollm2_path, max_think_tokens=4, parallel=2, head_cache=False)
    assert head_path(judge) is None
    judge.compare(QUESTION, GOOD, BAD)
    assert (set(default_place.glob("*")) if default_place.exists() else set()) == before
    judge.backend.close()


def test_cli_second_run_reads_the_head_from_disk(smollm2_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "GRAM_LOCAL_HOME": str(tmp_path)}
    args = [sys.executable, "-m", "gram_local", "compare", "-q", QUESTION, "-a", GOOD, "-b", BAD, "--model", str(smollm2_path),
            "--max-think-tokens", "4", "--json"]
    runs = [subprocess.run(args, capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(p.stdout) for p in runs)
    assert first["timings"]["restored_tokens"] == 0
    assert second["timings"]["restored_tokens"] > 100
    assert second["judgments"][0]["output"] == first["judgments"][0]["output"]
    assert len(list((tmp_path / "kv-cache").glob("head-*.kv"))) == 1
    off = subprocess.run([*args, "--no-head-cache"], capture_output=True, text=True, env=env, timeout=300)
    assert off.returncode == 0, off.stderr
    off_result = json.loads(off.stdout)
    assert off_result["timings"]["restored_tokens"] == 0
    # The head computed with the rest of the prompt, or apart from it, or read back: the same text.
    assert off_result["judgments"][0]["output"] == first["judgments"][0]["output"]
