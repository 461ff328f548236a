"""The CPU check: recorded llama.cpp build strings against recorded CPUs, and the CLI's refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gram_local import cpu
from gram_local.config import ENV_CPU_FLAGS_FILE, ENV_SKIP_CPU_CHECK
from gram_local.errors import EXIT_RUNTIME, InputError, UnsupportedCPUError

DATA = Path(__file__).parent / "data" / "cpu"
ROOT = Path(__file__).resolve().parents[1]

# llama_print_system_info() of four builds of llama-cpp-python 0.3.36.
PORTABLE = b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
CI_AVX512 = (
    b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    b"AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
NATIVE_SPR = (
    b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    b"AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
APPLE_METAL = (
    "MTL : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | MATMUL_INT8 = 1 | DOTPROD = 1 | "
    "LLAMAFILE = 1 | ACCELERATE = 1 | REPACK = 1 | "
)
CUDA_PORTABLE = "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | " + PORTABLE.decode()

CPUS = {
    "zen4": "zen4-epyc-9654.txt",
    "skylake": "skylake-i7-6500u.txt",
    "sapphire": "sapphire-rapids-8480.txt",
    "ivybridge": "ivybridge-i5-3470.txt",
    "m2": "apple-m2-sysctl.txt",
    "build_vm": "build-vm-xeon.txt",
    "zen4_kvm": "kvm-epyc-zen4-avx2.txt",  # a Zen 4 whose hypervisor hides AVX-512: the sets of a laptop
}


def flags(name: str) -> cpu.CpuFlags:
    path = DATA / CPUS[name]
    return cpu.parse_cpu_flags(path.read_text(encoding="utf-8"), str(path))


def missing(build: str | bytes, name: str) -> tuple[str, ...]:
    return cpu.check(cpu.parse_system_info(build), flags(name)).missing


def test_system_info_keeps_instruction_sets_of_the_cpu_section_only() -> None:
    assert cpu.parse_system_info(PORTABLE) == ("AVX", "AVX2", "BMI2", "F16C", "FMA", "SSE3", "SSSE3")
    assert cpu.parse_system_info(CUDA_PORTABLE) == cpu.parse_system_info(PORTABLE)
    assert cpu.parse_system_info(APPLE_METAL) == ("ARM_FMA", "DOTPROD", "FP16_VA", "MATMUL_INT8", "NEON")
    assert "AMX_INT8" in cpu.parse_system_info(NATIVE_SPR) and "AMX_INT8" not in cpu.parse_system_info(CI_AVX512)
    assert cpu.parse_system_info("CPU : AVX = 1 | AVX2 = 0 | SVE_CNT = 16 | ") == ("AVX",)


@pytest.mark.parametrize(
    "build, name, expected",
    [
        (PORTABLE, "zen4", ()),
        (PORTABLE, "skylake", ()),
        (PORTABLE, "sapphire", ()),
        (PORTABLE, "build_vm", ()),
        (PORTABLE, "ivybridge", ("AVX2", "BMI2", "FMA")),
        (PORTABLE, "zen4_kvm", ()),
        (CI_AVX512, "zen4_kvm", ("AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI", "AVX_VNNI")),
        (CI_AVX512, "zen4", ("AVX_VNNI",)),
        (CI_AVX512, "skylake", ("AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI", "AVX_VNNI")),
        (CI_AVX512, "sapphire", ()),
        (CI_AVX512, "build_vm", ()),
        (NATIVE_SPR, "sapphire", ()),
        (NATIVE_SPR, "zen4", ("AMX_INT8", "AVX_VNNI")),
        (APPLE_METAL, "m2", ()),
        (APPLE_METAL, "zen4", ("ARM_FMA", "DOTPROD", "FP16_VA", "MATMUL_INT8", "NEON")),
    ],
)
def test_build_against_cpu(build: str | bytes, name: str, expected: tuple[str, ...]) -> None:
    assert missing(build, name) == expected


def test_missing_flags_name_what_the_cpu_lacks() -> None:
    result = cpu.check(cpu.parse_system_info(NATIVE_SPR), flags("zen4"))
    assert result.missing_flags == ("amx_int8", "amx_tile", "avx_vnni")


def test_amx_reported_by_the_cpu_but_refused_by_the_os_is_missing() -> None:
    granted = cpu.with_amx_permission(flags("sapphire"), lambda: True)
    assert cpu.check(cpu.parse_system_info(NATIVE_SPR), granted).ok
    refused = cpu.with_amx_permission(flags("sapphire"), lambda: False)
    result = cpu.check(cpu.parse_system_info(NATIVE_SPR), refused)
    assert result.missing == ("AMX_INT8",) and "avx512f" in (refused.flags or ())
    assert "the CPU reports AMX but the OS does not enable it" in cpu.summary(result)
    # A CPU without AMX never asks the kernel.
    assert cpu.with_amx_permission(flags("zen4"), lambda: pytest.fail("asked")) == flags("zen4")


def test_file_formats() -> None:
    line = flags("skylake")  # a bare `flags :` line after a comment
    whole = flags("ivybridge")  # a whole /proc/cpuinfo, with a `vmx flags` line after `flags`
    assert {"avx2", "fma", "f16c", "bmi2"} <= (line.flags or set()) and line.covers is None
    assert "avx" in (whole.flags or ()) and "avx2" not in (whole.flags or ()) and "ept_x_only" not in (whole.flags or ())
    mac = flags("m2")
    assert {"asimd", "asimddp", "i8mm", "asimdhp"} <= (mac.flags or set()) and "sme" not in (mac.flags or ())
    assert mac.covers is not None and "sme" in mac.covers
    arm = cpu.parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull crc32 cpuid asimdrdm\n", "x")
    assert arm.flags == frozenset(["fp", "asimd", "evtstrm", "aes", "pmull", "crc32", "cpuid", "asimdrdm"])
    assert cpu.check(cpu.parse_system_info(APPLE_METAL), arm).missing == ("DOTPROD", "FP16_VA", "MATMUL_INT8")


def test_sysctl_zero_is_missing_and_an_absent_key_is_unchecked() -> None:
    text = (DATA / CPUS["m2"]).read_text(encoding="utf-8")
    m1_like = cpu.parse_cpu_flags(text.replace("FEAT_I8MM: 1", "FEAT_I8MM: 0"), "m1")
    assert cpu.check(cpu.parse_system_info(APPLE_METAL), m1_like).missing == ("MATMUL_INT8",)
    no_key = cpu.parse_cpu_flags(text.replace("hw.optional.arm.FEAT_I8MM: 1\n", ""), "old macOS")
    result = cpu.check(cpu.parse_system_info(APPLE_METAL), no_key)
    assert result.ok and result.unchecked == ("MATMUL_INT8",)


def test_cannot_tell_skips_the_check_and_says_so() -> None:
    unknown = cpu.parse_cpu_flags("processor\t: 0\nisa\t: rv64imafdcv\n", "/proc/cpuinfo")
    assert unknown.flags is None
    result = cpu.check(cpu.parse_system_info(PORTABLE), unknown)
    assert result.ok and not result.checked
    assert cpu.summary(result).startswith("CPU check skipped: cannot tell")


def test_ensure_supported_refuses_with_the_rebuild_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SKIP_CPU_CHECK, raising=False)
    monkeypatch.setattr(cpu, "compiled_features", lambda: cpu.parse_system_info(CI_AVX512))
    monkeypatch.setenv(ENV_CPU_FLAGS_FILE, str(DATA / CPUS["zen4"]))
    with pytest.raises(UnsupportedCPUError) as info:
        cpu.ensure_supported()
    message = str(info.value)
    assert info.value.exit_code == EXIT_RUNTIME == 1
    assert "AVX_VNNI" in message and str(DATA / CPUS["zen4"]) in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-cache-dir --force-reinstall llama-cpp-python==0.3.36' in message
    assert cpu.PORTABLE_CMAKE_ARGS in message  # Zen 4 runs the x86-64-v3 build
    report = cpu.report()
    assert report["checked"] and report["missing"] == ["AVX_VNNI"] and "FAILED" in report["summary"]

    monkeypatch.setattr(cpu, "compiled_features", lambda: cpu.parse_system_info(PORTABLE))
    monkeypatch.setenv(ENV_CPU_FLAGS_FILE, str(DATA / CPUS["ivybridge"]))
    with pytest.raises(UnsupportedCPUError) as info:
        cpu.ensure_supported()
    assert "AVX2" in str(info.value) and cpu.PORTABLE_CMAKE_ARGS not in str(info.value)  # no AVX2: native only

    monkeypatch.setenv(ENV_SKIP_CPU_CHECK, "1")
    cpu.ensure_supported()
    assert cpu.report()["summary"] == f"CPU check skipped: {ENV_SKIP_CPU_CHECK} is set"


def test_a_bad_flags_file_is_an_input_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_SKIP_CPU_CHECK, raising=False)
    monkeypatch.setattr(cpu, "compiled_features", lambda: cpu.parse_system_info(PORTABLE))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n", encoding="utf-8")
    for path in (empty, tmp_path / "absent.txt"):
        monkeypatch.setenv(ENV_CPU_FLAGS_FILE, str(path))
        with pytest.raises(InputError, match=ENV_CPU_FLAGS_FILE):
            cpu.ensure_supported()
        assert cpu.report()["summary"].startswith("CPU check not run:")


def test_request_amx_permission_answers() -> None:
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("arch_prctl is Linux x86-64")
    assert isinstance(cpu.request_amx_permission(), bool)


def test_cli_refuses_an_ivy_bridge_without_a_traceback(smollm2_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    if "AVX2" not in cpu.compiled_features():
        pytest.skip("this build does not use AVX2")
    env = {**os.environ, ENV_CPU_FLAGS_FILE: str(DATA / CPUS["ivybridge"]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop(ENV_SKIP_CPU_CHECK, None)
    p = subprocess.run(
        [sys.executable, "-m", "gram_local", "compare", "--model", str(smollm2_path), "-q", "q", "-a", "x", "-b", "y",
         "--max-think-tokens", "0"],
        check=False, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 1, p.stderr
    assert "AVX2" in p.stderr and "Illegal instruction" in p.stderr and "Traceback" not in p.stderr
    assert str(DATA / CPUS["ivybridge"]) in p.stderr and "-DGGML_NATIVE=ON" in p.stderr
