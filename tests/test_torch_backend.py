"""The torch backend: the same graphs on torch tensors (CPU here; CUDA tests marked `cuda`).

Oracles: lanternlm.quant.dequantize (bit-identical to gguf-py) for the torch dequantizers;
the float64 numpy forward of tests/test_runtime_engine.py and the Numba cpu backend for the
tiny llama/qwen2/gemma3 models; the cpu backend's argmax and llama.cpp's recorded perplexity
(../shared/reference) for SmolLM2; the numpy sampler for sampling on tensors.
"""
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from lanternlm import cli
from lanternlm.formats.writer import write_gguf
from lanternlm.quant import QTYPES, dequantize, quantize
from lanternlm.quant.legacy import FLOAT_KERNELS
from lanternlm.runtime.backends import BackendError, BackendUnavailableError, get_backend
from lanternlm.runtime.backends import torch_backend
from lanternlm.runtime.backends.torch_dequant import DEQUANTIZERS, dequantize_rows
from lanternlm.runtime.engine import Engine
from lanternlm.runtime.generate import KVContext, generate_step
from lanternlm.runtime.model import Model
from lanternlm.runtime.sampling import make_sampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_cpp_tolerances import PPL_RTOL  # noqa: E402
from test_runtime_engine import IDS, N_VOCAB, reference_logits, tiny_model, write_model  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "smollm2-135m-q4_1.llama_cpp.json"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible to torch")
CATALOG_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K, T.F16, T.F32, T.BF16]


# ---- dequantization --------------------------------------------------------------------------

