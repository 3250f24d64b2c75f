"""Write tests/data/bert_vocab.gguf, a BERT (WordPiece) vocabulary as llama.cpp's converter
writes one (run by hand; then make_tokenizer_fixtures.py bert records llama.cpp's output).

A WordPiece vocabulary is trained with `tokenizers` on a mixed-script text; the GGUF holds it
as llama.cpp's BERT conversion does: word-initial pieces get the phantom space "▁", "##"
continuations lose their prefix, [X] tokens are control tokens, lowercase on. The file has the
few BERT hyperparameters llama.cpp reads when it loads a vocabulary alone, and no tensors.

    python tests/data/make_bert_vocab.py
"""
from __future__ import annotations

from pathlib import Path

import gguf

TEXT = """The quick brown fox jumps over the lazy dog. Naïve café résumé, coöperate!
Hello, world? It's what we'd've done; 3.14159 and 2.71828 are numbers. ÜNÏCÖDÉ àccents.
日本語のテキストと中文文本, 한국어 텍스트, Ελληνικά και Русский текст. Hello again, HELLO.
def fibonacci(n): return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)
"""
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train() -> list[str]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator([TEXT] * 8, trainer)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.get)


def phantom(token: str) -> str:
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def main() -> None:
    tokens = [phantom(t) for t in train()]
    out = Path(__file__).parent / "bert_vocab.gguf"
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_name("tiny-wordpiece")
    writer.add_context_length(512)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.CLS)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    for role, text in (("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("bos", "[CLS]"), ("mask", "[MASK]")):
        getattr(writer, f"add_{role}_token_id")(tokens.index(text))
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    print(f"{out}: {len(tokens)} tokens, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
