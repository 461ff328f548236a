"""`validate_gguf`: damaged or foreign GGUFs are refused, with the reason, before llama.cpp sees them.

Each bad file is a copy of the real SmolLM2 GGUF with one defect. Only the header and tensor table
are copied; the file is then extended to its full size with zeros (a sparse file), which also shows
that validation never reads the weights.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from gram_local.errors import ModelFileError
from gram_local.store import GgufSummary, validate_gguf
from gram_local.store.gguf_header import ArrayRef, read_header

Patch = Callable[[bytearray], None]


@pytest.fixture(scope="module")
def original(smollm2_path: Path) -> tuple[Path, bytes, int]:
    """The real file, its header bytes (up to the tensor data) and its size."""
    header = read_header(smollm2_path)
    with smollm2_path.open("rb") as f:
        head = f.read(header.data_offset)
    return smollm2_path, head, header.file_size


def copy_with(tmp_path: Path, original: tuple[Path, bytes, int], patch: Patch | None = None, size: int | None = None) -> Path:
    _, head, full_size = original
    data = bytearray(head)
    if patch is not None:
        patch(data)
    out = tmp_path / "model.gguf"
    out.write_bytes(bytes(data[: size if size is not None else len(data)]))
    with out.open("r+b") as f:
        f.truncate(full_size if size is None else size)
    return out


def tensor_entry(data: bytearray, name: str) -> int:
    """Where the dimension count of tensor `name` starts in the tensor table."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.rfind(key)  # the tensor table comes after the metadata
    assert at > 0, name
    return at + len(key)


def set_u64(data: bytearray, at: int, value: int) -> None:
    data[at : at + 8] = struct.pack("<Q", value)


def replace_string_value(key: str, old: bytes, new: bytes) -> Patch:
    """A same-length replacement of a metadata string value."""
    assert len(old) == len(new)

    def patch(data: bytearray) -> None:
        encoded_key = struct.pack("<Q", len(key)) + key.encode()
        at = data.find(encoded_key) + len(encoded_key) + 4 + 8  # the value type, the value's length
        assert data[at : at + len(old)] == old
        data[at : at + len(new)] = new

    return patch


def rename_token(path: Path, token: str, new: str) -> Patch:
    """Give vocabulary entry `token` another one-byte spelling."""
    ref = read_header(path).metadata["tokenizer.ggml.tokens"]
    assert isinstance(ref, ArrayRef)

    def patch(data: bytearray) -> None:
        at = ref.offset
        for _ in range(ref.count):
            (n,) = struct.unpack_from("<Q", data, at)
            if bytes(data[at + 8 : at + 8 + n]) == token.encode():
                data[at + 8 : at + 8 + n] = new.encode()
                return
            at += 8 + n
        raise AssertionError(f"{token!r} is not in the vocabulary")

    return patch


def shape(name: str, index: int, value: int) -> Patch:
    def patch(data: bytearray) -> None:
        set_u64(data, tensor_entry(data, name) + 4 + 8 * index, value)

    return patch


def offset_of_last_tensor(value: int) -> Patch:
    def patch(data: bytearray) -> None:
        at = tensor_entry(data, "output_norm.weight")  # the last one in the file's data
        (n_dims,) = struct.unpack_from("<I", data, at)
        set_u64(data, at + 4 + 8 * n_dims + 4, value)

    return patch


def flip(at: int, length: int = 1) -> Patch:
    def patch(data: bytearray) -> None:
        for i in range(at, at + length):
            data[i] ^= 0xFF

    return patch


def test_the_real_smollm2_gguf_passes(smollm2_path: Path) -> None:
    summary = validate_gguf(smollm2_path)
    assert isinstance(summary, GgufSummary)
    assert (summary.architecture, summary.file_type, summary.n_vocab) == ("llama", "Q4_1", 49152)
    assert (summary.n_layer, summary.n_embd, summary.n_head, summary.n_head_kv, summary.n_ff) == (30, 576, 9, 3, 1536)
    assert summary.n_tensors == 272 and summary.answer_token_ids == (49, 50)


def test_a_converted_llama3_gguf_passes(tiny_llama3_gguf: Path) -> None:
    """The converter's own output, with the 128k Llama-3 vocabulary and its merges."""
    summary = validate_gguf(tiny_llama3_gguf)
    assert summary.architecture == "llama" and summary.n_vocab > 128_000 and summary.file_type == "F16"
    assert summary.answer_token_ids == (32, 33)  # byte-level BPE: "A" and "B" are their own bytes


