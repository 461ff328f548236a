"""The judging commands: compare, vote, rank, best-of-n, prompt."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
from gram_local.cli.display import ThinkDisplay
from gram_local.config import DEFAULT_RANK_METHOD, DEFAULT_VOTES, env_name
from gram_local.errors import InputError
from gram_local.operations import METHODS

F = TypeVar("F", bound=Callable[..., Any])


def _pair_inputs(question: str | None, a: str | None, b: str | None) -> tuple[str, str, str]:
    q, ra, rb = read_text(question, "question"), read_text(a, "response a"), read_text(b, "response b")
    if q is None and ra is None and rb is None:
        data = read_stdin_json("-q/--question, -a and -b")
        return string_field(data, "question"), string_field(data, "a"), string_field(data, "b")
    if q is None or ra is None or rb is None:
        missing = [name for name, v in (("-q/--question", q), ("-a", ra), ("-b", rb)) if v is None]
        raise InputError(f"missing {', '.join(missing)}")
    return q, ra, rb


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


def _with(options: Sequence[Callable[[Any], Any]]) -> Callable[[F], F]:
    """Apply a list of click options as one decorator (each returns the function it was given)."""

    def deco(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return deco


stream_option = click.option(
    "--stream", is_flag=True, default=False,
    help="Print the reasoning on stderr as it is generated (otherwise a progress line on a terminal).",
)


def _budget(opts: dict[str, Any]) -> int:
    return 0 if opts.get("no_think") else int(opts["max_think_tokens"])


@click.command()
@_with(pair_text_options)
@click.option("--swap", envvar=env_name("swap"), show_envvar=True, is_flag=True, help="Judge both orders.")
@stream_option
@judge_options
@handle_errors
def compare(question: str | None, a: str | None, b: str | None, swap: bool, stream: bool, **opts: Any) -> None:
    """Which of two responses is better."""
    q, ra, rb = _pair_inputs(question, a, b)
    judge = open_judge(opts)
    with ThinkDisplay(["AB", "BA"] if swap else ["AB"], budget=_budget(opts), stream=stream) as display:
        result = judge.compare(q, ra, rb, swap=swap, on_think=display).to_dict()
    emit(result, opts["as_json"], _compare_summary)


@click.command()
@_with(pair_text_options)
@click.option("-k", "--votes", envvar=env_name("votes"), show_envvar=True, type=click.IntRange(min=1),
              default=DEFAULT_VOTES, show_default=True, help="Number of sampled judgments.")
@stream_option
@judge_options
@handle_errors
def vote(question: str | None, a: str | None, b: str | None, votes: int, stream: bool, **opts: Any) -> None:
    """Majority of k sampled judgments (one order)."""
    q, ra, rb = _pair_inputs(question, a, b)
    judge = open_judge(opts)
    with ThinkDisplay([f"vote {i + 1}" for i in range(votes)], budget=_budget(opts), stream=stream) as display:
        result = judge.vote(q, ra, rb, k=votes, on_think=display).to_dict()
    emit(result, opts["as_json"], _vote_summary)


list_text_options = [
    click.option("-q", "--question", default=None, help="The question (@FILE reads a file, @- stdin)."),
    click.option("-r", "--response", "responses", multiple=True, help="A response (repeat, at least twice)."),
    click.option("--swap", envvar=env_name("swap"), show_envvar=True, is_flag=True, help="Judge both orders."),
]


@click.command()
@_with(list_text_options)
@click.option("--method", envvar=env_name("method"), show_envvar=True, type=click.Choice(METHODS),
              default=DEFAULT_RANK_METHOD, show_default=True, help="Comparison sort, or every pair with Bradley-Terry scores.")
@stream_option
@judge_options
@handle_errors
def rank(question: str | None, responses: tuple[str, ...], swap: bool, method: str, stream: bool, **opts: Any) -> None:
    """Rank responses, best first."""
    q, texts = _list_inputs(question, responses)
    judge = open_judge(opts)
    with ThinkDisplay(None, budget=_budget(opts), stream=stream) as display:
        result = judge.rank(q, texts, method=method, swap=swap, on_think=display).to_dict()
    emit(result, opts["as_json"], _rank_summary)


@click.command("best-of-n")
@_with(list_text_options)
@stream_option
@judge_options
@handle_errors
def best_of_n(question: str | None, responses: tuple[str, ...], swap: bool, stream: bool, **opts: Any) -> None:
    """The best response by knockout (n-1 comparisons)."""
    q, texts = _list_inputs(question, responses)
    judge = open_judge(opts)
    with ThinkDisplay(None, budget=_budget(opts), stream=stream) as display:
        result = judge.best_of_n(q, texts, swap=swap, on_think=display).to_dict()
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
    pieces = [f"{t}:{judge.backend.token_text(t)!r}" for t in view.tokens]
    click.echo(" ".join(pieces))
