"""gram-local: a local, offline judge that runs the GRAM-RR reward-reasoning models on llama.cpp.

    >>> import gram_local
    >>> judge = gram_local.load_judge("gram-rr-3b")          # or a path to a .gguf file
    >>> result = judge.compare("2+2?", "4", "5", swap=True)
    >>> result.winner, result.p_a

The heavy parts (llama.cpp) load on first use of `load_judge`, so importing this package is cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The converter lives at the top of the repository (convert/); installed, setuptools maps it to
# gram_local/convert (see pyproject.toml). Run from a source checkout (PYTHONPATH, or an editable
# install), the repository root joins this package's search path so that `gram_local.convert` is
# that folder. An installed wheel has gram_local/convert and skips this.
_package = os.path.dirname(os.path.abspath(__file__))
_checkout = os.path.dirname(_package)
if not os.path.isdir(os.path.join(_package, "convert")) and os.path.isfile(
    os.path.join(_checkout, "convert", "__init__.py")
):
    __path__.append(_checkout)
del _package, _checkout

__all__ = [
    "__version__",
    "load_judge",
    "connect_judge",
    "Judge",
    "JudgeSettings",
    "EngineSettings",
    "RemoteSettings",
    "CompareResult",
    "VoteResult",
    "RankResult",
    "BestOfNResult",
    "Judgment",
    "PromptView",
    "GramLocalError",
    "InputError",
    "ModelError",
]

_LAZY = {
    "load_judge": "gram_local.loading",
    "connect_judge": "gram_local.loading",
    "RemoteSettings": "gram_local.config",
    "Judge": "gram_local.judge",
    "JudgeSettings": "gram_local.config",
    "EngineSettings": "gram_local.config",
    "CompareResult": "gram_local.results",
    "VoteResult": "gram_local.results",
    "RankResult": "gram_local.results",
    "BestOfNResult": "gram_local.results",
    "Judgment": "gram_local.results",
    "PromptView": "gram_local.results",
    "GramLocalError": "gram_local.errors",
    "InputError": "gram_local.errors",
    "ModelError": "gram_local.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from gram_local.config import EngineSettings, JudgeSettings, RemoteSettings
    from gram_local.errors import GramLocalError, InputError, ModelError
    from gram_local.judge import Judge
    from gram_local.loading import connect_judge, load_judge
    from gram_local.results import BestOfNResult, CompareResult, Judgment, PromptView, RankResult, VoteResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gram_local' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
