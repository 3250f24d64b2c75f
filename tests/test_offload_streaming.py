"""Dense streaming under a RAM budget (no offload plan): bit-identical to the in-RAM engine.

The oracle is the in-RAM engine itself: a streamed chunk runs through the same kernel on the
same bytes, so logits must be equal bit for bit, for every architecture (biases, tied
embeddings), weight type, chunking and budget. The I/O pieces are checked against the file's
own bytes.
"""
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm.formats.writer import write_gguf
from lanternlm.offload.budget import parse_budget
from lanternlm.offload.direct_io import DirectReader, span_bytes
from lanternlm.offload.residency import plan_residency, spread_rank
from lanternlm.offload.weight_stream import WeightStream
from lanternlm.quant import quantize
from lanternlm.runtime.backends import cpu_streaming
from lanternlm.runtime.engine import Engine
from test_runtime_engine import HEAD_DIM, tiny_model
from tiny_llama_gguf import write_tiny_model

IDS = [3, 17, 42, 5, 9, 33, 60, 1, 2, 8, 11, 50]
MATRIX_TYPES = [T.Q8_0, T.Q4_0, T.Q5_1, T.Q4_1, T.Q5_0, T.F16, T.F32]  # row widths 64 and 96


# ---- budgets and residency ---------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [("300MB", 300_000_000), ("1.5GB", 1_500_000_000),
                                        ("512MiB", 512 * 2**20), ("40%", 400), ("100%", 1000),
                                        (12345, 12345), (" 2 kb ", 2000)])
def test_parse_budget(text, want):
    assert parse_budget(text, file_bytes=1000) == want


@pytest.mark.parametrize("text", ["", "lots", "0MB", "-5MB", "150%", "0%", "3 parsecs", "1e3x"])
def test_parse_budget_rejects_nonsense_with_the_text(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text, file_bytes=1000)


def test_residency_fills_the_budget_in_claim_order():
    sizes = {"output_norm.weight": 10, "blk.0.attn_norm.weight": 10, "blk.0.attn_q.weight": 100,
             "blk.1.attn_q.weight": 100, "blk.0.ffn_up.weight": 300, "blk.1.ffn_up.weight": 300,
             "output.weight": 500, "token_embd.weight": 500}
    matrices = {n for n in sizes if n.endswith(("attn_q.weight", "ffn_up.weight")) or n == "output.weight"}
    r = plan_residency(sizes, matrices, {"token_embd.weight"}, budget=20 + 200 + 300 + 50 + 40, buffer_bytes=50)
    # vectors, both attention matrices, then the first FFN matrix; the second FFN matrix and
    # the head do not fit; the embedding, only gathered, is never resident
    assert r.resident == {"output_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight",
                          "blk.1.attn_q.weight", "blk.0.ffn_up.weight"}
    assert set(r.streamed) == {"blk.1.ffn_up.weight", "output.weight"}
    assert r.gathered == ("token_embd.weight",)
    assert r.resident_bytes == 50 + 20 + 200 + 300
    # tied embeddings: the table is the head too, so it claims a place as a matrix
    tied = {n: b for n, b in sizes.items() if n != "output.weight"}
    r = plan_residency(tied, (matrices - {"output.weight"}) | {"token_embd.weight"}, {"token_embd.weight"},
                       budget=50 + 20 + 200 + 600 + 500, buffer_bytes=50)
    assert "token_embd.weight" in r.resident and r.gathered == ()
    r = plan_residency(tied, (matrices - {"output.weight"}) | {"token_embd.weight"}, {"token_embd.weight"},
                       budget=50 + 20 + 200 + 600, buffer_bytes=50)
    assert r.streamed == ("token_embd.weight",) and r.gathered == ("token_embd.weight",)
    with pytest.raises(ValueError, match="too small"):
        plan_residency(sizes, matrices, {"token_embd.weight"}, budget=60, buffer_bytes=50)


def test_ffn_matrices_left_to_stream_are_spread_over_the_layers():
    """8 layers of FFN, room for 6: the two that stream are 3 and 7 (the last of the
    bit-reversed order 0 4 2 6 1 5 3 7), not 6 and 7, so each is read while earlier layers run."""
    sizes = {f"blk.{i}.ffn_up.weight": 100 for i in range(8)}
    r = plan_residency(sizes, set(sizes), set(), budget=600 + 10, buffer_bytes=10)
    assert set(r.streamed) == {"blk.3.ffn_up.weight", "blk.7.ffn_up.weight"}
    assert [spread_rank(i, 24) for i in (0, 1, 2, 23)] == [0, 16, 8, 29]