def test_an_intact_header_with_zeroed_weights_passes(tmp_path: Path, original: tuple[Path, bytes, int]) -> None:
    """The baseline of every case below: the copy itself is valid, and the weights are never read."""
    assert validate_gguf(copy_with(tmp_path, original)).n_tensors == 272


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-gguf", "does not start with the GGUF magic (found b'PK"),
        ("empty", "the file is empty"),
        ("truncated-counts", "the tensor count at byte 8 needs 8 bytes but the file ends at byte 12 (truncated)"),
        ("truncated-header", "the tensor count at byte 8 claims 272 entries, more than the remaining 4080 bytes"),
        ("truncated-tensor-table", "the name of tensor 270 at byte 1785555 claims 19 bytes, more than the remaining 1"),
        ("truncated-weights", "past the end of the file"),
        ("flipped-magic", "does not start with the GGUF magic"),
        ("flipped-version", "GGUF version 252 is not one llama.cpp reads (2, 3)"),
        ("absurd-tensor-count", "the tensor count at byte 8 claims 1099511627776 entries, more than the remaining"),
        ("absurd-metadata-count", "the metadata count at byte 16 claims"),
        ("architecture", "it holds a 'gemma' model; gram-local runs Llama-architecture models"),
        ("no-answer-token", "no single token for the answer 'A'"),
        ("offset-past-end", "the tensor output_norm.weight ends at byte"),
        ("embedding-shape", "token_embd.weight has shape [576, 49151], but the metadata implies [576, 49152]"),
        ("attention-shape", "blk.7.attn_k.weight has shape [576, 128], but the metadata implies [576, 192]"),
        ("missing-tensor", "the tensor blk.0.attn_q.weight is missing"),
        ("layer-count", "llama.block_count is 0, not a positive integer"),
    ],
)
def test_a_bad_file_is_refused_with_the_reason(
    tmp_path: Path, original: tuple[Path, bytes, int], case: str, message: str
) -> None:
    path, head, size = original
    cases: dict[str, Callable[[], Path]] = {
        "not-gguf": lambda: _write(tmp_path, b"PK\x03\x04" + bytes(4096)),
        "empty": lambda: _write(tmp_path, b""),
        "truncated-counts": lambda: copy_with(tmp_path, original, size=12),
        "truncated-header": lambda: copy_with(tmp_path, original, size=4096),
        "truncated-tensor-table": lambda: copy_with(tmp_path, original, size=len(head) - 100),
        "truncated-weights": lambda: copy_with(tmp_path, original, size=size - 1000),
        "flipped-magic": lambda: copy_with(tmp_path, original, flip(1)),
        "flipped-version": lambda: copy_with(tmp_path, original, flip(4)),
        "absurd-tensor-count": lambda: copy_with(tmp_path, original, lambda d: set_u64(d, 8, 1 << 40)),
        "absurd-metadata-count": lambda: copy_with(tmp_path, original, flip(16 + 5)),
        "architecture": lambda: copy_with(
            tmp_path, original, replace_string_value("general.architecture", b"llama", b"gemma")
        ),
        "no-answer-token": lambda: copy_with(tmp_path, original, rename_token(path, "A", "\x01")),
        "offset-past-end": lambda: copy_with(tmp_path, original, offset_of_last_tensor(1 << 40)),
        "embedding-shape": lambda: copy_with(tmp_path, original, shape("token_embd.weight", 1, 49151)),
        "attention-shape": lambda: copy_with(tmp_path, original, shape("blk.7.attn_k.weight", 1, 128)),
        "missing-tensor": lambda: copy_with(
            tmp_path, original, lambda d: _rename_tensor(d, "blk.0.attn_q.weight", "blk.0.attn_x.weight")
        ),
        "layer-count": lambda: copy_with(tmp_path, original, _set_u32_value("llama.block_count", 0)),
    }
    bad = cases[case]()
    with pytest.raises(ModelFileError) as info:
        validate_gguf(bad)
    text = str(info.value)
    assert text.startswith(f"{bad} is not a usable GGUF model: ") and "\n" not in text
    assert message in text, text


def test_load_judge_refuses_a_bad_file_before_llama_cpp_sees_it(
    tmp_path: Path, original: tuple[Path, bytes, int]
) -> None:
    from gram_local import EngineSettings, load_judge

    bad = copy_with(tmp_path, original, replace_string_value("general.architecture", b"llama", b"gemma"))
    with pytest.raises(ModelFileError, match="'gemma' model"):
        load_judge(bad, engine=EngineSettings(head_cache=False))


def _write(tmp_path: Path, data: bytes) -> Path:
    out = tmp_path / "model.gguf"
    out.write_bytes(data)
    return out


def _rename_tensor(data: bytearray, old: str, new: str) -> None:
    at = tensor_entry(data, old) - len(old)
    data[at : at + len(new)] = new.encode()


def _set_u32_value(key: str, value: int) -> Patch:
    def patch(data: bytearray) -> None:
        encoded_key = struct.pack("<Q", len(key)) + key.encode()
        at = data.find(encoded_key) + len(encoded_key)
        assert struct.unpack_from("<I", data, at)[0] == 4  # a uint32
        data[at + 4 : at + 8] = struct.pack("<I", value)

    return patch
