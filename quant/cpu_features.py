"""The CPU features Numba's machine code may rely on: the one place that decides it.

Kernels that name instructions (AVX2, AVX-512 VNNI, F16C) must do so only when the code runs
on the CPU Numba compiles for. With NUMBA_CPU_NAME or NUMBA_CPU_FEATURES set (a cache built
for other machines, e.g. NUMBA_CPU_NAME=generic), the host's features say nothing about the
target, so none are assumed: a named instruction, or an operation LLVM would lower to a
runtime helper the JIT does not provide (`fptrunc float -> half` without F16C needs
`__truncsfhf2`), would abort the process. A Numba cache is tied to the CPU it was built for,
so the choice is fixed per cache.
"""
from __future__ import annotations

from llvmlite import binding as llvm
from numba.core import config


def _target_features() -> dict[str, bool]:
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return {}
    try:
        return dict(llvm.get_host_cpu_features())
    except RuntimeError:  # LLVM cannot tell on this host
        return {}


TARGET_FEATURES: dict[str, bool] = _target_features()


def has(*features: str) -> bool:
    """True if Numba compiles for this host and the host has every one of `features`
    (LLVM's names: "avx2", "f16c", "avx512vnni", ...)."""
    return all(bool(TARGET_FEATURES.get(f, False)) for f in features)
