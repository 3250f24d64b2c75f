"""Quantized KV caches (runtime/kv_cache.py, backends/kv_rows.py) in the engine, the library and
the CLI. The kernels' own oracle tests (gguf-py's blocks, the Hadamard matrix) are in
test_runtime_kernels.py and test_context_shift.py.

Oracle here: llama.cpp's logits for SmolLM2 over 256 tokens of an essay with each cache type
(tests/data/reference_kv_cache.json, made by tests/data/make_kv_cache_fixtures.py; a quantized
cache Hadamard-rotated, llama.cpp's default). Quantizing the cache changes llama.cpp's own
logits by some amount (mean |q8_0 - f16| 0.13, |q4_0 - f16| 0.40 on the recorded columns); ours
with the same cache type must sit within 1.5x that of llama.cpp's (measured 0.14 and 0.40; an
unrotated q4_0 cache is 1.33 away, so the test can fail).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from lanternlm import cli
from lanternlm.runtime.engine import Engine
from lanternlm.runtime.kv_cache import CACHE_TYPES, KVCache, cache_type
from lanternlm.runtime.model import Model
from test_runtime_engine import tiny_model, write_model

REFERENCE = Path(__file__).parent / "data" / "reference_kv_cache.json"


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_logits_with_a_quantized_cache_stay_as_close_to_llama_cpp_as_its_own_change(smollm2_path, reference, kind):
    eng = Engine.load(smollm2_path, n_ctx=512, threads=2, cache_type_k=kind, cache_type_v=kind)
    assert eng.kv.k_rotation == 64 and eng.kv.v_rotation == 64  # SmolLM2's heads of 64 rotate whole
    columns = np.array(reference["columns"])
    ours = eng.logits(reference["ids"])[-reference["checked"]:, columns]
    theirs = {name: np.array(rows) for name, rows in reference["logits"].items()}
    own_change = np.abs(theirs[kind] - theirs["f16"]).mean()
    assert np.abs(ours - theirs[kind]).mean() <= 1.5 * own_change


def test_quantized_caches_take_llama_cpp_block_sizes(smollm2_path):
    """q8_0 keeps 34 bytes per 32 values, q4_0 18: 53% and 28% of an f16 cache."""
    f16 = Engine.load(smollm2_path, n_ctx=64, threads=1)
    mixed = Engine.load(smollm2_path, n_ctx=64, threads=1, cache_type_k="q8_0", cache_type_v="q4_0")
    cfg = f16.cfg
    values = cfg.n_layer * cfg.n_head_kv * cfg.head_dim * 64
    assert f16.kv.nbytes == 2 * 2 * values
    assert mixed.kv.nbytes == values * 34 // 32 + values * 18 // 32
    assert mixed.kv.nbytes == KVCache.nbytes_for(cfg, 64, CACHE_TYPES["q8_0"], CACHE_TYPES["q4_0"])
    assert mixed.kv.k[0].dtype.itemsize == 34 and mixed.kv.v[0].dtype.itemsize == 18


def test_greedy_generation_with_quantized_caches_follows_the_f16_one(smollm2_path):
    """The library takes llama-cpp-python's type_k / type_v (names or GGML numbers: q8_0 is 8).
    The prompt's greedy steps lead by 3 logits or more with an f16 cache, far beyond what the
    cache types change (see above), so the text must not change."""
    prompt = "1, 2, 3, 4, 5,"
    want = Model.load(smollm2_path, n_ctx=64, threads=1).generate(prompt, max_tokens=8, temperature=0)
    q8 = Model(smollm2_path, n_ctx=64, n_threads=1, type_k=8, type_v="q8_0")
    assert q8.engine.kv.k_type.name == q8.engine.kv.v_type.name == "q8_0"
    assert q8.generate(prompt, max_tokens=8, temperature=0) == want == " 6, 7, 8"
    q4 = Model.load(smollm2_path, n_ctx=64, threads=1, type_k="q4_0", type_v="q4_0")
    assert q4.generate(prompt, max_tokens=8, temperature=0) == want


def test_cli_takes_llama_cpp_cache_flags(smollm2_path, capsys):
    rc = cli.main(["run", str(smollm2_path), "The capital of France is", "-n", "4", "--temp", "0", "-q",
                   "-t", "1", "-ctk", "q8_0", "--cache-type-v", "q4_0"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "Paris" in out
    with pytest.raises(SystemExit):
        cli.main(["run", str(smollm2_path), "hi", "--cache-type-k", "q5_1"])
    assert "invalid choice: 'q5_1'" in capsys.readouterr().err


def test_bad_cache_types_are_refused_with_their_names(tmp_path):
    with pytest.raises(ValueError, match="unknown KV cache type 'q3'.*f32, f16, q8_0, q4_0"):
        cache_type("q3")
    with pytest.raises(ValueError, match="not a GGML type number"):
        cache_type(99)
    assert cache_type(2).name == "q4_0" and cache_type("Q8_0").name == "q8_0"
    path = tmp_path / "tiny.gguf"
    write_model(path, "llama", *tiny_model("llama"))          # heads of 16 values
    with pytest.raises(ValueError, match="multiple of 32; this model's is 16"):
        Engine.load(path, n_ctx=16, cache_type_k="q8_0")


def test_torch_backend_refuses_a_quantized_cache(smollm2_path):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="torch backend keeps its KV cache in float tensors; a q4_0 cache"):
        Engine.load(smollm2_path, n_ctx=32, backend="torch", cache_type_v="q4_0")
