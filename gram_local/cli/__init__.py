"""The `gram-local` command: a thin layer over the Python API.

`main` (the console script's entry point) is loaded on first use, so that a module of this layer
(the display, say) can be imported by another command line, the converter's, without loading every
command first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from gram_local.cli.app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
