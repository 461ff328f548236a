"""The house rules of ARCHITECTURE.md, checked on the source: no import cycle, one room for llama.cpp."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The rooms that may import llama_cpp: the engine, and the converter's quantize step.
LLAMA_CPP_ROOMS = ("gram_local.engine", "gram_local.convert.quantize")


def _modules() -> dict[str, tuple[ast.Module, bool]]:
    """Every module of the package (convert/ installs as gram_local.convert): its tree, and
    whether it is a package's __init__."""
    found = {}
    for folder, package in (("gram_local", "gram_local"), ("convert", "gram_local.convert")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            name = ".".join([package, *(parts[:-1] if is_init else parts)])
            found[name] = (ast.parse(path.read_text(encoding="utf-8")), is_init)
    return found


def _imports(tree: ast.Module, *, deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run: those at import time (not under `if TYPE_CHECKING:`), and with
    `deferred` those inside functions too."""
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if (isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test))
        or (not deferred and isinstance(block, (ast.FunctionDef, ast.AsyncFunctionDef)))
        for statement in block.body
        for node in ast.walk(statement)
    }
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def _targets(module: str, is_init: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module if is_init else module.rpartition(".")[0]
    if node.level:
        base = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
        full = f"{base}.{node.module}" if node.module else base
    else:
        full = node.module or ""
    return [full, *(f"{full}.{alias.name}" for alias in node.names)]


def _with_packages(target: str, importer: str) -> set[str]:
    """Importing a.b.c runs the __init__ of a and a.b first: those are edges too, except for the
    importer's own packages (already being imported when it runs)."""
    parts = target.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)} - {
        ".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}


def test_no_import_cycle_in_the_package() -> None:
    modules = _modules()
    graph = {
        name: {m for node in _imports(tree, deferred=False) for t in _targets(name, is_init, node)
               for m in _with_packages(t, name) if m in modules and m != name}
        for name, (tree, is_init) in modules.items()
    }
    assert len(graph) > 90 and sum(map(len, graph.values())) > 300  # the scan sees the package
    # Import time only: an import inside a function runs when called, after every module loaded.
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_only_the_engine_and_the_quantizer_import_llama_cpp() -> None:
    importers = sorted(
        name
        for name, (tree, is_init) in _modules().items()
        for node in _imports(tree, deferred=True)
        if any(t == "llama_cpp" or t.startswith("llama_cpp.") for t in _targets(name, is_init, node))
    )
    assert importers and "gram_local.engine.native" in importers
    assert [m for m in importers if not m.startswith(LLAMA_CPP_ROOMS)] == []


def test_the_judge_layers_load_without_llama_cpp() -> None:
    """Judging logic, batch files, the service and the client import no native code: they work
    over any backend, and a remote judge needs llama.cpp only to read the GGUF's vocabulary."""
    layers = ["gram_local.judge", "gram_local.operations", "gram_local.runner", "gram_local.ranking",
              "gram_local.batch.run", "gram_local.evals.run", "gram_local.client", "gram_local.cli.app"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in layers) + (
        "print(sorted(m for m in sys.modules if m == 'llama_cpp' or m.startswith(('llama_cpp.', 'gram_local.engine'))))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
