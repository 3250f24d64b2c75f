"""Write tests/data/gemma4_vocab.gguf, a Gemma-4-style vocabulary (run by hand; then
make_tokenizer_fixtures.py gemma4 records llama.cpp's output for it).

Gemma 4's tokenizer is BPE over characters, not bytes: spaces become '▁' first, text is cut
only at newlines, and a character the vocabulary lacks falls back to <0xXX> byte tokens. A BPE
of that shape is trained here with `tokenizers` (byte fallback on) and stored as a GGUF with
tokenizer.ggml.model "gemma4": tokens, merges, and token types (control for <bos> <eos> <pad>
<unk> and the turn markers, byte for <0xXX>). Its model hyperparameters are a tiny llama's,
which is all llama.cpp reads when it loads a vocabulary alone; the file has no tensors.

    python tests/data/make_gemma4_vocab.py
"""
from __future__ import annotations

from pathlib import Path

import gguf

TEXT = """The quick brown fox jumps over the lazy dog.  Naïve café résumé, coöperate!
Hello, world? It's what we'd've done; 3.14159 and 2.71828 are numbers.
<start_of_turn>user
Hi there<end_of_turn>
<start_of_turn>model
def fibonacci(n):
    return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)


日本語のテキストと中文文本, Ελληνικά και Русский текст.
"""
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def train() -> tuple[list[str], list[str]]:
    import json

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated")
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=520, special_tokens=SPECIALS + bytes_, show_progress=False)
    tok.train_from_iterator([TEXT] * 8, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return sorted(vocab, key=vocab.get), merges


def main() -> None:
    tokens, merges = train()
    out = Path(__file__).parent / "gemma4_vocab.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-gemma4-vocab")
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)

    def kind(t: str) -> int:
        if t in SPECIALS:
            return gguf.TokenType.CONTROL
        return gguf.TokenType.BYTE if t.startswith("<0x") and len(t) == 6 else gguf.TokenType.NORMAL
    writer.add_token_types([kind(t) for t in tokens])
    writer.add_bos_token_id(tokens.index("<bos>"))
    writer.add_eos_token_id(tokens.index("<eos>"))
    writer.add_pad_token_id(tokens.index("<pad>"))
    writer.add_unk_token_id(tokens.index("<unk>"))
    writer.add_add_bos_token(False)      # llama.cpp adds BOS for Gemma 4 all the same
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    print(f"{out}: {len(tokens)} tokens, {len(merges)} merges, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
