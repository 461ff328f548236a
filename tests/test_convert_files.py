"""Output files: reproducible bytes, streamed writing, atomic appearance, quiet quantization."""

from __future__ import annotations

import ctypes
import hashlib
import tracemalloc
from pathlib import Path

import pytest
from random_checkpoint import default_tokenizer_json, write_random_checkpoint

from gram_local.convert import convert_checkpoint, load_checkpoint, quantize_gguf
from gram_local.convert import llama as llama_writer
from gram_local.convert.gguf_info import read_gguf_info


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows of 256: Q4_K_M really uses K-quants here, with no fallback types."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("small"), shape="small", tokenizer_json=default_tokenizer_json()
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("quant", ["F16", "Q4_K_M"])
def test_converting_twice_gives_identical_bytes(quant: str, small: Path, tmp_path: Path) -> None:
    first = convert_checkpoint(small, tmp_path / "a.gguf", quant=quant, nthreads=2)
    second = convert_checkpoint(small, tmp_path / "b.gguf", quant=quant, nthreads=2)
    assert _sha256(first) == _sha256(second)
    types = read_gguf_info(first).tensor_types
    if quant == "Q4_K_M":
        assert types["blk.0.attn_q.weight"] == "Q4_K" and types["token_embd.weight"] == "Q6_K"
    else:
        assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_norm.weight"] == "F32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]  # no scratch left


def test_tensors_are_streamed_not_held(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With small slabs, writing a 131 MB F32 embedding never holds more than a few MB of arrays."""
    checkpoint = load_checkpoint(small)
    embedding = checkpoint.tensors["model.embed_tokens.weight"]
    assert embedding.n_rows * embedding.row_elems * 4 > 100e6
    peaks: list[int] = []

    class TracedReader(llama_writer.TensorReader):
        """Traces allocations while tensors are copied (metadata packing is not streamed)."""

        def __enter__(self) -> TracedReader:
            tracemalloc.start()
            return self

        def __exit__(self, *exc: object) -> None:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            super().__exit__(*exc)

    monkeypatch.setattr(llama_writer, "_SLAB_ELEMS", 1 << 18)
    monkeypatch.setattr(llama_writer, "TensorReader", TracedReader)
    llama_writer.write_gguf(checkpoint, tmp_path / "f32.gguf", "F32")
    assert len(peaks) == 1 and peaks[0] < 8e6, peaks
    assert (tmp_path / "f32.gguf").stat().st_size > embedding.n_rows * embedding.row_elems * 4


def test_an_interrupted_conversion_leaves_nothing(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"the previous model")
    calls = 0
    real = llama_writer._tensor_slabs

    def interrupt_midway(*args: object):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(llama_writer, "_tensor_slabs", interrupt_midway)
    for quant in ("F16", "Q8_0"):
        calls = 0
        with pytest.raises(KeyboardInterrupt):
            convert_checkpoint(small, out, quant=quant)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
        assert out.read_bytes() == b"the previous model"


def test_the_converter_reports_progress_and_never_draws(
    small: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    heard: list[tuple[str, float, float, str]] = []
    convert_checkpoint(small, tmp_path / "heard.gguf", quant="Q8_0", on_progress=lambda *a: heard.append(a))
    assert capfd.readouterr() == ("", "")  # the library writes nothing to the terminal
    stages = list(dict.fromkeys(stage for stage, *_ in heard))
    assert stages == ["converting", "quantizing to Q8_0"]
    for stage, unit in zip(stages, ("bytes", "tensors")):
        seen = [(done, total) for s, done, total, u in heard if s == stage and u == unit]
        assert seen and seen[-1][0] == seen[-1][1] > 0, stage  # each stage ends complete
        assert [d for d, _ in seen] == sorted(d for d, _ in seen), stage  # and never goes back


def test_the_convert_command_draws_its_bars_only_when_asked_or_on_a_terminal(small: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gram_local.convert.__main__ import convert_command

    quiet = CliRunner().invoke(convert_command, [str(small), "-o", str(tmp_path / "quiet.gguf"), "-q", "Q8_0"])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # stderr is not a terminal here
    shown = CliRunner().invoke(convert_command, [str(small), "-o", str(tmp_path / "shown.gguf"), "-q", "Q8_0", "--progress"])
    assert shown.exit_code == 0, shown.output
    assert "converting 100%" in shown.stderr and "quantizing to Q8_0 100%" in shown.stderr


def test_quantization_is_silent_and_restores_the_log_callback(
    small: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    bf16 = convert_checkpoint(small, tmp_path / "bf16.gguf", quant="BF16")

    def current_callback() -> int | None:
        callback, data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(data))
        return ctypes.cast(callback, ctypes.c_void_p).value

    before = current_callback()
    quantize_gguf(bf16, tmp_path / "q6.gguf", "q6_k", nthreads=2)
    assert capfd.readouterr() == ("", "")  # llama.cpp logs a few lines per tensor otherwise
    assert current_callback() == before
    info = read_gguf_info(tmp_path / "q6.gguf")
    assert info.metadata["general.file_type"] == 18 and info.tensor_types["blk.0.ffn_up.weight"] == "Q6_K"


def test_quantize_failures_name_llama_cpps_errors_not_its_warnings() -> None:
    from gram_local.convert.quantize import _LogSink

    sink = _LogSink("quantizing to Q4_K_M", None)
    sink(2, b"llama_model_quantize_impl: loading model\n", None)  # INFO
    sink(3, b"a tensor is not a multiple of 256; falling back\n", None)  # WARN
    sink(4, b"failed to open out.gguf: No space left on device\n", None)  # ERROR
    assert sink.reason() == "failed to open out.gguf: No space left on device"
    quiet = _LogSink("quantizing to Q4_K_M", None)
    quiet(2, b"one\n", None)
    quiet(3, b"two\n", None)
    assert quiet.reason() == "one; two"  # no error logged: the last lines say what happened
