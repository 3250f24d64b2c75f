"""Record llama.cpp's logits for Gemma 3 270M and Qwen2.5-Coder 0.5B (run by hand, not in CI).

    python tests/data/make_runtime_fixtures.py   # in an environment with llama-cpp-python

writes tests/data/reference_gemma3.json and tests/data/reference_qwen2.json, read by
tests/test_models_gemma3_qwen2.py. The models are the catalog's cached files
(~/.cache/lanternlm/<name>.gguf, fetched by `lantern pull <name>`).

For each prompt: llama.cpp's tokens (BOS as the model's metadata asks), then 16 greedy steps
evaluated one token at a time, keeping the 8 highest logits before each choice (the format of
../shared/reference). For Gemma 3 also a long text (the first 700 tokens of
../shared/reference/mlsys_essay.txt, past the 512-token sliding window) with the top-8 logits
of its last 4 positions. Flash attention off and 2 threads, as the SmolLM2 reference was made.
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
N_STEPS, TOP_K, LONG_TOKENS, LONG_CHECK = 16, 8, 700, 4

MODELS = {
    "gemma3": ("gemma3-270m", ["The capital of France is", "Write a haiku about the sea."], True),
    "qwen2": ("qwen2.5-coder-0.5b-instruct", ["def fibonacci(n):", "The capital of France is"], False),
}


def top_k(row: np.ndarray) -> list[list]:
    idx = np.argsort(-row, kind="stable")[:TOP_K]
    return [[int(i), round(float(row[i]), 4)] for i in idx]


def load(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=1024, n_threads=2, logits_all=True,
                           flash_attn=False, verbose=False)


def greedy(llm: llama_cpp.Llama, prompt: str) -> dict:
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(ids)
    generated, tops = [], []
    for _ in range(N_STEPS):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tops.append(top_k(row))
        nxt = int(row.argmax())
        generated.append(nxt)
        llm.eval([nxt])
    return {"prompt": prompt, "prompt_ids": ids, "generated_ids": generated, "top8_per_step": tops,
            "generated_text": llm.detokenize(generated).decode("utf-8", "replace")}


def long_text(llm: llama_cpp.Llama) -> dict:
    ids = llm.tokenize(ESSAY.read_text().encode(), add_bos=True, special=False)[:LONG_TOKENS]
    llm.reset()
    llm.eval(ids)
    rows = [np.array(llm.scores[i], dtype=np.float32) for i in range(len(ids) - LONG_CHECK, len(ids))]
    return {"ids": ids, "top8_last": [top_k(r) for r in rows]}


def main() -> None:
    for arch, (name, prompts, with_long) in MODELS.items():
        path = CACHE / f"{name}.gguf"
        llm = load(path)
        fixture = {"model": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "llama_cpp_python": llama_cpp.__version__, "greedy": [greedy(llm, p) for p in prompts]}
        if with_long:
            fixture["long"] = long_text(llm)
        out = HERE / f"reference_{arch}.json"
        out.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {out}: " + " | ".join(repr(g["generated_text"]) for g in fixture["greedy"]))


if __name__ == "__main__":
    main()
