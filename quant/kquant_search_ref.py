"""Scalar reference twins of the K-quant scale sweeps (one group at a time).

These follow llama.cpp's reference quantizers step by step and are the
readable statement of the algorithms; kquant_search.py runs the same sweeps
on all groups of a row at once (SIMD lanes), and the tests check the two agree
bit for bit.  Byte equality with llama.cpp needs every intermediate in
float32, accumulated in element order: every literal and every integer
entering float arithmetic is wrapped in `f32(...)`, because a bare Python
float (or an int64 times a float32) would silently promote the expression to
float64.

    make_symmetric_quants  signed levels, weights x**2, 19-point scale sweep (Q6_K)
    make_affine_quants     unsigned levels with an offset, weighted sweep    (Q2_K, Q4_K, Q5_K)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .float_bits import nearest_int
from .kquant_search import GROUP_MAX_EPS, clamp

f32 = np.float32
_TENTH = f32(0.1)


@njit(cache=True, inline="always")
def _signed_extreme(x):
    """(value with the largest magnitude, that magnitude); the first one wins ties."""
    amax = f32(0.0)
    vmax = f32(0.0)
    for i in range(x.size):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    return vmax, amax


@njit(cache=True)
def make_symmetric_quants(L, x, nmax):
    """Levels L[i] in [0, 2*nmax) for x[i] ~ scale * (L[i] - nmax); returns scale.

    L: u8/i8[n] output; x: f32[n]; nmax: int.  Error weights are x**2.  Tries
    the scale that maps the extreme value to -nmax and 18 neighbours
    (nmax +- 0.1 * k) and keeps the least-squares best.
    """
    n = x.size
    vmax, amax = _signed_extreme(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return f32(0.0)
    fnmax = f32(nmax)
    iscale = f32(-fnmax) / vmax
    sumlx = f32(0.0)
    suml2 = f32(0.0)
    for i in range(n):
        l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = l + nmax
        w = x[i] * x[i]
        fl = f32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != f32(0.0) else f32(0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fnmax + _TENTH * f32(step)) / vmax
        sumlx = f32(0.0)
        suml2 = f32(0.0)
        for i in range(n):
            fl = f32(clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1))
            w = x[i] * x[i]
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > f32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1) + nmax
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True)
def make_affine_quants(L, Laux, x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """Levels L[i] in [0, nmax] for x[i] ~ scale * L[i] - offset; returns (scale, offset).

    L, Laux: u8[n] (output, scratch); x, weights: f32[n]; nmax, nstep: int;
    rmin, rdelta: f32; use_mad: bool (weighted |error| instead of error**2).
    The offset is >= 0 (the group minimum, clipped at 0).  Sweeps nstep + 1
    candidate scales (nmax + rmin + rdelta * k over the range), solving the
    weighted least-squares scale and offset for each set of levels.
    """
    n = x.size
    lo = x[0]
    hi = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < lo:
            lo = x[i]
        if x[i] > hi:
            hi = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if lo > f32(0.0):
        lo = f32(0.0)
    if hi == lo:
        for i in range(n):
            L[i] = 0
        return f32(0.0), -lo
    fnmax = f32(nmax)
    iscale = fnmax / (hi - lo)
    scale = f32(1.0) / iscale
    best_error = f32(0.0)
    for i in range(n):
        l = clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax)
        L[i] = l
        diff = scale * f32(l) + lo - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * f32(step) + fnmax) / (hi - lo)
        sum_l = f32(0.0)
        sum_l2 = f32(0.0)
        sum_xl = f32(0.0)
        for i in range(n):
            l = clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax)
            Laux[i] = l
            w = weights[i]
            fl = f32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        det = sum_w * sum_l2 - sum_l * sum_l
        if det > f32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > f32(0.0):
                this_min = f32(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = f32(0.0)
            for i in range(n):
                diff = this_scale * f32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                lo = this_min
    return scale, -lo
