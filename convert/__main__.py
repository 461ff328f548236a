"""`python -m gram_local.convert` (and `gram-local convert`): the converter's command line.

Thin: parse, call `convert_checkpoint`, print the output path on stdout. Failures are one line on
stderr, never a traceback: exit 2 when the input is at fault, 1 when the machine is.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from gram_local.cli.display import StageProgress
from gram_local.convert import QUANT_TYPES, ConversionError, convert_checkpoint
from gram_local.convert.quantize import normalize_quant
from gram_local.errors import GramLocalError


class _NoteHandler(logging.Handler):
    """Converter warnings (dropped tokens, tokenizer caveats) as `note:` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.command("convert")
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.option(
    "-q",
    "--quant",
    default="Q4_K_M",
    show_default=True,
    metavar="TYPE",
    help=f"Output type: {', '.join(QUANT_TYPES)}.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output GGUF file [default: ./<checkpoint folder>-<TYPE>.gguf].",
)
@click.option("--threads", type=int, default=0, show_default=True, help="Quantization threads (0: all cores).")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal only].")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def convert_command(
    checkpoint_dir: Path, quant: str, output: Path | None, threads: int, progress: bool | None, force: bool
) -> None:
    """Convert a Hugging Face Llama-3.x checkpoint (e.g. GRAM-RR) to a GGUF file."""
    handler = _NoteHandler(logging.WARNING)
    log = logging.getLogger("gram_local.convert")
    log.addHandler(handler)
    saved_propagate, log.propagate = log.propagate, False
    try:
        name = normalize_quant(quant)
        out = output or Path(f"{checkpoint_dir.resolve().name}-{name}.gguf")
        if out.exists() and not force:
            raise ConversionError(f"{out} already exists; pass --force to replace it")
        show = sys.stderr.isatty() if progress is None else progress
        with StageProgress() as bar:
            path = convert_checkpoint(checkpoint_dir, out, quant=name, on_progress=bar if show else None, nthreads=threads)
    except GramLocalError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; no output was written", 130)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"{e.strerror or e}{where}", 1)
    except MemoryError:
        _fail("out of memory", 1)
    except Exception as e:  # a bug: still one line, with enough to report it
        _fail(f"unexpected failure: {type(e).__name__}: {e}", 1)
    finally:
        log.removeHandler(handler)
        log.propagate = saved_propagate
    click.echo(str(path))


if __name__ == "__main__":
    convert_command(prog_name="python -m gram_local.convert")
