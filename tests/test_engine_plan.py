"""How the engine runs, decided from settings and the build without a model."""

from __future__ import annotations

import pytest

from gram_local.config import EngineSettings
from gram_local.engine.plan import plan_engine
from gram_local.errors import InputError


def test_a_cpu_build_uses_streams_plain_attention_and_repacked_weights() -> None:
    plan = plan_engine(EngineSettings(), gpu_offload=False, amx_build=False, n_cpus=2)
    assert (plan.offloading, plan.n_gpu_layers, plan.kv_unified, plan.flash_attn) == (False, 0, False, False)
    assert plan.repack and not plan.speculative and plan.n_threads == 2


def test_an_offloading_build_uses_one_unified_cache_flash_attention_and_drafts() -> None:
    plan = plan_engine(EngineSettings(), gpu_offload=True, amx_build=False, n_cpus=16)
    assert (plan.offloading, plan.n_gpu_layers, plan.kv_unified, plan.flash_attn, plan.speculative) == (True, 999, True, True, True)
    off = plan_engine(EngineSettings(n_gpu_layers=0), gpu_offload=True, amx_build=False, n_cpus=16)
    assert not off.offloading and not off.kv_unified and not off.speculative


def test_amx_in_the_build_turns_the_extra_buffer_types_off() -> None:
    assert not plan_engine(EngineSettings(repack=True), gpu_offload=False, amx_build=True, n_cpus=2).repack
    assert not plan_engine(EngineSettings(repack=False), gpu_offload=False, amx_build=False, n_cpus=2).repack


def test_q8_0_kv_needs_flash_attention() -> None:
    assert plan_engine(EngineSettings(kv_type="q8_0"), gpu_offload=False, amx_build=False, n_cpus=2).flash_attn
    with pytest.raises(InputError, match="needs flash attention"):
        plan_engine(EngineSettings(kv_type="q8_0", flash_attn=False), gpu_offload=False, amx_build=False, n_cpus=2)


def test_explicit_choices_win() -> None:
    plan = plan_engine(EngineSettings(kv_unified=True, parallel=4, n_threads=3), gpu_offload=False, amx_build=False, n_cpus=2)
    assert plan.kv_unified and plan.flash_attn and plan.n_threads == 3  # unified with several sequences: flash attention
