"""Shared Triton pieces: kernel codes, distance tiles, radial profiles, launch settings.

Every kernel here works on one batch element per program column (grid axis 1) and a block of
BN query rows per program (axis 0), looping over the sources in blocks of BM: the N×M kernel
matrix never leaves registers. Inputs are contiguous (B, N, D) in float32 or float64, already
centred by the launcher; accumulation is in the input dtype.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


LOG2E = 1.4426950408889634
#: Up to this dimension distances come from exact differences; above it from tl.dot.
EXACT_MAX_D = 16
#: Largest point dimension the Triton kernels take (the feature row lives in registers).
MAX_D = 512

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _autotune_flag() -> bool:
    value = os.environ.get("GPFLOW_TRITON_AUTOTUNE", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"GPFLOW_TRITON_AUTOTUNE must be 0 or 1, got {value!r}")
    return value == "1"


#: GPFLOW_TRITON_AUTOTUNE=0 pins one block shape. Autotuning compiles every kernel variant once per
#: block shape (five) and times them on the first call for each size; the test suite on a GPU,
#: which launches hundreds of variants on tiny inputs, sets it so that it compiles each only once.
AUTOTUNE = _autotune_flag()
PINNED = (64, 64, 4, 2)  # BN, BM, warps, stages: the middle of the tuned set


def pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def acc_dtype(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


#: tl.dot input precision for float32 tiles under each of torch's float32 matmul precisions.
#: "highest" (torch's default): exact float32 products on the CUDA cores. "high": three TF32
#: tensor-core products per dot (the operands split into TF32 high and low parts), about float32
#: accuracy. "medium": one TF32 product, about 1e-3 relative, like torch's own TF32 matmuls.
DOT_PRECISION = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}
#: Machine epsilon of the products for each precision (float32 inputs): float32's 23 mantissa
#: bits, TF32's 10, and about 21 for a TF32 high part plus a TF32 low part.
DOT_EPS = {"ieee": 2.0**-23, "tf32x3": 2.0**-21, "tf32": 2.0**-10}


def dot_precision(dtype: torch.dtype) -> str:
    """The tl.dot input precision for tiles of ``dtype``: float64 always exact ("ieee"); float32
    as ``torch.set_float32_matmul_precision`` says (see DOT_PRECISION)."""
    if dtype == torch.float64:
        return "ieee"
    return DOT_PRECISION[torch.get_float32_matmul_precision()]


def snap_tol(dtype: torch.dtype, dot: str) -> float:
    """r² = |q|² + |s|² − 2 q·s below this fraction of |q|² + |s|² is round-off: snapped to 0."""
    return 8.0 * (torch.finfo(torch.float64).eps if dtype == torch.float64 else DOT_EPS[dot])


#: The block shape that every kernel fits in sm_90's shared memory (232 448 bytes a block) up to
#: D = MAX_D in float64: at most 229 376 bytes, compiled ahead of time for sm_90 with Triton 3.6 and
#: 3.9 (tests/test_triton_compile.py). The tuned shapes need up to 983 040 bytes in float64 at D = 130.
SMALL = (16, 16, 2, 1)
TUNED = [(32, 32, 4, 2), PINNED, (128, 64, 8, 2), (64, 128, 8, 3), (128, 128, 8, 2)]


def configs():
    """Block shapes to autotune over (one small shape under the interpreter, where tuning is moot;
    one pinned shape when GPFLOW_TRITON_AUTOTUNE=0), then SMALL, which ``prune`` keeps only where
    the others may not fit in shared memory."""
    if INTERPRET:
        return [triton.Config({"BN": 16, "BM": 16}, num_warps=1)]
    shapes = (TUNED if AUTOTUNE else [PINNED]) + [SMALL]
    return [triton.Config({"BN": bn, "BM": bm}, num_warps=w, num_stages=s) for bn, bm, w, s in shapes]


def shared_bound(bn: int, bm: int, stages: int, bd: int, elem: int) -> int:
    """A bound (bytes) on the shared memory of every kernel here for one block shape: stages + 3
    feature tiles of max(BN, BM) × BD plus three BN × BM tiles (layout conversions), ``elem`` bytes an
    element. ``prune`` trusts it only when it is within the GPU's limit, and there it holds: checked
    against the sm_90 compiles of every kernel with Triton 3.6 (424 compiles, at most 0.955 of the
    bound) and 3.9 (tests/test_triton_compile.py). Far over the limit, Triton 3.9 can exceed it
    (float64, D = 130, 64×128 blocks: 1.04×), which is harmless: such a shape is never trusted."""
    return ((stages + 3) * max(bn, bm) * bd + 3 * bn * bm) * elem


@functools.lru_cache(maxsize=None)
def shared_limit(device_index: int) -> int:
    """Shared memory a block may use on this GPU (bytes), as Triton checks it at launch."""
    return int(triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"])


def prune(configs, named_args, **kwargs):
    """The autotuner's early_config_prune: the shapes to try for one launch. Tuning keeps every tuned
    shape (the autotuner skips those that do not compile within the GPU's shared memory) and adds
    SMALL unless one of them surely fits; with one pinned shape, SMALL replaces it unless it surely
    fits. Without this a float64 launch at D = 130 took a shape needing 983 040 bytes and died with
    Triton's OutOfResources (H200, 2026-11-25)."""
    *shapes, small = configs
    q = named_args["q_ptr"]
    limit = shared_limit(q.device.index or 0)  # a CUDA tensor's device always has its index
    fits = [c for c in shapes if shared_bound(c.kwargs["BN"], c.kwargs["BM"], c.num_stages, kwargs["BD"], q.element_size()) <= limit]
    if AUTOTUNE:
        return shapes if fits else shapes + [small]
    return fits[:1] or [small]


def autotune(*variant: str, sizes=("N", "M")):
    """triton.autotune over ``configs()`` with ``prune``, tuned once per sizes, dtype and the
    constexprs named in ``variant`` (those that change the tiles: a shape tuned at D = 64 does not
    carry over to D = 130)."""
    return triton.autotune(configs=configs(), key=[*sizes, *variant], prune_configs_by={"early_config_prune": prune},
                           do_bench=_bench)


def _bench(kernel_call, quantiles):
    """The autotuner's timer: Triton's do_bench when tuning; with one pinned shape, one call (the
    autotuner still "times" the single shape that ``prune`` leaves; nothing to choose between)."""
    if not AUTOTUNE:
        kernel_call()
        return [0.0 for _ in quantiles]
    return triton.testing.do_bench(kernel_call, quantiles=quantiles)


@triton.jit
def profile(u, KIND: tl.constexpr, pc, ph, peps2):
    """(φ, φ', φ'') of the radial profile at u = r²/σ² (see gpflow_kernels.kernels)."""
    zero = tl.zeros_like(u)
    if KIND == 0:
        phi = tl.exp2(u * (-0.5 * 1.4426950408889634))
        d1 = -0.5 * phi
        d2 = 0.25 * phi
    elif KIND == 1:
        w = 1.0 / tl.sqrt(1.0 + u)
        phi = w
        d1 = -0.5 * w * w * w
        d2 = 0.75 * w * w * w * w * w
    elif KIND == 2:
        pos = u > 0
        us = tl.where(pos, u, 1.0)
        ss = tl.sqrt(us)
        e = tl.exp(-ss)
        phi = tl.where(pos, e, 1.0)
        d1 = tl.where(pos, -e / (2.0 * ss), zero)
        d2 = tl.where(pos, e * (1.0 / (4.0 * us) + 1.0 / (4.0 * us * ss)), zero)
    elif KIND == 3:
        pos = u > 0
        us = tl.where(pos, u, 1.0)
        ss = tl.sqrt(us)
        phi = tl.where(pos, -ss, zero)
        d1 = tl.where(pos, -0.5 / ss, zero)
        d2 = tl.where(pos, 0.25 / (us * ss), zero)
    elif KIND == 4:
        w = u + peps2
        pos = w > 0
        lw = tl.log(tl.where(pos, w, 1.0))
        phi = tl.where(pos, pc * tl.exp(ph * lw), zero)
        d1 = tl.where(pos, pc * ph * tl.exp((ph - 1.0) * lw), zero)
        d2 = tl.where(pos, pc * ph * (ph - 1.0) * tl.exp((ph - 2.0) * lw), zero)
    else:
        w = u + peps2
        pos = w > 0
        lw = tl.log(tl.where(pos, w, 1.0))
        phi = tl.where(pos, 0.5 * pc * tl.exp(ph * lw) * lw, zero)
        d1 = tl.where(pos, 0.5 * pc * tl.exp((ph - 1.0) * lw) * (ph * lw + 1.0), zero)
        d2 = tl.where(pos, 0.5 * pc * tl.exp((ph - 2.0) * lw) * (ph * (ph - 1.0) * lw + 2.0 * ph - 1.0), zero)
    return phi, d1, d2


@triton.jit
def radial(r2, inv_ptr, K, KIND: tl.constexpr, pc, ph, peps2):
    """Σ over the K bandwidths of (k, dk/dr², d²k/d(r²)²); inv_ptr holds 1/σ² for this batch."""
    k0 = tl.zeros_like(r2)
    k1 = tl.zeros_like(r2)
    k2 = tl.zeros_like(r2)
    for kb in range(K):
        inv = tl.load(inv_ptr + kb)
        phi, d1, d2 = profile(r2 * inv, KIND, pc, ph, peps2)
        k0 += phi
        k1 += d1 * inv
        k2 += d2 * inv * inv
    return k0, k1, k2


@triton.jit
def sqdist(q_ptr, s_ptr, rows, cols, rmask, cmask, qt, st, tol, D: tl.constexpr, EXACT: tl.constexpr, DOT: tl.constexpr):
    """r² tile (BN, BM): exact differences column by column, or |q|² + |s|² − 2 q·s (snapped to 0
    below round-off) from the (BN, BD) and (BM, BD) tiles already loaded."""
    if EXACT:
        r2 = tl.zeros((rows.shape[0], cols.shape[0]), dtype=qt.dtype)
        for d in tl.static_range(D):
            qd = tl.load(q_ptr + rows * D + d, mask=rmask, other=0.0)
            sd = tl.load(s_ptr + cols * D + d, mask=cmask, other=0.0)
            diff = qd[:, None] - sd[None, :]
            r2 += diff * diff
    else:
        qq = tl.sum(qt * qt, 1)
        ss = tl.sum(st * st, 1)
        base = qq[:, None] + ss[None, :]
        r2 = base - 2.0 * tl.dot(qt, tl.trans(st), input_precision=DOT)
        r2 = tl.where(r2 <= tol * base, 0.0, r2)
    return r2


@triton.jit
def dot_diff(q_ptr, s_ptr, g_ptr, rows, cols, rmask, cmask, qt, st, gt, D: tl.constexpr, EXACT: tl.constexpr, G_ON_ROWS: tl.constexpr,
             DOT: tl.constexpr):
    """(q_i − s_j)·g with g attached to the rows (g_i) or to the columns (g_j): (BN, BM)."""
    if EXACT:
        out = tl.zeros((rows.shape[0], cols.shape[0]), dtype=qt.dtype)
        for d in tl.static_range(D):
            qd = tl.load(q_ptr + rows * D + d, mask=rmask, other=0.0)
            sd = tl.load(s_ptr + cols * D + d, mask=cmask, other=0.0)
            if G_ON_ROWS:
                gd = tl.load(g_ptr + rows * D + d, mask=rmask, other=0.0)
                out += (qd[:, None] - sd[None, :]) * gd[:, None]
            else:
                gd = tl.load(g_ptr + cols * D + d, mask=cmask, other=0.0)
                out += (qd[:, None] - sd[None, :]) * gd[None, :]
    else:
        if G_ON_ROWS:
            out = tl.sum(qt * gt, 1)[:, None] - tl.dot(gt, tl.trans(st), input_precision=DOT)
        else:
            out = tl.dot(qt, tl.trans(gt), input_precision=DOT) - tl.sum(st * gt, 1)[None, :]
    return out


@triton.jit
def diff_sums(W, q_ptr, s_ptr, rows, cols, rmask, cmask, D: tl.constexpr, BD: tl.constexpr):
    """Σ_j W_ij (q_i − s_j): (BN, BD), from the coordinate differences (the exact-difference range,
    D <= EXACT_MAX_D). As q_i Σ_j W_ij − W @ s a heavy close pair (a particle's own term, a near
    duplicate at a small bandwidth) rounds at |W| |q| and wipes out the other terms of its row."""
    c = tl.arange(0, BD)[None, :]
    out = tl.zeros((rows.shape[0], BD), dtype=W.dtype)
    for d in tl.static_range(D):
        qd = tl.load(q_ptr + rows * D + d, mask=rmask, other=0.0).to(W.dtype)
        sd = tl.load(s_ptr + cols * D + d, mask=cmask, other=0.0).to(W.dtype)
        out = tl.where(c == d, tl.sum(W * (qd[:, None] - sd[None, :]), 1)[:, None], out)
    return out


#: Above EXACT_MAX_D, pairs with r² < NEAR·(|q|² + |s|²) by the expansion are close (as
#: reference.NEAR): their r², their (q − s)·g and their terms of Σ_j W_ij (q_i − s_j) are taken from
#: the differences of the uncentred points, and they leave the tile's matrix products.
NEAR = 1.0 / 16.0


@triton.jit
def any_true(mask):
    """Whether any entry of a 2-D boolean tile is set (a scalar for a runtime ``if``)."""
    return tl.max(tl.max(mask.to(tl.int32), 1), 0) > 0


@triton.jit
def close_pairs(q0_ptr, s0_ptr, rows, cols, rmask, cmask, qq, ss, r2, D: tl.constexpr):
    """(r², near) for a tile whose r² came from the expansion |q|² + |s|² − 2 q·s (qq, ss: the
    squared norms of its rows and columns): ``near`` marks the close pairs, whose r² is recomputed
    from the uncentred points (q0, s0: row-major (·, D)). A tile without close pairs costs one
    comparison per pair."""
    base = qq[:, None] + ss[None, :]
    near = (r2 < NEAR * base) & rmask[:, None] & cmask[None, :]
    if any_true(near):
        ex = tl.zeros_like(r2)
        for d in range(D):
            diff = (tl.load(q0_ptr + rows * D + d, mask=rmask, other=0.0)[:, None]
                    - tl.load(s0_ptr + cols * D + d, mask=cmask, other=0.0)[None, :])
            ex += diff * diff
        r2 = tl.where(near, ex, r2)
    return r2, near


@triton.jit
def close_dot_diff(q0_ptr, s0_ptr, g_ptr, rows, cols, rmask, cmask, near, dg, D: tl.constexpr, G_ON_ROWS: tl.constexpr):
    """``dg`` (the tile of (q_i − s_j)·g from dot_diff) with the close pairs' entries recomputed
    from the differences of the uncentred points."""
    if any_true(near):
        ex = tl.zeros_like(dg)
        for d in range(D):
            diff = (tl.load(q0_ptr + rows * D + d, mask=rmask, other=0.0)[:, None]
                    - tl.load(s0_ptr + cols * D + d, mask=cmask, other=0.0)[None, :])
            if G_ON_ROWS:
                ex += diff * tl.load(g_ptr + rows * D + d, mask=rmask, other=0.0)[:, None]
            else:
                ex += diff * tl.load(g_ptr + cols * D + d, mask=cmask, other=0.0)[None, :]
        dg = tl.where(near, ex, dg)
    return dg


@triton.jit
def close_diff_sums(W, q0_ptr, s0_ptr, rows, cols, rmask, cmask, near, D: tl.constexpr, BD: tl.constexpr):
    """Σ_j W_ij (q_i − s_j) over the close pairs of the tile only: (BN, BD), from the uncentred points,
    one column j at a time (a close pair's weight can be large next to the others', and as
    q_i Σ W − W @ s its rounding would scale with |W| |q| instead of |W| |q − s|)."""
    out = tl.zeros((rows.shape[0], BD), dtype=W.dtype)
    if any_true(near):
        c = tl.arange(0, BD)
        j = tl.arange(0, cols.shape[0])
        Wn = tl.where(near, W, 0.0)
        q0 = tl.load(q0_ptr + rows[:, None] * D + c[None, :], mask=rmask[:, None] & (c[None, :] < D), other=0.0).to(W.dtype)
        j0 = tl.min(cols, 0)
        last = tl.max(tl.where(cmask, cols, j0), 0)  # the tile's last real column
        for jj in range(cols.shape[0]):
            w = tl.sum(tl.where(j[None, :] == jj, Wn, 0.0), 1)
            # past the last real column w is 0: any real row may be read there
            srow = tl.load(s0_ptr + tl.minimum(j0 + jj, last) * D + c, mask=c < D, other=0.0).to(W.dtype)
            out += w[:, None] * (q0 - srow[None, :])
    return out


@triton.jit
def split_diff_sums(W, q_ptr, s_ptr, q0_ptr, s0_ptr, rows, cols, rmask, cmask, st, near, D: tl.constexpr, BD: tl.constexpr,
                    EXACT: tl.constexpr, DOT: tl.constexpr):
    """One tile's Σ_j W_ij (q_i − s_j) in pieces (ex, wsum, ws), the sum being ex + q_i·wsum − ws: in the
    exact range ex from every pair's coordinate differences (diff_sums) and wsum = ws = 0; above it
    ex over the close pairs, from the uncentred points (close_diff_sums), wsum = Σ_far W and
    ws = W_far @ s over the others."""
    if EXACT:
        ex = diff_sums(W, q_ptr, s_ptr, rows, cols, rmask, cmask, D, BD)
        wsum = tl.zeros((rows.shape[0],), dtype=W.dtype)
        ws = tl.zeros((rows.shape[0], BD), dtype=W.dtype)
    else:
        ex = close_diff_sums(W, q0_ptr, s0_ptr, rows, cols, rmask, cmask, near, D, BD)
        Wf = tl.where(near, 0.0, W)
        wsum = tl.sum(Wf, 1)
        ws = tl.dot(Wf, st, input_precision=DOT)
    return ex, wsum, ws


#: How a kernel forms its per-row tile sums Σ_j w_ij [s_j, 1] (the SUMS constexpr; see sums_mode).
SUMS_REDUCE, SUMS_ONES, SUMS_DEFER = 0, 1, 2


def sums_mode(D: int, BD: int, dtype: torch.dtype, dot: str) -> int:
    """How the mmd_field and KDE forward kernels sum over a tile (sm_90 PTX per pair, mmd_field, D = 2;
    benchmarks/ptx_count.py):

    SUMS_REDUCE: tl.sum(w) and a tl.dot against the s tile padded to BD ≥ 16 columns: 33 float32
    ops and 6 warp shuffles per pair against one exp2, which the SFU issues at 1/8 of the FMA rate.
    SUMS_ONES: the same dot with a column of ones in the padding (needs D < BD): 26 ops, no shuffles.
    SUMS_DEFER (D ≤ 3, float32 CUDA-core dots): D + 1 register accumulators of the tile's shape,
    about one FMA per pair and coordinate, reduced across threads once per row block: 14 ops. In
    the exact-difference range (D ≤ EXACT_MAX_D) mmd_field's sums are now formed from the
    differences (diff_sums; the numerical-trust fix): 15 ops deferred, 24.5 for both other modes
    (benchmarks/ptx_count.py, 2026-12-02). In
    the KDE forward, an online softmax per register slot, merged once per row: 15 ops (36.6 with
    SUMS_REDUCE, whose per-tile row maximum also costs 12 shuffles per pair).
    """
    if D <= 3 and dtype == torch.float32 and dot == "ieee":
        return SUMS_DEFER
    return SUMS_ONES if D < BD else SUMS_REDUCE


@triton.jit
def slot_tiles(BN: tl.constexpr, BM: tl.constexpr, ACC: tl.constexpr):
    """Four (BN, BM) zero tiles: per-slot partial sums for up to four coordinates or value columns
    (SUMS_DEFER; those a kernel never updates are folded away)."""
    z = tl.zeros((BN, BM), dtype=ACC)
    return z, z, z, z


@triton.jit
def coordinate_sums(tile, a1, a2, a3, a4, w, D: tl.constexpr, BD: tl.constexpr):
    """``tile`` (BN, BD) with its columns 0 … D − 1 (D ≤ 4) set to the row sums of a1·w … a4·w."""
    c = tl.arange(0, BD)[None, :]
    out = tl.where(c == 0, tl.sum(a1 * w, 1)[:, None], tile)
    if D > 1:
        out = tl.where(c == 1, tl.sum(a2 * w, 1)[:, None], out)
    if D > 2:
        out = tl.where(c == 2, tl.sum(a3 * w, 1)[:, None], out)
    if D > 3:
        out = tl.where(c == 3, tl.sum(a4 * w, 1)[:, None], out)
    return out


@triton.jit
def with_ones(tile, col: tl.constexpr, BW: tl.constexpr):
    """The (·, BW) tile with its padding column ``col`` set to 1, so that W @ tile also carries the
    row sums of W in that column (flash attention's Σ_j w_ij [y_j, 1]): a reduction across
    threads per tile saved, for a column the padded dot computes anyway."""
    c = tl.arange(0, BW)
    return tl.where(c[None, :] == col, 1.0, tile)


@triton.jit
def column(tile, col: tl.constexpr, BW: tl.constexpr):
    """Column ``col`` of a (BN, BW) tile: (BN,)."""
    c = tl.arange(0, BW)
    return tl.sum(tl.where(c[None, :] == col, tile, 0.0), 1)


@triton.jit
def load_rows(ptr, idx, imask, width, BW: tl.constexpr):
    """A (len(idx), BW) tile of a row-major (·, width) array, zero outside."""
    c = tl.arange(0, BW)
    return tl.load(ptr + idx[:, None] * width + c[None, :], mask=imask[:, None] & (c[None, :] < width), other=0.0)


@triton.jit
def load_block(ptr, start, n, width, BW: tl.constexpr, BLOCK: tl.constexpr):
    """Rows start … start + BLOCK − 1 of a row-major (n, width) array: (indices, in-range mask, tile)."""
    idx = start + tl.arange(0, BLOCK)
    mask = idx < n
    return idx, mask, load_rows(ptr, idx, mask, width, BW)


@triton.jit
def store_rows(ptr, idx, imask, width, val, BW: tl.constexpr):
    c = tl.arange(0, BW)
    tl.store(ptr + idx[:, None] * width + c[None, :], val, mask=imask[:, None] & (c[None, :] < width))
