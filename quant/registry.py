"""The one table of quantization types.

Every GGML type we support registers a `QuantType` here from its family module
(floats.py, legacy.py, kquants.py, iquants.py). Block sizes come from gguf-py's
`GGML_QUANT_SIZES`, the single source of truth; nothing else in the package
hard-codes them or branches on a type number.

Kernel signatures (all Numba, output first, caller allocates):
  dequantize(out: f32[n_blocks * block_size], blocks: u8[n_blocks * type_size])
  matvec(out: f32[rows], w: u8[rows, row_bytes], x: f32[n])
      out[r] = dot(dequantize(w[r]), x), computed on the quantized blocks
  matmul(out: f32[t, rows], w: u8[rows, row_bytes], x: f32[t, n])
      out[i, r] = dot(dequantize(w[r]), x[i]); the batched (prefill) form
  quantize(x: f32[rows, n]) -> u8[rows, row_bytes]   (may be plain Python/numpy)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


@dataclass(frozen=True)
class QuantType:
    qtype: GGMLQuantizationType
    dequantize: Callable
    matvec: Callable
    matmul: Callable
    quantize: Optional[Callable] = None
    # matmul's row for token i is bit-identical to matvec on token i (the legacy and float
    # kernels share the per-block arithmetic; the K- and IQ-quant tiles sum in another order).
    # tests/test_quant_batch_invariance.py checks every registered type against its flag.
    batch_invariant: bool = False
    # Where matmul is not batch-invariant: a matmul whose row for token i is bit-identical to
    # matvec on token i, faster than a matvec per token (each weight row read once); for exact
    # multi-token verification (runtime/backends/cpu.py). The same test checks it.
    matmul_rows: Optional[Callable] = None

    @property
    def row_exact_matmul(self) -> Callable:
        """A matmul whose every row is bit-identical to matvec on its token: matmul where it
        is batch-invariant, else matmul_rows (every registered type has one of the two)."""
        return self.matmul if self.batch_invariant else self.matmul_rows

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    def row_bytes(self, n: int) -> int:
        if n % self.block_size:
            raise ValueError(f"{self.qtype.name}: row length {n} is not a multiple of {self.block_size}")
        return n // self.block_size * self.type_size


QTYPES: dict[GGMLQuantizationType, QuantType] = {}


def register(qt: QuantType) -> QuantType:
    QTYPES[qt.qtype] = qt
    return qt


def register_quantizer(qtype: GGMLQuantizationType, quantize: Callable) -> None:
    """Attach a quantizer to an already registered type (quantizers live in their own modules)."""
    QTYPES[qtype] = replace(QTYPES[qtype], quantize=quantize)


def get(qtype) -> QuantType:
    """The registered QuantType for a GGMLQuantizationType, its int value or its name."""
    try:
        if isinstance(qtype, str):
            qtype = GGMLQuantizationType[qtype.upper()]
        qtype = GGMLQuantizationType(int(qtype))
        return QTYPES[qtype]
    except (KeyError, ValueError):
        raise ValueError(f"unsupported quantization type: {qtype!r}") from None
