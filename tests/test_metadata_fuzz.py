"""Hostile GGUF metadata. Every key of two tiny models -- llama with a SentencePiece vocabulary and
gemma3 with a byte-level BPE one, between them every key the runtime reads -- is set in turn to
a string, 0, 2**32-1, -7, 1e30, a list of integers, a list of strings, or dropped. Loading each
file (Model.load: engine, tokenizer, chat template; then a chat prompt) and `lantern info` must
succeed, or fail with a one-line ValueError/OSError that names the key, and never allocate much.

The cases the review reported are pinned down by name below the fuzz.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm import cli
from lanternlm.formats.bpe import BYTE_ALPHABET
from lanternlm.formats import info
from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.metadata import ARCH_RULES, RULES, TOKEN_ID, MetadataError
from lanternlm.formats.writer import write_gguf
from lanternlm.runtime.model import Model
from memory_guard import bounded_memory
from tiny_llama_gguf import TinyModelSpec, tiny_model_tensors, tiny_vocab, write_tiny_model

DROP = object()
MUTATIONS = {"a string": "abc", "0": 0, "2**32-1": 2**32 - 1, "-7": -7, "1e30": 1e30,
             "a list of integers": [1, 2, 3], "a list of strings": ["x", "y"], "dropped": DROP}
N_CTX = 64
# The tiny models need a few MiB; a value that sizes an allocation must not get further.
MEMORY_BOUND = 256 << 20

SPEC = TinyModelSpec("fuzz", "llama", n_embd=32, n_ff=64, n_layer=2, n_head=2, n_head_kv=1,
                     weight_type=T.F32, tied_embeddings=True, seed=7)
HEAD_DIM = SPEC.n_embd // SPEC.n_head
# bos, eos and unknown come with the tiny model; a deprecated alias (prefix) besides: every id
# key goes through the same rule and the same loop in special_tokens.py
SPECIAL_ID_KEYS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.padding_token_id",
                   "tokenizer.ggml.prefix_token_id")


def llama_spm(directory):
    """tiny_llama_gguf's model plus every optional key the llama runtime reads."""
    source = read_gguf(write_tiny_model(directory / "source.gguf", SPEC))
    kv = dict(source.kv)
    kv.update({"llama.attention.key_length": HEAD_DIM, "llama.attention.value_length": HEAD_DIM,
               "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 2.0,
               "llama.rope.scaling.original_context_length": 64, "llama.rope.scaling.yarn_ext_factor": 1.0,
               "llama.rope.scaling.yarn_attn_factor": 1.0, "llama.rope.scaling.yarn_beta_fast": 32.0,
               "llama.rope.scaling.yarn_beta_slow": 1.0,
               "llama.final_logit_softcapping": 0.0,
               "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
               "tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_sep_token": False,
               # read by WordPiece (bert) vocabularies only; here they must change nothing
               "tokenizer.ggml.normalizer.lowercase": True, "tokenizer.ggml.normalizer.strip_accents": True,
               "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"})
    kv.update(dict.fromkeys(SPECIAL_ID_KEYS, 2))
    return kv, [(name, ref.data, ref.type, tuple(ref.shape)) for name, ref in source.tensors.items()]


