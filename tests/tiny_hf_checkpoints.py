"""Tiny random Hugging Face checkpoints, built offline, for the converter's tests.

    ckpt = build_checkpoint("llama", tmp_path / "llama")   # -> TinyCheckpoint(path, model, tokenizer)

Each checkpoint is a real `save_pretrained` folder: config.json, safetensors weights (optionally
sharded with an index, optionally bfloat16), a tokenizer trained on the spot (byte-level BPE with
the `tokenizers` library, or SentencePiece with `SentencePieceTrainer`) and tokenizer_config.json
with a chat template. Weights are drawn from a fixed seed with larger spreads than the
initializer's, so logits vary enough for a comparison to mean something.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # never reach for the hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Hello world! Numbers like 12345, 3.14 and 2024 appear here; don't we'll I'm they've.",
    "Bonjour le monde, ça va? Une naïve café crème à côté de l'école.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "  Leading spaces,\ttabs and\n\nblank lines   matter too.",
    "日本語のテキストと中文文本 mixed with English words and emoji 🚀🦙.",
    "User: what is the capital of France?\nAssistant: Paris is the capital of France.",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                       "{{ m['content'] }}<end_of_turn>\n{% endfor %}")

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)


@dataclass
class TinyCheckpoint:
    path: Path
    model: torch.nn.Module   # the float32 model as saved (bfloat16 saves: as reloaded)
    tokenizer: object        # the HF tokenizer the folder loads as


# ---- tokenizers ----------------------------------------------------------------------------

def _bpe_pre_tokenizer(style: str):
    from tokenizers import Regex, pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    styles = {
        "llama3": lambda: pt.Sequence([pt.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), byte_level]),
        "qwen2": lambda: pt.Sequence([pt.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level]),
        "smollm": lambda: pt.Sequence([pt.Digits(individual_digits=True),
                                       pt.ByteLevel(add_prefix_space=False, use_regex=True)]),
    }
    return styles[style]()


# style -> (special tokens, bos, eos, BOS added by the post-processor)
_BPE_SPECIALS = {
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"],
               "<|begin_of_text|>", "<|im_end|>", True),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", False),
    "smollm": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", False),
}


def train_bpe_tokenizer(style: str, vocab_size: int = 400):
    """A byte-level BPE PreTrainedTokenizerFast in the style of Llama 3, Qwen2 or SmolLM."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, adds_bos = _BPE_SPECIALS[style]
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))  # as Llama 3's tokenizer.json
    tok.pre_tokenizer = _bpe_pre_tokenizer(style)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    # an added token that is not special: llama.cpp stores it as user-defined
    tok.add_tokens(["<tool>"])
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_sentencepiece(directory: Path, vocab_size: int = 512) -> Path:
    """A Gemma-style SentencePiece BPE model (byte fallback, no dummy prefix) at directory/tokenizer.model."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_prefix=str(directory / "tokenizer"),
        vocab_size=vocab_size, hard_vocab_limit=False, model_type="bpe", byte_fallback=True,
        add_dummy_prefix=False, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], minloglevel=2)
    (directory / "tokenizer.vocab").unlink()
    return directory / "tokenizer.model"


def _save_sentencepiece_tokenizer(directory: Path):
    """tokenizer.model plus the tokenizer_config.json / tokenizer.json a Gemma folder carries."""
    from transformers import AutoTokenizer

    train_sentencepiece(directory)
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "chat_template": GEMMA_CHAT_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(directory)  # converts tokenizer.model (needs protobuf)
    tokenizer.save_pretrained(directory)                  # adds tokenizer.json, keeps tokenizer.model
    # as in Gemma 3's own tokenizer_config.json, the turn markers are listed as special tokens
    saved = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    saved["added_tokens_decoder"] = {
        str(tokenizer.convert_tokens_to_ids(text)): {"content": text, "special": True}
        for text in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")}
    (directory / "tokenizer_config.json").write_text(json.dumps(saved), encoding="utf-8")
    return tokenizer


# ---- models --------------------------------------------------------------------------------

def _randomize(model: torch.nn.Module, seed: int, norm_center: float) -> None:
    """Weights with enough spread that logits differ clearly between tokens and positions."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / p.shape[-1] ** 0.5) * 4)
            elif "norm" in name:
                p.copy_(norm_center + 0.5 * (torch.rand(p.shape, generator=gen) - 0.5))
            else:  # biases
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def _llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False, bos_token_id=None,
                       eos_token_id=None, **{**SMALL, **overrides})


def _qwen2_config(vocab_size: int, **overrides):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=True, **{**SMALL, **overrides})


def _mistral_config(vocab_size: int, **overrides):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab_size, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                         head_dim=16, **{**SMALL, "sliding_window": 8, **overrides})


def _qwen3_config(vocab_size: int, **overrides):
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=vocab_size, tie_word_embeddings=True, head_dim=16, **{**SMALL, **overrides})