# ---- I/O -------------------------------------------------------------------------------------

@pytest.fixture
def data_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 * 4096 + 777, dtype=np.uint8)
    path = tmp_path / "data.bin"
    path.write_bytes(data.tobytes())
    return path, data


def test_direct_reader_reads_unaligned_ranges_and_counts_bytes(data_file):
    path, data = data_file
    reader = DirectReader(path)
    for offset, n in [(0, 10), (4095, 2), (5000, 4096), (len(data) - 5, 5)]:
        got = reader.read_copy(offset, n)
        np.testing.assert_array_equal(got, data[offset:offset + n])
    assert reader.reads == 4
    assert reader.bytes_read >= 10 + 2 + 4096 + 5
    with pytest.raises(ValueError, match="outside the file"):
        reader.read_copy(len(data) - 4, 5)


def test_weight_stream_cycles_and_restarts_after_an_abandoned_pass(data_file):
    path, data = data_file
    items = [(0, 100), (4000, 5000), (9000, 3000), (13000, 50)]
    stream = WeightStream(DirectReader(path), items, n_slots=2)
    try:
        def take(i):
            got = np.copy(stream.acquire(i))
            stream.release()
            o, n = items[i]
            np.testing.assert_array_equal(got, data[o:o + n])

        for _ in range(3):                 # whole passes, read ahead across pass boundaries
            for i in range(len(items)):
                take(i)
        take(0)
        stream.acquire(1)                  # a pass abandoned while item 1 was in use
        for i in range(len(items)):        # the next pass starts at item 0 again
            take(i)
        take(2)                            # or anywhere
        take(3)
        assert stream.buffer_bytes == 2 * max(span_bytes(o, n) for o, n in items)
    finally:
        stream.close()


def test_weight_stream_reports_a_file_that_shrank(data_file):
    path, data = data_file
    reader = DirectReader(path)
    stream = WeightStream(reader, [(0, 100), (8000, 4000)], n_slots=1)
    try:
        np.copy(stream.acquire(0))
        os.truncate(path, 9000)            # the next read runs past the new end of the file
        stream.release()
        with pytest.raises(OSError, match="ended at byte|reading weights"):
            stream.acquire(1)
    finally:
        stream.close()


# ---- bit-identical to the in-RAM engine ----------------------------------------------------------

def write_mixed_model(path, arch, n_layer=None, head_dim=HEAD_DIM, extra_kv=None):
    """A tiny model whose matrices cycle through several types (token_embd Q8_0); n_layer keeps
    only the first layers; extra_kv: metadata added."""
    kv, weights = tiny_model(arch, head_dim=head_dim)
    kv.update(extra_kv or {})
    if n_layer is not None:
        kv[f"{arch}.block_count"] = n_layer
        weights = {n: w for n, w in weights.items() if not n.startswith("blk.") or int(n.split(".")[1]) < n_layer}
    tensors = []
    for i, (name, arr) in enumerate(weights.items()):
        kind = T.F32 if arr.ndim == 1 else (T.Q8_0 if name == "token_embd.weight" else MATRIX_TYPES[i % 7])
        data = arr if kind in (T.F32,) else (arr.astype(np.float16) if kind == T.F16 else quantize(arr, kind.name))
        tensors.append((name, data, kind, arr.shape))
    write_gguf(path, kv, tensors, arch=arch)
    return path


def every_output(engine):
    """Logits of a prefill over IDS in chunks, a last-token prefill and three decode steps."""
    every = engine.logits(IDS)
    engine.reset()
    last = engine.eval(IDS[:7]).copy()
    steps = [engine.eval([t]).copy() for t in (4, 8, 15)]
    return every, last, steps


