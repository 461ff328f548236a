"""scripts/check_portable_build.py: which disassembled instructions are beyond x86-64-v3."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_portable_build.py"


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_portable_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "text, kind",
    [
        ("vpdpbusd %zmm1,%zmm2,%zmm3", "AVX512-VNNI"),
        ("{vex} vpdpbusd 0x4(%r9),%ymm0,%ymm2", "AVX-VNNI"),
        ("{vex} vpdpwssd %ymm1,%ymm2,%ymm3", "AVX-VNNI"),
        ("vmovups (%rax),%zmm0", "AVX-512"),
        ("vaddps %ymm1,%ymm2,%ymm3{%k1}", "AVX-512"),
        ("kmovw %k1,%eax", "AVX-512"),
        ("{evex} vpaddd %ymm1,%ymm2,%ymm3", "AVX-512"),
        ("vpaddd %ymm17,%ymm2,%ymm3", "AVX-512"),
        ("vpternlogd $0xff,%ymm0,%ymm0,%ymm0", "AVX-512"),
        ("vpmovdb %ymm0,%xmm1", "AVX-512"),
        ("vmovdqu8 (%rax),%ymm1", "AVX-512"),
        ("vcvtne2ps2bf16 %ymm1,%ymm2,%ymm3", "AVX-512"),
        ("tileloadd (%rsi,%rdx,1),%tmm0", "AMX"),
        ("tilezero %tmm1", "AMX"),
        ("tdpbssd %tmm2,%tmm1,%tmm0", "AMX"),
        ("ldtilecfg (%rdi)", "AMX"),
        # x86-64-v3 (AVX2, FMA, F16C, BMI2) and older: accepted.
        ("vpmaddubsw %ymm1,%ymm2,%ymm3", None),
        ("vfmadd231ps %ymm1,%ymm2,%ymm3", None),
        ("vcvtph2ps (%rax),%ymm0", None),
        ("vpmovzxbw %xmm0,%ymm1", None),
        ("vpmovmskb %ymm0,%eax", None),
        ("vpermd %ymm1,%ymm2,%ymm3", None),
        ("vperm2i128 $0x20,%ymm1,%ymm2,%ymm3", None),
        ("vinserti128 $0x1,%xmm1,%ymm2,%ymm3", None),
        ("vmovdqu (%rax),%ymm15", None),
        ("vpshufb %ymm1,%ymm2,%ymm3", None),
        ("shlx %rax,%rbx,%rcx", None),
        ("lock cmpxchg %rcx,(%rdx)", None),
        ("popcnt %rax,%rbx", None),
        ("vptest %ymm0,%ymm0", None),
    ],
)
def test_classify(checker: ModuleType, text: str, kind: str | None) -> None:
    assert checker.classify(text) == kind


def test_scan_names_functions_and_counts(checker: ModuleType) -> None:
    dump = """
libggml-cpu.so:     file format elf64-x86-64

Disassembly of section .text:

0000000000012340 <ggml_vec_dot_q4_1_q8_1>:
   12340:\tvpmaddubsw %ymm1,%ymm2,%ymm3
   12345:\t{vex} vpdpbusd 0x4(%r9),%ymm0,%ymm2
   1234a:\t{vex} vpdpbusd %ymm5,%ymm6,%ymm2
   1234f:\tret

0000000000012350 <plain_avx2>:
   12350:\tvfmadd231ps %ymm1,%ymm2,%ymm3
   12355:\tret
"""
    result = checker.scan(dump.splitlines())
    assert (result.functions, result.instructions) == (2, 6)
    assert result.offending == {"ggml_vec_dot_q4_1_q8_1": {"AVX-VNNI": ("{vex} vpdpbusd 0x4(%r9),%ymm0,%ymm2", 2)}}
    clean = checker.scan(dump.replace("{vex} vpdpbusd", "vpaddd").splitlines())
    assert clean.offending == {} and clean.instructions == 6


def test_missing_objdump_is_exit_2(checker: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "")
    assert checker.main([str(SCRIPT)]) == 2
    assert "objdump is not installed" in capsys.readouterr().err
