"""A synthetic llama-architecture GGUF of about 2 GB (random Q8_0 weights), for offload runs.

    python benchmarks/make_synthetic_model.py OUT.gguf [--layers 38] [--tokenizer smollm2-135m-instruct]

The shapes are TinyLlama-like (n_embd 2048, 32 heads, 4 KV heads, n_ff 5632); --layers sets
the size (38 layers: 2.0 GB). The tokenizer metadata is copied from a catalog model, so prompts
tokenize as with that model. The weights are seeded random rows, quantized once and repeated:
the text it generates means nothing, the bytes read per token are those of a real model of this
size. Never commit the output.
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType as T

from lanternlm.formats.catalog import resolve
from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.writer import write_gguf
from lanternlm.quant import quantize

N_EMBD, N_HEAD, N_HEAD_KV, N_FF = 2048, 32, 4, 5632


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--layers", type=int, default=38)
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="catalog model whose tokenizer to copy")
    args = ap.parse_args()

    source = read_gguf(resolve(args.tokenizer))
    kv = {k: v for k, v in source.kv.items() if k.startswith("tokenizer.")}
    n_vocab = len(kv["tokenizer.ggml.tokens"])
    head_dim = N_EMBD // N_HEAD
    kv.update({"general.name": "synthetic-llama", "llama.context_length": 2048, "llama.embedding_length": N_EMBD,
               "llama.block_count": args.layers, "llama.feed_forward_length": N_FF,
               "llama.attention.head_count": N_HEAD, "llama.attention.head_count_kv": N_HEAD_KV,
               "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
               "llama.rope.dimension_count": head_dim})
    rng = np.random.default_rng(0)
    pools = {n: quantize((rng.standard_normal((1024, n)) * 0.02).astype(np.float32), "Q8_0")
             for n in (N_EMBD, N_FF)}

    def matrix(rows: int, cols: int) -> tuple:
        pool = pools[cols]
        return np.ascontiguousarray(np.resize(pool, (rows, pool.shape[1]))), T.Q8_0, (rows, cols)

    def tensors():
        yield ("token_embd.weight", *matrix(n_vocab, N_EMBD))
        yield ("output_norm.weight", np.ones(N_EMBD, np.float32), T.F32, (N_EMBD,))
        yield ("output.weight", *matrix(n_vocab, N_EMBD))
        for il in range(args.layers):
            p = f"blk.{il}."
            for name in ("attn_norm", "ffn_norm"):
                yield (p + name + ".weight", np.ones(N_EMBD, np.float32), T.F32, (N_EMBD,))
            yield (p + "attn_q.weight", *matrix(N_EMBD, N_EMBD))
            yield (p + "attn_k.weight", *matrix(N_HEAD_KV * head_dim, N_EMBD))
            yield (p + "attn_v.weight", *matrix(N_HEAD_KV * head_dim, N_EMBD))
            yield (p + "attn_output.weight", *matrix(N_EMBD, N_EMBD))
            yield (p + "ffn_gate.weight", *matrix(N_FF, N_EMBD))
            yield (p + "ffn_up.weight", *matrix(N_FF, N_EMBD))
            yield (p + "ffn_down.weight", *matrix(N_EMBD, N_FF))

    path = write_gguf(args.output, kv, tensors(), kv_types={k: source.kv_types[k] for k in kv if k in source.kv_types},
                      kv_array_types={k: t for k, t in source.kv_array_types.items() if k in kv},
                      arch="llama", spool_to_disk=True)
    print(f"{path}: {path.stat().st_size / 1e9:.2f} GB, {args.layers} layers")


if __name__ == "__main__":
    main()
