"""The Llama-3 BPE vocabulary as llama.cpp's `gpt2` tokenizer model with the `llama-bpe` pre-tokenizer.

Reads `tokenizer.json` (vocabulary, merges, added tokens), `tokenizer_config.json` (special tokens,
chat template, add_bos), `chat_template.jinja` and `generation_config.json`, and fits the token
list to the config's `vocab_size`, which is authoritative because it is the embedding's row count:
missing ids become unused `[PAD<id>]` entries; surplus ids are dropped only when they are added
tokens nothing refers to, and refused otherwise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gram_local.convert.config import LlamaConfig
from gram_local.convert.errors import ConversionError

logger = logging.getLogger("gram_local.convert")

#: Token types as GGUF stores them (llama.cpp's llama_token_type).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

#: The Llama-3 pre-tokenizer split pattern; llama.cpp implements exactly this one as `llama-bpe`.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER = "llama-bpe"


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None
    dropped: list[tuple[int, str]] = field(default_factory=list)
    n_padded: int = 0


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConversionError(f"{path.parent} has no {path.name}; a Hugging Face tokenizer is required")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: not a JSON object")
    return data


def _check_llama3_tokenizer(tok: dict[str, Any], path: Path) -> None:
    """Refuse tokenizers that `llama-bpe` would not reproduce."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConversionError(f"{path}: tokenizer model is not a byte-level BPE (found {model.get('type')!r})")
    if tok.get("normalizer") is not None:
        raise ConversionError(f"{path}: tokenizer has a normalizer; Llama-3's (llama-bpe) has none")
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    pattern = (steps[0].get("pattern") or {}).get("Regex") if steps else None
    if (
        kinds != ["Split", "ByteLevel"]
        or pattern != LLAMA3_SPLIT_PATTERN
        or steps[1].get("use_regex", True)
        or steps[1].get("add_prefix_space", False)
    ):
        raise ConversionError(
            f"{path}: the pre-tokenizer is not Llama-3's (Split on the Llama-3 pattern, then ByteLevel); "
            "only Llama-3.x tokenizers can be converted"
        )


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _add_special_from_post_processor(tok: dict[str, Any], token: str | None, first: bool) -> bool | None:
    """Whether the post-processor puts `token` first (BOS) or last (EOS) around a single sequence."""
    post = tok.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            if not single:
                return False
            edge = single[0] if first else single[-1]
            return token is not None and (edge.get("SpecialToken") or {}).get("id") == token
    return None


def _merge_strings(merges: list[Any], path: Path) -> list[str]:
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) and " " not in p for p in m):
            out.append(f"{m[0]} {m[1]}")
        else:
            raise ConversionError(f"{path}: malformed merge {m!r}")
    return out


def unreachable_words(vocab: dict[str, int], merges: list[str]) -> list[str]:
    """Vocabulary entries that BPE merges cannot build from their own characters.

    llama.cpp's `llama-bpe` (like Meta's tiktoken) looks a whole pre-token up in the vocabulary
    before merging; a tokenizer.json with `ignore_merges: false` merges instead, and the two differ
    exactly on these entries.
    """
    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
    bad = []
    for word in vocab:
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = -1, len(ranks)
            for i in range(len(parts) - 1):
                r = ranks.get((parts[i], parts[i + 1]), best_rank)
                if r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 1:
            bad.append(word)
    return bad


def _tokens_by_id(tok: dict[str, Any], path: Path) -> tuple[dict[int, tuple[str, int]], set[int]]:
    """id -> (text, token type) for the BPE vocabulary and the added tokens, and the added ids."""
    by_id: dict[int, tuple[str, int]] = {}
    for text, i in (tok["model"].get("vocab") or {}).items():
        if i in by_id:
            raise ConversionError(f"{path}: id {i} is used by {by_id[i][0]!r} and {text!r}")
        by_id[i] = (text, NORMAL)
    added_ids: set[int] = set()
    for added in tok.get("added_tokens") or []:
        i, text = added.get("id"), added.get("content")
        if not isinstance(i, int) or not isinstance(text, str):
            raise ConversionError(f"{path}: malformed added token {added!r}")
        by_id[i] = (text, CONTROL if added.get("special") else USER_DEFINED)
        added_ids.add(i)
    return by_id, added_ids


def _warn_if_merges_matter(model: dict[str, Any], merges: list[str]) -> None:
    if model.get("ignore_merges", False):
        return
    missed = unreachable_words(model.get("vocab") or {}, merges)
    if missed:
        logger.warning(
            "tokenizer.json sets ignore_merges=false, but llama.cpp's Llama-3 tokenizer (like Meta's "
            "tiktoken) matches whole words against the vocabulary first: %d vocabulary words that "
            "merges cannot build (e.g. %s) will tokenize differently from Hugging Face",
            len(missed),
            ", ".join(repr(w) for w in missed[:3]),
        )


