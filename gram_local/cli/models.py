"""`gram-local models ...`: the model store from the command line (thin: parse, call `ModelStore`, print).

Results go to stdout; warnings and the one-line error to stderr. Exit codes (`handle_errors`): 0 ok,
2 bad usage or not found, 1 a runtime failure (network, checksum, disk).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from gram_local.cli.common import handle_errors
from gram_local.cli.display import StageProgress
from gram_local.errors import GramLocalError, ModelError
from gram_local.store import (
    DEFAULT_QUANT,
    ModelStore,
    ModelStoreWarning,
    StoredModel,
    normalize_name,
    normalize_quant,
)

__all__ = ["models_group"]

F = TypeVar("F", bound=Callable[..., Any])


def _shows_warnings(command: F) -> F:
    """Warnings as `warning: ...` lines on stderr; progress lines too when a person is watching."""

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        click.echo(f"warning: {message}", err=True)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        store_logger = logging.getLogger("gram_local.store")
        narration = logging.StreamHandler(sys.stderr) if sys.stderr.isatty() else None
        if narration is not None:
            narration.setFormatter(logging.Formatter("%(message)s"))
            store_logger.addHandler(narration)
            store_logger.setLevel(logging.INFO)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", ModelStoreWarning)
                warnings.showwarning = show
                return command(*args, **kwargs)
        finally:
            if narration is not None:
                store_logger.removeHandler(narration)

    return wrapper  # type: ignore[return-value]


def _quants(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(normalize_quant(v) for v in value)
    except GramLocalError as exc:
        raise click.BadParameter(str(exc)) from None


def _quant(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return _quants(ctx, param, (value,))[0] if value else None


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def _origin(m: StoredModel) -> str:
    src = m.source
    if src.get("kind") == "hub":
        return f"{src.get('repo')}@{str(src.get('revision'))[:12]}"
    if m.linked:
        return f"linked {src.get('path')}"
    return f"imported {src.get('path')}"


def _describe(m: StoredModel) -> str:
    return f"{m.name} {m.quant} ({_size(m.size)}, sha256 {m.sha256}) at {m.path}"


@click.group("models")
def models_group() -> None:
    """Download, import, check and remove the GGUF models gram-local judges with."""


@contextlib.contextmanager
def _store_showing_progress() -> Iterator[ModelStore]:
    """The store, drawing its conversions' progress on stderr when that is a terminal."""
    with StageProgress() as bar:
        yield ModelStore(on_progress=bar if sys.stderr.isatty() else None)


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
@handle_errors
@_shows_warnings
def list_command(as_json: bool) -> None:
    """Show stored models, and the models.lock names not pulled yet."""
    store = ModelStore()
    stored = store.list()
    if as_json:
        rows = [{**vars(m), "path": str(m.path), "status": m.status()} for m in stored]
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "QUANT", "SIZE", "STATUS", "SOURCE")]
    table += [(m.name, m.quant, _size(m.size), m.status(), _origin(m)) for m in stored]
    names = {m.name for m in stored}
    for entry in store.lock.models.values():
        if entry.name not in names:
            pinned = f"@{entry.revision[:12]}" if entry.revision else " (unpinned)"
            table.append((entry.name, "-", "-", "not pulled", f"{entry.repo}{pinned}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@models_group.command("pull")
@click.argument("name")
@click.option(
    "--quant",
    "quants",
    multiple=True,
    callback=_quants,
    help=f"Quantization to produce (repeatable; default {DEFAULT_QUANT}).",
)
@handle_errors
@_shows_warnings
def pull_command(name: str, quants: tuple[str, ...]) -> None:
    """Download NAME's pinned revision, verify it, convert and quantize it into the store."""
    with _store_showing_progress() as store:
        pulled = store.pull(name, quants=quants or (DEFAULT_QUANT,))
    for m in pulled:
        click.echo(f"pulled {_describe(m)}")


@models_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="Model name to register under (default: from the folder or file name).")
@click.option(
    "--quant",
    "quants",
    multiple=True,
    callback=_quants,
    help=(
        f"For a checkpoint: quantization to produce (repeatable; default {DEFAULT_QUANT}). "
        "For a GGUF: its type, when the file does not say."
    ),
)
@click.option("--link", is_flag=True, help="Register a GGUF file where it is instead of copying it into the store.")
@handle_errors
@_shows_warnings
def import_command(path: Path, name: str | None, quants: tuple[str, ...], link: bool) -> None:
    """Register a local Hugging Face checkpoint directory (converted) or a GGUF file, for air-gapped machines."""
    with _store_showing_progress() as store:
        imported = store.import_path(path, name=name, quants=quants or None, link=link)
    for m in imported:
        click.echo(f"imported {_describe(m)}")


@models_group.command("verify")
@click.argument("name", required=False)
@click.option("--quant", callback=_quant, help="Only this quantization.")
@handle_errors
@_shows_warnings
def verify_command(name: str | None, quant: str | None) -> None:
    """Re-hash stored models (bypassing the hash cache) against their records and models.lock."""
    store = ModelStore()
    results = store.verify(name, quant=quant)
    if not results:
        click.echo(f"nothing stored in {store.home}")
        return
    for r in results:
        m = r.model
        if r.ok:
            click.echo(f"ok      {m.name} {m.quant} sha256 {r.actual_sha256}")
        else:
            click.echo(f"FAILED  {m.name} {m.quant}: {r.problem}")
        for note in r.notes:
            click.echo(f"warning: {m.name} {m.quant}: {note}", err=True)
    failed = sum(not r.ok for r in results)
    if failed:
        raise ModelError(f"{failed} of {len(results)} stored models failed verification; pull or import them again")


@models_group.command("path")
@click.argument("model")
@click.option("--quant", callback=_quant, help=f"Quantization (default {DEFAULT_QUANT}, or the only one stored).")
@handle_errors
@_shows_warnings
def path_command(model: str, quant: str | None) -> None:
    """Print the GGUF file a model name (or path) resolves to."""
    click.echo(str(ModelStore().resolve(model, quant=quant).path))


@models_group.command("rm")
@click.argument("name")
@click.option("--quant", callback=_quant, help="Only this quantization (default: all of NAME).")
@handle_errors
@_shows_warnings
def rm_command(name: str, quant: str | None) -> None:
    """Delete a stored model (a linked file is only unregistered)."""
    for m in ModelStore().remove(name, quant=quant):
        if m.linked:
            click.echo(f"unregistered {m.name} {m.quant} (linked file kept: {m.path})")
        else:
            click.echo(f"removed {m.name} {m.quant} ({_size(m.size)})")


@models_group.command("lock")
@click.argument("names", nargs=-1)
@click.option("--revision", help="Pin this branch, tag or commit instead of the locked one (one NAME only).")
@click.option(
    "--outputs",
    is_flag=True,
    help="Also download and convert the model to pin the output hashes (slow; the outputs are stored too).",
)
@click.option(
    "--quant", "quants", multiple=True, callback=_quants, help="Outputs to pin (repeatable; default: those listed)."
)
@handle_errors
@_shows_warnings
def lock_command(names: tuple[str, ...], revision: str | None, outputs: bool, quants: tuple[str, ...]) -> None:
    """Resolve revisions and hashes from the hub and write them into models.lock (needs network access)."""
    with _store_showing_progress() as store:
        lock = store.update_lock(names or None, revision=revision, outputs=outputs, quants=quants or None)
    for n in names or lock.models:
        entry = lock.models[normalize_name(n)]
        pinned = ", ".join(q for q, o in entry.outputs.items() if o is not None) or "none"
        files = len(entry.files or ())
        click.echo(f"{entry.name}: {entry.repo}@{entry.revision}, {files} source files, outputs pinned: {pinned}")
    click.echo(f"wrote {lock.path}")
