"""The converted vocabulary: llama.cpp tokenizes like Hugging Face, and the metadata is Llama-3's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from random_checkpoint import default_tokenizer_json, write_random_checkpoint

from gram_local.convert import convert_checkpoint, load_checkpoint
from gram_local.convert.gguf_info import GGUFInfo, read_gguf_info
from gram_local.prompt import PAIRWISE_PROMPT

llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")

# The GRAM-RR pairwise prompt from the model card, as the judge fills it.
JUDGE_PROMPT = PAIRWISE_PROMPT

FILLED_PROMPT = JUDGE_PROMPT.format(
    user_input="10 words to apologize for being late.",
    response_1="My sincere apologies for being late today.",
    response_2="I'm sorry I couldn’t be on time today; unexpected issues delayed me, and I appreciate your patience.",
)

BASE_STRINGS = [
    # special-token look-alikes: plain text here, never control tokens
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>user<|end_header_id|>\n\n",
    "<|reserved_special_token_5|>",
    "<|image|>",
    "<think>\n",
    "</think>",
    ".</think>",
    "</think>\n<answer>\nA\n</answer>",
    "<answer>",
    "</answer>",
    "<answer>\nB\n</answer>",
    "<|",
    "|>",
    "< |eot_id| >",
    "<<|eot_id|>>",
    "<</think>",
    # code
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "const add = (a, b) => a + b;\nconsole.log(add(1, 2));",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    '#!/bin/bash\nset -euo pipefail\necho "$HOME" | tr a-z A-Z',
    '{"key": [1, 2.5, null, true], "s": "\\u00e9"}',
    '<div class="x"><p>Hello &amp; bye</p></div>',
    'fn main() { println!("{}", 42); }',
    "\tif x:\n\t\tpass\n",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)",
    "x+=1;y-=2;z*=3;w/=4",
    "a->b::c<T>()",
    "__init__ __name__ == '__main__'",
    # maths
    "∑_{i=1}^{n} x_i² ≤ ∫_0^∞ e^{-x} dx",
    "\\frac{a}{b} + \\sqrt{x^2 + y^2}",
    "E = mc^2",
    "2 + 2 = 4",
    "π ≈ 3.14159",
    "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε",
    "$\\alpha\\beta\\gamma$",
    "(a+b)(a−b) = a² − b²",
    "1/3 ≠ 0.333",
    # numbers
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345",
    "123456789",
    "3.14159",
    "-273.15",
    "1e-10",
    "6.02214076e23",
    "1,000,000",
    "1.000.000,50",
    "$19.99",
    "100%",
    "2024-07-26",
    "26 Jul 2024",
    "12:34:56",
    "+1 (555) 010-9999",
    "0x1F 0b1010 0o777",
    "v1.2.3-rc.4",
    "IPv4 192.168.0.1",
    # emoji
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷🇯🇵",
    "❤️",
    "I ❤️ NY",
    "🙂🙃😉",
    "☕️ and 🍰",
    "✅ done ❌ failed",
    # scripts
    "日本語のテキストです。",
    "中文文本，标点符号。",
    "한국어 문장입니다.",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Xin chào Việt Nam",
    "Türkçe hukuk teklif",
    "Ünïcödé àccénts: café naïve résumé",
    "straße STRASSE",
    "ǅemal ǈubljana",
    "ﬁ ﬂ ligatures",
    # whitespace
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r\n\r\n",
    " \n ",
    "\t \t",
    "a  b",
    "a   b",
    "a\tb",
    "a\n\nb",
    "trailing   ",
    "   leading",
    "\u00a0nbsp\u00a0",
    "em\u2003space",
    "zero\u200bwidth",
    "line\u2028sep",
    # contractions and casing
    "it's",
    "IT'S",
    "they'll",
    "THEY'LL",
    "we've",
    "I'm",
    "you'd",
    "don't",
    "'s",
    "'re'",
    "O'Neil's",
    # prose
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Response A is better.",
    "My sincere apologies for being late today.",
    "Apologies for making you wait; punctuality isn't my strong suit.",
    "Feedback:\nThe response is accurate.\n\nComparision:\nA is better.\n\nConclusion:\nA",
]


def _strings() -> list[str]:
    out: list[str] = [JUDGE_PROMPT, FILLED_PROMPT, *FILLED_PROMPT.split("\n")]
    for s in BASE_STRINGS:
        out += [s, " " + s, s + "\n", "x" + s]
    out += [" " * n for n in (5, 8, 16, 31, 64, 200)]
    out += ["\n" * n for n in (3, 7, 20, 100)]
    out += ["a" + " " * n + "b" for n in (2, 4, 9, 33)]
    out += ["x" + "\n" * n + " " * m + "y" for n in (1, 2, 5) for m in (0, 1, 3)]
    out += [" \t\n" * 10, "\n \n  \n   \n", "word " * 50, "ab" * 200, "9" * 50, "😀" * 20]
    return list(dict.fromkeys(out))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt"), tokenizer_json=default_tokenizer_json())


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_checkpoint(checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-bf16.gguf", quant="BF16")


@pytest.fixture(scope="module")
def info(converted: Path) -> GGUFInfo:
    return read_gguf_info(converted)


def test_llama_cpp_tokenizes_like_hugging_face(checkpoint: Path, converted: Path) -> None:
    strings = _strings()
    assert len(strings) >= 300
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint, split_special_tokens=True)
    llm = llama_cpp.Llama(str(converted), vocab_only=True, verbose=False)
    mismatches = []
    for s in strings:
        expected = hf.encode(s, add_special_tokens=False)
        got = llm.tokenize(s.encode("utf-8"), add_bos=False, special=False)
        if got != expected:
            mismatches.append((s, expected, got))
    assert not mismatches, mismatches[:3]
    # the look-alikes really are several ordinary tokens, and the real ones are single control tokens
    assert len(llm.tokenize(b"<|eot_id|>", add_bos=False, special=False)) > 1
    assert llm.tokenize(b"<|eot_id|>", add_bos=False, special=True) == [128009]


def test_llama_cpp_adds_one_bos_like_hugging_face(checkpoint: Path, converted: Path) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    llm = llama_cpp.Llama(str(converted), vocab_only=True, verbose=False)
    assert llm.tokenize(b"Hello", add_bos=True) == hf.encode("Hello") == [128000, 9906]


def test_metadata_is_llama3s(info: GGUFInfo) -> None:
    assert info.metadata["general.architecture"] == "llama"
    assert info.metadata["tokenizer.ggml.model"] == "gpt2"
    assert info.metadata["tokenizer.ggml.pre"] == "llama-bpe"
    assert info.metadata["tokenizer.ggml.bos_token_id"] == 128000
    assert info.metadata["tokenizer.ggml.eos_token_id"] == 128009  # tokenizer_config's eos_token
    assert info.metadata["tokenizer.ggml.eot_token_id"] == 128009
    assert info.metadata["tokenizer.ggml.eom_token_id"] == 128008
    assert info.metadata["tokenizer.ggml.add_bos_token"] is True
    assert info.metadata["tokenizer.ggml.add_eos_token"] is False
    assert info.metadata["llama.vocab_size"] == 128257
    tokens, types = info.metadata["tokenizer.ggml.tokens"], info.metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 128257
    assert (tokens[128009], types[128009]) == ("<|eot_id|>", 3)
    assert (tokens[9906], types[9906]) == ("Hello", 1)
    assert len(info.metadata["tokenizer.ggml.merges"]) == 280147
    assert info.metadata["llama.rope.freq_base"] == 500000.0
    assert info.metadata["llama.attention.head_count_kv"] == 2
    assert info.metadata["llama.context_length"] == 131072
    assert "output.weight" not in info.tensor_types  # tied: llama.cpp reuses token_embd
    assert info.tensor_types["token_embd.weight"] == "BF16"
    assert info.tensor_types["blk.0.attn_norm.weight"] == info.tensor_types["rope_freqs.weight"] == "F32"


def test_chat_template_renders_the_llama32_prompt(checkpoint: Path, info: GGUFInfo) -> None:
    template = info.metadata["tokenizer.chat_template"]
    assert "<|start_header_id|>" in template
    assert template == json.loads((checkpoint / "tokenizer_config.json").read_text())["chat_template"]
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "  Which is better?\n"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Which is better?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with_system = hf.apply_chat_template(
        [{"role": "system", "content": "Be fair."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=False,
        date_string="1 Jan 2025",
    )
    assert with_system.endswith(
        "Today Date: 1 Jan 2025\n\nBe fair.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )


def test_surplus_unused_added_token_is_dropped_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = write_random_checkpoint(tmp_path / "c", tokenizer_json=default_tokenizer_json(), vocab_size=128256)
    with caplog.at_level(logging.WARNING, logger="gram_local.convert"):
        vocab = load_checkpoint(ckpt).vocab
    assert vocab.dropped == [(128256, "<|image|>")]
    assert len(vocab.tokens) == 128256
    assert "128256 '<|image|>'" in caplog.text


def test_missing_ids_are_padded_as_unused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = write_random_checkpoint(tmp_path / "c", tokenizer_json=default_tokenizer_json(), vocab_size=128260)
    with caplog.at_level(logging.WARNING, logger="gram_local.convert"):
        vocab = load_checkpoint(ckpt).vocab
    assert vocab.tokens[128257:] == ["[PAD128257]", "[PAD128258]", "[PAD128259]"]
    assert vocab.token_types[128257:] == [5, 5, 5]
    assert "padded" in caplog.text


def test_ignore_merges_false_is_reported_with_the_words_that_differ(
    tmp_path: Path, converted: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """llama-bpe always looks whole words up first; when tokenizer.json says otherwise, we say so."""
    ckpt = write_random_checkpoint(tmp_path / "c", tokenizer_json=default_tokenizer_json())
    tok_path = ckpt / "tokenizer.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    tok["model"]["ignore_merges"] = False
    tok_path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="gram_local.convert"):
        load_checkpoint(ckpt)
    assert "588 vocabulary words" in caplog.text
    # and the warning is true: Hugging Face now splits a word llama.cpp keeps whole
    hf = transformers.AutoTokenizer.from_pretrained(ckpt)
    assert len(hf.encode(" hukuk", add_special_tokens=False)) == 3
    llm = llama_cpp.Llama(str(converted), vocab_only=True, verbose=False)
    assert len(llm.tokenize(b" hukuk", add_bos=False, special=False)) == 1
