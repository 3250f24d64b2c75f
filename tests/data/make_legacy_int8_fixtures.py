"""Regenerate tests/data/legacy_int8_fixtures.json from llama.cpp (run by hand, not in CI).

What llama.cpp's CPU backend computes for the legacy types, on this machine's build:
  * activations: the bytes of the type traits' `from_float` for Q8_0 and Q8_1 (the SIMD
    quantize_row_q8_0 / q8_1 that ggml runs before a matrix product), plus whether the
    portable quantize_row_q8_*_ref gives different bytes for the same input;
  * dot products: `vec_dot` of each weight row (Q4_0..Q8_0 bytes written by ggml's own
    quantizer) with each activation row quantized by `from_float`: out[t, rows] as the hex of
    its little-endian float32 bytes.

It needs llama-cpp-python (for ggml's shared libraries) and numpy; run it with a Python that
has llama-cpp-python installed (a scratch venv, never the project's):

    python tests/data/make_legacy_int8_fixtures.py
    python tests/data/make_legacy_int8_fixtures.py --lib-dir /path/to/llama_cpp/lib

Inputs are rebuilt from seeds by quant_inputs.make_input; the fixture keeps their sha256.
Bit-exact dot products hold for the x86 build they came from (AVX2/FMA code paths).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_inputs import make_input, sha256  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_int8_fixtures.json")

# ggml_type numbers and bytes per 32-block; the weight types name their activation type
Q8_0, Q8_1 = 8, 9
ACTIVATION_BYTES = {Q8_0: 34, Q8_1: 36}
WEIGHTS = {"Q4_0": (2, 18, Q8_0), "Q4_1": (3, 20, Q8_1), "Q5_0": (6, 22, Q8_0),
           "Q5_1": (7, 24, Q8_1), "Q8_0": (8, 34, Q8_0)}

# (distribution, scale): 1e-39 makes every block's max subnormal, so 127 / max overflows to inf
ACTIVATION_DISTS = (("normal", 1.0), ("uniform", 1.0), ("outliers", 1.0), ("student_t", 1.0),
                    ("zeros", 1.0), ("single_nonzero", 1.0), ("constant", 1.0), ("one_signed", 1.0),
                    ("tiny", 1.0), ("small", 1.0), ("huge", 1.0), ("ties", 1.0), ("sparse_groups", 1.0),
                    ("normal", 1e-39))
DOT_ACTIVATIONS = ("outliers", "ties", "sparse_groups")
DOT_WEIGHTS = ("weights", "small", "one_signed")  # "small": half-subnormal weight scales
DOT_LENGTHS = (32, 96, 512)


class TypeTraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class Ggml:
    def __init__(self, lib_dir: str):
        mode = ctypes.RTLD_GLOBAL
        self.base = ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(os.path.join(lib_dir, "libggml-cpu.so"), mode=mode)
        self.cpu.ggml_cpu_init()
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCpu)
        self.base.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                  ctypes.c_void_p]
        for name in ("quantize_row_q8_0_ref", "quantize_row_q8_1_ref"):
            getattr(self.base, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self.features = {f: bool(getattr(self.cpu, f"ggml_cpu_has_{f}")())
                         for f in ("avx2", "fma", "f16c", "avx512", "avx512_vnni", "avx_vnni")}

    def traits(self, ggml_type: int) -> TypeTraitsCpu:
        return self.cpu.ggml_get_type_traits_cpu(ggml_type).contents

    def activations(self, act_type: int, x: np.ndarray) -> np.ndarray:
        """x f32[n] -> the backend's Q8_0 / Q8_1 bytes."""
        out = np.zeros(x.size // 32 * ACTIVATION_BYTES[act_type], np.uint8)
        FROM_FLOAT(self.traits(act_type).from_float)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def activations_ref(self, act_type: int, x: np.ndarray) -> np.ndarray:
        out = np.zeros(x.size // 32 * ACTIVATION_BYTES[act_type], np.uint8)
        fn = self.base.quantize_row_q8_0_ref if act_type == Q8_0 else self.base.quantize_row_q8_1_ref
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def quantize_weights(self, ggml_type: int, nbytes: int, w: np.ndarray) -> np.ndarray:
        rows, n = w.shape
        out = np.zeros((rows, n // 32 * nbytes), np.uint8)
        written = self.base.ggml_quantize_chunk(ggml_type, w.ctypes.data, out.ctypes.data, 0, rows, n, None)
        assert written == out.nbytes
        return out

    def vec_dot(self, ggml_type: int, w_row: np.ndarray, xq: np.ndarray, n: int) -> np.float32:
        s = np.zeros(1, np.float32)
        VEC_DOT(self.traits(ggml_type).vec_dot)(n, s.ctypes.data, 0, w_row.ctypes.data, 0,
                                                 xq.ctypes.data, 0, 1)
        return s[0]


def activation_cases(ggml: Ggml) -> list[dict]:
    cases = []
    for seed, (dist, scale) in enumerate(ACTIVATION_DISTS, start=3000):
        x = make_input(dist, 2, 128, seed) * np.float32(scale)
        case = dict(dist=dist, scale=scale, rows=2, n=128, seed=seed, input_sha256=sha256(x))
        for name, act in (("q8_0", Q8_0), ("q8_1", Q8_1)):
            simd = np.concatenate([ggml.activations(act, row) for row in x])
            ref = np.concatenate([ggml.activations_ref(act, row) for row in x])
            case[name] = simd.tobytes().hex()
            case[name + "_ref_differs"] = bool(not np.array_equal(simd, ref))
        cases.append(case)
    return cases


def dot_cases(ggml: Ggml) -> list[dict]:
    cases = []
    seed = 4000
    for type_name, (ggml_type, nbytes, act) in WEIGHTS.items():
        assert ggml.traits(ggml_type).vec_dot_type == act, type_name
        for w_dist in DOT_WEIGHTS:
            for x_dist in DOT_ACTIVATIONS:
                n = DOT_LENGTHS[seed % len(DOT_LENGTHS)]
                rows, t = 6, 5
                w_float = make_input(w_dist, rows, n, seed)
                x = make_input(x_dist, t, n, seed + 1)
                w = ggml.quantize_weights(ggml_type, nbytes, w_float)
                xq = [ggml.activations(act, row) for row in x]
                out = np.array([[ggml.vec_dot(ggml_type, w[r], xq[k], n) for r in range(rows)]
                                for k in range(t)], np.float32)
                cases.append(dict(type=type_name, w_dist=w_dist, x_dist=x_dist, rows=rows, n=n, t=t,
                                  w_seed=seed, x_seed=seed + 1, w_input_sha256=sha256(w_float),
                                  weights_sha256=sha256(w), x_sha256=sha256(x),
                                  out_f32le=out.astype("<f4").tobytes().hex()))
                seed += 2
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib-dir", help="directory of libggml-base.so / libggml-cpu.so "
                                      "(default: llama_cpp/lib of the running Python)")
    args = ap.parse_args()
    lib_dir = args.lib_dir
    version = "unknown"
    if lib_dir is None:
        import llama_cpp
        lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        version = llama_cpp.__version__
    ggml = Ggml(lib_dir)
    doc = dict(
        oracle=f"ggml CPU type traits (from_float, vec_dot) from llama-cpp-python {version}",
        cpu_features=ggml.features,
        generator="tests/data/make_legacy_int8_fixtures.py",
        numpy=np.__version__,
        activations=activation_cases(ggml),
        dots=dot_cases(ggml),
    )
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(doc['activations'])} activation and {len(doc['dots'])} dot cases to {OUT}")


if __name__ == "__main__":
    main()
