"""Regenerate tests/data/quant_fixtures.json from llama.cpp (run by hand, not in CI).

The oracle is ggml's `ggml_quantize_chunk` without an importance matrix, i.e.
what llama-quantize writes.  It needs llama-cpp-python (which ships ggml's
shared libraries) and numpy, in any environment:

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python numpy
    /tmp/llvenv/bin/python tests/data/make_quant_fixtures.py            # finds llama_cpp/lib
    /tmp/llvenv/bin/python tests/data/make_quant_fixtures.py --lib /path/libggml-base.so

For every case (distribution x rows x row length, inputs rebuilt from a seed by
quant_inputs.make_input) it records the sha256 of the input and of the bytes
llama.cpp produces for each quantization type.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_inputs import DISTRIBUTIONS, make_input, sha256  # noqa: E402

# ggml_type values (== gguf.GGMLQuantizationType) and (block size, bytes per block)
TYPES = {
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
    "IQ4_NL": (20, 32, 18),
    "IQ4_XS": (23, 256, 136),
}
K_REF_ROWS = {"Q2_K": "q2_K", "Q3_K": "q3_K", "Q4_K": "q4_K", "Q5_K": "q5_K", "Q6_K": "q6_K"}

ROW_LENGTHS = (256, 512, 2304)
IQ4_NL_ONLY_LENGTHS = (32, 96)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant_fixtures.json")


def load_ggml(path: str | None) -> ctypes.CDLL:
    if path is None:
        import llama_cpp
        path = os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so")
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    for name in K_REF_ROWS.values():
        fn = getattr(lib, f"quantize_row_{name}_ref")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def quantize_chunk(lib, type_name: str, x: np.ndarray) -> np.ndarray:
    ggml_type, block, type_size = TYPES[type_name]
    rows, n = x.shape
    out = np.zeros((rows, n // block * type_size), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(ggml_type, x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert written == out.nbytes, (type_name, written, out.nbytes)
    return out


def check_k_ref_path(lib, type_name: str, x: np.ndarray, chunk: np.ndarray) -> None:
    """Without an imatrix, ggml_quantize_chunk must equal the *_ref row quantizer for K types."""
    out = np.zeros_like(chunk)
    getattr(lib, f"quantize_row_{K_REF_ROWS[type_name]}_ref")(x.ctypes.data, out.ctypes.data, x.size)
    assert np.array_equal(out, chunk), f"{type_name}: chunk and _ref differ"


def build_cases():
    cases = []
    seed = 1000
    for dist in DISTRIBUTIONS:
        if dist == "weights":
            continue
        for n in ROW_LENGTHS + IQ4_NL_ONLY_LENGTHS:
            rows = 3 if n >= 2048 else 4
            types = ["IQ4_NL"] if n in IQ4_NL_ONLY_LENGTHS else list(TYPES)
            cases.append(dict(dist=dist, rows=rows, n=n, seed=seed, types=types))
            seed += 1
    cases.append(dict(dist="weights", rows=64, n=2048, seed=seed, types=list(TYPES)))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", help="path of libggml-base.so (default: the one inside llama_cpp)")
    args = ap.parse_args()
    lib = load_ggml(args.lib)
    try:
        import llama_cpp
        version = llama_cpp.__version__
    except ImportError:
        version = "unknown"

    records = []
    for case in build_cases():
        x = make_input(case["dist"], case["rows"], case["n"], case["seed"])
        outputs = {}
        for t in case.pop("types"):
            q = quantize_chunk(lib, t, x)
            if t in K_REF_ROWS:
                check_k_ref_path(lib, t, x, q)
            outputs[t] = sha256(q)
        records.append(dict(case, input_sha256=sha256(x), outputs=outputs))

    doc = dict(
        oracle=f"ggml_quantize_chunk(imatrix=NULL) from llama-cpp-python {version}",
        generator="tests/data/make_quant_fixtures.py",
        numpy=np.__version__,
        cases=records,
    )
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(records)} cases to {OUT}")


if __name__ == "__main__":
    main()
