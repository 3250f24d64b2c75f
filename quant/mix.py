"""llama.cpp's quantization mixes: which GGML type each tensor of a model gets.

`plan_mix(gguf_file, "Q4_K_M")` returns the tensors in the order llama-quantize writes them,
each with its source and target type, following the rules of llama.cpp's `llama-quantize`
without an importance matrix (src/llama-quant.cpp):

1. Order: tensors outside any block first, then block 0, 1, ...; by name within each group.
   Counters that pick "more bits" layers advance in this order.
2. Only weights are quantized: tensors of at least 2 dims whose name ends in "weight", not
   norms and not the small special tensors in `_NEVER_QUANTIZED`. Others keep their type.
3. A file type (ftype) has a base type. For a quantized base, each tensor's category
   (attn_v, ffn_down, output, ...) has a table `ftype -> rule`; a rule may pick another type
   from the layer's position, the model's GQA factor, its expert count or architecture.
4. The output projection (and the token embedding when the model ties them) takes Q6_K unless
   its rows do not fit the base type's blocks or the model is a Falcon (then Q8_0), or the
   base is Q8_0.
5. A type whose block does not divide the row length falls back to a smaller-block type
   (`_FALLBACK`), and to F16 when even that does not fit.

Only the ftypes in `FTYPES` are planned: the float, legacy and K-quant mixes (plus IQ4_NL and
IQ4_XS), i.e. those that need no importance matrix, with llama-quantize's default options.
The rules match the llama.cpp vendored by llama-cpp-python 0.3.36 (checked against it by
tests/test_quantize_model.py); e.g. a fused attn_qkv follows the attn_v rules there.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, MODEL_ARCH_NAMES, GGMLQuantizationType as T, LlamaFileType

from ..formats.metadata import read

__all__ = ["FileType", "FTYPES", "get_ftype", "ModelFacts", "TensorPlan", "plan_mix", "plan_tensors",
           "model_facts", "category_of", "allows_quantization"]


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type: its name, `general.file_type` number and base tensor type."""
    name: str
    ftype: LlamaFileType
    base: T

    @property
    def is_quantized(self) -> bool:
        # the float ftypes convert every weight to one type: no mix rules, no fallbacks
        return self.base not in (T.F32, T.F16, T.BF16)


