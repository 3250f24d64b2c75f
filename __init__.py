"""lanternlm: run GGUF language models locally, on quantized weights, from pure Python + Numba."""
__version__ = "0.1.0"

from .formats.catalog import pull  # noqa: E402

__all__ = ["Model", "pull"]


def __getattr__(name):
    # `Model` pulls in Numba and the engine; importing it lazily keeps `import lanternlm`
    # (and the CLI's argument parsing) fast for everything that does not load a model.
    if name == "Model":
        from .runtime.model import Model
        return Model
    raise AttributeError(f"module 'lanternlm' has no attribute {name!r}")


def __dir__():
    # `Model` is not a module global until first used (see __getattr__); list it anyway, so that
    # dir(lanternlm) and tab completion show the public API
    return sorted(set(globals()) | set(__all__))
