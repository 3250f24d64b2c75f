"""`lantern offload MODEL`: build an offload plan (offload/plan_file.py) for a model.

    lantern offload MODEL [-o PLAN.gguf] [--calibration TEXTFILE] [--kld-target 0.03]

1. Dense pass over the calibration text with every FFN observed (backends/ffn_probe.py):
   per-layer samples of |act(gate)| and each neuron's mean magnitude (its hotness).
2. Each layer's cost: the KL divergence from the dense model with only that layer at
   PROBE_SPARSITY.
3. Per-layer sparsity s_l = min(c / k_l, 0.9) (offload/sparsity.py), with c found by bisection
   so that the whole model's KL on the calibration text stays below CALIBRATION_MARGIN x the
   target; the thresholds are the layers' s_l-quantiles of |act(gate)|.
4. Quality on held-out text (offload/texts/evaluation.txt, never used for calibration): KL
   divergence, perplexity of both models, top-token agreement, sparsity reached.
5. Bundles in hotness order (offload/bundles.py), written with everything else to the plan.

The model file is only read. The plan goes beside it (MODEL.offload.gguf) unless -o says where.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

PROBE_SPARSITY = 0.5          # a layer's cost is measured with half its neurons off
CALIBRATION_MARGIN = 0.7      # calibrate below the target: held-out text diverges more
DEFAULT_KLD_TARGET = 0.03
DEFAULT_CTX = 256             # tokens per evaluated chunk
MAX_CHUNKS = 4


@dataclass
class Reference:
    """Token chunks and the dense model's log-probabilities (float16) at every scored position."""
    chunks: np.ndarray            # int64 (n, ctx)
    logprobs: list[np.ndarray]    # per chunk float16 (ctx - 1, n_vocab)


def dense_reference(engine, chunks: np.ndarray) -> Reference:
    from .kl_divergence import log_softmax

    engine.backend.thresholds = None
    return Reference(chunks, [log_softmax(engine.logits(c)[:-1]).astype(np.float16) for c in chunks])


def compare(engine, ref: Reference) -> dict:
    """The thresholded model against the dense reference: KL mean, ppl of both, top agreement."""
    from .kl_divergence import kl_rows, log_softmax

    kl, same, nll, base_nll = [], [], [], []
    for chunk, base in zip(ref.chunks, ref.logprobs):
        lp = log_softmax(engine.logits(chunk)[:-1])
        base = log_softmax(base)                 # renormalized after the float16 rounding
        k, s = kl_rows(base, lp)
        rows = np.arange(lp.shape[0])
        kl.append(k)
        same.append(s)
        nll.append(-lp[rows, chunk[1:]])
        base_nll.append(-base[rows, chunk[1:]])
    return {"kld_mean": float(np.concatenate(kl).mean()),
            "same_top_percent": float(100 * np.concatenate(same).mean()),
            "ppl_sparse": float(np.exp(np.concatenate(nll).mean())),
            "ppl_dense": float(np.exp(np.concatenate(base_nll).mean())),
            "tokens": float(sum(c.shape[0] - 1 for c in ref.chunks))}


def calibrate_thresholds(engine, calib: Reference, target: float, progress=print):
    """(ActivationSample, per-layer sparsity, thresholds, calibration KL)."""
    from ..offload.sparsity import ActivationSample, search_scale

    be, cfg = engine.backend, engine.cfg
    sample = ActivationSample(cfg.n_layer, cfg.n_ff)
    be.thresholds, be.recorder = None, sample.add
    for c in calib.chunks:
        engine.logits(c)
    be.recorder = None

    def kl_at(sparsity: np.ndarray) -> float:
        be.thresholds = sample.thresholds(sparsity)
        return compare(engine, calib)["kld_mean"]

    cost = np.empty(cfg.n_layer)
    for il in range(cfg.n_layer):
        one = np.zeros(cfg.n_layer)
        one[il] = PROBE_SPARSITY
        cost[il] = kl_at(one)
        progress(f"layer {il + 1}/{cfg.n_layer}: KL {cost[il]:.4f} with {PROBE_SPARSITY:.0%} of its neurons off")
    sparsity, kl = search_scale(kl_at, cost, PROBE_SPARSITY, CALIBRATION_MARGIN * target, progress=progress)
    return sample, sparsity, sample.thresholds(sparsity), kl


