"""Regenerate tests/data/quantize_reference_<model>.json from llama.cpp (run by hand, not in CI).

The oracle is llama.cpp's model quantizer (`llama_model_quantize`, what the `llama-quantize`
tool runs) without an importance matrix, applied to the tiny models of tests/tiny_llama_gguf.py.
It needs llama-cpp-python, numpy and gguf in one environment (llama-cpp-python brings the
other two); lanternlm itself is not needed:

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python gguf
    /tmp/llvenv/bin/python tests/data/make_quantize_fixtures.py

For each tiny model it records the sha256 of the generated input file and, for each
quantization type, what llama.cpp wrote: the sha256 of the whole file, `general.file_type`,
and per tensor (in the file's order) its type and the first 16 hex digits of the sha256 of
its data. The metadata keys and their value types are recorded once per model (they are the
same for every type). A few outputs are then quantized again (`REQUANTIZATIONS`, with
llama.cpp's allow_requantize), which exercises dequantizing quantized sources. The test
quantizes the same inputs with lanternlm and compares.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
import tempfile
from importlib.metadata import version

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tiny_llama_gguf import TINY_MODELS, write_tiny_model  # noqa: E402

# quantization type -> llama_ftype number (gguf-py's LlamaFileType mirrors llama.h)
QUANTIZATIONS = {name: int(gguf.LlamaFileType[f"MOSTLY_{name}"]) for name in (
    "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS")}
HASH_HEX_DIGITS = 16
# (model, source type, target type): requantize llama.cpp's own output (allow_requantize)
REQUANTIZATIONS = (("wide", "Q8_0", "Q4_K_M"), ("narrow", "Q4_1", "Q3_K_M"))


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def llama_quantize(src: str, dst: str, ftype: int, allow_requantize: bool = False) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for ftype {ftype} on {src}")


def describe_output(path: str) -> tuple[dict, list[list[str]], list[str]]:
    reader = gguf.GGUFReader(path)
    kv = [[f.name, gguf.GGUFValueType(f.types[0]).name] for f in reader.fields.values()
          if not f.name.startswith("GGUF.")]
    file_type = int(reader.fields["general.file_type"].parts[-1][0])
    names = [t.name for t in reader.tensors]
    record = {
        "file_type": file_type,
        "file_sha256": sha256_file(path),
        "types": [t.tensor_type.name for t in reader.tensors],
        "sha256": [hashlib.sha256(t.data.tobytes()).hexdigest()[:HASH_HEX_DIGITS] for t in reader.tensors],
    }
    return record, kv, names


def compact_json(reference: dict) -> str:
    """Indented at the top two levels, one line per list: small and still diffable."""
    def block(mapping: dict, indent: str) -> str:
        items = [f"{indent} {json.dumps(k)}: " + (block(v, indent + " ") if isinstance(v, dict) else
                                                  json.dumps(v, separators=(",", ":")))
                 for k, v in mapping.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return block(reference, "") + "\n"


def make_reference(model: str, workdir: str) -> dict:
    src = str(write_tiny_model(os.path.join(workdir, f"{model}.gguf"), model))
    reference = {"model": model, "llama_cpp_python": version("llama-cpp-python"),
                 "input_sha256": sha256_file(src), "output_kv": None, "tensor_order": None,
                 "quantizations": {}}
    for name, ftype in QUANTIZATIONS.items():
        dst = os.path.join(workdir, f"{model}.{name}.gguf")
        llama_quantize(src, dst, ftype)
        record, kv, names = describe_output(dst)
        for key, value in (("output_kv", kv), ("tensor_order", names)):
            if reference[key] is None:
                reference[key] = value
            elif reference[key] != value:
                raise RuntimeError(f"{model} {name}: {key} differs from the other quantizations")
        reference["quantizations"][name] = record
    for _, source, target in (r for r in REQUANTIZATIONS if r[0] == model):
        dst = os.path.join(workdir, f"{model}.{source}.{target}.gguf")
        llama_quantize(os.path.join(workdir, f"{model}.{source}.gguf"), dst, QUANTIZATIONS[target], True)
        reference.setdefault("requantizations", {})[f"{source}->{target}"] = describe_output(dst)[0]
    return reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=HERE)
    parser.add_argument("--models", nargs="*", default=list(TINY_MODELS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models:
            reference = make_reference(model, workdir)
            out = os.path.join(args.out_dir, f"quantize_reference_{model}.json")
            with open(out, "w") as f:
                f.write(compact_json(reference))
            print(f"wrote {out}: {len(reference['quantizations'])} quantizations of "
                  f"{len(reference['tensor_order'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
