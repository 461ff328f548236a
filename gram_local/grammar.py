"""The reply format GRAM-RR must follow, as a GBNF grammar, and its parser.

A reply is `<think>\\n…</think>\\n<answer>\\nA|B\\n</answer>`. The engine feeds `<think>\\n`
itself, constrains the model with `think_grammar()` until the answer slot, reads the A/B
probabilities there, and writes the closing tag itself: every reply parses by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gram_local.results import Letter

THINK_CLOSE = "</think>"
ANSWER_OPEN = "\n<answer>\n"
ANSWER_SLOT_PREFIX = THINK_CLOSE + ANSWER_OPEN
"""What ends the think block and leads to the answer letter."""
ANSWER_CLOSE = "\n</answer>"


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _gbnf_char_class_not(chars: str) -> str:
    inner = "".join("\\" + c if c in "\\]^-[" else c for c in dict.fromkeys(chars))
    return f"[^{inner}]"


def think_grammar(*, allow_close: bool = True) -> str:
    """Free text that cannot contain `</think>`, then `</think>\\n<answer>\\n`.

    Written as a string-matching automaton (state k = the last k characters match the first k of
    `</think>`): deterministic and right-recursive, so llama.cpp keeps one stack per step. With
    `allow_close=False` the think block never closes by itself (the engine's budget closes it),
    which benchmarks use to force an exact number of think tokens on any model.
    """
    target = THINK_CLOSE
    n = len(target)
    rules = []
    # t0: nothing matched yet.
    rules.append(f"t0 ::= {_gbnf_char_class_not('<')} t0 | \"<\" t1")
    for k in range(1, n):
        expected = target[k]
        if k == n - 1:
            advance = f"{_gbnf_literal(expected)} tail" if allow_close else None
        else:
            advance = f"{_gbnf_literal(expected)} t{k + 1}"
        alternatives = [a for a in (advance, '"<" t1') if a]
        alternatives.append(f"{_gbnf_char_class_not(expected + '<')} t0")
        rules.append(f"t{k} ::= " + " | ".join(alternatives))
    if allow_close:
        rules.append(f"tail ::= {_gbnf_literal(ANSWER_OPEN)}")
    return "root ::= t0\n" + "\n".join(rules) + "\n"


_REPLY = re.compile(r"\A<think>\n(?P<rationale>.*?)</think>\n<answer>\n(?P<answer>[AB])\n</answer>\Z", re.S)


@dataclass(frozen=True)
class ParsedReply:
    rationale: str
    answer: Letter


def parse_reply(text: str) -> ParsedReply:
    """Strictly parse a full reply; raises ValueError on anything that is not the format.

    Unlike the model card's parser (which reads `answer:` and so always returns B), this reads
    the letter between the answer tags and nothing else.
    """
    match = _REPLY.match(text)
    if match is None:
        raise ValueError("reply does not follow <think>…</think><answer>A|B</answer>")
    return ParsedReply(rationale=match["rationale"], answer="A" if match["answer"] == "A" else "B")


def forced_close_text(generated: str) -> str:
    """What to append to a think text cut off by the budget to reach the answer slot.

    If the model already closed the think block and is part-way through `\\n<answer>\\n`, only the
    rest of that is added; otherwise a newline (when needed) and the whole closing.
    """
    at = generated.find(THINK_CLOSE)
    if at >= 0:
        written = generated[at + len(THINK_CLOSE):]
        if not ANSWER_OPEN.startswith(written):  # pragma: no cover - the grammar prevents it
            raise ValueError("text after </think> does not follow the format")
        return ANSWER_OPEN[len(written):]
    prefix = "" if generated.endswith("\n") or not generated else "\n"
    return prefix + ANSWER_SLOT_PREFIX


def reached_answer_slot(generated: str) -> bool:
    return generated.endswith(ANSWER_SLOT_PREFIX) and generated.find(THINK_CLOSE) == len(generated) - len(
        ANSWER_SLOT_PREFIX
    )