def _gemma2_config(vocab_size: int, **overrides):
    from transformers import Gemma2Config

    # small caps, so that the random model's scores and logits reach them; eager attention,
    # transformers' path with soft-capping
    return Gemma2Config(vocab_size=vocab_size, head_dim=16, query_pre_attn_scalar=16, bos_token_id=2, eos_token_id=1,
                        pad_token_id=0, attn_implementation="eager",
                        **{**SMALL, "sliding_window": 8, "attn_logit_softcapping": 2.0,
                           "final_logit_softcapping": 3.0, **overrides})


def _gemma3_config(vocab_size: int, **overrides):
    from transformers import Gemma3TextConfig

    # query_pre_attn_scalar = head_dim: the attention scale llama.cpp uses for Gemma 3
    return Gemma3TextConfig(vocab_size=vocab_size, head_dim=16, query_pre_attn_scalar=16,
                            sliding_window=64, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                            **{**SMALL, **overrides})


def _phi3_config(vocab_size: int, **overrides):
    from transformers import Phi3Config

    # a sliding window of 8 keys, as Phi-3-mini-4k has one (of 2047)
    return Phi3Config(vocab_size=vocab_size, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None, **{**SMALL, "sliding_window": 8, **overrides})


def _qwen3moe_config(vocab_size: int, **overrides):
    from transformers import Qwen3MoeConfig

    # 8 experts of width 32, 2 per token, top-k weights renormalized (as Qwen3-30B-A3B's config
    # says and llama.cpp always does)
    return Qwen3MoeConfig(vocab_size=vocab_size, tie_word_embeddings=False, head_dim=16, num_experts=8,
                          num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                          decoder_sparse_step=1, mlp_only_layers=[], **{**SMALL, **overrides})


def _model_class(family: str):
    from transformers import (Gemma2ForCausalLM, Gemma3ForCausalLM, LlamaForCausalLM, MistralForCausalLM,
                              Phi3ForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM)

    return {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM,
            "qwen3": Qwen3ForCausalLM, "gemma2": Gemma2ForCausalLM, "gemma3": Gemma3ForCausalLM,
            "phi3": Phi3ForCausalLM, "qwen3moe": Qwen3MoeForCausalLM}[family]


# family -> (config builder, default tokenizer, norm weight centre: gemma stores w with (1 + w))
FAMILIES = {
    "llama": (_llama_config, "llama3", 1.0),
    "qwen2": (_qwen2_config, "qwen2", 1.0),
    "qwen3": (_qwen3_config, "qwen2", 1.0),
    "mistral": (_mistral_config, "llama3", 1.0),
    "gemma2": (_gemma2_config, "spm", 0.0),
    "gemma3": (_gemma3_config, "spm", 0.0),
    "phi3": (_phi3_config, "llama3", 1.0),
    "qwen3moe": (_qwen3moe_config, "qwen2", 1.0),
}


def build_checkpoint(family: str, directory: Path, *, tokenizer: str | None = None,
                     extra_vocab: int = 0, dtype: torch.dtype = torch.float32,
                     max_shard_size: str | None = None, seed: int = 0, **config) -> TinyCheckpoint:
    """Save a tiny random `family` checkpoint (with its tokenizer) to `directory`.

    `tokenizer`: "llama3" / "qwen2" / "smollm" (byte-level BPE) or "spm" (SentencePiece);
    `extra_vocab`: embedding rows beyond the tokenizer's ids (as Qwen2.5 pads its vocabulary);
    `dtype`: dtype of the saved weights; `max_shard_size`: shard the safetensors (with index).
    """
    make_config, default_tokenizer, norm_center = FAMILIES[family]
    tokenizer = tokenizer or default_tokenizer
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer == "spm":
        hf_tokenizer = _save_sentencepiece_tokenizer(directory)
    else:
        hf_tokenizer = train_bpe_tokenizer(tokenizer)
        hf_tokenizer.save_pretrained(directory)
    n_vocab = len(hf_tokenizer) + extra_vocab
    torch.manual_seed(seed)
    model = _model_class(family)(make_config(n_vocab, **config)).eval()
    _randomize(model, seed, norm_center)
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(directory, **save_kwargs)
    if dtype != torch.float32:  # the reference is what the file holds, computed in float32
        model = _model_class(family).from_pretrained(directory, dtype=torch.float32).eval()
    return TinyCheckpoint(directory, model.float(), hf_tokenizer)


def hf_logits(ckpt: TinyCheckpoint, ids: list[int]) -> "np.ndarray":  # noqa: F821
    """transformers' logits (len(ids), n_vocab) float32 for one sequence."""
    with torch.no_grad():
        out = ckpt.model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def use_ggml_gelu(model) -> None:
    """Swap the tanh-GELU of every MLP in `model` for llama.cpp's: gelu of the input rounded to
    half, rounded to half (its GGML_GELU_FP16 table), 0 below -10 and the identity above 10."""
    def half(t):
        return t.to(torch.float16).to(torch.float32)

    class GgmlGelu(torch.nn.Module):
        def forward(self, x):
            g = half(torch.nn.functional.gelu(half(x), approximate="tanh"))
            return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, g))

    for module in list(model.modules()):
        if isinstance(getattr(module, "act_fn", None), torch.nn.Module):
            module.act_fn = GgmlGelu()