def _random_blocks(qtype, rows=64, blocks_per_row=3, seed=0):
    """Random bytes: every bit pattern of every field, including NaN/inf scales."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, blocks_per_row * type_size), dtype=np.uint8)
    return raw, blocks_per_row * block_size


def _assert_bit_identical(got: np.ndarray, want: np.ndarray):
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("qtype", sorted(DEQUANTIZERS, key=int), ids=lambda t: t.name)
def test_dequantize_random_bytes_is_bit_identical(qtype):
    raw, n = _random_blocks(qtype)
    got = dequantize_rows(torch.from_numpy(raw), qtype, n).numpy()
    _assert_bit_identical(got, dequantize(raw, qtype, (raw.shape[0], n)))


@pytest.mark.parametrize("qtype", [t for t in CATALOG_TYPES if t not in (T.F32, T.F16, T.BF16)],
                         ids=lambda t: t.name)
def test_dequantize_quantized_weights_is_bit_identical(qtype):
    x = (np.random.default_rng(1).standard_normal((16, 512)) * np.linspace(0.01, 3, 512)).astype(np.float32)
    raw = quantize(x, qtype.name)
    got = dequantize_rows(torch.from_numpy(raw), qtype, 512).numpy()
    _assert_bit_identical(got, dequantize(raw, qtype, x.shape))


def test_catalog_types_have_torch_dequantizers():
    assert set(CATALOG_TYPES) <= set(DEQUANTIZERS)


def test_dequantize_rejects_wrong_row_length():
    raw, _ = _random_blocks(T.Q4_0)
    with pytest.raises(ValueError, match="Q4_0"):
        dequantize_rows(torch.from_numpy(raw), T.Q4_0, 64)


# ---- tiny models: every op, all three architectures, both weight modes --------------------------

QUANT_CYCLE = (T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_1)


def _write_quantized_model(path, arch, kv, weights):
    """Every matrix in a 32-block type (cycling through QUANT_CYCLE), vectors F32."""
    tensors = []
    for i, (name, arr) in enumerate(weights.items()):
        if arr.ndim == 2:
            qtype = QUANT_CYCLE[i % len(QUANT_CYCLE)]
            tensors.append((name, quantize(arr, qtype.name), qtype, arr.shape))
        else:
            tensors.append((name, arr, T.F32, arr.shape))
    write_gguf(path, kv, tensors, arch=arch)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def tiny(request, tmp_path_factory):
    arch = request.param
    kv, weights = tiny_model(arch)
    d = tmp_path_factory.mktemp(arch)
    stored = write_model(d / "f32.gguf", arch, kv, weights)
    _write_quantized_model(d / "quant.gguf", arch, kv, weights)
    return arch, d, stored


def test_tiny_logits_match_float64_reference(tiny):
    arch, d, W = tiny
    eng = Engine.load(d / "f32.gguf", n_ctx=32, backend="torch", device="cpu")
    assert isinstance(eng.backend, torch_backend.TorchBackend) and eng.backend.device.type == "cpu"
    got = eng.logits(IDS)
    want = reference_logits(arch, W, IDS)
    assert isinstance(got, np.ndarray) and got.shape == (len(IDS), N_VOCAB) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    assert eng.n_past == len(IDS)


# How far decode and prefill may differ. GEGLU rounds its input to half (as llama.cpp does): a
# different summation order in torch's decode and prefill matmuls can put an input on the other
# side of a half rounding boundary, a 1e-3 relative step in that activation.
STEP_ATOL = {"gemma3": 2e-4}


def test_tiny_decode_and_chunked_prefill_equal_one_prefill(tiny):
    """Decode (no mask, sliding window as a key range) and chunks of 4 (mask over cached keys)."""
    arch, d, _ = tiny
    atol = STEP_ATOL.get(arch, 1e-5)
    eng = Engine.load(d / "f32.gguf", n_ctx=32, n_batch=4, backend="torch", device="cpu")
    every = eng.logits(IDS)
    eng.reset()
    np.testing.assert_allclose(eng.eval(IDS).numpy(), every[-1], rtol=1e-5, atol=atol)
    eng.reset()
    for i, tok in enumerate(IDS):
        step = eng.eval([tok])
        assert isinstance(step, torch.Tensor) and step.shape == (N_VOCAB,)
        np.testing.assert_allclose(step.numpy(), every[i], rtol=1e-5, atol=atol)
    eng.truncate(5)
    np.testing.assert_allclose(eng.eval(IDS[5:]).numpy(), every[-1], rtol=1e-5, atol=atol)


def test_tiny_device_memory_path_uploads_inputs_and_copies_logits_back(tiny, monkeypatch):
    """The GPU code path (inputs uploaded once per run, all-logits computed into a device buffer
    and copied to the caller's array), run on the CPU by saying its memory is not the host's."""
    arch, d, W = tiny
    monkeypatch.setattr(get_backend("torch", device="cpu"), "host_memory", False)
    eng = Engine.load(d / "f32.gguf", n_ctx=32, n_batch=4, backend="torch", device="cpu")
    every = eng.logits(IDS)
    want = reference_logits(arch, W, IDS)
    np.testing.assert_allclose(every, want, atol=2e-4 * np.abs(want).max())
    eng.reset()
    for i, tok in enumerate(IDS):
        np.testing.assert_allclose(eng.eval([tok]).numpy(), every[i], rtol=1e-5, atol=STEP_ATOL.get(arch, 1e-5))
    uploads = [fn for fn, _ in eng.decode_program.calls if getattr(fn, "__name__", "") == "copy_"]
    assert len(uploads) == 2                                  # token ids and positions, once each


def test_inputs_of_programs_bound_per_call_are_released(tiny):
    """All-logits programs are bound at every call; their inputs' entries must go with them."""
    _, d, _ = tiny
    eng = Engine.load(d / "f32.gguf", n_ctx=32, n_batch=4, backend="torch", device="cpu")
    eng.logits(IDS)
    gc.collect()
    held = len(eng.backend._inputs)
    for _ in range(3):
        eng.logits(IDS)
    gc.collect()
    assert len(eng.backend._inputs) == held == 2              # the decode program's ids and positions


def float_activation_kernels(monkeypatch):
    """Register the legacy types' float-activation twins: the registered CPU kernels round the
    activations to Q8 first, as llama.cpp does (quant/legacy_int8.py), which torch does not."""
    for qtype, (matvec, matmul) in FLOAT_KERNELS.items():
        monkeypatch.setitem(QTYPES, qtype, dataclasses.replace(QTYPES[qtype], matvec=matvec, matmul=matmul))


def test_tiny_quantized_weights_match_dense_and_cpu_backend(tiny, monkeypatch):
    _, d, _ = tiny
    path = d / "quant.gguf"
    with monkeypatch.context() as m:
        float_activation_kernels(m)
        # Numba, on the blocks, with an f32 KV cache like the torch backend's
        want = Engine.load(path, n_ctx=32, kv_type="f32").logits(IDS)
    dense = Engine.load(path, n_ctx=32, backend="torch", device="cpu").logits(IDS)
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 64 * 7)            # several row chunks
    eng = Engine.load(path, n_ctx=32, backend="torch", device="cpu", weights="quantized")
    kept = [m for m in eng.backend._matrices.values() if isinstance(m, torch_backend.QuantizedMatrix)]
    assert len(kept) == len(eng.backend._matrices) and all(m.step < m.raw.shape[0] for m in kept)
    quant = eng.logits(IDS)
    # The same dequantized weights, multiplied in row chunks instead of whole: only the float32
    # summation order differs, and the BLAS picks it by shape and instruction set (AVX2, AVX-512,
    # AMX tiles). Two orders of a 96-term f32 dot differ by up to ~2 * 96 * 2^-24 = 1.1e-5 of the
    # sum of |terms|; over 3 layers, norms and a head whose terms cancel, 1e-4 of the logit scale
    # (seen: differences up to 3.3e-5 on a Xeon with AMX) -- a wrong block or scale moves logits by 1e-2+.
    np.testing.assert_allclose(quant, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())
    np.testing.assert_allclose(dense, want, atol=2e-4 * np.abs(want).max())


