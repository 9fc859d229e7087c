"""Fused Triton kernels for the kernel integral and the gradient sum, forward and backward.

Launchers take the reference's arguments (see gpflow_kernels.reference) and return the same
results; each output is written once (no atomics), so column reductions (gradients with respect
to y and its weights) run the row kernel again with the roles of x and y swapped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..kernels import fused_code as kernel_code
from .common import (EXACT_MAX_D, acc_dtype, autotune, close_diff_sums, close_dot_diff, close_pairs, column, coordinate_sums,
                     diff_sums, dot_diff, dot_precision, load_block, load_rows, pow2, radial, slot_tiles, snap_tol, split_diff_sums,
                     sqdist, store_rows, sums_mode, with_ones)



@autotune("D", "BD", "BP", "EXACT", "KIND", "HAS_V", "DOT", "NP", sizes=("N", "M", "K"))
@triton.jit
def _integral_kernel(q_ptr, s_ptr, q0_ptr, s0_ptr, v_ptr, inv_ptr, out_ptr, N, M, P, K, inv_bs, tol, pc, ph, peps2,
                     D: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr, EXACT: tl.constexpr,
                     KIND: tl.constexpr, HAS_V: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, NP: tl.constexpr,
                     BN: tl.constexpr, BM: tl.constexpr):
    """out_i = Σ_j k(q_i, s_j) v_j   (v = ones when not HAS_V).

    NP > 0 (the number of columns P ≤ 4 as a constexpr): the sums are kept per register slot and
    reduced once after the loop (common.sums_mode's SUMS_DEFER), instead of a tl.dot against the
    v tile padded to 16 columns or a tl.sum across threads per tile.
    """
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    q0_ptr += b * N * D
    s0_ptr += b * M * D
    v_ptr += b * M * P
    out_ptr += b * N * P
    inv_ptr += b * inv_bs
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    acc = tl.zeros((BN, BP), dtype=ACC)
    if NP > 0:
        a1, a2, a3, a4 = slot_tiles(BN, BM, ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        r2 = sqdist(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, tol, D, EXACT, DOT)
        if not EXACT:
            r2, near = close_pairs(q0_ptr, s0_ptr, rows, cols, rmask, cmask, tl.sum(qt * qt, 1), tl.sum(st * st, 1), r2, D)
        k0, k1, k2 = radial(r2, inv_ptr, K, KIND, pc, ph, peps2)
        k0 = tl.where(cmask[None, :], k0, 0.0)
        if NP > 0:
            if HAS_V:
                a1 += k0 * tl.load(v_ptr + cols * P, mask=cmask, other=0.0)[None, :]
                if NP > 1:
                    a2 += k0 * tl.load(v_ptr + cols * P + 1, mask=cmask, other=0.0)[None, :]
                if NP > 2:
                    a3 += k0 * tl.load(v_ptr + cols * P + 2, mask=cmask, other=0.0)[None, :]
                if NP > 3:
                    a4 += k0 * tl.load(v_ptr + cols * P + 3, mask=cmask, other=0.0)[None, :]
            else:
                a1 += k0
        elif HAS_V:
            acc += tl.dot(k0, load_rows(v_ptr, cols, cmask, P, BP), input_precision=DOT)
        else:
            acc += tl.sum(k0, 1)[:, None]
    if NP > 0:
        acc = coordinate_sums(acc, a1, a2, a3, a4, 1.0, NP, BP)
    store_rows(out_ptr, rows, rmask, P, acc, BP)


@autotune("D", "BD", "BP", "EXACT", "KIND", "HAS_A", "HAS_UW", "DOT", "SUMS", sizes=("N", "M", "K"))
@triton.jit
def _field_kernel(q_ptr, s_ptr, q0_ptr, s0_ptr, a_ptr, u_ptr, w_ptr, inv_ptr, out_ptr, N, M, P, K, inv_bs, tol, pc, ph, peps2,
                  D: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr, EXACT: tl.constexpr, KIND: tl.constexpr,
                  HAS_A: tl.constexpr, HAS_UW: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, SUMS: tl.constexpr,
                  BN: tl.constexpr, BM: tl.constexpr):
    """out_i = Σ_j W_ij (q_i − s_j) with W_ij = 2 k'_ij · a_j · (u_i · w_j)  (factors where present).

    a_j: grad_sum's source weights; (u_i · w_j): the integral backward's g_i · v_j. With EXACT the
    sums are formed from the differences q_i − s_j (SUMS_DEFER: per register slot; else
    diff_sums); above it as q_i Σ_j W_ij − W @ s over the far pairs, the close pairs' terms from the
    differences of the uncentred points q0, s0 (close_pairs, close_diff_sums).
    """
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    q0_ptr += b * N * D
    s0_ptr += b * M * D
    a_ptr += b * M
    u_ptr += b * N * P
    w_ptr += b * M * P
    out_ptr += b * N * D
    inv_ptr += b * inv_bs
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    if HAS_UW:
        ut = load_rows(u_ptr, rows, rmask, P, BP)
    wsum = tl.zeros((BN,), dtype=ACC)
    wy = tl.zeros((BN, BD), dtype=ACC)
    wn = tl.zeros((BN, BD), dtype=ACC)  # the close pairs' Σ W (q − s) (above EXACT_MAX_D)
    if SUMS == 2:  # per-pair partial sums kept in registers, reduced once after the loop
        a1, a2, a3, _ = slot_tiles(BN, BM, ACC)
        q0, q1, q2 = column(qt, 0, BD)[:, None], column(qt, 1, BD)[:, None], column(qt, 2, BD)[:, None]
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        r2 = sqdist(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, tol, D, EXACT, DOT)
        if not EXACT:
            r2, near = close_pairs(q0_ptr, s0_ptr, rows, cols, rmask, cmask, tl.sum(qt * qt, 1), tl.sum(st * st, 1), r2, D)
        k0, k1, k2 = radial(r2, inv_ptr, K, KIND, pc, ph, peps2)
        W = 2.0 * k1
        if HAS_A:
            W = W * tl.load(a_ptr + cols, mask=cmask, other=0.0)[None, :]
        if HAS_UW:
            W = W * tl.dot(ut, tl.trans(load_rows(w_ptr, cols, cmask, P, BP)), input_precision=DOT)
        W = tl.where(cmask[None, :], W, 0.0)
        if SUMS == 2:  # EXACT holds here (D <= 3); the differences are sqdist's, reused
            a1 += W * (q0 - tl.load(s_ptr + cols * D, mask=cmask, other=0.0)[None, :])
            if D > 1:
                a2 += W * (q1 - tl.load(s_ptr + cols * D + 1, mask=cmask, other=0.0)[None, :])
            if D > 2:
                a3 += W * (q2 - tl.load(s_ptr + cols * D + 2, mask=cmask, other=0.0)[None, :])
        elif EXACT:
            wy += diff_sums(W, q_ptr, s_ptr, rows, cols, rmask, cmask, D, BD)
        else:
            wn += close_diff_sums(W, q0_ptr, s0_ptr, rows, cols, rmask, cmask, near, D, BD)
            W = tl.where(near, 0.0, W)
            if SUMS == 1:  # Σ_j W_ij lands in wy's padding column D
                wy += tl.dot(W, with_ones(st, D, BD), input_precision=DOT)
            else:
                wsum += tl.sum(W, 1)
                wy += tl.dot(W, st, input_precision=DOT)
    if SUMS == 2:
        wy = coordinate_sums(wy, a1, a2, a3, a1, 1.0, D, BD)
    if SUMS == 2 or EXACT:
        store_rows(out_ptr, rows, rmask, D, wy, BD)
    else:
        if SUMS == 1:
            wsum = column(wy, D, BD)
        store_rows(out_ptr, rows, rmask, D, qt * wsum[:, None] - wy + wn, BD)


@autotune("D", "BD", "EXACT", "KIND", "HAS_A", "G_ON_ROWS", "WANT_A", "DOT", sizes=("N", "M", "K"))
@triton.jit
def _hessian_kernel(q_ptr, s_ptr, q0_ptr, s0_ptr, a_ptr, g_ptr, inv_ptr, out_ptr, outa_ptr, N, M, K, inv_bs, tol, pc, ph, peps2,
                    D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, KIND: tl.constexpr, HAS_A: tl.constexpr,
                    G_ON_ROWS: tl.constexpr, WANT_A: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    """Backward of grad_sum. With A = 2k', C = 4k'' ((q_i − s_j)·g):

    G_ON_ROWS (gradient w.r.t. x; q = x, s = y, a on s, g = g_i):
        out_i = g_i Σ_j a_j A_ij + Σ_j a_j C_ij (q_i − s_j)
    else (gradient w.r.t. y; q = y, s = x, a on q, g = g_j):
        out_i = −a_i [Σ_j A_ij g_j + Σ_j C_ij (q_i − s_j)],   outa_i = −Σ_j A_ij ((q_i − s_j)·g_j)
    """
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    q0_ptr += b * N * D
    s0_ptr += b * M * D
    g_ptr += b * (N if G_ON_ROWS else M) * D
    a_ptr += b * (M if G_ON_ROWS else N)
    out_ptr += b * N * D
    outa_ptr += b * N
    inv_ptr += b * inv_bs
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    if G_ON_ROWS:
        gq = load_rows(g_ptr, rows, rmask, D, BD)
    asum = tl.zeros((BN,), dtype=ACC)
    csum = tl.zeros((BN,), dtype=ACC)
    cy = tl.zeros((BN, BD), dtype=ACC)
    cn = tl.zeros((BN, BD), dtype=ACC)  # the close pairs' Σ C (q − s) (above EXACT_MAX_D)
    ag = tl.zeros((BN, BD), dtype=ACC)
    gsum = tl.zeros((BN,), dtype=ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        if G_ON_ROWS:
            gt = gq
        else:
            gt = load_rows(g_ptr, cols, cmask, D, BD)
        r2 = sqdist(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, tol, D, EXACT, DOT)
        if EXACT:
            near = r2 < 0.0  # none: no close-pair split in the exact range
        else:
            r2, near = close_pairs(q0_ptr, s0_ptr, rows, cols, rmask, cmask, tl.sum(qt * qt, 1), tl.sum(st * st, 1), r2, D)
        k0, k1, k2 = radial(r2, inv_ptr, K, KIND, pc, ph, peps2)
        dg = dot_diff(q_ptr, s_ptr, g_ptr, rows, cols, rmask, cmask, qt, st, gt, D, EXACT, G_ON_ROWS, DOT)
        if not EXACT:
            dg = close_dot_diff(q0_ptr, s0_ptr, g_ptr, rows, cols, rmask, cmask, near, dg, D, G_ON_ROWS)
        A = 2.0 * k1
        C = 4.0 * k2 * dg
        if G_ON_ROWS:
            if HAS_A:
                at = tl.load(a_ptr + cols, mask=cmask, other=0.0)[None, :]
                A = A * at
                C = C * at
        A = tl.where(cmask[None, :], A, 0.0)
        C = tl.where(cmask[None, :], C, 0.0)
        # Σ_j C_ij (q_i − s_j) = cn + q_i csum − cy (see split_diff_sums)
        ex, wf, ws = split_diff_sums(C, q_ptr, s_ptr, q0_ptr, s0_ptr, rows, cols, rmask, cmask, st, near, D, BD, EXACT, DOT)
        cn += ex
        csum += wf
        cy += ws
        if G_ON_ROWS:
            asum += tl.sum(A, 1)
        else:
            ag += tl.dot(A, gt, input_precision=DOT)
            if WANT_A:
                gsum += tl.sum(A * dg, 1)
    cy = qt * csum[:, None] - cy + cn
    if G_ON_ROWS:
        store_rows(out_ptr, rows, rmask, D, gq * asum[:, None] + cy, BD)
    else:
        val = ag + cy
        if HAS_A:
            val = val * tl.load(a_ptr + rows, mask=rmask, other=0.0)[:, None]
        store_rows(out_ptr, rows, rmask, D, -val, BD)
        if WANT_A:
            tl.store(outa_ptr + rows, -gsum, mask=rmask)


# --------------------------------------------------------------------------------------------
# launchers (reference signatures)


def _common(kernel, q, s, s2):
    kind, pc, ph, peps2 = kernel_code(kernel)
    D = q.shape[-1]
    inv = (1.0 / s2).contiguous()
    inv_bs = inv.shape[1] if inv.shape[0] > 1 else 0
    dot = dot_precision(q.dtype)
    return dict(K=inv.shape[1], inv_bs=inv_bs, tol=snap_tol(q.dtype, dot), pc=pc, ph=ph, peps2=peps2, D=D, BD=pow2(D),
                EXACT=D <= EXACT_MAX_D, KIND=kind, ACC=acc_dtype(q), DOT=dot), inv


def _center(x, y):
    """(x, y, x0, y0): centred on the mean of y for the dot-product distances (D > EXACT_MAX_D), and
    as given (x0, y0: the close pairs' differences there); as given in the exact-difference range,
    whose close-pair differences centring would round."""
    x0, y0 = x.contiguous(), y.contiguous()
    if x.shape[-1] <= EXACT_MAX_D:
        return x0, y0, x0, y0
    c = y.mean(dim=1, keepdim=True)
    return (x - c).contiguous(), (y - c).contiguous(), x0, y0


def _grid(B, N):
    return lambda meta: (triton.cdiv(N, meta["BN"]), B)


def _integral(kernel, q, s, q0, s0, v, s2):
    B, N, _ = q.shape
    M = s.shape[1]
    P = 1 if v is None else v.shape[-1]
    kw, inv = _common(kernel, q, s, s2)
    out = q.new_empty(B, N, P)
    # per-slot sums for up to 4 value columns on CUDA cores (exact-difference range only: wider
    # tiles leave no registers for them)
    deferred = P <= 4 and kw["EXACT"] and q.dtype == torch.float32 and kw["DOT"] == "ieee"
    _integral_kernel[_grid(B, N)](q, s, q0, s0, q if v is None else v.contiguous(), inv, out, N, M, P,
                                  BP=pow2(P), HAS_V=v is not None, NP=P if deferred else 0, **kw)
    return out


def _field(kernel, q, s, q0, s0, a, u, w, s2):
    B, N, D = q.shape
    M = s.shape[1]
    P = 1 if u is None else u.shape[-1]
    kw, inv = _common(kernel, q, s, s2)
    out = torch.empty_like(q)
    _field_kernel[_grid(B, N)](q, s, q0, s0, q if a is None else a.contiguous(), q if u is None else u.contiguous(),
                               q if w is None else w.contiguous(), inv, out, N, M, P, BP=pow2(P),
                               HAS_A=a is not None, HAS_UW=u is not None, SUMS=sums_mode(D, kw["BD"], q.dtype, kw["DOT"]), **kw)
    return out


def integral(kernel, x, y, v, s2):
    x, y, x0, y0 = _center(x, y)
    return _integral(kernel, x, y, x0, y0, v, s2)


def integral_backward(kernel, x, y, v, s2, g, needs):
    need_x, need_y, need_v = needs
    x, y, x0, y0 = _center(x, y)
    vv = torch.ones(y.shape[0], y.shape[1], 1, dtype=x.dtype, device=x.device) if v is None else v
    gx = _field(kernel, x, y, x0, y0, None, g, vv, s2) if need_x else None
    gy = _field(kernel, y, x, y0, x0, None, vv, g, s2) if need_y else None
    gv = _integral(kernel, y, x, y0, x0, g, s2) if (need_v and v is not None) else None
    return gx, gy, gv


def grad_sum(kernel, x, y, a, s2):
    x, y, x0, y0 = _center(x, y)
    return _field(kernel, x, y, x0, y0, a, None, None, s2)


def grad_sum_backward(kernel, x, y, a, s2, g, needs):
    need_x, need_y, need_a = needs
    x, y, x0, y0 = _center(x, y)
    g = g.contiguous()
    B, N, D = x.shape
    M = y.shape[1]
    gx = gy = ga = None
    if need_x:
        kw, inv = _common(kernel, x, y, s2)
        gx = torch.empty_like(x)
        _hessian_kernel[_grid(B, N)](x, y, x0, y0, x if a is None else a.contiguous(), g, inv, gx, gx, N, M,
                                     HAS_A=a is not None, G_ON_ROWS=True, WANT_A=False, **kw)
    want_a = need_a and a is not None
    if need_y or want_a:
        kw, inv = _common(kernel, y, x, s2)
        gy = torch.empty_like(y)
        ga_buf = y.new_empty(B, M)
        _hessian_kernel[_grid(B, M)](y, x, y0, x0, y if a is None else a.contiguous(), g, inv, gy, ga_buf, M, N,
                                     HAS_A=a is not None, G_ON_ROWS=False, WANT_A=want_a, **kw)
        ga = ga_buf if want_a else None
        if not need_y:
            gy = None
    return gx, gy, ga
