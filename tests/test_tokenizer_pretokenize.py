"""Pre-tokenizer building blocks: the Unicode classes against `unicodedata`, and word splits
worked out by hand from llama.cpp's split rules for each `tokenizer.ggml.pre` family."""
import re
import unicodedata

import numpy as np
import pytest

from lanternlm.formats.bpe import BYTE_ALPHABET, byte_decode, byte_encode
from lanternlm.formats.pretokenize import PRE_TOKENIZERS, pre_tokenizer, unicode_class

ALL_CHARS = np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


@pytest.mark.parametrize("category", ["L", "N", "P"])
def test_unicode_class_is_the_general_category(category):
    pattern = re.compile(f"[{unicode_class(category)}]")
    matched = {m.start() for m in pattern.finditer(ALL_CHARS)}
    expected = {cp for cp, ch in enumerate(ALL_CHARS) if unicodedata.category(ch)[0] == category}
    assert matched == expected


@pytest.mark.parametrize("name, text, words", [
    ("qwen2", "Hello world  123 I'M \n\n  x",
     ["Hello", " world", " ", " ", "1", "2", "3", " I", "'M", " \n\n", " ", " x"]),
    ("llama-bpe", "12345 don't DON'T\n\n\tb",
     ["123", "45", " don", "'t", " DON", "'T", "\n\n", "\tb"]),
    ("gpt-2", "I'M 3.5 can't", ["I", "'", "M", " 3", ".", "5", " can", "'t"]),
    ("smollm", "abc123 x1", ["abc", "1", "2", "3", " x", "1"]),
    ("default", "a+b=c 1234", ["a", "+", "b", "=", "c", " ", "123", "4"]),
    # U+001C is not White_Space (Python's \s says it is); U+00A0 is
    ("gpt-2", "a\x1c\x1cb", ["a", "\x1c\x1c", "b"]),
    ("gpt-2", "a\xa0\xa0b", ["a", "\xa0", "\xa0", "b"]),
    ("qwen2", "日本語 ١٢", ["日本語", " ", "١", "٢"]),
])
def test_hand_worked_splits(name, text, words):
    assert pre_tokenizer(name).split(text) == words


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_split_is_a_partition(name):
    text = "Mixed 123 text,\t\tpunct!! 'quotes' ÄÖÜ 日本 ١٢٣ 🤖\r\n\n  end  "
    words = pre_tokenizer(name).split(text)
    assert "".join(words) == text and all(words)


def test_pre_tokenizer_names():
    assert pre_tokenizer(None) is pre_tokenizer("") is pre_tokenizer("default")
    assert pre_tokenizer("llama-bpe").ignore_merges and pre_tokenizer("llama-bpe").add_bos
    assert not pre_tokenizer("qwen2").clean_spaces and pre_tokenizer("gpt-2").clean_spaces
    with pytest.raises(ValueError, match="'nonesuch'"):
        pre_tokenizer("nonesuch")


def test_gpt2_byte_alphabet():
    assert len(set(BYTE_ALPHABET)) == 256
    assert byte_encode(" a\n") == "Ġa\u010a"
    raw = bytes(range(256))
    assert byte_decode(raw.decode("latin-1").translate(dict(enumerate(BYTE_ALPHABET)))) == raw
    # a character outside the alphabet renders as llama.cpp's marker
    assert byte_decode("a☃") == b"a[UNK_BYTE_0xe29883a\xe2\x98\x83]"