def gemma3_bpe():
    """The same weights as gemma3 (plus its extra norms), with a byte-level BPE vocabulary."""
    n_vocab = len(tiny_vocab()[0])
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    words = ["Ġt", "he", "Ġthe"]
    tokens = specials + list(BYTE_ALPHABET) + words
    tokens += [f"<unused{i}>" for i in range(n_vocab - len(tokens))]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    kv = {"general.architecture": "gemma3", "general.name": "tiny-gemma3",
          "gemma3.context_length": 256, "gemma3.embedding_length": SPEC.n_embd,
          "gemma3.block_count": SPEC.n_layer, "gemma3.feed_forward_length": SPEC.n_ff,
          "gemma3.attention.head_count": SPEC.n_head, "gemma3.attention.head_count_kv": SPEC.n_head_kv,
          "gemma3.attention.key_length": HEAD_DIM, "gemma3.attention.value_length": HEAD_DIM,
          "gemma3.attention.layer_norm_rms_epsilon": 1e-6, "gemma3.rope.freq_base": 1e6,
          "gemma3.rope.freq_base_swa": 1e4, "gemma3.attention.sliding_window": 8,
          "gemma3.attention.sliding_window_pattern": 2, "gemma3.pooling_type": 1,
          "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": np.array(types, np.int32),
          "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
          "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1}
    weights = tiny_model_tensors(SPEC)
    for il in range(SPEC.n_layer):
        p = f"blk.{il}."
        weights.update({p + "attn_q_norm.weight": np.ones(HEAD_DIM, np.float32),
                        p + "attn_k_norm.weight": np.ones(HEAD_DIM, np.float32),
                        p + "post_attention_norm.weight": np.ones(SPEC.n_embd, np.float32),
                        p + "post_ffw_norm.weight": np.ones(SPEC.n_embd, np.float32)})
    return kv, [(name, a, T.F32, a.shape) for name, a in weights.items()]


@pytest.fixture(scope="module")
def base_models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    return {"llama-spm": llama_spm(directory), "gemma3-bpe": gemma3_bpe()}


@pytest.fixture
def scratch_files(monkeypatch):
    # hundreds of throwaway files: the writer's fsync would be most of the test's time
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def problem(key: str, error: BaseException | None) -> str | None:
    """What is wrong with how a load ended (None: success, or an acceptable error)."""
    if error is None:
        return None
    if not isinstance(error, (ValueError, OSError)):
        return f"{type(error).__name__}: {error}"
    message = str(error)
    if "\n" in message:
        return f"a multi-line message: {message!r}"
    if key not in message:
        return f"a message that does not name the key: {type(error).__name__}: {message}"
    return None


def load_problem(path, key: str) -> str | None:
    try:
        with bounded_memory(MEMORY_BOUND), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a context_length below N_CTX warns
            model = Model.load(path, n_ctx=N_CTX, threads=1)
            model.chat_prompt_ids([{"role": "user", "content": "the cat"}])
    except BaseException as error:  # noqa: BLE001 -- judging every outcome is the point
        return problem(key, error)
    return None


def info_problem(path, key: str) -> str | None:
    """`lantern info` without the dispatcher (which prints an OSError/ValueError as its one line)."""
    try:
        with bounded_memory(MEMORY_BOUND), contextlib.redirect_stdout(io.StringIO()):
            info.main(argparse.Namespace(model=str(path), json=False))
    except BaseException as error:  # noqa: BLE001
        return problem(key, error)
    return None


def test_the_fuzz_covers_every_key_the_runtime_reads(base_models):
    keys = {key for kv, _ in base_models.values() for key in kv}
    arch_names = {key.split(".", 1)[1] for key in keys if key.startswith(("llama.", "gemma3."))}
    # expert_count is read by the quantizer's mix rules only; attn_logit_softcapping by gemma2
    # only, through the same rule (Float) and reader as final_logit_softcapping, fuzzed here;
    # rope.scaling.attn_factor by phi3 only, with the rule of rope.scaling.yarn_attn_factor;
    # expert_used_count and expert_feed_forward_length matter to mixture-of-experts files only
    # (qwen3moe, tests/test_convert.py), Int rules like expert_count's
    assert set(ARCH_RULES) - arch_names == {"expert_count", "attn_logit_softcapping", "rope.scaling.attn_factor",
                                            "expert_used_count", "expert_feed_forward_length"}
    ids = {key for key, rule in RULES.items() if rule is TOKEN_ID}
    assert set(RULES) - ids <= keys and len(ids & keys) == 6


@pytest.mark.parametrize("model", ["llama-spm", "gemma3-bpe"])
def test_the_unmutated_models_load(base_models, model, tmp_path):
    kv, tensors = base_models[model]
    path = write_gguf(tmp_path / "base.gguf", kv, tensors)
    assert load_problem(path, "") is None and info_problem(path, "") is None
    assert Model.load(path, n_ctx=N_CTX, threads=1).tokenize("the cat")


@pytest.mark.parametrize("model", ["llama-spm", "gemma3-bpe"])
def test_every_key_mutated_loads_or_fails_in_one_line(base_models, model, tmp_path, scratch_files):
    kv, tensors = base_models[model]
    problems = []
    for key in kv:
        if key == "general.architecture":
            continue  # the writer names the architecture itself: see the test below
        for name, value in MUTATIONS.items():
            mutated = {k: v for k, v in kv.items() if k != key}
            if value is not DROP:
                mutated[key] = value
            path = write_gguf(tmp_path / "mutated.gguf", mutated, tensors)
            for where, found in (("load", load_problem(path, key)),
                                 ("info", info_problem(path, key))):
                if found:
                    problems.append(f"{key} = {name} ({where}): {found}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value", ["mamba", "", "llama.x", 5, 1e30, ["llama"]])
def test_a_hostile_architecture_is_one_line(base_models, value, tmp_path):
    # GGUFWriter writes general.architecture as a string from its own argument, so other types
    # are put into the parsed file's metadata instead
    from lanternlm.runtime.engine import Engine

    kv, tensors = base_models["llama-spm"]
    g = read_gguf(write_gguf(tmp_path / "base.gguf", kv, tensors))
    g.kv["general.architecture"] = value
    for load in (lambda: Engine(g, n_ctx=N_CTX, threads=1), lambda: info.describe(g)):
        try:
            load()
        except BaseException as error:  # noqa: BLE001
            assert problem("general.architecture", error) is None


# ---- the cases the review reported -------------------------------------------------------------

def mutated_file(base_models, tmp_path, **changes):
    kv, tensors = base_models["llama-spm"]
    kv = {**kv, **{key.replace("__", "."): value for key, value in changes.items()}}
    return write_gguf(tmp_path / "reported.gguf", kv, tensors)


@pytest.mark.parametrize("key, value, expected", [
    ("tokenizer.ggml.tokens", 0, "is an integer (0); expected a non-empty list of strings"),
    ("llama.block_count", 2**32 - 1, "is an integer (4294967295); expected an integer in 1..512"),
    ("llama.block_count", 1e30, "is a float (1e+30); expected an integer in 1..512"),
    ("llama.attention.key_length", 2**32 - 1,
     "is an integer (4294967295); expected an integer in 1..16777216"),
    ("tokenizer.ggml.bos_token_id", [1, 2],
     "is an array of 2 uint32 values; expected an integer (a token id)"),
    ("llama.rope.dimension_count", 0, "is an integer (0); expected an integer in 2..16777216"),
])
def test_reported_metadata_is_a_one_line_error_naming_the_key(base_models, tmp_path, key, value,
                                                              expected, capsys):
    path = mutated_file(base_models, tmp_path, **{key.replace(".", "__"): value})
    with bounded_memory(MEMORY_BOUND), pytest.raises(MetadataError) as caught:
        Model.load(path, n_ctx=N_CTX, threads=1)
    assert str(caught.value) == f"GGUF metadata {key} {expected}"
    # lantern info reads the tokenizer keys too, and says the same in one line
    if key.startswith("tokenizer."):
        assert cli.main(["info", str(path)]) == 1
        assert capsys.readouterr().err == f"lantern: error: GGUF metadata {key} {expected}\n"


def test_a_vocabulary_size_that_contradicts_the_tensors_is_named(base_models, tmp_path):
    path = mutated_file(base_models, tmp_path, llama__vocab_size=300)
    with pytest.raises(ValueError, match=r"292 logits, but the vocabulary has 300 tokens \(llama.vocab_size"):
        Model.load(path, n_ctx=N_CTX, threads=1)


@pytest.mark.parametrize("key, value", [("llama.block_count", "abc"), ("llama.attention.head_count", 1e30),
                                        ("llama.expert_count", -7)])
def test_the_quantizer_reads_the_same_rules(base_models, tmp_path, key, value):
    from lanternlm.quant.quantize_model import quantize_model

    path = mutated_file(base_models, tmp_path, **{key.replace(".", "__"): value})
    with pytest.raises(MetadataError, match=f"GGUF metadata {key} is "):
        quantize_model(path, tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists()


def test_lantern_info_escapes_control_characters_from_the_file(base_models, tmp_path, capsys):
    path = mutated_file(base_models, tmp_path, general__name="evil\x1b[2J\nname")
    assert cli.main(["info", str(path)]) == 0
    name_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("name")]
    assert name_line == ["name            evil\\x1b[2J\\nname"]
