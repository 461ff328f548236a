"""`models lock` and `models pull` for real through `huggingface_hub`, against a local hub stand-in.

Each command runs in a child process, because `huggingface_hub` reads HF_ENDPOINT, HF_HOME and
HF_HUB_OFFLINE once, at import: that is also how a user's shell reaches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import FakeHub

from gram_local.store import SOURCE_PATTERNS, ModelStore

REPO = "test-org/GRAM-tiny"
SHARD = "model-00001-of-00002.safetensors"  # holds the embeddings: over 10 MB, huggingface_hub's chunk size
CLI = (
    "import sys; from gram_local.cli.models import models_group; "
    "models_group(sys.argv[1:], prog_name='gram-local models')"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from random_checkpoint import default_tokenizer_json, write_random_checkpoint

    folder = write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "GRAM-tiny", shape="tiny", tokenizer_json=default_tokenizer_json()
    )
    (folder / "README.md").write_text("not needed for a conversion, so never downloaded\n")
    assert (folder / SHARD).stat().st_size > 12_000_000
    return folder


@pytest.fixture()
def hub(checkpoint: Path) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo(REPO, checkpoint)
        yield hub


@pytest.fixture()
def env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    """A user's environment: our store and lock, a private HF cache, the hub at HF_ENDPOINT."""
    lock = tmp_path / "models.lock"
    entry = {
        "repo": REPO,
        "revision": None,
        "files": None,
        "converter_version": None,
        "outputs": {"BF16": None, "Q8_0": None},
        "unresolved": {"revision": "not locked yet", "files": "not locked yet", "outputs": "not locked yet"},
    }
    lock.write_text(json.dumps({"format": 1, "note": "test", "models": {"tiny": entry}}))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GRAM_LOCAL_"))}
    return {
        **clean,
        "GRAM_LOCAL_HOME": str(tmp_path / "store"),
        "GRAM_LOCAL_LOCK": str(lock),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


# huggingface_hub waits a second before each retry of a broken transfer (five in a row without new
# bytes); tests that break transfers for good skip the waits, not the retries.
NO_RETRY_WAITS = (
    "import time, types, huggingface_hub.file_download as fd; "
    "fd.time = types.SimpleNamespace(**{**vars(time), 'sleep': lambda seconds: None}); "
)


def gram(env: dict[str, str], *args: str, no_retry_waits: bool = False) -> subprocess.CompletedProcess[str]:
    code = (NO_RETRY_WAITS if no_retry_waits else "") + CLI
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


def store(env: dict[str, str]) -> ModelStore:
    return ModelStore(Path(env["GRAM_LOCAL_HOME"]))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_files(checkpoint: Path) -> list[dict[str, object]]:
    names = sorted(p.name for p in checkpoint.iterdir() if any(Path(p.name).match(pat) for pat in SOURCE_PATTERNS))
    return [{"path": n, "size": (checkpoint / n).stat().st_size, "sha256": sha256_of(checkpoint / n)} for n in names]


def test_lock_then_pull_then_verify(env: dict[str, str], hub: FakeHub, checkpoint: Path) -> None:
    locked = gram(env, "lock", "tiny", "--outputs")
    assert locked.returncode == 0, locked.stderr
    entry = json.loads(Path(env["GRAM_LOCAL_LOCK"]).read_text())["models"]["tiny"]
    commit = hub._repos[REPO].commit
    assert entry["revision"] == commit
    assert entry["files"] == source_files(checkpoint)
    assert set(entry["outputs"]) == {"BF16", "Q8_0"} and all(entry["outputs"].values())
    assert entry["outputs"]["BF16"]["llama_cpp"] is None  # the converter's own output
    assert entry["outputs"]["Q8_0"]["llama_cpp"].startswith("llama-cpp-python ")
    assert entry["converter_version"] and entry["unresolved"] == {}

    pulled = gram(env, "pull", "tiny", "--quant", "q8_0")
    assert pulled.returncode == 0, pulled.stderr
    assert "warning" not in pulled.stderr  # pinned, and every pin matched
    model = store(env).get("tiny", "Q8_0")
    expected = f"pulled tiny Q8_0 ({model.size / 1e6:.1f} MB, sha256 {model.sha256}) at {model.path}"
    assert pulled.stdout.strip() == expected
    assert model.sha256 == entry["outputs"]["Q8_0"]["sha256"] == sha256_of(model.path)
    assert model.source["revision"] == commit
    assert not hub.downloads("README.md")

    verified = gram(env, "verify", "tiny")
    assert verified.returncode == 0, verified.stderr
    lines = verified.stdout.splitlines()  # `lock --outputs` registered the BF16 it pinned, too
    assert f"ok      tiny Q8_0 sha256 {model.sha256}" in lines and len(lines) == 2
    assert all(line.startswith("ok      tiny ") for line in lines)
    path = gram(env, "path", "tiny", "--quant", "Q8_0")
    assert path.returncode == 0 and Path(path.stdout.strip()) == model.path
    ambiguous = gram(env, "path", "tiny")  # no Q4_K_M, and two others to choose from
    assert ambiguous.returncode == 2 and "(stored: BF16, Q8_0)" in ambiguous.stderr


def test_unpinned_pull_resumes_after_a_cut_connection(env: dict[str, str], hub: FakeHub, checkpoint: Path) -> None:
    hub.cut_once(REPO, SHARD, after=12_000_000)
    pulled = gram(env, "pull", "tiny", "--quant", "BF16")
    assert pulled.returncode == 0, pulled.stderr
    assert "warning: tiny is not pinned in models.lock" in pulled.stderr

    first, second = hub.downloads(SHARD)
    assert first.range is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second.range or "").group(1))
    assert 0 < resumed_at <= 12_000_000  # only the bytes already received are asked for again

    model = store(env).get("tiny", "BF16")
    commit = hub._repos[REPO].commit
    assert model.source["revision"] == commit  # "main" as resolved, recorded for pinning
    assert model.source["files"] == source_files(checkpoint)
    cached = Path(env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit / SHARD
    assert sha256_of(cached) == sha256_of(checkpoint / SHARD)


@pytest.mark.parametrize("then", [500, None], ids=["then-http-500", "then-dropped"])
def test_a_download_that_keeps_failing_is_one_clear_error_and_its_bytes_are_kept_for_a_rerun(
    env: dict[str, str], hub: FakeHub, checkpoint: Path, then: int | None
) -> None:
    """The link breaks for good partway through the large shard: every retry fails (HTTP 500, or the
    connection drops before a byte). One error line, nothing registered, and the bytes received so far
    stay in the Hugging Face cache, so the next pull continues from there instead of starting over."""
    data = (checkpoint / SHARD).read_bytes()
    hub.fail_downloads(REPO, SHARD, after=12_000_000, then=then)
    failed = gram(env, "pull", "tiny", "--quant", "BF16", no_retry_waits=True)
    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and failed.stderr.endswith(errors[0] + "\n") and "Traceback" not in failed.stderr
    match = re.fullmatch(
        rf"error: cannot pull tiny: downloading {SHARD} failed: (.+); (\d+) of (\d+) bytes are kept in the "
        r"Hugging Face cache \((.+)\): rerun the same command to resume",
        errors[0],
    )
    assert match is not None, errors[0]
    reason, kept, size, part = match.group(1), int(match.group(2)), int(match.group(3)), Path(match.group(4))
    if then == 500:
        assert reason.startswith("the hub answered HTTP 500 Internal Server Error"), reason
    else:
        assert reason.startswith(f"the connection to {hub.url} broke off ("), reason
    assert size == len(data) and 0 < kept <= 12_000_000
    assert part.name == f"{hashlib.sha256(data).hexdigest()}.incomplete"
    assert part.read_bytes() == data[:kept]  # what arrived, and nothing else
    assert store(env).list() == []  # nothing registered
    snapshots = Path(env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert not list(snapshots.glob(f"*/{SHARD}"))  # no snapshot file for the shard
    first, *retries = hub.downloads(SHARD)
    assert first.range is None and retries and all(r.range == f"bytes={kept}-" for r in retries)

    # The link is back: the same command asks only for the missing bytes, once, and finishes.
    hub.heal(REPO, SHARD)
    before = len(hub.downloads(SHARD))
    pulled = gram(env, "pull", "tiny", "--quant", "BF16")
    assert pulled.returncode == 0, pulled.stderr
    assert [r.range for r in hub.downloads(SHARD)[before:]] == [f"bytes={kept}-"]
    assert not part.exists()
    model = store(env).get("tiny", "BF16")
    assert model is not None and model.source["files"] == source_files(checkpoint)
    (cached,) = snapshots.glob(f"*/{SHARD}")
    assert sha256_of(cached) == hashlib.sha256(data).hexdigest()


def test_a_wrong_hash_names_both_and_keeps_the_stored_model(
    env: dict[str, str], hub: FakeHub, checkpoint: Path
) -> None:
    assert gram(env, "lock", "tiny").returncode == 0
    assert gram(env, "pull", "tiny", "--quant", "Q8_0").returncode == 0
    old = store(env).get("tiny", "Q8_0")

    good = (checkpoint / SHARD).read_bytes()
    bad = good[:-64] + bytes(64)  # the same size, other bytes: a corrupted mirror
    hub.put_file(REPO, SHARD, bad)
    elsewhere = {**env, "HF_HOME": env["HF_HOME"] + "-fresh"}  # a cache without the good file
    failed = gram(elsewhere, "pull", "tiny", "--quant", "Q8_0")
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr
    message = lines[0]
    assert message.startswith(f"error: checksum mismatch for tiny source file {SHARD}")
    assert hashlib.sha256(good).hexdigest() in message and hashlib.sha256(bad).hexdigest() in message
    assert "nothing was registered" in message
    assert store(env).get("tiny", "Q8_0") == old
    assert sha256_of(old.path) == old.sha256

    # The bad bytes did not stay in the cache: once the mirror is repaired, a plain pull works.
    hub.put_file(REPO, SHARD, good)
    repaired = gram(elsewhere, "pull", "tiny", "--quant", "Q8_0")
    assert repaired.returncode == 0, repaired.stderr
    assert len(hub.downloads(SHARD)) == 3
    assert store(env).get("tiny", "Q8_0").sha256 == old.sha256


def test_offline_without_and_with_a_cached_download(env: dict[str, str], hub: FakeHub) -> None:
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    failed = gram(offline, "pull", "tiny")
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("error: cannot pull tiny: offline mode is on (HF_HUB_OFFLINE)")
    assert "gram-local models import PATH --name tiny" in lines[0]
    assert hub.requests == []

    assert gram(env, "lock", "tiny").returncode == 0
    assert gram(env, "pull", "tiny", "--quant", "Q8_0").returncode == 0
    online = store(env).get("tiny", "Q8_0")
    seen = len(hub.requests)

    again = gram({**offline, "GRAM_LOCAL_HOME": env["GRAM_LOCAL_HOME"] + "-2"}, "pull", "tiny", "--quant", "Q8_0")
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == seen  # everything came from the Hugging Face cache
    assert ModelStore(Path(env["GRAM_LOCAL_HOME"] + "-2")).get("tiny", "Q8_0").sha256 == online.sha256


def test_lock_names_a_revision_the_hub_does_not_have(env: dict[str, str]) -> None:
    result = gram(env, "lock", "tiny", "--revision", "no-such-branch")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot lock tiny: revision 'no-such-branch' of {REPO} does not exist on the hub"
    )
