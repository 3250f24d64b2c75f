"""lanternlm: run GGUF language models locally, on quantized weights, from pure Python + Numba."""
__version__ = "0.1.0"

from .formats.catalog import pull  # noqa: E402

__all__ = ["pull"]
