"""Check that a llama.cpp CPU library runs on every x86-64-v3 CPU (AVX2, FMA, F16C, BMI2).

llama.cpp's build flags are easy to get wrong (`-DGGML_NATIVE=ON` is the default, and one extra
`-DGGML_AVX_VNNI=ON` is enough to crash every AMD Zen 2-4 CPU), and the build's own report only
says what the compiler was asked for. This reads the machine code itself: any AVX-512 (zmm or
mask registers, EVEX-only registers and mnemonics), AVX-VNNI or AMX instruction fails the check.

    python scripts/check_portable_build.py [path/to/libggml-cpu.so | path/to/llama_cpp_python-*.whl]

Exit 0: nothing beyond x86-64-v3; 1: offending functions listed; 2: objdump or the library missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_PREFIXES = {"lock", "rep", "repz", "repe", "repnz", "repne", "notrack", "bnd", "data16", "addr32", "cs", "ds"}
_EVEX_ONLY_REGISTER = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b")
# Mnemonics that exist only in AVX-512 (EVEX) forms, even on xmm/ymm registers without a mask.
_AVX512_MNEMONIC = re.compile(
    r"v(?:movdq[au](?:8|16|32|64)|pternlog[dq]|perm[it]2[bwdqps]+|permb|permw|pmultishiftqb"
    r"|pmov(?:s|us)?(?:qb|qw|qd|db|dw|wb)|align[dq]"
    r"|(?:insert|extract|broadcast|shuf)[if](?:32x4|32x8|64x2|64x4)|p?compress|p?expand"
    r"|pro[lr]v?[dq]|pabsq|p(?:max|min)[su]q|pmullq|psraq|psravq|ps[lr]lvw|psravw"
    r"|cvt(?:u?qq2p[sd]|t?p[sd]2u?qq|udq2p[sd]|t?p[sd]2udq)|rcp14|rsqrt14|scalef|getexp|getmant"
    r"|rndscale|reduce|range|fpclass|fixupimm|pconflict|plzcnt|popcnt|pshl?dv?|pshrdv?"
    r"|dpbf16ps|cvtne2ps2bf16|cvtneps2bf16|pmadd52[lh]uq|ptestn?m|pbroadcastm)"
)
_VNNI = re.compile(r"^vpdp(?:busd|busds|wssd|wssds)$")
_FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def mnemonic_of(text: str) -> tuple[str, bool, bool]:
    """The mnemonic of an instruction's text, and whether it carried a {vex} / {evex} marker."""
    vex = evex = False
    for token in text.split():
        if token == "{vex}":
            vex = True
        elif token == "{evex}":
            evex = True
        elif token not in _PREFIXES and not token.startswith("{"):
            return token, vex, evex
    return "", vex, evex


def classify(text: str) -> str | None:
    """The instruction set beyond x86-64-v3 an instruction needs, or None."""
    mnemonic, vex, evex = mnemonic_of(text)
    if mnemonic.startswith(("tile", "ldtilecfg", "sttilecfg", "tdpb", "tdpf")):
        return "AMX"
    if _VNNI.match(mnemonic):
        return "AVX-VNNI" if vex else "AVX512-VNNI"
    if evex or _EVEX_ONLY_REGISTER.search(text) or _AVX512_MNEMONIC.match(mnemonic):
        return "AVX-512"
    return None


@dataclass
class Scan:
    functions: int = 0
    instructions: int = 0
    # function -> (instruction set -> first instruction seen, count)
    offending: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)


def scan(lines: Iterable[str]) -> Scan:
    """Read `objdump -d --no-show-raw-insn` output."""
    result, function = Scan(), "?"
    for line in lines:
        line = line.rstrip("\n")
        header = _FUNCTION.match(line)
        if header:
            function = header.group(1)
            result.functions += 1
            continue
        address, sep, text = line.partition(":\t")
        if not sep or not address.strip() or not all(c in "0123456789abcdef" for c in address.strip()):
            continue
        result.instructions += 1
        kind = classify(text)
        if kind:
            seen = result.offending.setdefault(function, {})
            first, count = seen.get(kind, (text.strip(), 0))
            seen[kind] = (first, count + 1)
    return result


def installed_library() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "lib", "libggml-cpu.so")
    return path if path.is_file() else None


def library_from_wheel(wheel: Path, into: Path) -> Path | None:
    """The CPU library inside a llama-cpp-python wheel, extracted to `into` (a wheel is a zip)."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if Path(n).name.startswith("libggml-cpu.so") and not archive.getinfo(n).is_dir()]
        if not names:
            return None
        target = into / "libggml-cpu.so"
        target.write_bytes(archive.read(min(names, key=len)))
        return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", nargs="?", type=Path,
                        help="a libggml-cpu.so or a llama-cpp-python wheel (default: the installed llama_cpp/lib/libggml-cpu.so)")
    args = parser.parse_args(argv)
    objdump = shutil.which("objdump")
    if objdump is None:
        print("error: objdump is not installed (binutils); it is needed to read the library's code", file=sys.stderr)
        return 2
    library = args.library or installed_library()
    shown = library
    if library is not None and library.suffix == ".whl" and library.is_file():
        temp = tempfile.TemporaryDirectory()
        library = library_from_wheel(library, Path(temp.name))
        if library is None:
            print(f"error: {shown} holds no libggml-cpu.so", file=sys.stderr)
            return 2
    if library is None or not library.is_file():
        print(f"error: no library at {library or 'llama_cpp/lib/libggml-cpu.so (llama_cpp not installed)'}",
              file=sys.stderr)
        return 2
    with subprocess.Popen([objdump, "-d", "--no-show-raw-insn", str(library)], stdout=subprocess.PIPE,
                          text=True, errors="replace") as proc:
        assert proc.stdout is not None
        result = scan(proc.stdout)
    if proc.returncode != 0:
        print(f"error: objdump failed on {shown} (exit {proc.returncode})", file=sys.stderr)
        return 2
    if result.offending:
        total = sum(count for kinds in result.offending.values() for _, count in kinds.values())
        print(f"{shown}: {total} instructions beyond x86-64-v3 in {len(result.offending)} of "
              f"{result.functions} functions:")
        for function, kinds in sorted(result.offending.items()):
            shown = "; ".join(f"{kind} x{count} (e.g. {first})" for kind, (first, count) in sorted(kinds.items()))
            print(f"  {function}: {shown}")
        return 1
    print(f"{shown}: ok, {result.instructions} instructions in {result.functions} functions, "
          "none beyond x86-64-v3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
