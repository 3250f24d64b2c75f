"""The model's hyperparameters, read once from GGUF metadata into one frozen dataclass.

Generic keys live under the architecture's prefix (`llama.embedding_length`, ...); facts that
only one architecture has (Gemma 3's sliding-window layer pattern, its attention scale) come
from that architecture's `hparams()` hook in `runtime.models`. Everything a graph builder needs
is a field here, so no model code reads the raw metadata.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..formats import metadata
from ..formats.metadata import MetadataError
from .backends.rope_table import NO_YARN, Yarn


class ConfigError(MetadataError):
    """GGUF metadata holds values the runtime does not support, or that contradict each other."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str                       # general.architecture as written in the file
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    rms_eps: float
    head_dim: int = 0               # key/query width per head; 0 -> n_embd // n_head
    head_dim_v: int = 0             # value width per head; 0 -> head_dim
    n_rot: int = 0                  # rotated dims per head; 0 -> head_dim
    rope_base: float = 10000.0
    rope_freq_scale: float = 1.0    # linear position scaling (1 / rope.scaling.factor)
    rope_yarn: Yarn = NO_YARN       # YaRN's ramp and magnitude, where rope.scaling.type is yarn
    rope_neox: bool = False         # True: rotate (x[i], x[i + n_rot/2]); False: (x[2i], x[2i+1])
    rope_base_swa: float = 10000.0  # rope base of sliding-window layers
    rope_freq_scale_swa: float = 1.0  # and their position scaling (gemma3: none, local layers never see far)
    sliding_window: int = 0         # keys a sliding-window layer sees, itself included; 0: none
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window; () -> none do
    attn_scale: float = 0.0         # softmax scale of q.k; 0 -> 1 / sqrt(head_dim)
    embd_scale: float = 1.0         # token embeddings are multiplied by this
    attn_qkv_bias: bool = False     # q/k/v projections carry bias tensors
    attn_qk_norm: bool = False      # each query and key head is RMS-normed before the rope (qwen3)
    attn_logit_softcap: float = 0.0  # attention scores soft-capped: c * tanh(s / c) (gemma2); 0: none
    final_logit_softcap: float = 0.0  # the same for the output logits
    n_expert: int = 0               # mixture of experts: experts per layer (0: a dense FFN)
    n_expert_used: int = 0          # experts each token's FFN runs (router top-k)
    n_ff_exp: int = 0               # an expert's feed-forward width; 0 -> n_ff
    moe_norm_weights: bool = False  # the top-k router weights are renormalized to sum to 1
    pooling_type: int = -1          # <arch>.pooling_type, llama.cpp's enum llama_pooling_type
                                    # (0 none, 1 mean, 2 cls, 3 last, 4 rank); -1: the file has none
    # derived in __post_init__
    n_embd_q: int = field(init=False)   # n_head * head_dim
    n_embd_kv: int = field(init=False)  # n_head_kv * head_dim
    n_gqa: int = field(init=False)      # query heads per KV head

    def __post_init__(self):
        def derive(name, value):
            object.__setattr__(self, name, value)

        for name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self.arch}: {name} must be positive, got {getattr(self, name)}")
        if not self.head_dim:
            if self.n_embd % self.n_head:
                raise ConfigError(f"{self.arch}: n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
            derive("head_dim", self.n_embd // self.n_head)
        if not self.head_dim_v:
            derive("head_dim_v", self.head_dim)
        if not self.n_rot:
            derive("n_rot", self.head_dim)
        if self.n_rot > self.head_dim or self.n_rot % 2:
            raise ConfigError(f"{self.arch}.rope.dimension_count {self.n_rot} must be even and at most "
                              f"head_dim {self.head_dim}")
        if self.n_head % self.n_head_kv:
            raise ConfigError(f"{self.arch}: n_head {self.n_head} is not a multiple of n_head_kv {self.n_head_kv}")
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.arch}: {name} must not be negative, got {getattr(self, name)}")
        if not self.swa_layers:
            derive("swa_layers", (False,) * self.n_layer)
        if len(self.swa_layers) != self.n_layer:
            raise ConfigError(f"{self.arch}: {len(self.swa_layers)} sliding-window flags for {self.n_layer} layers")
        if any(self.swa_layers) and self.sliding_window <= 0:
            raise ConfigError(f"{self.arch}: sliding-window layers need a positive sliding_window")
        if not -1 <= self.pooling_type <= 4:
            raise ConfigError(f"{self.arch}: pooling_type must be 0..4 (llama.cpp's pooling types), "
                              f"got {self.pooling_type}")
        if self.n_expert and not 1 <= self.n_expert_used <= self.n_expert:
            raise ConfigError(f"{self.arch}.expert_used_count {self.n_expert_used} must be 1..expert_count "
                              f"{self.n_expert}")
        if not self.n_ff_exp:
            derive("n_ff_exp", self.n_ff)
        if not self.attn_scale:
            derive("attn_scale", 1.0 / math.sqrt(self.head_dim))
        derive("n_embd_q", self.n_head * self.head_dim)
        derive("n_embd_kv", self.n_head_kv * self.head_dim)
        derive("n_gqa", self.n_head // self.n_head_kv)

    # per-layer facts the graph builders ask for
    def layer_window(self, il: int) -> int:
        """Keys visible to a query in layer `il` (itself included); 0 means all earlier ones."""
        return self.sliding_window if self.swa_layers[il] else 0

    def layer_rope_base(self, il: int) -> float:
        return self.rope_base_swa if self.swa_layers[il] else self.rope_base

    def layer_rope_freq_scale(self, il: int) -> float:
        return self.rope_freq_scale_swa if self.swa_layers[il] else self.rope_freq_scale

    @classmethod
    def from_kv(cls, kv: Mapping[str, Any]) -> ModelConfig:
        """Read a config from GGUF metadata (`GGUFFile.kv`)."""
        from .models import get_architecture  # models register their hparams hooks

        arch = metadata.read(kv, "general.architecture")
        spec = get_architecture(arch)
        fields = generic_fields(kv, arch)
        fields.update(spec.module.hparams(KV(kv, arch), dict(fields)))
        fields.update(spec.overrides)
        return cls(arch=arch, **fields)


class KV:
    """One architecture's metadata keys, read through formats.metadata (type and range checked):
    `kv.int("block_count")` reads `<arch>.block_count`; a missing required key raises
    MetadataError naming the full key."""

    def __init__(self, kv: Mapping[str, Any], arch: str):
        self.raw, self.arch = kv, arch

    def get(self, key: str, default=metadata.REQUIRED):
        return metadata.read(self.raw, f"{self.arch}.{key}", default)

    def int(self, key: str, default=metadata.REQUIRED) -> int:
        value = self.get(key, default)
        if isinstance(value, tuple):  # per-layer values: only uniform ones are supported
            if len(set(value)) != 1:
                raise ConfigError(f"{self.arch}.{key} varies per layer ({sorted(set(value))}); not supported")
            value = value[0]
        return value

    def float(self, key: str, default=metadata.REQUIRED) -> float:
        return self.get(key, default)


def generic_fields(kv: Mapping[str, Any], arch: str) -> dict:
    """The config fields every decoder-only transformer has under the same keys."""
    k = KV(kv, arch)
    n_embd = k.int("embedding_length")
    n_head = k.int("attention.head_count")
    fields = dict(
        n_vocab=_vocab_size(kv, k),
        n_ctx_train=k.int("context_length"),
        n_embd=n_embd,
        n_layer=k.int("block_count"),
        n_head=n_head,
        n_head_kv=k.int("attention.head_count_kv", n_head),
        n_ff=k.int("feed_forward_length"),
        rms_eps=k.float("attention.layer_norm_rms_epsilon"),
        head_dim=k.int("attention.key_length", 0),
        head_dim_v=k.int("attention.value_length", 0),
        n_rot=k.int("rope.dimension_count", 0),
        rope_base=k.float("rope.freq_base", 10000.0),
        rope_freq_scale=_rope_freq_scale(k),
        rope_yarn=_yarn(k),
        pooling_type=k.int("pooling_type", -1),
        n_expert=k.int("expert_count", 0),
        n_expert_used=k.int("expert_used_count", 0),
        n_ff_exp=k.int("expert_feed_forward_length", 0),
        final_logit_softcap=k.float("final_logit_softcapping", 0.0),
    )
    return fields


def _vocab_size(kv, k: KV) -> int:
    n_vocab = k.int("vocab_size", None)
    if n_vocab is not None:
        return n_vocab
    tokens = metadata.read(kv, "tokenizer.ggml.tokens", None)
    if tokens is None:
        raise ConfigError(f"GGUF metadata has neither {k.arch}.vocab_size nor tokenizer.ggml.tokens")
    return len(tokens)


def _rope_freq_scale(k: KV) -> float:
    kind = k.get("rope.scaling.type", "none")
    factor = k.float("rope.scaling.factor", 0.0)
    if kind == "none" or factor in (0.0, 1.0):
        return 1.0
    if kind in ("linear", "yarn"):
        return 1.0 / factor
    raise ConfigError(f"{k.arch}.rope.scaling.type: rope scaling {kind!r} is not supported (linear and yarn are)")


def _yarn(k: KV) -> Yarn:
    """YaRN's settings where the file scales its rope with it (llama.cpp's defaults else)."""
    if k.get("rope.scaling.type", "none") != "yarn" or k.float("rope.scaling.factor", 0.0) in (0.0, 1.0):
        return NO_YARN
    return Yarn(ext_factor=k.float("rope.scaling.yarn_ext_factor", 1.0),
                attn_factor=k.float("rope.scaling.yarn_attn_factor", 1.0),
                beta_fast=k.float("rope.scaling.yarn_beta_fast", 32.0),
                beta_slow=k.float("rope.scaling.yarn_beta_slow", 1.0),
                n_ctx_orig=k.int("rope.scaling.original_context_length", k.int("context_length")))
