"""The judging commands: compare, vote, rank, best-of-n, prompt, doctor."""

from __future__ import annotations

import json
from typing import Any

import click

from gram_local.cli.common import (
    emit,
    handle_errors,
    judge_options,
    open_judge,
    read_stdin_json,
    read_text,
    string_field,
)
from gram_local.errors import InputError


def _pair_inputs(question: str | None, a: str | None, b: str | None) -> tuple[str, str, str]:
    q, ra, rb = read_text(question, "question"), read_text(a, "response a"), read_text(b, "response b")
    if q is None and ra is None and rb is None:
        data = read_stdin_json("-q/--question, -a and -b")
        return string_field(data, "question"), string_field(data, "a"), string_field(data, "b")
    missing = [name for name, v in (("-q/--question", q), ("-a", ra), ("-b", rb)) if v is None]
    if missing:
        raise InputError(f"missing {', '.join(missing)}")
    return q, ra, rb  # type: ignore[return-value]


def _list_inputs(question: str | None, responses: tuple[str, ...]) -> tuple[str, list[str]]:
    q = read_text(question, "question")
    texts = [read_text(r, f"response {i}") for i, r in enumerate(responses)]
    if q is None and not texts:
        data = read_stdin_json("-q/--question and -r/--response (at least twice)")
        items = data.get("responses")
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise InputError("stdin JSON needs a list of texts 'responses'")
        return string_field(data, "question"), list(items)
    if q is None:
        raise InputError("missing -q/--question")
    if len(texts) < 2:
        raise InputError(f"need at least two -r/--response, got {len(texts)}")
    return q, [t for t in texts if t is not None]


