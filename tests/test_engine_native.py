"""The llama.cpp room: its log levels, native handles freed on failure, refusals before native code."""

from __future__ import annotations

from pathlib import Path

import llama_cpp as llama
import pytest

from gram_local.backend import GenerationRequest
from gram_local.config import EngineSettings
from gram_local.engine import Engine, build, native
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
    cache clear. Interrupted in between, the copy could land at the next decode over whatever the
    next requests put in that stream: here two unrelated prompts prefilled side by side in streams
    0 and 1. Their answers must be those of a fresh engine. (Measured: keeping the context and only
    clearing the streams passed this too, so the stale copy did no visible harm here; the engine
    drops the whole context after an interrupted step all the same, which does not depend on the
    order in which llama.cpp applies queued copies.)"""
    from gram_local.errors import Cancelled

    settings = EngineSettings(parallel=2, kv_unified=False, flash_attn=False, speculative=False, head_cache=False)
    shared = list(range(1000, 1200))
    first = GenerationRequest(prompt=shared + [5, 6, 7], max_think_tokens=8)  # still decoding when `second` comes
    second = GenerationRequest(prompt=shared + [8, 9], at_answer_slot=True)  # placed by copying `shared`
    x = GenerationRequest(prompt=list(range(2000, 2150)), at_answer_slot=True)
    y = GenerationRequest(prompt=list(range(3000, 3090)), at_answer_slot=True)

    fresh = Engine(smollm2_path, settings)
    expected = [(g.answer, g.logit_a, g.logit_b) for g in fresh.generate([x, y])]
    fresh.close()

    engine = Engine(smollm2_path, settings)
    copied = {"n": 0}
    real_copy, real_decode = engine.kv.copy_prefix, engine.stepper.decode

    def copy_prefix(src: int, dst: int, n: int) -> None:
        copied["n"] += 1
        real_copy(src, dst, n)

    def decode(placed, *, prefill: bool):  # type: ignore[no-untyped-def]
        if copied["n"]:
            raise KeyboardInterrupt  # after the copy was queued, before llama.cpp applied it
        return real_decode(placed, prefill=prefill)

    monkeypatch.setattr(engine.kv, "copy_prefix", copy_prefix)
    monkeypatch.setattr(engine.stepper, "decode", decode)
    with pytest.raises((KeyboardInterrupt, Cancelled)):
        engine.generate([first, second])
    assert copied["n"] >= 1, "the second prompt never copied its shared prefix between streams"
    monkeypatch.setattr(engine.stepper, "decode", real_decode)
    monkeypatch.setattr(engine.kv, "copy_prefix", real_copy)
    got = [(g.answer, g.logit_a, g.logit_b) for g in engine.generate([x, y])]
    engine.close()
    for (answer, logit_a, logit_b), (got_answer, got_a, got_b) in zip(expected, got):
        assert got_answer == answer and got_a == pytest.approx(logit_a, abs=1e-3) and got_b == pytest.approx(logit_b, abs=1e-3)


def test_a_build_with_amx_never_puts_weights_in_amx_buffers(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat, or SIGILL where the OS
    withholds AMX); they are only reached through the extra buffer types, so those stay off."""
    import gram_local.engine.core as core

    loaded: list[bool] = []
    real_model = core.LlamaModel

    def model(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(kwargs["repack"])
        return real_model(*args, **kwargs)

    monkeypatch.setattr(core, "LlamaModel", model)
    monkeypatch.setattr(core, "amx_compiled", lambda: True)
    engine = Engine(smollm2_path, EngineSettings(parallel=1, repack=True, cpu_check=False))
    assert engine.amx_build and engine.repack is False and loaded == [False]
    engine.close()
    # The installed build as it is: repacked unless it really has AMX (a native build on an AMX CPU).
    monkeypatch.undo()
    monkeypatch.setattr(core, "LlamaModel", model)
    has_amx = build.amx_compiled()
    engine = Engine(smollm2_path, EngineSettings(parallel=1, repack=True))
    assert engine.amx_build is has_amx and engine.repack is not has_amx and loaded == [False, not has_amx]
    engine.close()


def _steps_request(start: int, budget: int) -> GenerationRequest:
    """A prompt of plain tokens and a think that runs exactly `budget` tokens (no early close)."""
    return GenerationRequest(prompt=list(range(start, start + 60)), max_think_tokens=budget, allow_close=False)


def test_a_request_submitted_while_another_decodes_joins_the_running_batch(smollm2_path: Path) -> None:
    from gram_local.backend import RequestState

    settings = EngineSettings(parallel=2, speculative=False, head_cache=False, n_threads=1)
    engine = Engine(smollm2_path, settings)
    try:
        # The context grows only while idle; a service reserves its streams up front, as here.
        engine.reserve(2, _steps_request(0, 12).context_needed)
        first = engine.submit(_steps_request(1000, 12))
        engine.step()
        engine.step()
        assert first.state is RequestState.DECODING
        second = engine.submit(_steps_request(2000, 12))
        engine.wait([first, second])
        together = engine.stats.steps
        assert [h.result().think_tokens for h in (first, second)] == [12, 12]

        engine.clear_cache()
        before = engine.stats.steps
        for start in (1000, 2000):
            handle = engine.submit(_steps_request(start, 12))
            engine.wait([handle])
        one_after_the_other = engine.stats.steps - before
    finally:
        engine.close()
    # Alone each takes a prefill step, 12 think steps and its answer; together the second's
    # steps overlap the first's, so the pair ends in fewer steps than the two in a row.
    assert together < one_after_the_other, (together, one_after_the_other)


def test_a_cancelled_request_frees_its_slot_for_a_waiting_one(smollm2_path: Path) -> None:
    from gram_local.backend import RequestState

    engine = Engine(smollm2_path, EngineSettings(parallel=1, speculative=False, head_cache=False, n_threads=1))
    try:
        running = engine.submit(_steps_request(1000, 200))
        waiting = engine.submit(_steps_request(2000, 4))
        engine.step()
        assert running.state in (RequestState.PREFILLING, RequestState.DECODING)
        assert waiting.state is RequestState.WAITING  # one slot, and it is taken
        running.cancel()
        engine.step()
        assert running.state is RequestState.CANCELLED and engine.stats.cancelled == 1
        assert waiting.state in (RequestState.PREFILLING, RequestState.DECODING)  # it took the freed slot
        engine.wait([waiting])
        assert waiting.result().think_tokens == 4
        assert engine.stats.generated_tokens < 200  # the cancelled request stopped where it was
    finally:
        engine.close()


def test_a_suspended_compare_many_does_not_block_a_new_compare_on_llama_cpp(smollm2_path: Path) -> None:
    """The deadlock of a lock held across `yield`, on the real engine: a compare started while a
    compare_many iterator sits between two results finishes, and so does the iterator."""
    import threading

    from helpers import make_judge

    judge = make_judge(smollm2_path, max_think_tokens=4, parallel=2, n_threads=1, head_cache=False)
    try:
        items = [(f"Question {i}?", "Yes.", "No.") for i in range(4)]
        pending = judge.compare_many(items)
        first = next(pending)
        done: dict[str, object] = {}
        worker = threading.Thread(target=lambda: done.setdefault("result", judge.compare("Another?", "A.", "B.")))
        worker.start()
        worker.join(timeout=300)
        assert not worker.is_alive(), "a compare waited on a suspended compare_many"
        rest = list(pending)
    finally:
        judge.close()
    assert done["result"].winner in ("a", "b", "tie")  # type: ignore[attr-defined]
    assert len(rest) == 3 and first.winner in ("a", "b", "tie")


def test_a_context_too_big_to_allocate_is_retried_with_fewer_sequences() -> None:
    from gram_local.engine.kv import KvCache
    from gram_local.errors import ContextAllocationError

    kv = KvCache.__new__(KvCache)  # only its sizing policy, over a stand-in for llama.cpp
    made: list[tuple[int, int]] = []

    def ensure(n_seq: int, n_ctx_seq: int) -> None:
        if n_seq * n_ctx_seq > 3000:
            raise ContextAllocationError(f"{n_seq} x {n_ctx_seq} cells do not fit")
        made.append((n_seq, n_ctx_seq))

    kv.ensure = ensure  # type: ignore[method-assign]
    assert kv.ensure_most(8, lambda n: 1000 + n) == 2 and made == [(2, 1002)]
    with pytest.raises(ContextAllocationError, match="1 x 5000"):
        kv.ensure_most(8, lambda n: 5000)


def test_a_vocabulary_used_after_its_model_is_closed_is_an_error_not_a_crash(smollm2_path: Path) -> None:
    """A thread still tokenizing after a close (a server's reply arriving late) gets a clear error
    instead of reading freed memory, which aborted the whole process."""
    from gram_local.engine.vocab import LlamaVocab

    model = native.LlamaModel(str(smollm2_path), vocab_only=True)
    vocab = LlamaVocab(model)
    assert vocab.tokenize("A") == [vocab.token_a]
    model.close()
    for use in (lambda: vocab.tokenize("A"), lambda: vocab.piece(vocab.token_a), lambda: vocab.is_eog(0)):
        with pytest.raises(ModelError, match="after the model was closed"):
            use()
