"""`QuantType.batch_invariant` says the truth: where it is set, every row of a matmul over t
tokens equals matvec on that token bit for bit (what exact multi-token verification of drafts
relies on, runtime/engine.py's verify); where it is not, the test shows they differ, so that a
kernel made invariant gets its flag."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm.quant import QTYPES


def weights(qtype, rows, n, rng):
    w = rng.standard_normal((rows, n)).astype(np.float32)
    q = QTYPES[qtype]
    if q.quantize is not None:
        return np.ascontiguousarray(q.quantize(w)).reshape(rows, -1)
    from gguf import quants
    try:
        return np.ascontiguousarray(quants.quantize(w, qtype)).reshape(rows, -1)
    except NotImplementedError:  # neither quantizes it (the IQ1/IQ2/IQ3 grid types): random blocks
        from test_quant_lowbit import random_blocks
        return random_blocks(qtype, rows, n, rng)


@pytest.mark.parametrize("qtype", sorted((t for t in QTYPES if t != T.Q8_K), key=lambda t: t.name),
                         ids=lambda t: t.name)
def test_batch_invariant_flag_matches_the_kernels(qtype):
    q = QTYPES[qtype]
    rng = np.random.default_rng(0)
    n, rows = (512 if q.block_size <= 32 else 1024), 64
    w = weights(qtype, rows, n, rng)
    same = True
    for t in (2, 3, 5, 8, 16):
        x = rng.standard_normal((t, n)).astype(np.float32)
        batched = np.zeros((t, rows), np.float32)
        q.matmul(batched, w, x)
        single = np.zeros((t, rows), np.float32)
        for i in range(t):
            q.matvec(single[i], w, x[i])
        same &= np.array_equal(batched, single)
        if q.matmul_rows is not None:          # the row-exact matmul is exact where matmul is not
            exact = np.zeros((t, rows), np.float32)
            q.matmul_rows(exact, w, x)
            np.testing.assert_array_equal(exact, single)
    assert same == q.batch_invariant
    assert q.batch_invariant or q.matmul_rows is not None
