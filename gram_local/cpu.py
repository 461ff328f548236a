"""Refuse to load a model on a CPU that lacks an instruction set the installed llama.cpp uses.

A llama.cpp compiled for another CPU does not fail politely: its first matrix kernel stops the
process with SIGILL ("Illegal instruction"), with no message and no exit code of ours. llama.cpp
reports the instruction sets it was compiled with; the CPU (and, for AMX, the kernel) reports what
it runs. Comparing the two before the first load turns that crash into an error saying how to
rebuild. Where the CPU cannot be read the check is skipped and says so: it never blocks a load on
a guess.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gram_local.config import ENV_CPU_FLAGS_FILE, ENV_SKIP_CPU_CHECK
from gram_local.errors import InputError, UnsupportedCPUError

# Each instruction set llama.cpp's CPU backend reports (ggml_backend_cpu_get_features) and the CPU
# flags it needs, in Linux /proc/cpuinfo spelling (x86 `flags`, AArch64 `Features`). AVX512 is
# compiled as -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw; AMX needs the tile state too.
REQUIRES: dict[str, frozenset[str]] = {
    name: frozenset(flags.split())
    for name, flags in {
        "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX_VNNI": "avx_vnni", "AVX2": "avx2",
        "F16C": "f16c", "FMA": "fma", "BMI2": "bmi2",
        "AVX512": "avx512f avx512cd avx512vl avx512dq avx512bw", "AVX512_VBMI": "avx512vbmi",
        "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_tile amx_int8",
        "NEON": "asimd", "ARM_FMA": "asimd", "FP16_VA": "asimdhp", "DOTPROD": "asimddp",
        "MATMUL_INT8": "i8mm", "SVE": "sve", "SME": "sme", "SME2": "sme2",
    }.items()
}
# Instruction sets llama.cpp reports that no reader here can check (RISC-V, POWER, s390x, wasm).
# LLAMAFILE, OPENMP, REPACK, ACCELERATE, KLEIDIAI... are code paths, not instruction sets.
UNCHECKABLE = frozenset({"RISCV_V", "VSX", "VXE", "WASM_SIMD"})

# macOS `sysctl hw.optional` keys, renamed to the Linux flags above.
SYSCTL_FLAGS: dict[str, str] = {
    "hw.optional.sse3": "pni", "hw.optional.supplementalsse3": "ssse3", "hw.optional.avx1_0": "avx",
    "hw.optional.avx2_0": "avx2", "hw.optional.fma": "fma", "hw.optional.f16c": "f16c",
    "hw.optional.bmi2": "bmi2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512cd": "avx512cd",
    "hw.optional.avx512vl": "avx512vl", "hw.optional.avx512dq": "avx512dq",
    "hw.optional.avx512bw": "avx512bw", "hw.optional.avx512vbmi": "avx512vbmi",
    "hw.optional.neon": "asimd", "hw.optional.AdvSIMD": "asimd", "hw.optional.neon_fp16": "asimdhp",
    "hw.optional.arm.FEAT_FP16": "asimdhp", "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_SME": "sme", "hw.optional.arm.FEAT_SME2": "sme2",
}

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
NATIVE_CMAKE_ARGS = "-DGGML_NATIVE=ON"
# x86-64-v3: every x86 CPU with AVX2 (Intel Haswell, AMD Zen 1 and later).
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF"
)
_PORTABLE_NEEDS = frozenset({"avx", "avx2", "fma", "f16c", "bmi2"})


@dataclass(frozen=True)
class CpuFlags:
    """What a CPU reports. `flags` None: cannot tell; `covers` None: absence of a flag is meaningful."""

    flags: frozenset[str] | None
    source: str
    covers: frozenset[str] | None = None
    note: str = ""


@dataclass(frozen=True)
class CpuCheck:
    compiled: tuple[str, ...]
    cpu: CpuFlags
    missing: tuple[str, ...] = ()
    missing_flags: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()

    @property
    def checked(self) -> bool:
        return self.cpu.flags is not None

    @property
    def ok(self) -> bool:
        return not self.missing


def parse_system_info(info: str | bytes) -> tuple[str, ...]:
    """The instruction sets in the CPU section of `llama_print_system_info()`, sorted."""
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else info
    section, found = "", set()
    for item in text.split("|"):
        if " : " in item:  # "CPU : SSE3 = 1": a backend's name opens its section
            section, item = item.split(" : ", 1)
            section = section.strip()
        name, _, value = item.partition("=")
        name = name.strip()
        if section == "CPU" and (name in REQUIRES or name in UNCHECKABLE) and value.strip() not in ("", "0"):
            found.add(name)
    return tuple(sorted(found))


def parse_cpu_flags(text: str, source: str) -> CpuFlags:
    """Flags from a /proc/cpuinfo (whole, or its `flags`/`Features` line) or `sysctl` output."""
    flags: set[str] = set()
    covers: set[str] = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            key, sep, value = line.partition("=")
        key = key.strip()
        if key in SYSCTL_FLAGS:
            covers.add(SYSCTL_FLAGS[key])
            if value.strip() not in ("", "0"):
                flags.add(SYSCTL_FLAGS[key])
        elif key.lower() in ("flags", "features"):
            return CpuFlags(frozenset(value.split()), source)
    if covers:
        return CpuFlags(frozenset(flags), source, covers=frozenset(covers))
    return CpuFlags(None, f"cannot tell: no flags line in {source}")


def check(compiled: Iterable[str], cpu: CpuFlags) -> CpuCheck:
    """Which compiled instruction sets the CPU lacks (pure)."""
    names = tuple(sorted(set(compiled)))
    if cpu.flags is None:
        return CpuCheck(names, cpu, unchecked=names)
    missing: list[str] = []
    missing_flags: set[str] = set()
    unchecked: list[str] = []
    for name in names:
        needs = REQUIRES.get(name)
        if needs is None or (cpu.covers is not None and not needs <= cpu.covers):
            unchecked.append(name)
        elif not needs <= cpu.flags:
            missing.append(name)
            missing_flags |= needs - cpu.flags
    return CpuCheck(names, cpu, tuple(missing), tuple(sorted(missing_flags)), tuple(unchecked))


def request_amx_permission() -> bool:
    """Ask Linux for the AMX tile state, as llama.cpp does; False where the kernel refuses it."""
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return True  # cannot ask: do not refuse on a guess
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]
    # SYS_arch_prctl (x86-64), ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return int(syscall(158, 0x1023, 18)) == 0


def with_amx_permission(cpu: CpuFlags, granted: Callable[[], bool]) -> CpuFlags:
    """Drop AMX from the flags when the CPU reports it but the OS does not let this process use it."""
    if cpu.flags is None or "amx_tile" not in cpu.flags or granted():
        return cpu
    kept = frozenset(f for f in cpu.flags if not f.startswith("amx_"))
    return CpuFlags(kept, cpu.source, cpu.covers, "the CPU reports AMX but the OS does not enable it")


def compiled_features() -> tuple[str, ...]:
    from gram_local.engine.build import system_info

    return parse_system_info(system_info())


def machine_cpu_flags() -> CpuFlags:
    """This machine's flags, or those of the file named by GRAM_LOCAL_CPU_FLAGS_FILE."""
    override = os.environ.get(ENV_CPU_FLAGS_FILE)
    if override:
        try:
            text = Path(override).expanduser().read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InputError(f"{ENV_CPU_FLAGS_FILE}: cannot read {override}: {exc.strerror}") from None
        cpu = parse_cpu_flags(text, f"{ENV_CPU_FLAGS_FILE}={override}")
        if cpu.flags is None:
            raise InputError(f"{ENV_CPU_FLAGS_FILE}: {override} holds no cpuinfo flags line or sysctl hw.optional keys")
        return cpu
    system = platform.system()
    if system == "Linux":
        try:
            return parse_cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"), "/proc/cpuinfo")
        except OSError:
            return CpuFlags(None, "cannot tell: /proc/cpuinfo is unreadable")
    if system == "Darwin":
        try:
            done = subprocess.run(["sysctl", "hw.optional"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return CpuFlags(None, "cannot tell: sysctl did not run")
        return parse_cpu_flags(done.stdout, "sysctl hw.optional")
    return CpuFlags(None, f"cannot tell: no CPU flag reader for {system or 'this system'}")


def skip_requested() -> bool:
    return os.environ.get(ENV_SKIP_CPU_CHECK, "").strip().lower() not in ("", "0", "false", "no", "off")


def current_check(
    compiled: tuple[str, ...] | None = None, amx_granted: Callable[[], bool] = request_amx_permission
) -> CpuCheck:
    """The installed build against this machine (the kernel asked about AMX only when it matters)."""
    compiled = compiled_features() if compiled is None else compiled
    cpu = machine_cpu_flags()
    on_linux_x86 = platform.system() == "Linux" and platform.machine().lower() in ("x86_64", "amd64")
    if "AMX_INT8" in compiled and cpu.source == "/proc/cpuinfo" and on_linux_x86:
        cpu = with_amx_permission(cpu, amx_granted)
    return check(compiled, cpu)


def summary(result: CpuCheck) -> str:
    if not result.checked:
        return f"CPU check skipped: {result.cpu.source}"
    note = f"; {result.cpu.note}" if result.cpu.note else ""
    if result.missing:
        return (f"CPU check FAILED: the llama.cpp build uses {', '.join(result.missing)}, which this CPU lacks "
                f"(flags from {result.cpu.source}{note})")
    extra = f"; not checkable here: {', '.join(result.unchecked)}" if result.unchecked else ""
    return f"CPU check ok: this CPU has every instruction set the build uses (flags from {result.cpu.source}{note}{extra})"


def report() -> dict[str, Any]:
    """The check as `doctor` shows it: a bad GRAM_LOCAL_CPU_FLAGS_FILE is reported, not raised."""
    compiled = compiled_features()
    if skip_requested():
        result, why = CpuCheck(compiled, CpuFlags(None, "")), f"CPU check skipped: {ENV_SKIP_CPU_CHECK} is set"
    else:
        try:
            result = current_check(compiled)
            why = summary(result)
        except InputError as exc:
            result, why = CpuCheck(compiled, CpuFlags(None, "")), f"CPU check not run: {exc}"
    return {"summary": why, "compiled": list(result.compiled), "cpu_source": result.cpu.source or None,
            "missing": list(result.missing), "missing_flags": list(result.missing_flags),
            "unchecked": list(result.unchecked), "checked": result.checked, "note": result.cpu.note}


def refusal(result: CpuCheck) -> str:
    """The error text: what is missing, where the flags came from, and how to rebuild."""
    note = f"; {result.cpu.note}" if result.cpu.note else ""
    lines = [
        (f"this llama-cpp-python build uses instruction sets this CPU lacks: {', '.join(result.missing)} "
         f"(CPU flags from {result.cpu.source}{note}); loading a model would stop with 'Illegal instruction'."),
        "Rebuild it for this machine:",
        f'  CMAKE_ARGS="{NATIVE_CMAKE_ARGS}" pip install --no-cache-dir --force-reinstall {LLAMA_CPP_PYTHON}',
    ]
    if result.cpu.flags is not None and _PORTABLE_NEEDS <= result.cpu.flags:
        lines += ["or build once for every x86-64 CPU with AVX2 (x86-64-v3):",
                  f'  CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --no-cache-dir --force-reinstall {LLAMA_CPP_PYTHON}']
    lines.append(f"({ENV_SKIP_CPU_CHECK}=1 loads anyway.)")
    return "\n".join(lines)


def ensure_supported() -> None:
    """Raise UnsupportedCPUError before a load that would crash; call before the first model load."""
    if skip_requested():
        return
    result = current_check()
    if result.missing:
        raise UnsupportedCPUError(refusal(result))