def _ids(value: Any) -> list[int]:
    """Token ids from a config value: an int, a list of ints, or nothing."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _chat_template(checkpoint_dir: Path, tok_config: dict[str, Any]) -> str | list[dict[str, str]] | None:
    """`chat_template.jinja` (transformers >= 4.43 saves it there) wins over tokenizer_config.json."""
    template_file = checkpoint_dir / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    return template if isinstance(template, (str, list)) else None


def _fit(
    by_id: dict[int, tuple[str, int]], added_ids: set[int], n: int, in_use: set[int], template_text: str
) -> tuple[list[str], list[int], list[tuple[int, str]], int]:
    """Tokens and types for exactly ids 0..n-1; returns the dropped surplus and the padding count."""
    dropped: list[tuple[int, str]] = []
    for i in sorted(i for i in by_id if not 0 <= i < n):
        text = by_id[i][0]
        why = f"tokenizer.json has {len(by_id)} entries but config.json's vocab_size is {n}: "
        if i not in added_ids:
            raise ConversionError(
                why + f"id {i} {text!r} is a regular vocabulary token, so the tokenizer does not fit the model"
            )
        if i in in_use or text in template_text:
            raise ConversionError(
                why + f"the surplus added token {i} {text!r} is in use (special token or chat template)"
            )
        dropped.append((i, text))
    if dropped:
        logger.warning(
            "config.json's vocab_size is %d: dropped %d unused added token(s) beyond it: %s",
            n,
            len(dropped),
            ", ".join(f"{i} {t!r}" for i, t in dropped[:8]),
        )
    tokens, types = [], []
    for i in range(n):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    n_padded = sum(1 for i in range(n) if i not in by_id)
    if n_padded:
        logger.warning("the tokenizer has %d ids fewer than vocab_size %d: padded with unused tokens", n_padded, n)
    return tokens, types, dropped, n_padded


def read_vocab(checkpoint_dir: Path, config: LlamaConfig) -> Vocab:
    """Build the GGUF vocabulary, fitted to `config.vocab_size`; refuse what cannot be fitted."""
    tok_path = checkpoint_dir / "tokenizer.json"
    tok = _read_json(tok_path, required=True)
    tok_config = _read_json(checkpoint_dir / "tokenizer_config.json", required=False)
    gen_config = _read_json(checkpoint_dir / "generation_config.json", required=False)
    _check_llama3_tokenizer(tok, tok_path)
    merges = _merge_strings(tok["model"].get("merges") or [], tok_path)
    by_id, added_ids = _tokens_by_id(tok, tok_path)
    _warn_if_merges_matter(tok["model"], merges)
    id_of = {text: i for i, (text, _) in by_id.items()}

    # Special tokens: the tokenizer config names them; the model configs give ids as a fallback.
    def named(key: str) -> int | None:
        text = _token_content(tok_config.get(key))
        if text is None:
            return None
        if text not in id_of:
            raise ConversionError(f"tokenizer_config.json: {key} {text!r} is not in the vocabulary")
        return id_of[text]

    def first(*candidates: Any) -> int | None:
        return next((ids[0] for c in candidates if (ids := _ids(c))), None)

    bos_id = named("bos_token")
    bos_id = first(config.bos_token_id, gen_config.get("bos_token_id")) if bos_id is None else bos_id
    eos_id = named("eos_token")
    eos_id = first(list(config.eos_token_ids), gen_config.get("eos_token_id")) if eos_id is None else eos_id
    pad_id = named("pad_token")
    pad_id = config.pad_token_id if pad_id is None else pad_id
    template = _chat_template(checkpoint_dir, tok_config)

    def text_of(i: int | None) -> str | None:
        return by_id[i][0] if i is not None and i in by_id else None

    add_bos = tok_config.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = bool(_add_special_from_post_processor(tok, text_of(bos_id), first=True))
    add_eos = tok_config.get("add_eos_token")
    if not isinstance(add_eos, bool):
        add_eos = bool(_add_special_from_post_processor(tok, text_of(eos_id), first=False))

    n = config.vocab_size
    in_use = {i for i in (bos_id, eos_id, pad_id) if i is not None}
    in_use |= {*config.eos_token_ids, *_ids(gen_config.get("bos_token_id")), *_ids(gen_config.get("eos_token_id"))}
    if isinstance(template, list):
        template_text = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    else:
        template_text = template or ""
    tokens, types, dropped, n_padded = _fit(by_id, added_ids, n, in_use, template_text)
    for role, i in (("BOS", bos_id), ("EOS", eos_id), ("PAD", pad_id)):
        if i is not None and not 0 <= i < n:
            raise ConversionError(f"the {role} token id {i} is outside the vocabulary (vocab_size {n})")

    def kept(text: str) -> int | None:
        i = id_of.get(text)
        return i if i is not None and i < n else None

    return Vocab(
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=bos_id,
        eos_id=eos_id,
        eot_id=kept("<|eot_id|>"),
        eom_id=kept("<|eom_id|>"),
        pad_id=pad_id,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template,
        dropped=dropped,
        n_padded=n_padded,
    )
