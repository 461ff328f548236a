"""The benchmark and check scripts at least import and parse their arguments (they run rarely, on
machines far from CI, where an ImportError costs a whole GPU loan)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["peer_bench", "seed_gpu", "memory", "kv_layout", "no_think_agreement", "service_load", "remote_batch"])
def test_benchmark_modules_import(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop(module, None)
    importlib.import_module(module)


@pytest.mark.parametrize("script", ["cuda_probe", "check_portable_build", "make_checkpoint"])
def test_scripts_show_their_help(script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    sys.modules.pop(script, None)
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out
