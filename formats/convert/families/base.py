"""What a model family module declares: the `Family` record and its no-op defaults."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import gguf
import numpy as np

from ..hf_config import HFConfig
from ..metadata import MetadataBuilder

if TYPE_CHECKING:
    from ..hf_tokenizer import Vocab


def _no_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    return None


def _unchanged(hf_name: str, data: np.ndarray, cfg: HFConfig) -> np.ndarray:
    return data


def _no_tensors(cfg: HFConfig) -> Iterable[tuple[str, np.ndarray]]:
    return ()


def _no_tokenizer_keys(vocab: Vocab, meta: MetadataBuilder) -> None:
    return None


def _not_stacked(hf_name: str) -> None:
    return None


@dataclass(frozen=True)
class Family:
    arch: gguf.MODEL_ARCH
    hf_architectures: tuple[str, ...]
    # GGUF tensors every block must have; a checkpoint lacking one is refused before writing
    block_tensors: tuple[gguf.MODEL_TENSOR, ...]
    block_biases: tuple[gguf.MODEL_TENSOR, ...] = ()
    # family hyperparameters, after (and overriding) the generic ones
    add_hparams: Callable[[HFConfig, MetadataBuilder], None] = _no_hparams
    # a checkpoint tensor (float32, HF name) as the GGUF file stores it
    transform: Callable[[str, np.ndarray, HFConfig], np.ndarray] = _unchanged
    # tensors computed from the config: (GGUF name, float32 array)
    extra_tensors: Callable[[HFConfig], Iterable[tuple[str, np.ndarray]]] = _no_tensors
    # tokenizer keys that depend on the family, after the vocabulary was added
    add_tokenizer_keys: Callable[["Vocab", MetadataBuilder], None] = _no_tokenizer_keys
    # rope scaling types whose effect this family writes itself (as extra tensors)
    rope_types: tuple[str, ...] = ()
    # a checkpoint tensor that is one slice of a stacked GGUF tensor (an expert of a mixture):
    # (GGUF name, index along the first axis), or None
    stacked: Callable[[str], tuple[str, int] | None] = _not_stacked

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def required_tensors(self, n_layer: int) -> list[str]:
        """GGUF names of the per-block tensors a checkpoint of this family must provide."""
        names = [gguf.TENSOR_NAMES[t] + ".weight" for t in self.block_tensors]
        names += [gguf.TENSOR_NAMES[t] + ".bias" for t in self.block_biases]
        return [name.format(bid=il) for il in range(n_layer) for name in names]
