"""From the texts being judged to the token ids a backend is given.

The prompt is the model card's, filled in and rendered in the model's chat format (Llama-3 exactly
as transformers renders it; another model through its own GGUF template). Template special tokens
are added by id; all text, template text included, is tokenized with special-token parsing off, so
a response containing `<|eot_id|>` cannot end its turn. That is checked on every prompt, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence

from gram_local.backend import Backend, common_prefix
from gram_local.config import JudgeSettings
from gram_local.errors import InputError, ModelError
from gram_local.grammar import ANSWER_SLOT_PREFIX
from gram_local.prompt import (
    Piece,
    fill_pairwise,
    is_llama3_template,
    merge_text,
    render_chat_template,
    render_llama3,
    with_reply_opening,
)

_HEAD_PROBES = ("x", "\n\n1", " !", "]", "日本")


def require_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise InputError(f"{name} must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{name} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{name} is not valid Unicode (a lone surrogate at character {exc.start})") from None
    return text


class PromptRenderer:
    """Renders and tokenizes prompts for one backend's vocabulary."""

    def __init__(self, backend: Backend, *, model_label: str = "the model") -> None:
        self.backend = backend
        vocab = backend.vocabulary
        template = vocab.chat_template
        if is_llama3_template(template) or (template is None and "<|start_header_id|>" in vocab.special_texts):
            self.chat_format = "llama-3"
        elif template:
            self.chat_format = "gguf-template"
        else:
            raise ModelError(f"{model_label} has no chat template and is not a Llama-3 model; cannot render the prompt")
        self._bos_text = backend.token_text(vocab.bos_id) if vocab.bos_id >= 0 else None
        self._heads: dict[str, list[int]] = {}

    def render(self, question: str, response_a: str, response_b: str, settings: JudgeSettings) -> list[Piece]:
        """The prompt pieces for one ordering, up to `<think>\\n` (or the answer slot)."""
        require_text("question", question)
        require_text("response a", response_a)
        require_text("response b", response_b)
        content = fill_pairwise(question, response_a, response_b)
        if self.chat_format == "llama-3":
            pieces = render_llama3(content, date=settings.date)
        else:
            vocab = self.backend.vocabulary
            try:
                pieces = render_chat_template(
                    vocab.chat_template or "",
                    content,
                    special_tokens=vocab.special_texts,
                    bos_token=self._bos_text or "",
                    date=settings.date,
                )
            except ValueError as exc:
                raise ModelError(str(exc)) from exc
        pieces = with_reply_opening(pieces)
        if settings.max_think_tokens == 0:
            pieces = merge_text([*pieces, Piece(ANSWER_SLOT_PREFIX)])
        return pieces

    def tokenize(self, pieces: Sequence[Piece]) -> list[int]:
        """Template special tokens by id; every text piece with special-token parsing off."""
        backend = self.backend
        vocab = backend.vocabulary
        tokens: list[int] = []
        if vocab.add_bos and not (pieces and pieces[0].special and pieces[0].text == self._bos_text):
            tokens.append(vocab.bos_id)
        for piece in pieces:
            if piece.special:
                ids = backend.tokenize(piece.text, special=True)
                if len(ids) != 1 or not vocab.is_special(ids[0]):
                    raise ModelError(f"the model has no special token {piece.text!r} its chat template uses")
            else:
                ids = backend.tokenize(piece.text, special=False)
                if any(vocab.is_special(t) for t in ids):
                    raise InputError("text tokenized to a special token; refusing to judge it")
            tokens.extend(ids)
        return tokens

    def prompt_tokens(self, question: str, shown_a: str, shown_b: str, settings: JudgeSettings) -> list[int]:
        return self.tokenize(self.render(question, shown_a, shown_b, settings))

    def head_tokens(self, settings: JudgeSettings) -> list[int]:
        """The tokens every prompt starts with: the chat header and the instructions before the question.

        Found as the common prefix of prompts for unlike questions, so a question whose first
        characters merge with the text before it (BPE) cannot make the head wrong.
        """
        if settings.date not in self._heads:
            prompts = [self.prompt_tokens(q, "y", "z", settings) for q in _HEAD_PROBES]
            n = min(common_prefix(prompts[0], p) for p in prompts[1:])
            self._heads[settings.date] = prompts[0][:n]
        return self._heads[settings.date]