FTYPES: dict[str, FileType] = {ft.name: ft for ft in (
    FileType("F16", LlamaFileType.MOSTLY_F16, T.F16),
    FileType("BF16", LlamaFileType.MOSTLY_BF16, T.BF16),
    FileType("Q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    FileType("Q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
    FileType("Q4_1", LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
    FileType("Q5_0", LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
    FileType("Q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
    FileType("Q2_K", LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
    FileType("Q3_K_S", LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
    FileType("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
    FileType("Q3_K_L", LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
    FileType("Q4_K_S", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    FileType("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
    FileType("Q5_K_S", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
    FileType("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
    FileType("Q6_K", LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
    FileType("IQ4_NL", LlamaFileType.MOSTLY_IQ4_NL, T.IQ4_NL),
    FileType("IQ4_XS", LlamaFileType.MOSTLY_IQ4_XS, T.IQ4_XS),
)}


def get_ftype(name: str) -> FileType:
    """The FileType called `name` (case-insensitive, e.g. "q4_k_m")."""
    try:
        return FTYPES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown quantization type {name!r}; choose one of: {', '.join(FTYPES)}") from None


# ---------------------------------------------------------------------------------------------
# Model facts the rules read
# ---------------------------------------------------------------------------------------------

KNOWN_ARCHITECTURES = frozenset(MODEL_ARCH_NAMES.values())


@dataclass(frozen=True)
class ModelFacts:
    arch: str
    n_layer: int
    n_gqa: int  # query heads per KV head in layer 0; 0 when the model has no KV heads
    n_expert: int
    # llama.cpp's LLM_TYPE_70B (bigger attn_v types), inferred as llama.cpp does when it plans
    # from metadata alone: an 80-layer llama with GQA
    is_70b: bool


def _first(value, default):
    """A hyperparameter that may be a scalar or a per-layer tuple: its layer-0 value."""
    if value is None:
        return default
    return value[0] if isinstance(value, tuple) else value


def model_facts(kv: dict) -> ModelFacts:
    """The hyperparameters the mix rules depend on, read (type and range checked) from GGUF
    metadata through formats.metadata."""
    arch = read(kv, "general.architecture")
    if arch not in KNOWN_ARCHITECTURES:
        raise ValueError(f"unknown model architecture {arch!r}")
    n_layer = read(kv, f"{arch}.block_count")
    n_head = _first(read(kv, f"{arch}.attention.head_count", None), 0)
    n_head_kv = _first(read(kv, f"{arch}.attention.head_count_kv", None), n_head)
    n_gqa = n_head // n_head_kv if n_head_kv else 0
    return ModelFacts(arch=arch, n_layer=n_layer, n_gqa=n_gqa,
                      n_expert=read(kv, f"{arch}.expert_count", 0),
                      is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv)


# ---------------------------------------------------------------------------------------------
# Which tensors are weights to quantize, and their category
# ---------------------------------------------------------------------------------------------

TOKEN_EMBD_NAMES = frozenset({"token_embd.weight", "per_layer_token_embd.weight"})
OUTPUT_NAME = "output.weight"

# Substrings of weights that stay in their source type: small or precision-critical tensors.
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_NAMES = frozenset({"position_embd.weight", "token_types.weight"})


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: the rank ignoring outer size-1 dims (numpy order), at least 1."""
    rank = len(shape)
    while rank > 1 and shape[len(shape) - rank] == 1:
        rank -= 1
    return rank


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    return (n_dims(shape) >= 2 and name.endswith("weight") and name not in _NEVER_QUANTIZED_NAMES
            and not any(part in name for part in _NEVER_QUANTIZED))


# First match wins; exact names are checked before these substrings.
_CATEGORY_SUBSTRINGS = (
    ("attn_qkv.weight", "attn_v"),  # fused QKV and MLA's kv_b are as sensitive as attn_v
    ("attn_kv_b.weight", "attn_v"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)


def category_of(name: str) -> str:
    if name == OUTPUT_NAME:
        return "output"
    if name in TOKEN_EMBD_NAMES:
        return "token_embd"
    for part, category in _CATEGORY_SUBSTRINGS:
        if part in name:
            return category
    return "other"


# ---------------------------------------------------------------------------------------------
# Rules: per category, a table ftype name -> rule(site) -> type or None (keep the base type)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """Where a tensor sits, as the rules see it."""
    ncols: int  # row length (ggml ne[0])
    ftype: FileType
    model: ModelFacts
    i_layer: int  # position among the tensors of its category (or its block, for MoE)
    n_layer: int

    @property
    def more_bits(self) -> bool:
        """llama.cpp's use_more_bits: the first and last eighth, and every third layer between."""
        i, n = self.i_layer, self.n_layer
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    @property
    def falcon(self) -> bool:
        return self.model.arch == "falcon"


Rule = Callable[[Site], Optional[T]]


def _when(condition: Callable[[Site], bool], qtype: T) -> Rule:
    return lambda s: qtype if condition(s) else None


def _always(qtype: T) -> Rule:
    return lambda s: qtype


def _gqa4(s: Site) -> bool:
    return s.model.n_gqa >= 4


_ATTN_V_IQ4 = _when(_gqa4, T.Q5_K)
_MORE_BITS_Q6_K = _when(lambda s: s.more_bits, T.Q6_K)
_FFN_DOWN_IQ4 = _when(lambda s: s.i_layer < s.n_layer // 8, T.Q5_K)  # without an imatrix


def _ffn_down_q3_k_m(s: Site) -> T:
    if s.i_layer < s.n_layer // 16:
        return T.Q5_K
    return T.Q4_K if not s.falcon or s.more_bits else T.Q3_K


def _ffn_down_q4_k_m(s: Site) -> Optional[T]:
    if s.falcon:
        return T.Q6_K if s.i_layer < s.n_layer // 16 else T.Q5_K if s.more_bits else T.Q4_K
    return T.Q6_K if s.more_bits else None


_ATTN_V_RULES: dict[str, Rule] = {
    "Q2_K": lambda s: T.Q4_K if _gqa4(s) else T.Q3_K,
    "Q3_K_M": lambda s: T.Q5_K if s.i_layer < 2 else T.Q4_K,
    "Q3_K_L": _always(T.Q5_K),
    "IQ4_NL": _ATTN_V_IQ4,
    "IQ4_XS": _ATTN_V_IQ4,
    "Q4_K_M": _MORE_BITS_Q6_K,
    "Q5_K_M": _MORE_BITS_Q6_K,
    "Q4_K_S": _when(lambda s: s.i_layer < 4, T.Q5_K),
}

_FFN_DOWN_RULES: dict[str, Rule] = {
    "Q2_K": _always(T.Q3_K),
    "Q3_K_M": _ffn_down_q3_k_m,
    "Q3_K_L": lambda s: T.Q4_K if s.falcon else T.Q5_K,
    "Q4_K_M": _ffn_down_q4_k_m,
    "IQ4_NL": _FFN_DOWN_IQ4,
    "IQ4_XS": _FFN_DOWN_IQ4,
    "Q5_K_M": _MORE_BITS_Q6_K,
    "Q4_K_S": _when(lambda s: not s.falcon and s.i_layer < s.n_layer // 8, T.Q5_K),
}

# Mixtral-style models with 8 experts: attention output gets Q5_K under these ftypes.
_ATTN_OUTPUT_8_EXPERTS = frozenset({"Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"})
_ATTN_OUTPUT_RULES: dict[str, Rule] = {
    "Q2_K": _always(T.Q3_K),
    "Q3_K_M": _always(T.Q4_K),
    "Q3_K_L": _always(T.Q5_K),
}


def _attn_v(s: Site) -> Optional[T]:
    rule = _ATTN_V_RULES.get(s.ftype.name)
    qtype = rule(s) if rule else None
    if s.model.is_70b and (qtype or s.ftype.base) in (T.Q3_K, T.Q4_K):
        # 8 query heads share each attn_v row there, so bigger attn_v types cost little
        qtype = T.Q5_K
    if s.model.n_expert == 8:
        qtype = T.Q8_0
    return qtype


def _attn_k(s: Site) -> Optional[T]:
    return T.Q8_0 if s.model.n_expert == 8 else None


def _attn_output(s: Site) -> Optional[T]:
    if s.falcon:
        return T.Q4_K if s.ftype.name == "Q3_K_L" else None
    if s.model.n_expert == 8:
        return T.Q5_K if s.ftype.name in _ATTN_OUTPUT_8_EXPERTS else None
    rule = _ATTN_OUTPUT_RULES.get(s.ftype.name)
    return rule(s) if rule else None


def _ffn_down(s: Site) -> Optional[T]:
    rule = _FFN_DOWN_RULES.get(s.ftype.name)
    return rule(s) if rule else None


def _output(s: Site) -> Optional[T]:
    if s.falcon or s.ncols % GGML_QUANT_SIZES[s.ftype.base][0]:
        return T.Q8_0
    return None if s.ftype.base == T.Q8_0 else T.Q6_K


@dataclass(frozen=True)
class CategoryRule:
    rule: Optional[Rule]  # None: the base type
    counter: Optional[str] = None  # tensors of this category advance this layer counter
    layer_from_name: bool = False  # with experts, the counter is replaced by the block number


CATEGORY_RULES: dict[str, CategoryRule] = {
    "output": CategoryRule(_output),
    "token_embd": CategoryRule(None),
    "attn_v": CategoryRule(_attn_v, counter="attn_v"),
    "attn_k": CategoryRule(_attn_k),
    "attn_q": CategoryRule(None),
    "attn_output": CategoryRule(_attn_output),
    "ffn_down": CategoryRule(_ffn_down, counter="ffn_down", layer_from_name=True),
    "ffn_gate": CategoryRule(None),  # their layer rules belong to IQ3 mixes, not planned here
    "ffn_up": CategoryRule(None),
    "other": CategoryRule(None),
}

# Row length not a multiple of the chosen type's block: the nearest type with 32-wide blocks.
_FALLBACK: dict[T, T] = {
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
    T.IQ4_XS: T.IQ4_NL,
}


def _fits(qtype: T, ncols: int) -> bool:
    return ncols % GGML_QUANT_SIZES[qtype][0] == 0


def fallback_type(name: str, qtype: T, ncols: int) -> T:
    if _fits(qtype, ncols):
        return qtype
    if qtype not in _FALLBACK:
        raise ValueError(f"tensor {name!r}: rows of {ncols} do not fit {qtype.name} blocks "
                         f"and llama.cpp defines no fallback for {qtype.name}")
    smaller = _FALLBACK[qtype]
    return smaller if _fits(smaller, ncols) else T.F16


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order
    src_type: T
    dst_type: T
    fallback_from: Optional[T] = None  # the type the rules chose, when its blocks did not fit

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def nbytes(self, qtype: T) -> int:
        block, size = GGML_QUANT_SIZES[qtype]
        return self.n_elements // block * size

    @property
    def src_nbytes(self) -> int:
        return self.nbytes(self.src_type)

    @property
    def dst_nbytes(self) -> int:
        return self.nbytes(self.dst_type)

    @property
    def converts(self) -> bool:
        return self.src_type != self.dst_type


# like sscanf("blk.%d."): the number counts even when the dot after it is missing
_BLOCK_NUMBER = re.compile(r"blk\.(\d+)")


def block_number(name: str) -> int:
    """The N of a "blk.N." prefix, -1 for tensors outside the blocks."""
    match = _BLOCK_NUMBER.match(name)
    return int(match.group(1)) if match else -1


def llama_order(names) -> list[str]:
    """llama.cpp's weight order: by block number (non-block tensors first), then by name bytes."""
    return sorted(names, key=lambda n: (block_number(n), n.encode("utf-8", "surrogateescape")))


def plan_tensors(tensors: list[tuple[str, tuple[int, ...], T]], ftype: FileType,
                 model: ModelFacts) -> list[TensorPlan]:
    """Plan (name, numpy shape, source type) triples; returns them in llama.cpp's write order."""
    by_name = {name: (tuple(shape), T(qtype)) for name, shape, qtype in tensors}
    names = llama_order(by_name)
    tied = OUTPUT_NAME not in by_name  # no output projection: the token embedding serves as one
    n_attn_v = sum(category_of(n) == "attn_v" for n in names)
    totals = {"attn_v": n_attn_v, "ffn_down": model.n_layer}
    counters: Counter[str] = Counter()  # tensors of each counted category seen so far
    plans = []
    for name in names:
        shape, src = by_name[name]
        dst, chosen = src, None
        if allows_quantization(name, shape):
            dst = ftype.base
            if ftype.is_quantized:
                chosen = _mixed_type(name, shape[-1], ftype, model, tied, totals, counters)
                dst = fallback_type(name, chosen, shape[-1])
        plans.append(TensorPlan(name, shape, src, dst, None if chosen in (None, dst) else chosen))
    return plans


def _mixed_type(name, ncols, ftype, model, tied, totals, counters) -> T:
    """The type the mix rules choose, before the row-length fallback."""
    category = category_of(name)
    if tied and category == "token_embd":
        category = "output"
    spec = CATEGORY_RULES[category]
    i_layer, n_layer = 0, 0
    if spec.counter is not None:
        i_layer, n_layer = counters[spec.counter], totals[spec.counter]
        counters[spec.counter] += 1
        if spec.layer_from_name and model.n_expert > 1:
            # expert tensors of a layer are not adjacent in every file: trust the name
            i_layer = block_number(name)
            if not 0 <= i_layer < n_layer:
                raise ValueError(f"tensor {name!r}: no valid block number (model has {n_layer} blocks)")
    qtype = spec.rule(Site(ncols, ftype, model, i_layer, n_layer)) if spec.rule else None
    return qtype or ftype.base


def plan_mix(gguf_file, ftype: FileType | str) -> list[TensorPlan]:
    """The llama-quantize plan for a read GGUF file (`formats.gguf.GGUFFile`)."""
    if isinstance(ftype, str):
        ftype = get_ftype(ftype)
    model = model_facts(gguf_file.kv)
    return plan_tensors([(t.name, t.shape, t.type) for t in gguf_file.tensors.values()], ftype, model)