def test_tiny_greedy_generation_samples_on_the_tensor(tiny):
    """The generation loop on torch logits: argmax taken on the tensor after the prefill and each
    decode step, the prefill's logits kept as a tensor clone for a repeated prompt."""
    _, d, _ = tiny
    eng = Engine.load(d / "f32.gguf", n_ctx=32, backend="torch", device="cpu")
    context, greedy, prompt = KVContext(eng, 32), make_sampler(temperature=0.0), IDS[:5]
    tokens = list(generate_step(context, prompt, greedy, max_tokens=8))
    evaluated = context.evaluated_tokens
    assert list(generate_step(context, prompt, greedy, max_tokens=8)) == tokens
    assert context.evaluated_tokens == evaluated + 7        # the prompt was not evaluated again
    every = eng.logits(prompt + tokens)
    assert tokens == [int(every[len(prompt) - 1 + i].argmax()) for i in range(8)]


# ---- SmolLM2 against the cpu backend and llama.cpp ---------------------------------------------

@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.fail(f"llama.cpp reference outputs not found at {REFERENCE}")
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def smol_torch(smollm2_path):
    return Model.load(smollm2_path, n_ctx=512, n_batch=256, backend="torch", device="cpu")


def _teacher_forced_agreement(torch_model, cpu_engine, reference):
    agree = total = 0
    for case in reference["greedy"]:
        ids = case["prompt_ids"] + case["generated_ids"]
        rows = slice(len(case["prompt_ids"]) - 1, len(ids) - 1)
        ours = torch_model.logits(ids)[rows].argmax(1)
        theirs = cpu_engine.logits(ids)[rows].argmax(1)
        agree += int((ours == theirs).sum())
        total += len(ours)
    return agree, total


def test_smollm2_argmax_agrees_with_cpu_backend(smol_torch, smollm2_path, reference, monkeypatch):
    float_activation_kernels(monkeypatch)
    cpu = Engine.load(smollm2_path, n_ctx=512, n_batch=256)
    agree, total = _teacher_forced_agreement(smol_torch, cpu, reference)
    assert total == 128
    assert agree / total >= 0.99, f"argmax agrees at {agree}/{total} steps"


def _perplexity(logits: np.ndarray, ids) -> float:
    logits = logits.astype(np.float64)
    top = logits.max(1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    nll = log_z[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def test_smollm2_perplexity_matches_llama_cpp(smol_torch, reference):
    ppl = reference["perplexity"]
    ours = _perplexity(smol_torch.logits(ppl["ids"]), ppl["ids"])
    assert abs(ours / ppl["ppl"] - 1) < PPL_RTOL, f"perplexity {ours:.3f} vs llama.cpp {ppl['ppl']:.3f}"


# ---- sampling on tensors ---------------------------------------------------------------------

def test_greedy_on_a_tensor_is_numpy_argmax_first_of_ties():
    logits = np.array([0.5, 3.0, -1.0, 3.0, 2.0], dtype=np.float32)
    assert make_sampler(temperature=0.0)(torch.from_numpy(logits), []) == 1 == int(np.argmax(logits))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_greedy_on_a_tensor_rejects_non_finite_logits(bad):
    logits = torch.tensor([0.5, bad, 1.0])
    with pytest.raises(ValueError, match="no token can be sampled"):
        make_sampler(temperature=0.0)(logits, [])
    with pytest.raises(ValueError, match="no token can be sampled"):
        make_sampler(temperature=0.0)(torch.full((4,), -math.inf), [])


@pytest.mark.parametrize("options", [
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02, seed=7),
    dict(temperature=0.0, repeat_penalty=1.5, logit_bias={3: 2.0}),
])
def test_sampler_chain_on_a_tensor_equals_numpy(options):
    logits = np.random.default_rng(2).standard_normal(300).astype(np.float32) * 3
    history = [3, 5, 5, 9]
    on_tensor = make_sampler(**options)
    on_numpy = make_sampler(**options)
    got = [on_tensor(torch.from_numpy(logits.copy()), history) for _ in range(20)]
    want = [on_numpy(logits, history) for _ in range(20)]
    assert got == want


# ---- options and errors ----------------------------------------------------------------------

def test_torch_is_not_imported_unless_chosen():
    code = ("import lanternlm, lanternlm.runtime.model, lanternlm.runtime.engine, sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # `import torch` now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'lanternlm\[torch\]'"):
        get_backend("torch")
    with pytest.raises(ImportError, match="PyTorch"):
        Model.load("smollm2-135m-instruct", backend="torch")  # before any download


def test_bad_options_are_clear_errors():
    with pytest.raises(BackendError, match="unknown torch device 'tpu'"):
        get_backend("torch", device="tpu")
    with pytest.raises(BackendError, match="weights must be one of dequantized, quantized"):
        get_backend("torch", device="cpu", weights="int3")
    with pytest.raises(BackendError, match="needs backend='torch'"):
        get_backend("cpu", device="cuda")
    with pytest.raises(BackendError, match="needs backend='torch'"):
        get_backend("cpu", weights="dequantized")
    assert get_backend("torch", device="cpu") is get_backend("torch", device="cpu")
    assert get_backend("torch", device="cpu").dtype == torch.float32


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendError, match="sees no CUDA GPU"):
        get_backend("torch", device="cuda")
    assert get_backend("torch", device="auto").device.type in ("cpu", "mps")


