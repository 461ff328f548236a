"""Checkpoints the converter must refuse: a clear one-line reason, exit code 2, and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from random_checkpoint import default_tokenizer_json, write_random_checkpoint, write_safetensors

from gram_local.convert import ConversionError, ConversionFailed, convert_checkpoint, quantize_gguf
from gram_local.convert.__main__ import convert_command
from gram_local.convert.safetensors import TensorReader, index_checkpoint


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("pristine"), tokenizer_json=default_tokenizer_json(), n_shards=1
    )


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(ckpt: Path, **changes: object) -> None:
    path = ckpt / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _regenerate(ckpt: Path, vocab_size: int) -> None:
    """The same checkpoint with a smaller embedding than the tokenizer has entries."""
    write_random_checkpoint(ckpt, tokenizer_json=default_tokenizer_json(), n_shards=1, vocab_size=vocab_size)


def _drop_tensor(ckpt: Path, name: str) -> None:
    entries = index_checkpoint(ckpt)
    with TensorReader() as reader:
        kept = [(e.name, e.dtype, e.shape, reader.read_all(e)) for e in entries.values() if e.name != name]
    write_safetensors(ckpt / "model.safetensors", kept)


def _negate_shape(ckpt: Path, name: str) -> None:
    """Rewrite one header entry's shape [n] as [-1, -n]: the product still fits its data range."""
    import json
    import struct

    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    shape = header[name]["shape"]
    header[name]["shape"] = [-1, -shape[0], *shape[1:]]
    header.pop("__metadata__", None)  # room for the two minus signs and the extra dimension
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # same header length, so every data offset still holds
    assert len(text) == n
    path.write_bytes(data[:8] + text + data[8 + n :])


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong architecture": (
        lambda c: _edit_config(c, architectures=["MistralForCausalLM"], model_type="mistral"),
        "unsupported architecture MistralForCausalLM (model_type 'mistral')",
    ),
    "missing tensor": (
        lambda c: _drop_tensor(c, "model.layers.1.mlp.down_proj.weight"),
        "missing tensor model.layers.1.mlp.down_proj.weight",
    ),
    "wrong shape": (
        lambda c: _edit_config(c, intermediate_size=96),
        "tensor model.layers.0.mlp.gate_proj.weight has shape [128, 64], but config.json implies [96, 64]",
    ),
    "wrong KV head count": (
        lambda c: _edit_config(c, num_key_value_heads=4),
        "tensor model.layers.0.self_attn.k_proj.weight has shape [32, 64], but config.json implies [64, 64]",
    ),
    "tokenizer larger than the vocabulary": (
        lambda c: _regenerate(c, vocab_size=127990),
        "id 127990 'à¹Įà¸ģà¸£' is a regular vocabulary token",
    ),
    "surplus tokens in use": (
        lambda c: _regenerate(c, vocab_size=128005),
        "the surplus added token 128006 '<|start_header_id|>' is in use",
    ),
    "unsupported rope scaling": (
        lambda c: _edit_config(c, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "rope scaling type 'yarn' is not supported",
    ),
    "negative dimensions": (
        lambda c: _negate_shape(c, "model.norm.weight"),
        "tensor 'model.norm.weight' has a negative dimension in its shape",
    ),
    "not a checkpoint": (
        lambda c: (c / "config.json").unlink(),
        "has no config.json",
    ),
    "pickle weights only": (
        lambda c: (c / "model.safetensors").rename(c / "pytorch_model.bin"),
        "only PyTorch pickle weights (pytorch_model.bin)",
    ),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_refused_with_a_reason_before_writing(case: str, pristine: Path, tmp_path: Path) -> None:
    breaker, message = BREAKAGES[case]
    ckpt = _copy(pristine, tmp_path / "ckpt")
    breaker(ckpt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(ckpt, out_dir / "model.gguf", quant="Q4_K_M")
    assert message in str(err.value)
    assert list(out_dir.iterdir()) == []

    result = CliRunner().invoke(convert_command, [str(ckpt), "-o", str(out_dir / "model.gguf")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert message in result.output
    assert list(out_dir.iterdir()) == []


def test_cli_module_runs_and_fails_cleanly(pristine: Path, tmp_path: Path) -> None:
    """`python -m gram_local.convert`: a path on stdout on success, one stderr line on failure."""
    out = tmp_path / "tiny.gguf"
    ok = subprocess.run(
        [sys.executable, "-m", "gram_local.convert", str(pristine), "--quant", "f16", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out) and out.stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "gram_local.convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: not a checkpoint directory") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


def test_cli_refuses_to_replace_without_force(pristine: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    result = CliRunner().invoke(convert_command, [str(pristine), "-q", "F16", "-o", str(out)])
    assert result.exit_code == 2 and "already exists; pass --force" in result.output
    assert out.read_bytes() == b"keep me"
    result = CliRunner().invoke(convert_command, [str(pristine), "-q", "F16", "-o", str(out), "--force"])
    assert result.exit_code == 0 and out.read_bytes()[:4] == b"GGUF"


def test_cli_rejects_unknown_quant_in_one_line(pristine: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(convert_command, [str(pristine), "-q", "Q4KM", "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown quantization 'Q4KM'; choose one of F32, F16, BF16")


def test_runtime_failure_exits_1_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pristine: Path
) -> None:
    """A GGUF llama.cpp cannot read: the quantizer's own reason, exit 1, no output, no scratch file."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ConversionFailed, match=r"llama\.cpp could not quantize"):
        quantize_gguf(broken, tmp_path / "q.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]

    import gram_local.convert as convert

    def failing(*_: object, **__: object) -> Path:
        raise ConversionFailed("llama.cpp could not quantize: simulated")

    monkeypatch.setattr(convert, "quantize_gguf", failing)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = CliRunner().invoke(convert_command, [str(pristine), "-o", str(out_dir / "m.gguf")])
    assert result.exit_code == 1
    assert result.output == "error: llama.cpp could not quantize: simulated\n"
    assert list(out_dir.iterdir()) == []  # the intermediate BF16 file was removed too
