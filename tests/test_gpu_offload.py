"""The GPU path (marker `gpu`): judgments with layers offloaded must agree with the CPU, and the
commands that once crashed on a CUDA build (`doctor --model`, `bench`) must finish.

Each test skips, saying why, where the installed llama.cpp cannot offload (every CPU build, CI's
included). scripts/gpu_check.sh runs them on a lent GPU machine, on the model it builds there
(GRAM_LOCAL_GPU_TEST_MODEL); elsewhere they use SmolLM2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ALL_LAYERS = 999
PAIRS = [
    ("What is 2+2?", "4", "5"),
    ("Name a primary colour.", "Red.", "Seven."),
    ("Is the Earth flat?", "No, it is an oblate spheroid.", "Yes."),
    ("Translate 'chat' from French.", "cat", "The word 'chat' is French for a conversation between friends."),
]


@pytest.fixture(scope="module")
def gpu_model(request: pytest.FixtureRequest) -> Path:
    from gram_local.engine.build import gpu_offload_supported

    if not gpu_offload_supported():
        pytest.skip("this llama.cpp build cannot offload to a GPU (a CPU-only build)")
    chosen = os.environ.get("GRAM_LOCAL_GPU_TEST_MODEL")
    return Path(chosen) if chosen else Path(request.getfixturevalue("smollm2_path"))


def _answer_slot_p_a(model: Path, n_gpu_layers: int) -> list[float]:
    from helpers import make_judge

    judge = make_judge(model, max_think_tokens=0, n_gpu_layers=n_gpu_layers, parallel=1, head_cache=False)
    try:
        return [judge.compare(q, a, b).p_a for q, a, b in PAIRS]
    finally:
        judge.close()


def test_offloaded_answer_slot_probabilities_match_the_cpu(gpu_model: Path) -> None:
    """Same prompt, same weights: only kernels differ, so P(A) may move by rounding, never flip."""
    cpu = _answer_slot_p_a(gpu_model, 0)
    gpu = _answer_slot_p_a(gpu_model, ALL_LAYERS)
    for p_cpu, p_gpu in zip(cpu, gpu):
        assert abs(p_cpu - p_gpu) <= 0.03, (cpu, gpu)
        if abs(p_cpu - 0.5) > 0.05:
            assert (p_cpu > 0.5) == (p_gpu > 0.5), (cpu, gpu)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "faulthandler", "-m", "gram_local", *args],
                          capture_output=True, text=True, timeout=600)


def test_doctor_with_a_model_offloaded_sees_the_gpu_and_runs_a_judgment(gpu_model: Path) -> None:
    done = _run("doctor", "--model", str(gpu_model), "--n-gpu-layers", str(ALL_LAYERS), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert any(device["kind"] in ("gpu", "igpu") for device in report["devices"] or []), report["devices"]
    assert report["model"]["offload_check"].startswith("ok"), report["model"]["offload_check"]


def test_bench_offloaded_finishes(gpu_model: Path) -> None:
    done = _run("bench", "--model", str(gpu_model), "--n-gpu-layers", str(ALL_LAYERS),
                "--ops", "compare,swap", "--think-tokens", "16", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)
