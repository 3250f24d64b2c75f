"""Scale searches of the K-quant quantizers (Numba).

Each search picks the scale (and for the asymmetric types the offset) of every
small group of weights exactly as llama.cpp's reference quantizers do, so our
Q2_K..Q6_K files are byte-identical to llama-quantize's.

    make_symmetric_quants  signed levels, weights x**2, 19-point scale sweep      (Q6_K)
    make_affine_quants     unsigned levels with an offset, weighted scale sweep  (Q2_K, Q4_K, Q5_K)
    make_q3_quants         signed levels, weights x**2, coordinate descent       (Q3_K)

The first two run on all groups of a row at once (below); kquant_search_ref.py
states them one group at a time, which is easier to read.  make_q3_quants
stays one group at a time: its descent is branchy and usually stops after a
round or two, so lanes (which must run until the slowest group converges)
measured twice as slow.

Why lanes: the sweeps accumulate float32 sums in element order, a serial
dependency chain the compiler must not reorder (reordering changes the bytes).
Running many groups side by side keeps each group's order intact while the
innermost loop, over groups, vectorizes.  Inputs are therefore group-major
transposed: x[i, g] is element i of group g (shape (group_size, n_groups)),
and the per-group scalars of the reference become arrays over g.  Branches of
the reference become per-lane selects; lanes that the reference would have
finished early (all-zero groups, converged groups) are masked, not stopped.

Every literal and every integer entering float arithmetic is wrapped in
f32(...): a bare Python float or an int64 would promote the expression to
float64 and change the rounding.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .float_bits import nearest_int

f32 = np.float32
GROUP_MAX_EPS = f32(1e-15)  # groups whose largest |x| is below this quantize to all zeros
_TENTH = f32(0.1)
_jit = dict(cache=True, error_model="numpy")  # C semantics: x / 0 is inf, not an exception


@njit(**_jit, inline="always")
def clamp(v, lo, hi):
    """v limited to [lo, hi] (ints)."""
    return lo if v < lo else (hi if v > hi else v)


@njit(**_jit)
def to_groups(xt, x):
    """xt: f32[group_size, n_groups] out <- x: f32[n_groups * group_size] (transpose of groups)."""
    gs, n_groups = xt.shape
    for g in range(n_groups):
        for i in range(gs):
            xt[i, g] = x[gs * g + i]


@njit(**_jit)
def signed_extremes(vmax, amax, x):
    """Per group: amax[g] = max |x[:, g]|, vmax[g] the first value attaining it (f32[n_groups] outs)."""
    gs, n_groups = x.shape
    amax[:] = 0.0
    vmax[:] = 0.0
    for i in range(gs):
        for g in range(n_groups):
            v = x[i, g]
            bigger = abs(v) > amax[g]
            amax[g] = abs(v) if bigger else amax[g]
            vmax[g] = v if bigger else vmax[g]


@njit(**_jit)
def make_symmetric_quants(L, scale, x, nmax):
    """Per group: levels L[:, g] in [0, 2*nmax) with x ~ scale[g] * (L - nmax) (Q6_K).

    L: u8[gs, G] out; scale: f32[G] out; x: f32[gs, G]; nmax: int.  Error
    weights x**2; tries the scale mapping the extreme value to -nmax and 18
    neighbours (nmax +- 0.1 k), keeping the least-squares best.
    """
    gs, G = x.shape
    work = np.empty((6, G), np.float32)
    vmax, amax, iscale, sumlx, suml2, best = work[0], work[1], work[2], work[3], work[4], work[5]
    better = np.empty(G, np.bool_)
    Laux = np.empty((gs, G), np.uint8)
    signed_extremes(vmax, amax, x)
    fnmax = f32(nmax)
    for k in range(19):  # the starting point (step 0), then steps -9..-1, 1..9
        step = 0 if k == 0 else (k - 10 if k <= 9 else k - 9)
        num = -(fnmax + _TENTH * f32(step))
        for g in range(G):
            iscale[g] = (f32(-fnmax) if step == 0 else num) / vmax[g]
            sumlx[g] = 0.0
            suml2[g] = 0.0
        for i in range(gs):
            for g in range(G):
                l = clamp(nearest_int(iscale[g] * x[i, g]), -nmax, nmax - 1)
                Laux[i, g] = l + nmax
                w = x[i, g] * x[i, g]
                fl = f32(l)
                sumlx[g] += w * x[i, g] * fl
                suml2[g] += w * fl * fl
        for g in range(G):
            if step == 0:
                scale[g] = sumlx[g] / suml2[g] if suml2[g] != f32(0.0) else f32(0.0)
                best[g] = scale[g] * sumlx[g]
                better[g] = True
            else:
                better[g] = suml2[g] > f32(0.0) and sumlx[g] * sumlx[g] > best[g] * suml2[g]
                if better[g]:
                    scale[g] = sumlx[g] / suml2[g]
                    best[g] = scale[g] * sumlx[g]
        _take_where(L, Laux, better)
    _zero_groups(L, scale, amax)


@njit(**_jit)
def make_q3_quants(L, x, nmax):
    """One group: levels L[i] in [0, 2*nmax) for x[i] ~ scale * (L[i] - nmax); returns scale (Q3_K).

    L: i8[n] output; x: f32[n]; nmax: int.  Starts from the scale that maps the
    extreme value to -nmax, then up to 5 rounds of moving single levels while
    the x**2-weighted least-squares fit improves.
    """
    n = x.size
    vmax = f32(0.0)
    amax = f32(0.0)
    for i in range(n):
        if abs(x[i]) > amax:
            amax = abs(x[i])
            vmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return f32(0.0)
    iscale = f32(-f32(nmax)) / vmax
    sumlx = f32(0.0)
    suml2 = f32(0.0)
    for i in range(n):
        l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = l
        w = x[i] * x[i]
        fl = f32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            li = f32(L[i])
            slx = sumlx - w * x[i] * li
            if slx > f32(0.0):
                sl2 = suml2 - w * li * li
                new_l = clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                if new_l != L[i]:
                    fnew = f32(new_l)
                    slx += w * x[i] * fnew
                    sl2 += w * fnew * fnew
                    if sl2 > f32(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > f32(0.0) else f32(0.0)


@njit(**_jit)
def make_affine_quants(L, scale, offset, x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """Per group: levels L[:, g] in [0, nmax] with x ~ scale[g] * L - offset[g] (Q2_K, Q4_K, Q5_K).

    L: u8[gs, G] out; scale, offset: f32[G] out (offset >= 0: minus the group
    minimum clipped at 0); x, weights: f32[gs, G]; nmax, nstep: int;
    rmin, rdelta: f32; use_mad: bool (weighted |error| instead of error**2).
    Sweeps nstep + 1 candidate scales (nmax + rmin + rdelta k over the range),
    solving the weighted least-squares scale and offset for each level set.
    """
    gs, G = x.shape
    work = np.empty((12, G), np.float32)
    lo, hi, sum_w, sum_x, iscale, best = work[0], work[1], work[2], work[3], work[4], work[5]
    sum_l, sum_l2, sum_xl, this_scale, this_min, err = work[6], work[7], work[8], work[9], work[10], work[11]
    better = np.empty(G, np.bool_)
    flat = np.empty(G, np.bool_)
    Laux = np.empty((gs, G), np.uint8)
    for g in range(G):
        lo[g] = x[0, g]
        hi[g] = x[0, g]
        sum_w[g] = weights[0, g]
        sum_x[g] = weights[0, g] * x[0, g]
    for i in range(1, gs):
        for g in range(G):
            v = x[i, g]
            lo[g] = v if v < lo[g] else lo[g]
            hi[g] = v if v > hi[g] else hi[g]
            sum_w[g] += weights[i, g]
            sum_x[g] += weights[i, g] * v
    fnmax = f32(nmax)
    for g in range(G):
        lo[g] = f32(0.0) if lo[g] > f32(0.0) else lo[g]
        flat[g] = hi[g] == lo[g]  # constant group (after clipping lo at 0): all levels 0
        iscale[g] = fnmax / (hi[g] - lo[g])
        scale[g] = f32(1.0) / iscale[g]
        best[g] = 0.0
    for i in range(gs):
        for g in range(G):
            l = clamp(nearest_int(iscale[g] * (x[i, g] - lo[g])), 0, nmax)
            L[i, g] = l
            diff = scale[g] * f32(l) + lo[g] - x[i, g]
            diff = abs(diff) if use_mad else diff * diff
            best[g] += weights[i, g] * diff
    for step in range(nstep + 1):
        num = rmin + rdelta * f32(step) + fnmax
        for g in range(G):
            iscale[g] = num / (hi[g] - lo[g])
            sum_l[g] = 0.0
            sum_l2[g] = 0.0
            sum_xl[g] = 0.0
        for i in range(gs):
            for g in range(G):
                l = clamp(nearest_int(iscale[g] * (x[i, g] - lo[g])), 0, nmax)
                Laux[i, g] = l
                w = weights[i, g]
                fl = f32(l)
                sum_l[g] += w * fl
                sum_l2[g] += w * fl * fl
                sum_xl[g] += w * fl * x[i, g]
        for g in range(G):
            det = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g]
            s = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / det
            m = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / det
            if m > f32(0.0):
                m = f32(0.0)
                s = sum_xl[g] / sum_l2[g]
            this_scale[g] = s
            this_min[g] = m
            err[g] = 0.0
            better[g] = det > f32(0.0) and not flat[g]
        for i in range(gs):
            for g in range(G):
                diff = this_scale[g] * f32(Laux[i, g]) + this_min[g] - x[i, g]
                diff = abs(diff) if use_mad else diff * diff
                err[g] += weights[i, g] * diff
        for g in range(G):
            better[g] = better[g] and err[g] < best[g]
            if better[g]:
                best[g] = err[g]
                scale[g] = this_scale[g]
                lo[g] = this_min[g]
        _take_where(L, Laux, better)
    for g in range(G):
        if flat[g]:
            scale[g] = 0.0
            for i in range(gs):
                L[i, g] = 0
        offset[g] = -lo[g]


@njit(**_jit, inline="always")
def _take_where(L, Laux, take):
    """L[:, g] = Laux[:, g] for the groups g where take[g]."""
    gs, G = L.shape
    for g in range(G):
        if take[g]:
            for i in range(gs):
                L[i, g] = Laux[i, g]


@njit(**_jit, inline="always")
def _zero_groups(L, scale, amax):
    """Groups whose largest |x| is below GROUP_MAX_EPS: all levels 0, scale 0."""
    gs, G = L.shape
    for g in range(G):
        if amax[g] < GROUP_MAX_EPS:
            scale[g] = 0.0
            for i in range(gs):
                L[i, g] = 0
