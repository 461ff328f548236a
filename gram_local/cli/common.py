"""What every judging command shares: options, reading texts, loading the judge, exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from gram_local import config
from gram_local.config import EngineSettings, JudgeSettings, RemoteSettings
from gram_local.config import env_name as env_name_of
from gram_local.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, GramLocalError, InputError

if TYPE_CHECKING:
    from gram_local.judge import Judge

F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, env_name: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=env_name_of(env_name), show_envvar=True, **kwargs)


def judge_options(func: F) -> F:
    return _judge_options(func, server_key="api_key")


def service_judge_options(func: F) -> F:
    """`judge_options` for `serve`, whose own --api-key guards the service: the remote servers'
    key is --server-api-key (GRAM_LOCAL_SERVER_API_KEY) there."""
    return _judge_options(func, server_key="server_api_key")


def _judge_options(func: F, *, server_key: str) -> F:
    """The model, sampling, budget and engine options of every judging command (after its name)."""
    options = [
        _opt("--model", "-m", env_name="model", default=config.DEFAULT_MODEL, show_default=True,
             help="GGUF path, or a model name from the store (with a server: the served model's GGUF, "
                  "used here for its vocabulary only)."),
        _opt("--backend", env_name="backend", type=click.Choice(config.BACKENDS), default=config.DEFAULT_BACKEND,
             show_default=True,
             help="Where the model runs: in this process, on llama-server, or on an OpenAI-compatible server (vLLM, SGLang)."),
        _opt("--base-url", "base_urls", env_name="base_url", multiple=True, metavar="URL",
             help="A server's base URL (repeat for replicas; the variable takes several separated by spaces)."),
        _opt("--" + server_key.replace("_", "-"), env_name=server_key, default=None, help="Bearer token for the servers."),
        _opt("--per-replica", env_name="per_replica", type=click.IntRange(min=1), default=None,
             help="Requests in flight per server [default: the server's slots (llama-server), 8 (openai)]."),
        _opt("--request-timeout", env_name="request_timeout", type=click.FloatRange(min=0, min_open=True),
             default=config.REMOTE_TIMEOUT, show_default=True, help="Seconds one request to a server may take."),
        _opt("--quant", env_name="quant", default=None,
             help=f"Quantization of a stored model [default: {config.DEFAULT_QUANT}, or the only one stored]."),
        _opt("--temperature", env_name="temperature", type=float, default=None,
             help=f"Sampling temperature [default: {config.DEFAULT_TEMPERATURE:g} (greedy); vote: {config.VOTE_TEMPERATURE:g}]."),
        _opt("--top-p", env_name="top_p", type=float, default=None,
             help=f"Nucleus sampling [default: {config.DEFAULT_TOP_P:g}; vote: {config.VOTE_TOP_P:g}]."),
        _opt("--seed", env_name="seed", type=int, default=config.DEFAULT_SEED, show_default=True, help="RNG seed."),
        _opt("--max-think-tokens", env_name="max_think_tokens", type=click.IntRange(min=0),
             default=config.DEFAULT_MAX_THINK_TOKENS, show_default=True,
             help="Think budget; at it the think block is closed. 0: answer at once."),
        click.option("--no-think", is_flag=True, default=False, help="Same as --max-think-tokens 0."),
        _opt("--position", env_name="position", type=click.Choice(config.POSITIONS), default=JudgeSettings.position, show_default=True,
             help="Rank and best-of-n without --swap: which response of a pair is shown first "
                  "(shuffled by a coin seeded with --seed, or always the earlier input)."),
        _opt("--ctx", env_name="ctx", type=click.IntRange(min=64), default=None,
             help="Context size per sequence [default: the prompt plus the budget, capped at the model's]."),
        _opt("--threads", env_name="threads", type=click.IntRange(min=1), default=None,
             help="CPU threads [default: all cores]."),
        _opt("--n-gpu-layers", env_name="n_gpu_layers", type=int, default=None,
             help="Layers to offload [default: all when the build can offload, else 0]."),
        _opt("--parallel", env_name="parallel", type=click.IntRange(min=1, max=64), default=config.DEFAULT_PARALLEL,
             show_default=True,
             help="Most sequences decoded together; memory is reserved only for those that actually run."),
        _opt("--kv-type", env_name="kv_type", type=click.Choice(config.KV_TYPES), default=EngineSettings.kv_type, show_default=True,
             help="KV cache type; q8_0 halves its memory (needs flash attention; see the README)."),
        _opt("--repack/--no-repack", env_name="repack", default=EngineSettings.repack, show_default=True,
             help="Repack CPU weights for llama.cpp's matrix kernels: faster one-sequence decoding; "
                  "--no-repack prefills faster on some CPUs and memory-maps the file (see the README)."),
        _opt("--flash-attn/--no-flash-attn", env_name="flash_attn", default=None,
             help="Flash attention [default: on with GPU offload; off on a CPU, where each sequence has its "
                  "own KV stream and plain attention decodes faster]."),
        _opt("--head-cache/--no-head-cache", env_name="head_cache", default=bool(EngineSettings.head_cache), show_default=True,
             help="Keep the instruction head's KV on disk (keyed by the model's SHA-256), so a new "
                  "process skips its prefill."),
        _opt("--date", env_name="date", default=config.DEFAULT_DATE, show_default=True,
             help="Date in the Llama-3 system block."),
        _opt("--json", "as_json", env_name="json", is_flag=True, default=False, help="One JSON object on stdout."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def judge_settings(opts: dict[str, Any]) -> JudgeSettings:
    """The verdict-deciding settings the options describe."""
    temperature, top_p = opts.get("temperature"), opts.get("top_p")
    return JudgeSettings(
        date=opts.get("date", config.DEFAULT_DATE),
        max_think_tokens=0 if opts.get("no_think") else opts.get("max_think_tokens", config.DEFAULT_MAX_THINK_TOKENS),
        temperature=config.DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=config.DEFAULT_TOP_P if top_p is None else top_p,
        seed=opts.get("seed", config.DEFAULT_SEED),
        vote_temperature=config.VOTE_TEMPERATURE if temperature is None else temperature,
        vote_top_p=config.VOTE_TOP_P if top_p is None else top_p,
        n_ctx=opts.get("ctx"),
        position=opts.get("position", JudgeSettings.position),
    )


def engine_settings(opts: dict[str, Any], **overrides: Any) -> EngineSettings:
    """How the in-process engine runs, from the options."""
    values: dict[str, Any] = {
        "n_threads": opts.get("threads"),
        "n_gpu_layers": opts.get("n_gpu_layers"),
        "parallel": opts.get("parallel") or config.DEFAULT_PARALLEL,
        "kv_type": opts.get("kv_type", EngineSettings.kv_type),
        "repack": opts.get("repack", EngineSettings.repack),
        "flash_attn": opts.get("flash_attn"),
        "head_cache": opts.get("head_cache", EngineSettings.head_cache),
    }
    return EngineSettings(**(values | overrides))


def remote_settings(opts: dict[str, Any]) -> RemoteSettings:
    """How a remote backend reaches its servers, from the options."""
    return RemoteSettings(
        base_urls=tuple(opts.get("base_urls") or ()),
        api_key=opts.get("server_api_key") or opts.get("api_key") or None,
        per_replica=opts.get("per_replica"),
        timeout=opts.get("request_timeout") or config.REMOTE_TIMEOUT,
    )


def open_judge(opts: dict[str, Any], *, settings: JudgeSettings | None = None, **engine_overrides: Any) -> Judge:
    """Load the judge the options describe (or connect to its servers)."""
    from gram_local.loading import connect_judge, load_judge

    backend = opts.get("backend") or config.DEFAULT_BACKEND
    if backend != config.DEFAULT_BACKEND:
        return connect_judge(
            opts["model"],
            backend=backend,
            quant=opts.get("quant"),
            settings=settings or judge_settings(opts),
            remote=remote_settings(opts),
        )
    if opts.get("base_urls"):
        raise InputError("--base-url needs --backend llama-server or --backend openai")
    return load_judge(
        opts["model"],
        quant=opts.get("quant"),
        settings=settings or judge_settings(opts),
        engine=engine_settings(opts, **engine_overrides),
    )


def read_text(value: str | None, what: str) -> str | None:
    """`@path` reads a file, `@-` stdin, `@@…` is a literal `@…`; anything else is the text."""
    if value is None:
        return None
    if value.startswith("@@"):
        return value[1:]
    if value == "@-":
        return _read_stdin(what)
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {what} from {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{what} file {path} is not UTF-8 text") from exc
        except ValueError as exc:  # a NUL, or a character the file system cannot encode
            raise InputError(f"cannot read {what} from {value[1:]!r}: not a usable file name") from exc
    return value


def _read_stdin(what: str) -> str:
    if sys.stdin is None:  # the process was started with standard input closed
        raise InputError(f"cannot read the {what} from stdin: there is no standard input")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"the {what} on stdin is not UTF-8 text") from exc


def read_stdin_json(expect: str) -> dict[str, Any]:
    """One JSON object from stdin, when no text options were given and stdin is not a terminal."""
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError(f"no input: give {expect}, or pipe one JSON object on stdin")
    raw = _read_stdin("JSON")
    if not raw.strip():
        raise InputError(f"no input: give {expect}, or pipe one JSON object on stdin")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"stdin is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise InputError("stdin JSON is nested too deeply") from exc
    except ValueError as exc:  # an integer over Python's digit limit
        raise InputError(f"stdin JSON cannot be read: {exc}") from exc
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
            if os.environ.get(config.ENV_DEBUG):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc} (set GRAM_LOCAL_DEBUG=1 for a traceback)", err=True)
            sys.exit(EXIT_RUNTIME)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps func's signature; mypy cannot see it is an F
