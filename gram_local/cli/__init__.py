"""The `gram-local` command: a thin layer over the Python API."""

from __future__ import annotations

from gram_local.cli.app import main

__all__ = ["main"]