def _shorten(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timing_line(d: dict[str, Any]) -> str:
    t = d["timings"]
    return f"({t['seconds']:.1f} s, {t['prompt_tokens']} prompt tokens, {t['generated_tokens']} generated)"


def _judgment_lines(judgments: list[dict[str, Any]]) -> list[str]:
    lines = []
    for j in judgments:
        pair = f" {j['pair'][0]} vs {j['pair'][1]}" if j.get("pair") else ""
        forced = ", think budget reached" if j["forced_close"] else ""
        lines.append(
            f"- order {j['order']}{pair}: model wrote {j['answer']} -> prefers {j['prefers']} "
            f"(p_a={j['p_a']:.3f}, {j['think_tokens']} think tokens{forced})"
        )
        if j["rationale"].strip():
            lines.append("  " + _shorten(j["rationale"]).replace("\n", "\n  "))
    return lines


def _compare_summary(d: dict[str, Any]) -> str:
    head = "tie (the two orders disagree)" if d["winner"] == "tie" else f"{d['winner']} is better"
    return "\n".join([f"winner: {head}   p_a={d['p_a']:.3f}  {_timing_line(d)}", *_judgment_lines(d["judgments"])])


def _vote_summary(d: dict[str, Any]) -> str:
    v = d["votes"]
    return (
        f"winner: {d['winner']}   votes a={v['a']} b={v['b']}   mean p_a={d['p_a']:.3f}  {_timing_line(d)}"
    )


def _rank_summary(d: dict[str, Any]) -> str:
    order = " > ".join(str(i) for i in d["ranking"])
    scores = ", ".join(f"{i}: {d['scores'][i]:+.2f}" for i in d["ranking"])
    return f"ranking: {order}\nscores (Bradley-Terry): {scores}\n{len(d['comparisons'])} comparisons {_timing_line(d)}"


def _best_summary(d: dict[str, Any]) -> str:
    return f"best: response {d['best']}   ({len(d['comparisons'])} comparisons) {_timing_line(d)}"


pair_text_options = [
    click.option("-q", "--question", default=None, help="The question (@FILE reads a file, @- stdin)."),
    click.option("-a", "a", default=None, help="Response a."),
    click.option("-b", "b", default=None, help="Response b."),
]


def _with(options: list[Any]) -> Any:
    def deco(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return deco


@click.command()
@_with(pair_text_options)
@click.option("--swap", envvar="GRAM_LOCAL_SWAP", show_envvar=True, is_flag=True, help="Judge both orders.")
@judge_options
@handle_errors
def compare(question: str | None, a: str | None, b: str | None, swap: bool, **opts: Any) -> None:
    """Which of two responses is better."""
    q, ra, rb = _pair_inputs(question, a, b)
    judge = open_judge(opts)
    result = judge.compare(q, ra, rb, swap=swap).to_dict()
    emit(result, opts["as_json"], _compare_summary)


@click.command()
@_with(pair_text_options)
@click.option("-k", "--votes", envvar="GRAM_LOCAL_VOTES", show_envvar=True, type=click.IntRange(min=1),
              default=8, show_default=True, help="Number of sampled judgments.")
@judge_options
@handle_errors
def vote(question: str | None, a: str | None, b: str | None, votes: int, **opts: Any) -> None:
    """Majority of k sampled judgments (one order)."""
    q, ra, rb = _pair_inputs(question, a, b)
    judge = open_judge(opts)
    result = judge.vote(q, ra, rb, k=votes).to_dict()
    emit(result, opts["as_json"], _vote_summary)


list_text_options = [
    click.option("-q", "--question", default=None, help="The question (@FILE reads a file, @- stdin)."),
    click.option("-r", "--response", "responses", multiple=True, help="A response (repeat, at least twice)."),
    click.option("--swap", envvar="GRAM_LOCAL_SWAP", show_envvar=True, is_flag=True, help="Judge both orders."),
]


@click.command()
@_with(list_text_options)
@click.option("--method", envvar="GRAM_LOCAL_METHOD", show_envvar=True, type=click.Choice(["sort", "round-robin"]),
              default="sort", show_default=True, help="Comparison sort, or every pair with Bradley-Terry scores.")
@judge_options
@handle_errors
def rank(question: str | None, responses: tuple[str, ...], swap: bool, method: str, **opts: Any) -> None:
    """Rank responses, best first."""
    q, texts = _list_inputs(question, responses)
    judge = open_judge(opts)
    result = judge.rank(q, texts, method=method, swap=swap).to_dict()  # type: ignore[arg-type]
    emit(result, opts["as_json"], _rank_summary)


@click.command("best-of-n")
@_with(list_text_options)
@judge_options
@handle_errors
def best_of_n(question: str | None, responses: tuple[str, ...], swap: bool, **opts: Any) -> None:
    """The best response by knockout (n-1 comparisons)."""
    q, texts = _list_inputs(question, responses)
    judge = open_judge(opts)
    result = judge.best_of_n(q, texts, swap=swap).to_dict()
    emit(result, opts["as_json"], _best_summary)


@click.command()
@_with(pair_text_options)
@judge_options
@handle_errors
def prompt(question: str | None, a: str | None, b: str | None, **opts: Any) -> None:
    """Exactly what the model sees: the rendered text and its token ids."""
    q, ra, rb = _pair_inputs(question, a, b)
    judge = open_judge(opts)
    view = judge.prompt(q, ra, rb)
    result = view.to_dict()
    if opts["as_json"]:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    click.echo(view.text, nl=False)
    click.echo(f"\n--- {len(view.tokens)} tokens ---")
    pieces = [f"{t}:{judge.engine.token_text(t)!r}" for t in view.tokens]
    click.echo(" ".join(pieces))


@click.command()
@click.option("--model", "-m", envvar="GRAM_LOCAL_MODEL", show_envvar=True, default=None,
              help="Also load this model (GGUF path or stored name) and show its metadata.")
@click.option("--quant", envvar="GRAM_LOCAL_QUANT", show_envvar=True, default=None)
@click.option("--n-gpu-layers", envvar="GRAM_LOCAL_N_GPU_LAYERS", show_envvar=True, type=int, default=None)
@click.option("--json", "as_json", envvar="GRAM_LOCAL_JSON", show_envvar=True, is_flag=True, default=False)
@handle_errors
def doctor(model: str | None, quant: str | None, n_gpu_layers: int | None, as_json: bool) -> None:
    """The llama.cpp build (CPU/CUDA/Metal), GPU offload, and a model's metadata."""
    from gram_local import __version__
    from gram_local.engine import system_info

    info: dict[str, Any] = {"gram_local": __version__, **system_info()}
    text = info["system_info"]
    info["compiled"] = {
        "cpu": True,
        "cuda": "CUDA" in text or any("CUDA" in b for b in info["backends"]),
        "metal": "METAL" in text.upper() or any("Metal" in b or "MTL" in b for b in info["backends"]),
    }
    if model:
        from gram_local.judge import load_judge

        judge = load_judge(model, quant=quant, n_gpu_layers=n_gpu_layers, max_think_tokens=8, head_cache=False)
        engine = judge.engine
        meta = engine.metadata
        info["model"] = {
            **judge.model.to_dict(),
            "architecture": meta.architecture,
            "name": meta.name,
            "description": meta.file_type,
            "parameters": meta.n_params,
            "layers": meta.n_layer,
            "context_length": meta.n_ctx_train,
            "vocabulary": meta.n_vocab,
            "chat_format": judge.chat_format,
            "answer_tokens": {"A": engine.token_a, "B": engine.token_b},
            "gpu_layers": engine.n_gpu_layers,
        }
        # Offload works when a layer actually went to the GPU and a decode there gives an answer.
        if info["gpu_offload"] and engine.n_gpu_layers > 0:
            try:
                judge.compare("1+1?", "2", "3", max_think_tokens=0)
                info["offload_check"] = "ok: a judgment ran with layers offloaded"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                info["offload_check"] = f"failed: {exc}"
        else:
            info["offload_check"] = "not applicable: CPU-only build or --n-gpu-layers 0"
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False))
        return
    compiled = ", ".join(k.upper() for k, v in info["compiled"].items() if v)
    lines = [
        f"gram-local {info['gram_local']}  llama-cpp-python {info['llama_cpp_python']}  llama.cpp {info['llama_cpp']}",
        f"compiled backends: {compiled}   devices: {', '.join(info['backends']) or '-'}",
        f"GPU offload supported by this build: {'yes' if info['gpu_offload'] else 'no'}",
        f"CPU features: {info['system_info']}",
    ]
    if "model" in info:
        m = info["model"]
        lines += [
            f"model: {m['path']}  ({m['description']}, {m['parameters'] / 1e9:.2f} B parameters, {m['layers']} layers)",
            f"  sha256 {m['sha256']}",
            f"  context {m['context_length']}, vocabulary {m['vocabulary']}, chat format {m['chat_format']}, "
            f"A={m['answer_tokens']['A']} B={m['answer_tokens']['B']}",
            f"  offload: {info['offload_check']}",
        ]
    click.echo("\n".join(lines))
