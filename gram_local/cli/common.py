"""What every judging command shares: options, reading texts, loading the judge, exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from gram_local.errors import GramLocalError, InputError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def env(name: str) -> str:
    return f"GRAM_LOCAL_{name.upper().replace('-', '_')}"


def _opt(*names: str, env_name: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=env(env_name), show_envvar=True, **kwargs)


def judge_options(func: F) -> F:
    """The model, sampling and budget options of every judging command (after its name)."""
    options = [
        _opt("--model", "-m", env_name="model", default="gram-rr-3b", show_default=True,
             help="GGUF path, or a model name from the store."),
        _opt("--quant", env_name="quant", default=None, help="Quantization of a stored model (default Q4_K_M)."),
        _opt("--temperature", env_name="temperature", type=float, default=None,
             help="Sampling temperature [default: 0 (greedy); vote: 0.6]."),
        _opt("--top-p", env_name="top_p", type=float, default=None, help="Nucleus sampling [default: 1; vote: 0.9]."),
        _opt("--seed", env_name="seed", type=int, default=0, show_default=True, help="RNG seed."),
        _opt("--max-think-tokens", env_name="max_think_tokens", type=click.IntRange(min=0), default=2048,
             show_default=True, help="Think budget; at it the think block is closed. 0: answer at once."),
        click.option("--no-think", is_flag=True, default=False, help="Same as --max-think-tokens 0."),
        _opt("--ctx", env_name="ctx", type=click.IntRange(min=64), default=None,
             help="Context size per sequence [default: the prompt plus the budget, capped at the model's]."),
        _opt("--threads", env_name="threads", type=click.IntRange(min=1), default=None,
             help="CPU threads [default: all cores]."),
        _opt("--n-gpu-layers", env_name="n_gpu_layers", type=int, default=None,
             help="Layers to offload [default: all when the build can offload, else 0]."),
        _opt("--repack/--no-repack", env_name="repack", default=True, show_default=True,
             help="Repack CPU weights for llama.cpp's matrix kernels: faster one-sequence decoding; "
                  "--no-repack prefills faster on some CPUs (see the README)."),
        _opt("--flash-attn/--no-flash-attn", env_name="flash_attn", default=None,
             help="Flash attention [default: on with GPU offload; off on a CPU, where each sequence has its "
                  "own KV stream and plain attention decodes faster]."),
        _opt("--head-cache/--no-head-cache", env_name="head_cache", default=True, show_default=True,
             help="Keep the instruction head's KV on disk (keyed by the model's SHA-256), so a new "
                  "process skips its prefill."),
        _opt("--parallel", env_name="parallel", type=click.IntRange(min=1, max=64), default=8, show_default=True,
             help="Sequences decoded together."),
        _opt("--date", env_name="date", default="26 Jul 2024", show_default=True,
             help="Date in the Llama-3 system block."),
        _opt("--json", "as_json", env_name="json", is_flag=True, default=False, help="One JSON object on stdout."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_judge(opts: dict[str, Any], **overrides: Any) -> Any:
    """Load the judge the options describe (plus any keyword overrides of `load_judge`'s)."""
    from gram_local.judge import load_judge

    temperature, top_p = opts.get("temperature"), opts.get("top_p")
    arguments: dict[str, Any] = {
        "quant": opts.get("quant"),
        "n_ctx": opts.get("ctx"),
        "n_threads": opts.get("threads"),
        "n_gpu_layers": opts.get("n_gpu_layers"),
        "n_parallel": opts.get("parallel") or 8,
        "repack": opts.get("repack", True),
        "head_cache": opts.get("head_cache", True),
        "flash_attn": opts.get("flash_attn"),
        "date": opts["date"],
        "max_think_tokens": 0 if opts.get("no_think") else opts["max_think_tokens"],
        "temperature": 0.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "seed": opts["seed"],
        "vote_temperature": 0.6 if temperature is None else temperature,
        "vote_top_p": 0.9 if top_p is None else top_p,
    }
    return load_judge(opts["model"], **(arguments | overrides))


def read_text(value: str | None, what: str) -> str | None:
    """`@path` reads a file, `@-` stdin, `@@…` is a literal `@…`; anything else is the text."""
    if value is None:
        return None
    if value.startswith("@@"):
        return value[1:]
    if value == "@-":
        return sys.stdin.read()
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {what} from {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{what} file {path} is not UTF-8 text") from exc
    return value


def read_stdin_json(expect: str) -> dict[str, Any]:
    """One JSON object from stdin, when no text options were given and stdin is not a terminal."""
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError(f"no input: give {expect}, or pipe one JSON object on stdin")
    raw = sys.stdin.read()
    if not raw.strip():
        raise InputError(f"no input: give {expect}, or pipe one JSON object on stdin")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"stdin is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise InputError("stdin JSON must be an object")
    return data


def string_field(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InputError(f"stdin JSON needs a text field {key!r}")
    return value


def emit(result: dict[str, Any], as_json: bool, summary: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(summary(result))


def handle_errors(func: F) -> F:
    """Map failures to exit codes with one line on stderr; a traceback only with GRAM_LOCAL_DEBUG."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GramLocalError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except MemoryError:
            click.echo("error: out of memory; try a smaller --ctx, --parallel or a smaller quantization", err=True)
            sys.exit(EXIT_RUNTIME)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("GRAM_LOCAL_DEBUG"):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc} (set GRAM_LOCAL_DEBUG=1 for a traceback)", err=True)
            sys.exit(EXIT_RUNTIME)

    return wrapper  # type: ignore[return-value]
