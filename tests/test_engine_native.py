"""The llama.cpp room: its log levels, native handles freed on failure, refusals before native code."""

from __future__ import annotations

from pathlib import Path

import llama_cpp as llama
import pytest

from gram_local.backend import GenerationRequest
from gram_local.config import EngineSettings
from gram_local.engine import Engine, native
from gram_local.errors import EngineError, InputError, ModelError


def test_llama_cpp_errors_and_warnings_are_kept_and_info_is_not() -> None:
    native.init_backend()
    native.take_log_messages()
    callback = native._log_callback
    callback(2, b"llama_model_loader: loaded meta data\n", None)  # INFO
    callback(3, b"a warning\n", None)  # WARN
    callback(4, b"failed to read tensor info", None)  # ERROR
    callback(5, b" (continued)\n", None)  # CONT of the error
    callback(2, b"info again\n", None)
    callback(5, b" continued info\n", None)  # CONT of info: dropped too
    assert native.take_log_messages() == "a warning; failed to read tensor info; (continued)"


def test_a_file_llama_cpp_cannot_load_is_a_model_error_with_its_reason(tmp_path: Path, smollm2_path: Path) -> None:
    # A real GGUF whose tensor data is cut off: the header reads, llama.cpp's loader fails.
    data = smollm2_path.read_bytes()
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as info:
        native.LlamaModel(str(broken), n_gpu_layers=0, repack=False, use_mmap=True)
    message = str(info.value)
    assert "cut.gguf" in message and "data is not within the file bounds" in message  # llama.cpp's own words


def test_the_sampler_chain_is_freed_when_the_grammar_is_refused(monkeypatch: pytest.MonkeyPatch, smollm2_path: Path) -> None:
    model = native.LlamaModel(str(smollm2_path), n_gpu_layers=0, repack=False, use_mmap=True, vocab_only=True)
    freed: list[object] = []
    real_free = llama.llama_sampler_free
    monkeypatch.setattr(native.llama, "llama_sampler_init_grammar", lambda *args: None)
    monkeypatch.setattr(native.llama, "llama_sampler_free", lambda s: (freed.append(s), real_free(s)))
    with pytest.raises(EngineError, match="rejected the format grammar"):
        native.SamplerChain(model.vocab_ptr, greedy=True, temperature=0.0, top_p=1.0, seed=0, grammar="root ::= x")
    assert len(freed) == 1  # the chain made before the grammar failed


def test_an_empty_prompt_is_refused_at_submit(smollm2_path: Path) -> None:
    engine = Engine(smollm2_path, EngineSettings(parallel=1))
    try:
        with pytest.raises(InputError, match="at least one token"):
            engine.submit(GenerationRequest(prompt=[]))
        assert not engine.busy()
    finally:
        engine.close()


def test_an_interrupt_between_a_stream_copy_and_its_decode_leaves_no_stale_copy(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp queues a copy between KV streams until the next decode and keeps it through a
    cache clear: interrupted in between, the copy must not land on a later sequence's cells."""
    from helpers import make_judge

    from gram_local.errors import Cancelled

    options = dict(max_think_tokens=12, n_parallel=2, kv_unified=False, head_cache=False, temperature=0.0, seed=3)
    question, a, b = "Which is a fruit?", "An apple is a fruit.", "A car is a vehicle."
    fresh = make_judge(smollm2_path, **options)
    expected = [(j.order, j.answer, j.think_tokens, round(j.p_a, 5)) for j in fresh.compare(question, a, b, swap=True).judgments]
    fresh.close()

    judge = make_judge(smollm2_path, **options)
    engine = judge.backend
    copied = {"n": 0}
    real_copy, real_decode = engine._copy_prefix, engine._decode

    def copy_prefix(src: int, dst: int, n: int) -> None:
        copied["n"] += 1
        real_copy(src, dst, n)

    def decode(placed, *, prefill: bool) -> None:
        if copied["n"]:
            raise KeyboardInterrupt  # after the copy was queued, before llama.cpp applied it
        real_decode(placed, prefill=prefill)

    monkeypatch.setattr(engine, "_copy_prefix", copy_prefix)
    monkeypatch.setattr(engine, "_decode", decode)
    with pytest.raises((KeyboardInterrupt, Cancelled)):
        judge.compare(question, a, b, swap=True)
    assert copied["n"] >= 1, "the swap never copied its shared prefix between streams"
    monkeypatch.setattr(engine, "_decode", real_decode)
    again = [(j.order, j.answer, j.think_tokens, round(j.p_a, 5)) for j in judge.compare(question, a, b, swap=True).judgments]
    judge.close()
    assert again == expected


def test_a_build_with_amx_never_puts_weights_in_amx_buffers(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat, or SIGILL where the OS
    withholds AMX); they are only reached through the extra buffer types, so those stay off."""
    import gram_local.engine.core as core

    real = native.system_info()
    loaded: list[bool] = []
    real_model = core.LlamaModel

    def model(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(kwargs["repack"])
        return real_model(*args, **kwargs)

    monkeypatch.setattr(core, "LlamaModel", model)
    monkeypatch.setattr(core, "system_info", lambda: real.replace("AVX2 = 1", "AVX2 = 1 | AMX_INT8 = 1"))
    engine = Engine(smollm2_path, EngineSettings(parallel=1, repack=True, cpu_check=False))
    assert engine.amx_build and engine.repack is False and loaded == [False]
    engine.close()
    monkeypatch.setattr(core, "system_info", lambda: real)
    engine = Engine(smollm2_path, EngineSettings(parallel=1, repack=True))
    assert not engine.amx_build and engine.repack is True and loaded == [False, True]
    engine.close()
