"""Fused Triton kernels for the Gaussian soft assignment μ_i = Σ_j softmax_j(−|x_i − y_j|²/(2σ²)) y_j.

Flash-attention style: an online log-sum-exp in base 2 (exp2 with the constant log2(e)/(2σ²)
folded in), so tiny bandwidths neither underflow nor overflow. For D > 16 the logits are
(x·y − |y|²/2)/σ² (the row constant −|x|²/(2σ²) dropped, which softmax ignores) from tl.dot.
``lse`` is kept in base-2 units in that same convention; only this backend's backward reads it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from .common import (EXACT_MAX_D, acc_dtype, autotune, column, coordinate_sums, dot_precision, load_block, load_rows, pow2,
                     slot_tiles, sqdist, store_rows, sums_mode, with_ones)

LOG2E = 1.4426950408889634
#: ``lse`` is in base-2 units: divide by this for natural units (see ``reference.lse_offset``).
LSE_UNIT = LOG2E


@triton.jit
def _logits2(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, c2, D: tl.constexpr, EXACT: tl.constexpr, ROWS_ARE_X: tl.constexpr,
             DOT: tl.constexpr):
    """Base-2 logits ℓ_ij·log2(e) for x rows i and y columns j (or the transpose when not ROWS_ARE_X)."""
    if EXACT:
        out = -c2 * sqdist(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, 0.0, D, EXACT, DOT)
    else:
        qs = tl.dot(qt, tl.trans(st), input_precision=DOT)
        if ROWS_ARE_X:
            out = (2.0 * c2) * (qs - 0.5 * tl.sum(st * st, 1)[None, :])
        else:
            out = (2.0 * c2) * (qs - 0.5 * tl.sum(qt * qt, 1)[:, None])
    return out


@autotune("D", "BD", "EXACT", "DOT", "SUMS")
@triton.jit
def _kde_fwd(q_ptr, s_ptr, inv_ptr, mu_ptr, lse_ptr, N, M, inv_bs,
             D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, SUMS: tl.constexpr,
             BN: tl.constexpr, BM: tl.constexpr):
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    mu_ptr += b * N * D
    lse_ptr += b * N
    c2 = tl.load(inv_ptr + b * inv_bs) * (0.5 * 1.4426950408889634)
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    m = tl.full((BN,), float("-inf"), dtype=ACC)
    l = tl.zeros((BN,), dtype=ACC)
    acc = tl.zeros((BN, BD), dtype=ACC)
    if SUMS == 2:
        # An online softmax per register slot (i, j mod BM): no row maximum across threads per
        # tile. One exp2 per pair serves as both the rescale and the new weight, since one of the
        # two is 2^0. The start value is finite (near float32's lowest) so that masked logits (−inf)
        # give weight 0 rather than NaN, and any finite logit replaces it.
        ms = tl.full((BN, BM), -3.0e38, dtype=ACC)
        ls = tl.zeros((BN, BM), dtype=ACC)
        a1, a2, a3, _ = slot_tiles(BN, BM, ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        ell = _logits2(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, c2, D, EXACT, True, DOT)
        ell = tl.where(cmask[None, :], ell, float("-inf"))
        if SUMS == 2:
            up = ell > ms
            e = tl.exp2(-tl.abs(ell - ms))
            alpha = tl.where(up, e, 1.0)
            p = tl.where(up, 1.0, e)
            ms = tl.maximum(ms, ell)
            ls = ls * alpha + p
            a1 = a1 * alpha + p * tl.load(s_ptr + cols * D, mask=cmask, other=0.0)[None, :]
            if D > 1:
                a2 = a2 * alpha + p * tl.load(s_ptr + cols * D + 1, mask=cmask, other=0.0)[None, :]
            if D > 2:
                a3 = a3 * alpha + p * tl.load(s_ptr + cols * D + 2, mask=cmask, other=0.0)[None, :]
        else:
            m_new = tl.maximum(m, tl.max(ell, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(ell - m_new[:, None])
            if SUMS == 1:  # the softmax denominator rides in acc's padding column D (common.with_ones)
                acc = acc * alpha[:, None] + tl.dot(p, with_ones(st, D, BD), input_precision=DOT)
            else:
                l = l * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p, st, input_precision=DOT)
            m = m_new
    if SUMS == 2:  # merge the slots: one log-sum-exp per row
        m = tl.max(ms, 1)
        w = tl.exp2(ms - m[:, None])
        l = tl.sum(ls * w, 1)
        acc = coordinate_sums(acc, a1, a2, a3, a1, w, D, BD)
    if SUMS == 1:
        l = column(acc, D, BD)
    store_rows(mu_ptr, rows, rmask, D, acc / l[:, None], BD)
    tl.store(lse_ptr + rows, m + tl.log2(l), mask=rmask)


@autotune("D", "BD", "EXACT", "DOT")
@triton.jit
def _kde_bwd_x(q_ptr, s_ptr, g_ptr, mu_ptr, lse_ptr, inv_ptr, out_ptr, N, M, inv_bs,
               D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, BN: tl.constexpr,
             BM: tl.constexpr):
    """grad x_i = Σ_j c_ij (y_j − μ_i) / σ², c_ij = p_ij (g_i·y_j − g_i·μ_i); μ_i Σ_j c_ij is
    subtracted at the end (see reference.softmax_mean_backward: it cancels the c_ij's rounding)."""
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    g_ptr += b * N * D
    mu_ptr += b * N * D
    lse_ptr += b * N
    out_ptr += b * N * D
    inv = tl.load(inv_ptr + b * inv_bs)
    c2 = inv * (0.5 * 1.4426950408889634)
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    gt = load_rows(g_ptr, rows, rmask, D, BD)
    mut = load_rows(mu_ptr, rows, rmask, D, BD)
    gmu = tl.sum(gt * mut, 1)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    acc = tl.zeros((BN, BD), dtype=ACC)
    csum = tl.zeros((BN,), dtype=ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        ell = _logits2(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, c2, D, EXACT, True, DOT)
        p = tl.where(cmask[None, :], tl.exp2(ell - lse[:, None]), 0.0)
        c = p * (tl.dot(gt, tl.trans(st), input_precision=DOT) - gmu[:, None])
        csum += tl.sum(c, 1)
        acc += tl.dot(c, st, input_precision=DOT)
    store_rows(out_ptr, rows, rmask, D, (acc - mut * csum[:, None]) * inv, BD)


@autotune("D", "BD", "EXACT", "DOT")
@triton.jit
def _kde_bwd_y(q_ptr, s_ptr, g_ptr, mu_ptr, lse_ptr, inv_ptr, out_ptr, N, M, inv_bs,
               D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, BN: tl.constexpr,
             BM: tl.constexpr):
    """grad y_j = Σ_i p_ij g_i + Σ_i c_ij (x_i − y_j) / σ². Rows are y (q), columns are x (s)."""
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    g_ptr += b * M * D
    mu_ptr += b * M * D
    lse_ptr += b * M
    out_ptr += b * N * D
    inv = tl.load(inv_ptr + b * inv_bs)
    c2 = inv * (0.5 * 1.4426950408889634)
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    pg = tl.zeros((BN, BD), dtype=ACC)
    cx = tl.zeros((BN, BD), dtype=ACC)
    csum = tl.zeros((BN,), dtype=ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        gt = load_rows(g_ptr, cols, cmask, D, BD)
        gmu = tl.sum(gt * load_rows(mu_ptr, cols, cmask, D, BD), 1)
        lse = tl.load(lse_ptr + cols, mask=cmask, other=0.0)
        ell = _logits2(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, c2, D, EXACT, False, DOT)
        p = tl.where(cmask[None, :], tl.exp2(ell - lse[None, :]), 0.0)
        c = p * (tl.dot(qt, tl.trans(gt), input_precision=DOT) - gmu[None, :])
        pg += tl.dot(p, gt, input_precision=DOT)
        cx += tl.dot(c, st, input_precision=DOT)
        csum += tl.sum(c, 1)
    store_rows(out_ptr, rows, rmask, D, pg + (cx - qt * csum[:, None]) * inv, BD)


def _setup(x, y, s2):
    shift = y.mean(dim=1, keepdim=True)
    inv = (1.0 / s2).reshape(-1).contiguous()
    D = x.shape[-1]
    kw = dict(inv_bs=1 if inv.numel() > 1 else 0, D=D, BD=pow2(D), EXACT=D <= EXACT_MAX_D, ACC=acc_dtype(x),
              DOT=dot_precision(x.dtype))
    return shift, (x - shift).contiguous(), (y - shift).contiguous(), inv, kw


def softmax_mean(x, y, s2):
    shift, xc, yc, inv, kw = _setup(x, y, s2)
    B, N, D = xc.shape
    M = yc.shape[1]
    mu = torch.empty_like(xc)
    lse = xc.new_empty(B, N)
    _kde_fwd[lambda meta: (triton.cdiv(N, meta["BN"]), B)](xc, yc, inv, mu, lse, N, M,
                                                           SUMS=sums_mode(D, kw["BD"], xc.dtype, kw["DOT"]), **kw)
    return mu + shift, lse


def softmax_mean_backward(x, y, s2, lse, mu, g, needs):
    need_x, need_y = needs
    shift, xc, yc, inv, kw = _setup(x, y, s2)
    muc = (mu - shift).contiguous()
    g = g.contiguous()
    B, N, D = xc.shape
    M = yc.shape[1]
    gx = gy = None
    if need_x:
        gx = torch.empty_like(xc)
        _kde_bwd_x[lambda meta: (triton.cdiv(N, meta["BN"]), B)](xc, yc, g, muc, lse, inv, gx, N, M, **kw)
    if need_y:
        gy = torch.empty_like(yc)
        _kde_bwd_y[lambda meta: (triton.cdiv(M, meta["BN"]), B)](yc, xc, g, muc, lse, inv, gy, M, N, **kw)
    return gx, gy


def lse_offset(x, y, s2, c):
    """This backend's lse (natural units) above the shared convention: see ``reference.lse_offset``."""
    return reference.lse_offset(x, y, s2, c, exact_max_d=EXACT_MAX_D)