def test_cli_passes_device_to_the_backend(capsys):
    """Both fail while loading, before any download: the flags reached the backend factory."""
    assert cli.main(["run", "smollm2-135m-instruct", "-p", "Hi", "--device", "cuda"]) == 1
    assert "device 'cuda' needs backend='torch'" in capsys.readouterr().err
    assert cli.main(["perplexity", "smollm2-135m-instruct", str(REFERENCE), "--backend", "torch",
                     "--device", "tpu"]) == 1
    assert "unknown torch device 'tpu'" in capsys.readouterr().err


# ---- CUDA (skipped without a GPU) ------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("qtype", sorted(DEQUANTIZERS, key=int), ids=lambda t: t.name)
def test_cuda_dequantize_is_bit_identical(qtype):
    raw, n = _random_blocks(qtype)
    got = dequantize_rows(torch.from_numpy(raw).cuda(), qtype, n).cpu().numpy()
    _assert_bit_identical(got, dequantize(raw, qtype, (raw.shape[0], n)))


@pytest.mark.cuda
@needs_cuda
def test_cuda_tiny_model_decode_matches_prefill_and_reference(tiny):
    arch, d, W = tiny
    eng = Engine.load(d / "f32.gguf", n_ctx=32, n_batch=4, backend="torch", device="cuda")
    assert eng.backend.device.type == "cuda" and eng.kv.k[0].is_cuda
    every = eng.logits(IDS)
    want = reference_logits(arch, W, IDS)
    np.testing.assert_allclose(every, want, atol=3e-2 * np.abs(want).max())   # half-precision weights
    eng.reset()
    for i, tok in enumerate(IDS):
        step = eng.eval([tok])
        assert step.is_cuda
        np.testing.assert_allclose(step.cpu().numpy(), every[i], atol=1e-2 * np.abs(every[i]).max())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("weights", ["dequantized", "quantized"])
def test_cuda_smollm2_matches_cpu_backend_and_llama_cpp(smollm2_path, reference, weights):
    model = Model.load(smollm2_path, n_ctx=512, n_batch=256, backend="torch", device="cuda", weights=weights)
    cpu = Engine.load(smollm2_path, n_ctx=512, n_batch=256)
    agree, total = _teacher_forced_agreement(model, cpu, reference)
    assert agree / total >= 0.95, f"argmax agrees at {agree}/{total} steps (bf16/fp16 weights)"
    ppl = reference["perplexity"]
    ours = _perplexity(model.logits(ppl["ids"]), ppl["ids"])
    assert abs(ours / ppl["ppl"] - 1) < 0.02, f"perplexity {ours:.3f} vs llama.cpp {ppl['ppl']:.3f}"
    case = reference["greedy"][0]
    tokens = [c.token for c in model.stream_generate(case["prompt_ids"], max_tokens=8, temperature=0.0)
              if c.token is not None]
    every = model.logits(case["prompt_ids"] + tokens)
    n = len(case["prompt_ids"])
    assert sum(t == int(every[n - 1 + i].argmax()) for i, t in enumerate(tokens)) >= 7
