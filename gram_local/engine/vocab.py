"""The model's vocabulary through llama.cpp: tokenizing without special-token parsing, pieces, facts.

Also used without weights (`LlamaModel(vocab_only=True)`): a remote backend tokenizes locally with
the same GGUF vocabulary the server runs, so prompts are rendered token-exact on every backend.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

import llama_cpp as llama
import numpy as np

from gram_local.backend import Vocabulary
from gram_local.engine.native import LlamaModel
from gram_local.errors import InputError, ModelError

_SPECIAL_ATTRS = llama.LLAMA_TOKEN_ATTR_CONTROL | llama.LLAMA_TOKEN_ATTR_UNKNOWN | llama.LLAMA_TOKEN_ATTR_UNUSED


class LlamaVocab:
    """Tokenize and detokenize with a loaded model's vocabulary (valid while the model is)."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        self._vocab_ptr = vocab = model.vocab_ptr
        self.n_vocab = int(llama.llama_vocab_n_tokens(vocab))
        attrs = np.fromiter(
            (llama.llama_vocab_get_attr(vocab, i) for i in range(self.n_vocab)), dtype=np.int64, count=self.n_vocab
        )
        self.special_ids = np.flatnonzero(attrs & _SPECIAL_ATTRS).astype(np.int32)
        self.special_set = frozenset(int(i) for i in self.special_ids)
        self.special_texts = tuple(self.piece(int(i), special=True).decode("utf-8", "replace") for i in self.special_ids)
        self.token_a = self.single_token("A")
        self.token_b = self.single_token("B")

    @property
    def _ptr(self) -> object:
        """The vocabulary's pointer, or a clear error once its model is freed (a thread still
        tokenizing after a close would otherwise read freed memory and abort the process)."""
        if not self._model.ptr:
            raise ModelError("the model's vocabulary was used after the model was closed")
        return self._vocab_ptr

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids for text; `special=False` never yields a special token from the text."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"the text is not valid Unicode (a lone surrogate at character {exc.start}); it cannot be judged"
            ) from None
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self._ptr, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self._ptr, data, len(data), buf, capacity, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self._ptr, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._ptr, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Iterable[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def is_special(self, token: int) -> bool:
        return token in self.special_set

    def is_eog(self, token: int) -> bool:
        """An end-of-generation token (EOS, end of turn): what a server samples once a grammar is done."""
        return bool(llama.llama_vocab_is_eog(self._ptr, token))

    @property
    def bos_id(self) -> int:
        return int(llama.llama_vocab_bos(self._ptr))

    @property
    def add_bos(self) -> bool:
        return bool(llama.llama_vocab_get_add_bos(self._ptr))

    def single_token(self, text: str) -> int:
        ids = self.tokenize(text)
        if len(ids) != 1:
            raise ModelError(f"the model's vocabulary has no single token for {text!r}; it cannot be a GRAM-RR judge")
        return ids[0]

    def facts(self, *, n_ctx_train: int | None = None) -> Vocabulary:
        """The vocabulary's facts; `n_ctx_train` given where the model was loaded vocabulary-only
        (llama.cpp then reads no hyperparameters, and asking for its shape aborts)."""
        return Vocabulary(
            n_vocab=self.n_vocab,
            bos_id=self.bos_id,
            add_bos=self.add_bos,
            token_a=self.token_a,
            token_b=self.token_b,
            special_ids=self.special_set,
            special_texts=self.special_texts,
            chat_template=self._model.chat_template(),
            n_ctx_train=self._model.shape().n_ctx_train if n_ctx_train is None else n_ctx_train,
        )


class GGUFVocabulary:
    """The Backend's vocabulary methods answered by a llama.cpp vocabulary: the engine's loaded
    model, or the vocabulary-only load a remote backend renders its prompts with."""

    vocab: LlamaVocab
    _vocabulary: Vocabulary

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    @property
    def token_a(self) -> int:
        return self.vocab.token_a

    @property
    def token_b(self) -> int:
        return self.vocab.token_b

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def token_text(self, token: int) -> str:
        return self.vocab.token_text(token)

    def detokenize(self, tokens: Iterable[int]) -> str:
        return self.vocab.detokenize(tokens)
