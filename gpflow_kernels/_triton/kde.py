"""Fused Triton kernels for the Gaussian soft assignment μ_i = Σ_j softmax_j(−|x_i − y_j|²/(2σ²)) y_j.

Flash-attention style: an online log-sum-exp in base 2 (exp2 with the constant log2(e)/(2σ²)
folded in), so tiny bandwidths neither underflow nor overflow. The logits are −r²/(2σ²) in every D:
above 16, r² comes from tl.dot with the close pairs recomputed from the uncentred points
(common.close_pairs), as in reference.softmax_mean; the flash form (x·y − |y|²/2)/σ² rounded each
logit at eps |x| |y| / σ² instead of eps r² / σ². ``lse`` is kept in base-2 units.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (EXACT_MAX_D, acc_dtype, autotune, close_pairs, column, coordinate_sums, dot_precision, load_block, load_rows, pow2, split_diff_sums,
                     slot_tiles, sqdist, store_rows, sums_mode, with_ones)

LOG2E = 1.4426950408889634
#: ``lse`` is in base-2 units: divide by this for natural units (log Σ_j exp(−r²_ij/(2σ²))).
LSE_UNIT = LOG2E


@triton.jit
def _logits2(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, rows, cols, rmask, cmask, qt, st, c2, D: tl.constexpr,
             EXACT: tl.constexpr, DOT: tl.constexpr):
    """(base-2 logits −c2·r²_ij, the close pairs) for rows i and columns j (either set as rows).

    The backward passes divide by the forward's normaliser, so each logit must round alike in every
    pass, whichever set is the rows: above the exact range the squared norms come from the launcher
    (qn, sn), not from tile sums whose order depends on the tile's layout, and the close-pair test
    uses them too. (A logit of −5e8, r² = 10 at σ = 1e-4, rounded one ulp apart moves p by e^±60.)"""
    if EXACT:
        r2 = sqdist(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, 0.0, D, EXACT, DOT)
        near = r2 < 0.0  # none: the exact range has no close-pair split
    else:
        qq = tl.load(qn_ptr + rows, mask=rmask, other=0.0)
        ss = tl.load(sn_ptr + cols, mask=cmask, other=0.0)
        r2 = qq[:, None] + ss[None, :] - 2.0 * tl.dot(qt, tl.trans(st), input_precision=DOT)
        r2, near = close_pairs(q0_ptr, s0_ptr, rows, cols, rmask, cmask, qq, ss, r2, D)
    return -c2 * r2, near


@autotune("D", "BD", "EXACT", "DOT", "SUMS")
@triton.jit
def _kde_fwd(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, inv_ptr, mu_ptr, lse_ptr, N, M, inv_bs,
             D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, SUMS: tl.constexpr,
             BN: tl.constexpr, BM: tl.constexpr):
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    q0_ptr += b * N * D
    s0_ptr += b * M * D
    qn_ptr += b * N
    sn_ptr += b * M
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
        ell, near = _logits2(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, rows, cols, rmask, cmask, qt, st, c2, D, EXACT, DOT)
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
def _kde_bwd_x(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, g_ptr, mu_ptr, lse_ptr, inv_ptr, out_ptr, N, M, inv_bs,
               D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, BN: tl.constexpr,
             BM: tl.constexpr):
    """grad x_i = Σ_j c_ij (y_j − μ_i) / σ², c_ij = p_ij (g_i·y_j − g_i·μ_i), formed as the reference does:
    Σ_j c_ij (y_j − x_i) + (x_i − μ_i) Σ_j c_ij, the first sum from the differences (exact range: all
    pairs; above it the close pairs, the far ones as Σ c y − x Σ c)."""
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    q0_ptr += b * N * D
    s0_ptr += b * M * D
    qn_ptr += b * N
    sn_ptr += b * M
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
    cn = tl.zeros((BN, BD), dtype=ACC)  # Σ c (x − y) from the differences
    csum = tl.zeros((BN,), dtype=ACC)
    cfar = tl.zeros((BN,), dtype=ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        ell, near = _logits2(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, rows, cols, rmask, cmask, qt, st, c2, D, EXACT, DOT)
        p = tl.where(cmask[None, :], tl.exp2(ell - lse[:, None]), 0.0)
        c = p * (tl.dot(gt, tl.trans(st), input_precision=DOT) - gmu[:, None])
        csum += tl.sum(c, 1)
        ex, wf, ws = split_diff_sums(c, q_ptr, s_ptr, q0_ptr, s0_ptr, rows, cols, rmask, cmask, st, near, D, BD, EXACT, DOT)
        cn += ex
        cfar += wf
        acc += ws
    # Σ c (y − x) = −(cn + x Σ_far c − Σ_far c y)
    store_rows(out_ptr, rows, rmask, D, ((acc - qt * cfar[:, None]) - cn + (qt - mut) * csum[:, None]) * inv, BD)


@autotune("D", "BD", "EXACT", "DOT")
@triton.jit
def _kde_bwd_y(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, g_ptr, mu_ptr, lse_ptr, inv_ptr, out_ptr, N, M, inv_bs,
               D: tl.constexpr, BD: tl.constexpr, EXACT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, BN: tl.constexpr,
             BM: tl.constexpr):
    """grad y_j = Σ_i p_ij g_i + Σ_i c_ij (x_i − y_j) / σ². Rows are y (q), columns are x (s); the
    second sum from the differences (exact range: all pairs; above it the close pairs)."""
    b = tl.program_id(1)
    q_ptr += b * N * D
    s_ptr += b * M * D
    q0_ptr += b * N * D
    s0_ptr += b * M * D
    qn_ptr += b * N
    sn_ptr += b * M
    g_ptr += b * M * D
    mu_ptr += b * M * D
    lse_ptr += b * M
    out_ptr += b * N * D
    inv = tl.load(inv_ptr + b * inv_bs)
    c2 = inv * (0.5 * 1.4426950408889634)
    rows, rmask, qt = load_block(q_ptr, tl.program_id(0) * BN, N, D, BD, BN)
    pg = tl.zeros((BN, BD), dtype=ACC)
    cx = tl.zeros((BN, BD), dtype=ACC)
    cn = tl.zeros((BN, BD), dtype=ACC)
    csum = tl.zeros((BN,), dtype=ACC)
    for j0 in range(0, M, BM):
        cols, cmask, st = load_block(s_ptr, j0, M, D, BD, BM)
        gt = load_rows(g_ptr, cols, cmask, D, BD)
        gmu = tl.sum(gt * load_rows(mu_ptr, cols, cmask, D, BD), 1)
        lse = tl.load(lse_ptr + cols, mask=cmask, other=0.0)
        ell, near = _logits2(q_ptr, s_ptr, q0_ptr, s0_ptr, qn_ptr, sn_ptr, rows, cols, rmask, cmask, qt, st, c2, D, EXACT, DOT)
        p = tl.where(cmask[None, :], tl.exp2(ell - lse[None, :]), 0.0)
        c = p * (tl.dot(qt, tl.trans(gt), input_precision=DOT) - gmu[None, :])
        pg += tl.dot(p, gt, input_precision=DOT)
        ex, wf, ws = split_diff_sums(c, q_ptr, s_ptr, q0_ptr, s0_ptr, rows, cols, rmask, cmask, st, near, D, BD, EXACT, DOT)
        cn += ex  # Σ c (y − x) = cn + y Σ_far c − Σ_far c x
        csum += wf
        cx += ws
    store_rows(out_ptr, rows, rmask, D, pg + (cx - qt * csum[:, None] - cn) * inv, BD)


def _setup(x, y, s2):
    shift = y.mean(dim=1, keepdim=True)
    inv = (1.0 / s2).reshape(-1).contiguous()
    D = x.shape[-1]
    kw = dict(inv_bs=1 if inv.numel() > 1 else 0, D=D, BD=pow2(D), EXACT=D <= EXACT_MAX_D, ACC=acc_dtype(x),
              DOT=dot_precision(x.dtype))
    # centred for the sums weighted by y and the dot-product distances; as given for the close
    # pairs' differences
    xc, yc = (x - shift).contiguous(), (y - shift).contiguous()
    if kw["EXACT"]:
        norms = (xc, yc)  # unused there
    else:
        norms = ((xc * xc).sum(-1).contiguous(), (yc * yc).sum(-1).contiguous())
    return shift, xc, yc, x.contiguous(), y.contiguous(), norms, inv, kw


def softmax_mean(x, y, s2):
    shift, xc, yc, x0, y0, (xn, yn), inv, kw = _setup(x, y, s2)
    B, N, D = xc.shape
    M = yc.shape[1]
    mu = torch.empty_like(xc)
    lse = xc.new_empty(B, N)
    _kde_fwd[lambda meta: (triton.cdiv(N, meta["BN"]), B)](xc, yc, x0, y0, xn, yn, inv, mu, lse, N, M,
                                                           SUMS=sums_mode(D, kw["BD"], xc.dtype, kw["DOT"]), **kw)
    return mu + shift, lse


def softmax_mean_backward(x, y, s2, lse, mu, g, needs):
    need_x, need_y = needs
    shift, xc, yc, x0, y0, (xn, yn), inv, kw = _setup(x, y, s2)
    muc = (mu - shift).contiguous()
    g = g.contiguous()
    B, N, D = xc.shape
    M = yc.shape[1]
    gx = gy = None
    if need_x:
        gx = torch.empty_like(xc)
        _kde_bwd_x[lambda meta: (triton.cdiv(N, meta["BN"]), B)](xc, yc, x0, y0, xn, yn, g, muc, lse, inv, gx, N, M, **kw)
    if need_y:
        gy = torch.empty_like(yc)
        _kde_bwd_y[lambda meta: (triton.cdiv(M, meta["BN"]), B)](yc, xc, y0, x0, yn, xn, g, muc, lse, inv, gy, M, N, **kw)
    return gx, gy