def assert_identical(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for x, y in zip(a[2], b[2]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_dense_streaming_is_bit_identical_on_tiny_models(tmp_path, arch, monkeypatch):
    path = write_mixed_model(tmp_path / f"{arch}.gguf", arch)
    want = every_output(Engine.load(path, n_ctx=32, n_batch=5, threads=1))
    monkeypatch.setattr(cpu_streaming, "CHUNK_BYTES", 1)   # 16-row chunks: several per matrix
    size = os.path.getsize(path)
    for budget in ("1%", "50%", "100%"):
        try:
            eng = Engine.load(path, n_ctx=32, n_batch=5, threads=1, ram_budget=budget)
        except ValueError as exc:              # 1% is below the buffers' minimum: said so
            assert budget == "1%" and "too small" in str(exc)
            continue
        be = eng.backend
        assert be.resident_bytes <= parse_budget(budget, size)
        assert_identical(every_output(eng), want)
        if budget != "100%":
            assert be.residency.streamed and be.reader.bytes_read > be.load_bytes


def test_dense_streaming_is_bit_identical_with_k_quants(tmp_path, monkeypatch):
    from lanternlm.quant.quantize_model import quantize_model

    src = write_tiny_model(tmp_path / "wide.gguf", "wide")
    path = tmp_path / "wide-q4_k_m.gguf"
    quantize_model(src, path, "Q4_K_M")
    want = every_output(Engine.load(path, n_ctx=32, n_batch=5, threads=2))
    monkeypatch.setattr(cpu_streaming, "CHUNK_BYTES", 1)
    eng = Engine.load(path, n_ctx=32, n_batch=5, threads=2, ram_budget="30%")
    assert_identical(every_output(eng), want)


def test_dense_streaming_is_bit_identical_on_smollm2(smollm2_path):
    ids = list(range(1000, 1040))
    ram = Engine.load(smollm2_path, n_ctx=64, n_batch=16, threads=2)
    streamed = Engine.load(smollm2_path, n_ctx=64, n_batch=16, threads=2, ram_budget="30%", offload_plan=False)
    assert streamed.backend.resident_bytes <= 0.3 * os.path.getsize(smollm2_path)
    np.testing.assert_array_equal(streamed.logits(ids), ram.logits(ids))
    np.testing.assert_array_equal(streamed.eval([7]), ram.eval([7]))


def test_a_budget_needs_the_cpu_backend(tmp_path):
    path = write_mixed_model(tmp_path / "m.gguf", "llama")
    with pytest.raises(ValueError, match="cpu backend"):
        Engine.load(path, n_ctx=8, backend="torch", device="cpu", ram_budget="50%")


def test_a_model_larger_than_the_memory_available_gets_a_budget_and_a_notice(tmp_path, monkeypatch):
    from lanternlm.runtime import engine as engine_module
    from lanternlm.runtime import memory_limits
    from lanternlm.runtime.kv_cache import KVCache
    from lanternlm.runtime.resident_draft import draft_buffer_bytes

    path = write_mixed_model(tmp_path / "m.gguf", "llama")
    want = every_output(Engine.load(path, n_ctx=32, n_batch=5, threads=1))
    size = os.path.getsize(path)
    probe = Engine.load(path, n_ctx=32, n_batch=5, threads=1)
    kv = KVCache.nbytes_for(probe.cfg, 32, probe.kv.k_type, probe.kv.v_type)
    monkeypatch.setattr(cpu_streaming, "CHUNK_BYTES", 1)                 # small streaming buffers
    room = (kv + draft_buffer_bytes(probe.cfg.n_vocab)                    # 3/4 of the file fits
            + engine_module.AUTO_BUDGET_HEADROOM + size * 3 // 4)
    monkeypatch.setattr(memory_limits, "available_memory",
                        lambda: memory_limits.AvailableMemory(room, "cgroup v1 limit (test)"))
    with pytest.warns(engine_module.AutomaticBudgetWarning, match="does not fit.*cgroup v1 limit"):
        eng = Engine.load(path, n_ctx=32, n_batch=5, threads=1)
    assert eng.backend.ram_budget == size * 3 // 4 and eng.backend.residency.streamed
    assert_identical(every_output(eng), want)
    # enough memory: no budget, no notice
    monkeypatch.setattr(memory_limits, "available_memory",
                        lambda: memory_limits.AvailableMemory(room + size, "MemAvailable"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not hasattr(Engine.load(path, n_ctx=32, n_batch=5, threads=1).backend, "residency")