def build_plan(model_path, output, calibration_text: str, kld_target: float, ctx: int, threads,
               progress=print) -> dict:
    from ..formats.gguf import read_gguf
    from ..formats.tokenizer import load_tokenizer
    from ..offload.bundles import make_bundles
    from ..offload.plan_file import file_sha256, write_plan
    from ..offload.texts import read_text
    from ..quant import dequantize
    from .backends.ffn_probe import FFNProbeBackend
    from .engine import Engine
    from .perplexity import make_chunks

    gguf_file = read_gguf(model_path)
    engine = Engine(gguf_file, n_ctx=ctx, n_batch=ctx, threads=threads, backend_class=FFNProbeBackend)
    if not engine.graphs["decode"].ffn_blocks:
        raise ValueError(f"{model_path}: the model has no gated FFN blocks to offload")
    tok = load_tokenizer(gguf_file.kv)
    bos = tok.bos_id if tok.add_bos and tok.bos_id is not None else None

    def chunks(text: str, what: str) -> np.ndarray:
        ids = tok.encode(text, add_special=True, parse_special=False)
        if len(ids) < ctx:
            raise ValueError(f"the {what} text has {len(ids)} tokens, fewer than one chunk of {ctx} "
                             f"(give a longer text or a smaller --ctx)")
        return make_chunks(ids, ctx, MAX_CHUNKS, bos)

    calib_chunks, eval_chunks = chunks(calibration_text, "calibration"), chunks(read_text("evaluation"), "evaluation")
    progress(f"dense reference: {calib_chunks.size} calibration and {eval_chunks.size} held-out tokens")
    calib, held_out = dense_reference(engine, calib_chunks), dense_reference(engine, eval_chunks)
    sample, sparsity, thresholds, calib_kl = calibrate_thresholds(engine, calib, kld_target, progress)

    engine.backend.thresholds = thresholds
    engine.backend.reset_counts()
    quality = compare(engine, held_out)
    be = engine.backend
    quality["sparsity_mean"] = float(1 - be.active.sum() / max(be.seen.sum(), 1))
    progress(f"held-out text: KL {quality['kld_mean']:.4f}, perplexity {quality['ppl_dense']:.3f} -> "
             f"{quality['ppl_sparse']:.3f}, {quality['sparsity_mean']:.1%} of FFN neurons off")

    orders, up_types, bundles = [], [], []
    hotness = sample.hotness
    for block in engine.graphs["decode"].ffn_blocks:
        _, up_name, down_name = block.weights
        up, down = gguf_file.tensors[up_name], gguf_file.tensors[down_name]
        order = np.argsort(-hotness[block.layer], kind="stable").astype(np.int32)
        n_ff, n_embd = up.shape
        up_rows = np.asarray(up.data).reshape(n_ff, -1)
        down_f32 = dequantize(down.data, down.type, down.shape)          # (n_embd, n_ff)
        orders.append(order)
        up_types.append(up.type)
        bundles.append(make_bundles(up_rows, down_f32, order))
        progress(f"bundles: layer {block.layer + 1}/{len(engine.graphs['decode'].ffn_blocks)}")
    path = write_plan(output, model_path=model_path, model_sha256=file_sha256(model_path), arch=engine.cfg.arch,
                      n_embd=int(engine.cfg.n_embd), thresholds=thresholds, sparsity=sparsity, orders=orders,
                      up_types=up_types, bundles=bundles, kld_target=kld_target,
                      calibration_tokens=int(calib_chunks.size), quality=quality)
    return {"plan": str(path), "calibration_kld": calib_kl, "layer_sparsity": [float(s) for s in sparsity],
            **quality, "plan_bytes": os.path.getsize(path), "model_bytes": os.path.getsize(model_path)}


# ---------------------------------------------------------------- command line

def configure_parser(p) -> None:
    p.add_argument("model", help="GGUF path or catalog name")
    p.add_argument("-o", "--output", metavar="PLAN.gguf", help="where to write the plan (default: beside the "
                                                                "model, as MODEL.offload.gguf)")
    p.add_argument("--calibration", metavar="TEXTFILE",
                   help="UTF-8 text to calibrate on (default: lanternlm's own calibration text)")
    p.add_argument("--kld-target", type=float, default=DEFAULT_KLD_TARGET, metavar="X",
                   help=f"KL divergence from the dense model allowed on held-out text (default {DEFAULT_KLD_TARGET})")
    p.add_argument("-c", "--ctx", type=int, default=DEFAULT_CTX, metavar="N",
                   help=f"tokens per evaluated chunk (default {DEFAULT_CTX})")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="CPU threads (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as one line of JSON")


def main(args) -> int:
    import json
    from pathlib import Path

    from ..formats.catalog import resolve
    from ..offload.plan_file import default_plan_path
    from ..offload.texts import read_text
    from .cli_common import decode_utf8

    if not 0 < args.kld_target < 10:
        raise ValueError(f"--kld-target must be a positive KL divergence such as 0.03, got {args.kld_target}")
    if args.ctx < 16:
        raise ValueError(f"--ctx must be at least 16 tokens, got {args.ctx}")
    text = (decode_utf8(Path(args.calibration).read_bytes(), args.calibration) if args.calibration
            else read_text("calibration"))
    model_path = resolve(args.model)
    output = args.output or default_plan_path(model_path)

    def progress(msg: str) -> None:
        print(f"offload: {msg}", file=sys.stderr, flush=True)

    r = build_plan(model_path, output, text, args.kld_target, args.ctx, args.threads, progress)
    if args.json:
        print(json.dumps(r))
        return 0
    from ..offload.budget import format_bytes

    print(f"plan: {r['plan']} ({format_bytes(r['plan_bytes'])}, for a {format_bytes(r['model_bytes'])} model)")
    print(f"FFN neurons off: {r['sparsity_mean']:.1%} on held-out text; per layer "
          + " ".join(f"{s:.2f}" for s in r["layer_sparsity"]))
    print(f"quality on held-out text ({int(r['tokens'])} tokens): KL divergence {r['kld_mean']:.4f} "
          f"(target {args.kld_target}), perplexity {r['ppl_dense']:.3f} -> {r['ppl_sparse']:.3f} "
          f"({r['ppl_sparse'] / r['ppl_dense'] - 1:+.1%}), same top token {r['same_top_percent']:.1f}%")
    return 0
