"""config.json -> GGUF hyperparameters shared by decoder-only transformers.

The keys and the config names they are read from follow llama.cpp's converter (its
TextModel.set_gguf_parameters); a family module adds or overrides what differs (see
`families`). Both config styles are understood: transformers 4 keeps `rope_theta` and
`rope_scaling` at the top level, transformers 5 nests them in `rope_parameters`, per attention
kind (`full_attention` / `sliding_attention`) for models that mix two.
"""
from __future__ import annotations

from typing import Any, Mapping

from gguf import RopeScalingType

from .checkpoint import ConvertError
from .metadata import MetadataBuilder

__all__ = ["HFConfig"]

_MISSING = object()


class HFConfig:
    """Read access to config.json with the fallbacks llama.cpp's converter uses."""

    def __init__(self, config: Mapping[str, Any]):
        self.raw = dict(config)

    def get(self, *names: str, default: Any = None) -> Any:
        """The first of `names` present (and not null) in config.json, else `default`."""
        for name in names:
            if self.raw.get(name) is not None:
                return self.raw[name]
        return default

    def require(self, *names: str) -> Any:
        value = self.get(*names, default=_MISSING)
        if value is _MISSING:
            raise ConvertError(f"config.json lacks {' / '.join(repr(n) for n in names)}")
        return value

    @property
    def n_layer(self) -> int:
        return int(self.require("num_hidden_layers", "n_layers", "n_layer", "num_layers"))

    @property
    def n_head(self) -> int:
        return int(self.require("num_attention_heads", "n_head", "n_heads"))

    @property
    def n_head_kv(self) -> int:
        return int(self.get("num_key_value_heads", "n_kv_heads", default=self.n_head))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=0) or self.require("hidden_size") // self.n_head)

    @property
    def tied_embeddings(self) -> bool:
        # transformers' PretrainedConfig default is True
        return bool(self.get("tie_word_embeddings", default=True))

    def rope_parameters(self, attention: str = "full_attention") -> dict[str, Any]:
        """Rope settings of one attention kind: rope_type, rope_theta, factor, ..."""
        params = self.get("rope_parameters", "rope_scaling", default={})
        if not isinstance(params, dict):
            raise ConvertError(f"config.json: rope parameters must be an object, got {params!r}")
        if "full_attention" in params or "sliding_attention" in params:
            params = params.get(attention) or {}
        params = dict(params)
        if "rope_type" not in params and "type" in params:
            params["rope_type"] = params["type"]
        return params

    def rope_theta(self) -> float | None:
        theta = self.get("rope_theta", "rotary_emb_base", default=self.rope_parameters().get("rope_theta"))
        return None if theta is None else float(theta)

    def rope_theta_swa(self) -> float | None:
        """Base of the sliding-window layers' rope, for models that give them their own."""
        nested = self.get("rope_parameters", default={})
        theta = (nested.get("sliding_attention") or {}).get("rope_theta") if isinstance(nested, dict) else None
        theta = self.get("rope_local_base_freq", "rope_local_theta", default=theta)
        return None if theta is None else float(theta)


def add_generic_hparams(cfg: HFConfig, meta: MetadataBuilder, family_rope_types: tuple[str, ...] = ()) -> None:
    """The hyperparameters every family in the registry writes the same way.

    `family_rope_types`: rope scaling types the family implements itself (as tensors).
    """
    meta.add_block_count(cfg.n_layer)
    if (n_ctx := cfg.get("max_position_embeddings", "n_ctx", "n_positions", "max_length")) is not None:
        meta.add_context_length(int(n_ctx))
    meta.add_embedding_length(int(cfg.require("hidden_size", "n_embd", "dim")))
    meta.add_feed_forward_length(int(cfg.require("intermediate_size", "n_inner", "hidden_dim")))
    meta.add_head_count(cfg.n_head)
    meta.add_head_count_kv(cfg.n_head_kv)
    if (theta := cfg.rope_theta()) is not None:
        meta.add_rope_freq_base(float(theta))
    if (eps := cfg.get("rms_norm_eps", "norm_eps")) is not None:
        meta.add_layer_norm_rms_eps(float(eps))
    if (head_dim := cfg.get("head_dim")) is not None:
        meta.add_key_length(int(head_dim))
        meta.add_value_length(int(head_dim))
    add_rope_scaling(cfg, meta, family_rope_types)


def _linear(meta: MetadataBuilder, params: dict) -> None:
    meta.add_rope_scaling_type(RopeScalingType.LINEAR)
    meta.add_rope_scaling_factor(float(params["factor"]))


def _yarn(meta: MetadataBuilder, params: dict) -> None:
    meta.add_rope_scaling_type(RopeScalingType.YARN)
    meta.add_rope_scaling_factor(float(params["factor"]))
    meta.add_rope_scaling_orig_ctx_len(int(params["original_max_position_embeddings"]))
    optional = {"extrapolation_factor": meta.add_rope_scaling_yarn_ext_factor,
                "attention_factor": meta.add_rope_scaling_yarn_attn_factor,
                "beta_fast": meta.add_rope_scaling_yarn_beta_fast,
                "beta_slow": meta.add_rope_scaling_yarn_beta_slow}
    for name, add in optional.items():
        if params.get(name) is not None:
            add(float(params[name]))


# rope_type -> how its metadata is written. Other types (llama3: a per-frequency tensor) are
# written by the families that implement them, and refused for the others.
_ROPE_SCALINGS = {
    "default": None,
    "linear": _linear,
    "yarn": _yarn,
}


def add_rope_scaling(cfg: HFConfig, meta: MetadataBuilder, family_rope_types: tuple[str, ...]) -> None:
    params = cfg.rope_parameters()
    rope_type = params.get("rope_type", "default")
    if rope_type in family_rope_types:
        return
    if rope_type not in _ROPE_SCALINGS:
        raise ConvertError(f"config.json: rope scaling type {rope_type!r} is not supported for this "
                           f"architecture; supported: {', '.join((*_ROPE_SCALINGS, *family_rope_types))}")
    write = _ROPE_SCALINGS[rope_type]
    if write is not None and params.get("factor") is not None:
        try:
            write(meta, params)
        except KeyError as err:
            raise ConvertError(f"config.json: {rope_type} rope scaling lacks {err}") from None
