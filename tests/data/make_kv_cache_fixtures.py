"""Record llama.cpp's logits with quantized KV caches for SmolLM2 (run by hand, not in CI).

    PYTHONPATH=<llama-cpp-python> python tests/data/make_kv_cache_fixtures.py

writes tests/data/reference_kv_cache.json, read by tests/test_kv_cache_types.py. The model is
the catalog's cached file (~/.cache/lanternlm/smollm2-135m-instruct.gguf).

The first PROMPT_TOKENS tokens of ../shared/reference/mlsys_essay.txt are evaluated in one
batch with each cache type: f16 without flash attention (llama.cpp's default path, which the
other reference files use), and with flash attention (which a quantized V cache needs in
llama.cpp) f16, q8_0/q8_0 and q4_0/q4_0, llama.cpp's Hadamard rotation of quantized caches on
(its default). For the last CHECKED positions the file keeps the logits of a fixed set of
token ids: every token among the 4 highest of any of those positions with the f16 cache.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "lanternlm"
ESSAY = HERE.parents[2] / "shared" / "reference" / "mlsys_essay.txt"
MODEL = "smollm2-135m-instruct"
PROMPT_TOKENS, CHECKED, TOP = 256, 32, 4
GGML = {"f16": 1, "q8_0": 8, "q4_0": 2}
RUNS = {"f16": ("f16", False), "f16_flash": ("f16", True), "q8_0": ("q8_0", True), "q4_0": ("q4_0", True)}


def logits(path: Path, ids: list[int], kind: str, flash: bool) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=2, logits_all=True,
                          flash_attn=flash, type_k=GGML[kind], type_v=GGML[kind], verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def main() -> None:
    path = CACHE / f"{MODEL}.gguf"
    tokenizer = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = tokenizer.tokenize(ESSAY.read_text().encode(), add_bos=True, special=False)[:PROMPT_TOKENS]
    runs = {name: logits(path, ids, kind, flash)[-CHECKED:] for name, (kind, flash) in RUNS.items()}
    columns = sorted({int(t) for row in runs["f16"] for t in np.argsort(-row)[:TOP]})
    fixture = {"model": MODEL, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
               "llama_cpp_python": llama_cpp.__version__, "ids": ids, "checked": CHECKED, "columns": columns,
               "logits": {name: np.round(rows[:, columns], 4).tolist() for name, rows in runs.items()}}
    out = HERE / "reference_kv_cache.json"
    out.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {out}: {len(columns)} columns")


if __name__ == "__main__":
    main()
