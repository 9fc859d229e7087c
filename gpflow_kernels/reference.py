"""Tiled plain-torch pair reductions: the CPU path and the oracle for the GPU kernels.

Every function here takes already validated, contiguous tensors with one flat batch dim:
``x: (B, N, D)``, ``y: (B, M, D)``, bandwidths squared ``s2: (B or 1, K)``, all in one
floating dtype (float32 or float64), and never allocates a pair matrix larger than
``TILE_ELEMS`` entries, so extra memory stays O(N + M) whatever N and M are.

Geometry. For D <= ``EXACT_MAX_D`` squared distances are summed from exact coordinate
differences (no cancellation); above it they come from one matrix product,
r² = |x|² + |y|² − 2 x·y, after both sets are centred on the mean of y. That formula loses the
digits of close pairs, so the pairs it puts below ``NEAR``·(|x|² + |y|²) are recomputed from
their differences: coincident points are exactly coincident (the singular kernels, laplace and
energy, give them zero force), and every other r² is within about 2 eps/NEAR of the truth.

Reductions. With k' = dk/d(r²) and d_ij = x_i − y_j, ∇_x k(x_i, y_j) = 2 k'_ij d_ij, so every
field below is a weighted sum Σ_j W_ij (x_i − y_j). Written as x_i Σ_j W_ij − W @ y (one matrix
product), the rounding of each term scales with |W_ij| (|x_i| + |y_j|) instead of |W_ij d_ij|: a
heavy close pair (a particle's own term when x_ref = x, near duplicates at a small bandwidth)
then wipes out the rest of the row. So (``_Geometry.wdiff``) the sums are formed from the
differences themselves for D <= ``EXACT_MAX_D``, and above it the close pairs (the same ones
whose r² is recomputed) leave the matrix product and are added from their differences; the
far pairs left in it have |x_i| + |y_j| <= sqrt(2/NEAR) |d_ij|, so their rounding stays within
that factor of a dense per-pair sum's.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from .kernels import Kernel, exp_

Tensor = torch.Tensor

#: Largest number of (pair × batch) entries a tile may hold. 2**18 float32 entries are 1 MB, so
#: a tile step's few temporaries stay near the CPU caches (2x faster than 2**20 on our CI box).
TILE_ELEMS = 1 << 18
#: Columns (y points) per tile when N is large. Small enough to keep tiles cache friendly.
COL_TILE = 2048
#: Up to this dimension, distances are computed from exact differences.
EXACT_MAX_D = 8
#: Above EXACT_MAX_D, pairs with r² < NEAR·(|x|² + |y|²) by the matrix-product formula are
#: recomputed from differences (their r² and their field terms). 1/16: far pairs' terms are
#: rounded at most sqrt(32) ≈ 5.7 times worse than from differences, and their r² within 32 eps.
NEAR = 1.0 / 16.0


# --------------------------------------------------------------------------------------------
# tiling and geometry


def _tiles(B: int, N: int, M: int) -> Iterator[Tuple[slice, slice, slice]]:
    """Yield (batch, row, col) slices covering B×N×M, each tile at most ~TILE_ELEMS entries."""
    mt = min(M, max(COL_TILE, TILE_ELEMS // max(N, 1)))
    nt = min(N, max(1, TILE_ELEMS // mt))
    bt = min(B, max(1, TILE_ELEMS // (nt * mt)))
    for b0 in range(0, B, bt):
        bs = slice(b0, min(B, b0 + bt))
        for i0 in range(0, N, nt):
            rs = slice(i0, min(N, i0 + nt))
            for j0 in range(0, M, mt):
                yield bs, rs, slice(j0, min(M, j0 + mt))


def _center(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Shift both sets by the mean of y: every reduction here is translation invariant."""
    c = y.mean(dim=1, keepdim=True)
    return x - c, y - c


def centred(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(x − c, y − c, c) with c the mean of y, both contiguous: the inputs the compiled backends
    (``_cpu``, ``_cuda``) take, centred as this module centres its own."""
    c = y.mean(dim=1, keepdim=True)
    return (x - c).contiguous(), (y - c).contiguous(), c


class _Geometry:
    """Per-call geometry: exact vs. matrix-product distances, squared norms, and the close pairs
    of the tile last passed to :meth:`sqdist` (used by :meth:`wdiff` and :meth:`dot_diff`)."""

    def __init__(self, x: Tensor, y: Tensor, x0: Optional[Tensor] = None, y0: Optional[Tensor] = None):
        """x, y: the points the tiles come from; x0, y0: the same before centring (their
        differences are exact where the centred points' are rounded), default x and y."""
        self.exact = x.shape[-1] <= EXACT_MAX_D
        self.x0 = x if x0 is None else x0
        self.y0 = y if y0 is None else y0
        if not self.exact:
            self.xx = (x * x).sum(-1)
            self.yy = (y * y).sum(-1)
        self._near = None

    def sqdist(self, xt: Tensor, yt: Tensor, bs: slice, rs: slice, cs: slice) -> Tensor:
        """r²: (b, n, m) for x tile (b, n, D) and y tile (b, m, D)."""
        if self.exact:
            r2 = None
            for d in range(xt.shape[-1]):
                diff = xt[:, :, d, None] - yt[:, None, :, d]
                r2 = diff * diff if r2 is None else r2.addcmul_(diff, diff)
            return r2
        xx = self.xx[bs, rs, None]
        yy = self.yy[bs, None, cs]
        r2 = torch.baddbmm(xx + yy, xt, yt.transpose(1, 2), alpha=-2.0)
        # The close pairs: their r² is mostly round-off of the expansion. Recomputed exactly.
        ib, ii, jj = torch.nonzero(r2 < NEAR * (xx + yy), as_tuple=True)
        diff = self.x0[bs, rs][ib, ii] - self.y0[bs, cs][ib, jj]  # (pairs, D), from the uncentred points
        r2[ib, ii, jj] = (diff * diff).sum(-1)
        self._near = (ib, ii, jj, diff)
        return r2

    def wdiff(self, W: Tensor, xt: Tensor, yt: Tensor, rows: bool = True) -> Tensor:
        """Σ_j W_ij (x_i − y_j): (b, n, D) for W: (b, n, m); with rows=False, Σ_i W_ij (y_j − x_i):
        (b, m, D). W is the tile last passed to :meth:`sqdist`; it is not modified."""
        if self.exact:
            a, c, dim = (xt[:, :, None, :], yt[:, None, :, :], -1) if rows else (yt[:, None, :, :], xt[:, :, None, :], 1)
            out = []
            for d in range(xt.shape[-1]):
                out.append((W * (a[..., d] - c[..., d])).sum(dim))
            return torch.stack(out, -1)
        ib, ii, jj, diff = self._near
        if ib.numel():
            wn = W[ib, ii, jj]
            W = W.index_put((ib, ii, jj), wn.new_zeros(()))
        out = _weighted_diff_sum(W, xt, yt) if rows else _weighted_diff_sum(W.transpose(1, 2), yt, xt)
        if ib.numel():
            out.index_put_((ib, ii if rows else jj), wn[:, None] * (diff if rows else -diff), accumulate=True)
        return out

    def dot_diff(self, xt: Tensor, yt: Tensor, gt: Tensor) -> Tensor:
        """(x_i − y_j)·g_i: (b, n, m), from exact differences when D is small (and for the close
        pairs of the last :meth:`sqdist` tile when it is not)."""
        if self.exact:
            out = None
            for d in range(xt.shape[-1]):
                term = (xt[:, :, d, None] - yt[:, None, :, d]) * gt[:, :, d, None]
                out = term if out is None else out.add_(term)
            return out
        xg = (xt * gt).sum(-1, keepdim=True)
        out = xg - torch.bmm(gt, yt.transpose(1, 2))
        ib, ii, jj, diff = self._near
        if ib.numel():
            out[ib, ii, jj] = (diff * gt[ib, ii]).sum(-1)
        return out


def _radial(kernel: Kernel, r2: Tensor, s2: Tensor, order: int, bs: slice):
    """Σ_b over bandwidths of (k, dk/dr², d²k/d(r²)²)[: order + 1] on a tile."""
    inv = (1.0 / s2[bs] if s2.shape[0] > 1 else 1.0 / s2)
    K = inv.shape[1]
    out = None
    for b in range(K):
        ib = inv[:, b].view(-1, 1, 1)
        # With one bandwidth r² is not needed afterwards: rescale it in place.
        u = r2.mul_(ib) if K == 1 else r2 * ib
        prof = kernel.profile(u, order)
        terms = [prof[0]]
        if order >= 1:
            terms.append(prof[1].mul_(ib))
        if order >= 2:
            terms.append(prof[2].mul_(ib * ib))
        out = terms if out is None else [o.add_(t) for o, t in zip(out, terms)]
    return out


def _prepare(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, _Geometry]:
    """The points the tiles are cut from, and their geometry. Exact differences (D <= EXACT_MAX_D)
    take the points as given: centring would round them, and the difference of two rounded close
    points can be all rounding. The matrix-product distances take them centred on the mean of y,
    and the geometry keeps the given points for the close pairs' differences."""
    if x.shape[-1] <= EXACT_MAX_D:
        return x, y, _Geometry(x, y)
    xc, yc = _center(x, y)
    return xc, yc, _Geometry(xc, yc, x, y)


def _backward_setup(x, y, w, needs):
    """The tiles' points (see _prepare), their geometry, and zeroed gradient buffers for (x, y, w)
    where needed."""
    x, y, geo = _prepare(x, y)
    bufs = tuple(
        torch.zeros_like(t) if (need and t is not None) else None for t, need in zip((x, y, w), needs)
    )
    return x, y, geo, bufs


def _weighted_diff_sum(W: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
    """Σ_j W_ij (x_i − y_j): (b, n, D)."""
    return xt * W.sum(-1, keepdim=True) - torch.bmm(W, yt)


# --------------------------------------------------------------------------------------------
# kernel integral  Σ_j k(x_i, y_j) v_j


def integral(kernel: Kernel, x: Tensor, y: Tensor, v: Optional[Tensor], s2: Tensor) -> Tensor:
    """Σ_j k(x_i, y_j) v_j: (B, N, P) for v: (B, M, P); v=None sums the kernel, P = 1."""
    x, y, geo = _prepare(x, y)
    B, N, _ = x.shape
    M = y.shape[1]
    P = 1 if v is None else v.shape[-1]
    out = x.new_zeros(B, N, P)
    for bs, rs, cs in _tiles(B, N, M):
        (K,) = _radial(kernel, geo.sqdist(x[bs, rs], y[bs, cs], bs, rs, cs), s2, 0, bs)
        if v is None:
            out[bs, rs] += K.sum(-1, keepdim=True)
        else:
            out[bs, rs] += torch.bmm(K, v[bs, cs])
    return out


def integral_backward(kernel, x, y, v, s2, g, needs) -> Tuple[Optional[Tensor], ...]:
    """Gradients of Σ_i g_i · integral(x, y, v)_i with respect to (x, y, v), where asked.

    With W_ij = 2 k'_ij (g_i · v_j): grad x_i = Σ_j W_ij (x_i − y_j), grad y_j = −Σ_i W_ij (x_i − y_j),
    grad v_j = Σ_i k_ij g_i.
    """
    x, y, geo, (gx, gy, gv) = _backward_setup(x, y, v, needs)
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    order = 1 if (gx is not None or gy is not None) else 0
    for bs, rs, cs in _tiles(B, N, M):
        xt, yt, gt = x[bs, rs], y[bs, cs], g[bs, rs]
        terms = _radial(kernel, geo.sqdist(xt, yt, bs, rs, cs), s2, order, bs)
        if gv is not None:
            gv[bs, cs] += torch.bmm(terms[0].transpose(1, 2), gt)
        if order:
            gvt = gt.sum(-1, keepdim=True) if v is None else torch.bmm(gt, v[bs, cs].transpose(1, 2))
            W = 2.0 * terms[1] * gvt
            if gx is not None:
                gx[bs, rs] += geo.wdiff(W, xt, yt)
            if gy is not None:
                gy[bs, cs] += geo.wdiff(W, xt, yt, rows=False)
    return gx, gy, gv


# --------------------------------------------------------------------------------------------
# gradient sum  Σ_j a_j ∇_x k(x_i, y_j)   (the building block of witness and Stein fields)


def grad_sum(kernel: Kernel, x: Tensor, y: Tensor, a: Optional[Tensor], s2: Tensor) -> Tensor:
    """Σ_j a_j ∇_x k(x_i, y_j): (B, N, D); a: (B, M) or None for all ones."""
    x, y, geo = _prepare(x, y)
    B, N, D = x.shape
    M = y.shape[1]
    out = torch.zeros_like(x)
    for bs, rs, cs in _tiles(B, N, M):
        xt, yt = x[bs, rs], y[bs, cs]
        _, k1 = _radial(kernel, geo.sqdist(xt, yt, bs, rs, cs), s2, 1, bs)
        W = 2.0 * k1 if a is None else (2.0 * k1) * a[bs, None, cs]
        out[bs, rs] += geo.wdiff(W, xt, yt)
    return out


def grad_sum_backward(kernel, x, y, a, s2, g, needs) -> Tuple[Optional[Tensor], ...]:
    """Gradients of Σ_i g_i · grad_sum(x, y, a)_i with respect to (x, y, a), where asked.

    The field's Jacobian is Σ_j a_j (2 k' I + 4 k'' d dᵀ); with A_ij = 2 k'_ij a_j and
    C_ij = 4 k''_ij a_j (d_ij · g_i): grad x_i = g_i Σ_j A_ij + Σ_j C_ij d_ij,
    grad y_j = −Σ_i A_ij g_i − Σ_i C_ij d_ij, grad a_j = Σ_i 2 k'_ij (d_ij · g_i).
    """
    x, y, geo, (gx, gy, ga) = _backward_setup(x, y, a, needs)
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    order = 2 if (gx is not None or gy is not None) else 1
    for bs, rs, cs in _tiles(B, N, M):
        xt, yt, gt = x[bs, rs], y[bs, cs], g[bs, rs]
        terms = _radial(kernel, geo.sqdist(xt, yt, bs, rs, cs), s2, order, bs)
        dg = geo.dot_diff(xt, yt, gt)
        k1 = 2.0 * terms[1]
        if ga is not None:
            ga[bs, cs] += (k1 * dg).sum(1)
        if order == 2:
            at = None if a is None else a[bs, None, cs]
            A = k1 if at is None else k1 * at
            C = 4.0 * terms[2] * dg
            if at is not None:
                C = C * at
            if gx is not None:
                gx[bs, rs] += gt * A.sum(-1, keepdim=True) + geo.wdiff(C, xt, yt)
            if gy is not None:
                gy[bs, cs] += geo.wdiff(C, xt, yt, rows=False) - torch.bmm(A.transpose(1, 2), gt)
    return gx, gy, ga


# --------------------------------------------------------------------------------------------
# Gaussian soft assignment  μ_i = Σ_j softmax_j(−|x_i − y_j|²/(2σ²)) y_j  (KDE denoiser / score)
#
# The logits are −r²/(2σ²) with r² from the geometry (exact differences, or the matrix product
# with its close pairs recomputed), in every D. The flash-attention form (x·y − |y|²/2)/σ², which
# drops the row constant, rounds each logit at eps |x| |y| / σ² instead of eps r² / σ²: on two
# clusters at ±3 (D = 16, σ = 1e-3) it moved μ by 3σ in float32, where a dense formula is within
# 1e-3 σ. The weighted sums are taken on points centred on the mean of y, and the gradients' sums of
# c_ij (x_i − y_j) from the differences (see _Geometry.wdiff).


def _soft_setup(x: Tensor, y: Tensor):
    """(xg, yg, geo): the points the logits and difference sums are cut from (see _prepare), and
    (xc, yc, shift): both centred on the mean of y, for the sums weighted by y."""
    xg, yg, geo = _prepare(x, y)
    shift = y.mean(dim=1, keepdim=True)
    # above EXACT_MAX_D _prepare has centred them on the mean of y already
    xc, yc = (x - shift, y - shift) if xg is x else (xg, yg)
    return xg, yg, geo, xc, yc, shift


def softmax_mean(x: Tensor, y: Tensor, s2: Tensor) -> Tuple[Tensor, Tensor]:
    """(μ: (B, N, D), lse: (B, N)) with a single bandwidth, s2: (B or 1, 1); lse = log Σ_j
    exp(−r²_ij/(2σ²)) (natural units, the exact convention in every D).

    Accumulated with an online log-sum-exp over column tiles, so tiny bandwidths neither
    underflow nor overflow. ``lse`` is kept for the backward.
    """
    xg, yg, geo, xc, yc, shift = _soft_setup(x, y)
    B, N, D = xc.shape
    M = yc.shape[1]
    inv = (0.5 / s2).view(-1, 1, 1)
    mu = torch.zeros_like(xc)
    lse = xc.new_full((B, N), float("-inf"))
    for bs, rs, cs in _tiles(B, N, M):
        ib = inv[bs] if inv.shape[0] > 1 else inv
        ell = geo.sqdist(xg[bs, rs], yg[bs, cs], bs, rs, cs).mul_(-ib)
        # mu holds the running normalised mean and lse its log normaliser; both are rescaled
        # to the new running maximum m_new.
        lse_old = lse[bs, rs]
        m_new = torch.maximum(lse_old, ell.amax(-1))
        p = exp_(ell - m_new[..., None])
        w_old = torch.exp(lse_old - m_new)  # weight of the mean so far; exp(-inf) = 0 on the first tile
        total = w_old + p.sum(-1)
        mu[bs, rs] = (mu[bs, rs] * w_old[..., None] + torch.bmm(p, yc[bs, cs])) / total[..., None]
        lse[bs, rs] = m_new + torch.log(total)
    return mu + shift, lse


def softmax_mean_backward(x, y, s2, lse, mu, g, needs) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients of Σ_i g_i · μ_i with respect to (x, y).

    With p_ij the soft assignment and c_ij = p_ij (g_i · y_j − g_i · μ_i):
    grad x_i = Σ_j c_ij (y_j − x_i) / σ² + (x_i − μ_i) Σ_j c_ij / σ²,
    grad y_j = Σ_i p_ij g_i + Σ_i c_ij (x_i − y_j) / σ².
    Σ_j c_ij = 0 in exact arithmetic; the computed one times (x_i − μ_i) cancels the rounding of
    the c_ij to first order. The sums of c_ij (x_i − y_j) come from the differences (_Geometry.wdiff),
    as autograd through a dense formula takes them: as Σ c y − μ Σ c they carried every c_ij's
    rounding times |y_j| instead of |y_j − x_i|.
    """
    need_x, need_y = needs
    xg, yg, geo, xc, yc, shift = _soft_setup(x, y)
    muc = mu - shift
    B, N, D = xc.shape
    M = yc.shape[1]
    inv = (0.5 / s2).view(-1, 1, 1)
    invs2 = (1.0 / s2).view(-1, 1, 1)
    gmu = (g * muc).sum(-1)  # (B, N)
    gx = torch.zeros_like(xc) if need_x else None
    csum = xc.new_zeros(B, N, 1) if need_x else None
    gy = torch.zeros_like(yc) if need_y else None
    for bs, rs, cs in _tiles(B, N, M):
        xt, yt, gt = xg[bs, rs], yg[bs, cs], g[bs, rs]
        ib = inv[bs] if inv.shape[0] > 1 else inv
        sb = invs2[bs] if invs2.shape[0] > 1 else invs2
        p = exp_(geo.sqdist(xt, yt, bs, rs, cs).mul_(-ib) - lse[bs, rs, None])
        c = p * (torch.bmm(gt, yc[bs, cs].transpose(1, 2)) - gmu[bs, rs, None])
        if gx is not None:
            gx[bs, rs] -= geo.wdiff(c, xt, yt)
            csum[bs, rs] += c.sum(-1, keepdim=True)
        if gy is not None:
            gy[bs, cs] += torch.bmm(p.transpose(1, 2), gt) - geo.wdiff(c, xt, yt, rows=False) * sb
    if gx is not None:
        gx = (gx + (xc - muc) * csum) * invs2
    return gx, gy


#: ``lse`` from :func:`softmax_mean` is in natural-log units (the Triton backend's is in base 2).
LSE_UNIT = 1.0
