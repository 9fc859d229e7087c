"""Fused CPU backend: the csrc/gpflow_cpu.cpp extension (gpflow_kernels._cpu_ext) behind the
primitive contract of gpflow_kernels.reference.

Each primitive centres x and y on the mean of y (as the reference), lays out the "inner" point set
of each pass transposed, (B, D, L padded), and calls one loop over the outer points on
``torch.get_num_threads()`` threads of torch's own OpenMP pool (the extension's libgomp.so.1 is the
copy torch loaded, which is why torch is imported first). Backward passes are a row pass (x
gradients) and a column pass (y and weight gradients), each recomputing the kernel values instead
of storing an N×M array, so extra memory stays O(N + M). The log-sum-exp of the soft assignment is in the reference's
convention (exact logits −r²/(2σ²) in every D).
"""

from __future__ import annotations

import torch

from . import reference
from .kernels import fused_code

try:
    from . import _cpu_ext
    IMPORT_ERROR = None
except ImportError as e:  # not built (no C++ compiler at install time) or not loadable
    _cpu_ext = None
    IMPORT_ERROR = e

LSE_UNIT = reference.LSE_UNIT
#: No limit on D (above reference.EXACT_MAX_D, distances come from the dot-product expansion).
MAX_D = 1 << 30


def available() -> bool:
    return _cpu_ext is not None


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _dtype(t) -> int:
    return 1 if t.dtype == torch.float64 else 0


#: Column padding of the transposed arrays and row padding of the row-major copies; equal to
#: PADQ / PADD in csrc/gpflow_cpu.cpp (whole vectors can then always be loaded).
PADQ, PADD = 32, 16


def _T(t):
    """(B, L, D) -> (B, D, L padded to PADQ) contiguous, zeros in the padding."""
    B, L, D = t.shape
    out = t.new_empty(B, D, -(-L // PADQ) * PADQ)
    out[:, :, :L] = t.transpose(1, 2)
    out[:, :, L:] = 0
    return out


def _R(t):
    """(B, L, D) -> (B, L, D padded to PADD), the row-major copy the tiled path (D > 8) reduces over."""
    B, L, D = t.shape
    if D % PADD == 0 and t.is_contiguous():
        return t  # already the layout: no copy (the extension only reads it)
    out = t.new_empty(B, L, -(-D // PADD) * PADD)
    out[:, :, :D] = t
    out[:, :, D:] = 0
    return out


def _tiled(x) -> bool:
    return x.shape[-1] > reference.EXACT_MAX_D


def _norms(t):
    """Squared norms (B, L) where the tiled path needs them (D > EXACT_MAX_D), else None."""
    return (t * t).sum(-1).contiguous() if _tiled(t) else None


def _kernel_args(kernel, s2):
    kind, pc, ph, peps2 = fused_code(kernel)
    inv = (1.0 / s2).contiguous()
    inv_bs = inv.shape[1] if inv.shape[0] > 1 else 0
    return inv, (inv.shape[1], inv_bs, kind, pc, ph, peps2)


def _pairs(kernel, x, y, s2):
    """The pair primitives' common start: x, y as the extension takes them (centred on the mean of
    y for the tiled path, D > 8; as given for the row path, whose exact differences centring would
    round, see reference._prepare), the points as given (x0, y0: the tiled path takes its close
    pairs' differences from them), the sizes (B, N, M, D) and the kernel's arguments for the
    extension (inverse bandwidths and the trailing K, inv_bs, kind, pc, ph, pe)."""
    x0, y0 = x.contiguous(), y.contiguous()
    x, y = reference.centred(x0, y0)[:2] if x.shape[-1] > reference.EXACT_MAX_D else (x0, y0)
    inv, args = _kernel_args(kernel, s2)
    return x, y, (x0, y0), (x.shape[0], x.shape[1], y.shape[1], x.shape[2]), inv, args


def _empty(*ts) -> bool:
    return any(t is not None and t.numel() == 0 for t in ts)


def _zero_grads(ts, needs):
    return tuple(torch.zeros_like(t) if (need and t is not None) else None for t, need in zip(ts, needs))


# --------------------------------------------------------------------------------------------
# Σ_j k(x_i, y_j) v_j


def integral(kernel, x, y, v, s2):
    if _empty(x, y):  # no pairs: nothing to sum (a rank's empty shard)
        return x.new_zeros(x.shape[0], x.shape[1], 1 if v is None else v.shape[-1])
    x, y, (x0, y0), (B, N, M, D), inv, (K, inv_bs, kind, pc, ph, pe) = _pairs(kernel, x, y, s2)
    P = 1 if v is None else v.shape[-1]
    tiled = _tiled(x)
    yT, yn = _T(y), _norms(y)
    vT = None if v is None or tiled else _T(v)
    vR = None if v is None or not tiled else _R(v)
    out = x.new_empty(B, N, P)
    _cpu_ext.integral(x.data_ptr(), yT.data_ptr(), _ptr(yn), _ptr(vT), _ptr(vR), inv.data_ptr(), out.data_ptr(),
                      B, N, M, D, P, K, inv_bs, kind, pc, ph, pe, _dtype(x), torch.get_num_threads(),
                      x0.data_ptr(), y0.data_ptr())
    return out


def integral_backward(kernel, x, y, v, s2, g, needs):
    if _empty(x, y):
        return _zero_grads((x, y, v), needs)
    need_x, need_y, need_v = needs
    need_v = need_v and v is not None
    x, y, (x0, y0), (B, N, M, D), inv, (K, inv_bs, kind, pc, ph, pe) = _pairs(kernel, x, y, s2)
    P = 1 if v is None else v.shape[-1]
    g = g.contiguous()
    nt = torch.get_num_threads()
    gx = gy = gv = None
    tiled = _tiled(x)
    if need_x:
        yT, yn, vT = _T(y), _norms(y), None if v is None else _T(v)
        yR = _R(y) if tiled else None
        gx = torch.empty_like(x)
        _cpu_ext.integral_bwd_x(x.data_ptr(), yT.data_ptr(), _ptr(yn), _ptr(yR), _ptr(vT), g.data_ptr(),
                                inv.data_ptr(), gx.data_ptr(), B, N, M, D, P, K, inv_bs, kind, pc, ph, pe, _dtype(x), nt,
                                x0.data_ptr(), y0.data_ptr())
    if need_y or need_v:
        xT, xn, gT = _T(x), _norms(x), _T(g)
        xR, gR = (_R(x), _R(g)) if tiled else (None, None)
        gy = torch.empty_like(y) if need_y else None
        gv = torch.empty_like(v) if need_v else None
        vc = None if v is None else v.contiguous()
        _cpu_ext.integral_bwd_y(y.data_ptr(), xT.data_ptr(), _ptr(xn), _ptr(xR), _ptr(vc), gT.data_ptr(), _ptr(gR),
                                inv.data_ptr(), _ptr(gy), _ptr(gv), B, N, M, D, P, K, inv_bs, kind, pc, ph, pe,
                                _dtype(x), nt, y0.data_ptr(), x0.data_ptr())
    return gx, gy, gv


# --------------------------------------------------------------------------------------------
# Σ_j a_j ∇_x k(x_i, y_j)


def grad_sum(kernel, x, y, a, s2):
    if _empty(x, y):
        return torch.zeros_like(x)
    x, y, (x0, y0), (B, N, M, D), inv, (K, inv_bs, kind, pc, ph, pe) = _pairs(kernel, x, y, s2)
    yT, yn, yR = _T(y), _norms(y), _R(y) if _tiled(x) else None
    a = None if a is None else a.contiguous()
    out = torch.empty_like(x)
    _cpu_ext.grad_sum(x.data_ptr(), yT.data_ptr(), _ptr(yn), _ptr(yR), _ptr(a), inv.data_ptr(), out.data_ptr(),
                      B, N, M, D, 1, K, inv_bs, kind, pc, ph, pe, _dtype(x), torch.get_num_threads(),
                      x0.data_ptr(), y0.data_ptr())
    return out


def grad_sum_backward(kernel, x, y, a, s2, g, needs):
    if _empty(x, y):
        return _zero_grads((x, y, a), needs)
    need_x, need_y, need_a = needs
    need_a = need_a and a is not None
    x, y, (x0, y0), (B, N, M, D), inv, (K, inv_bs, kind, pc, ph, pe) = _pairs(kernel, x, y, s2)
    g = g.contiguous()
    a = None if a is None else a.contiguous()
    nt = torch.get_num_threads()
    gx = gy = ga = None
    tiled = _tiled(x)
    if need_x:
        yT, yn, yR = _T(y), _norms(y), _R(y) if tiled else None
        gx = torch.empty_like(x)
        _cpu_ext.grad_sum_bwd_x(x.data_ptr(), yT.data_ptr(), _ptr(yn), _ptr(yR), _ptr(a), g.data_ptr(),
                                inv.data_ptr(), gx.data_ptr(), B, N, M, D, 1, K, inv_bs, kind, pc, ph, pe, _dtype(x), nt,
                                x0.data_ptr(), y0.data_ptr())
    if need_y or need_a:
        xT, xn, gT = _T(x), _norms(x), _T(g)
        xR, gR = (_R(x), _R(g)) if tiled else (None, None)
        xg = (x * g).sum(-1).contiguous()
        gy = torch.empty_like(y) if need_y else None
        ga = torch.empty_like(a) if need_a else None
        _cpu_ext.grad_sum_bwd_y(y.data_ptr(), xT.data_ptr(), _ptr(xn), _ptr(xR), _ptr(a), gT.data_ptr(), _ptr(gR),
                                xg.data_ptr(), inv.data_ptr(), _ptr(gy), _ptr(ga), B, N, M, D, 1, K, inv_bs, kind,
                                pc, ph, pe, _dtype(x), nt, y0.data_ptr(), x0.data_ptr())
    return gx, gy, ga


# --------------------------------------------------------------------------------------------
# Gaussian soft assignment (KDE denoiser / score)


def _inv1(s2):
    inv = (1.0 / s2).reshape(-1).contiguous()
    return inv, (1 if inv.numel() > 1 else 0)


def softmax_mean(x, y, s2):
    if _empty(x, y):
        return reference.softmax_mean(x, y, s2)
    xc, yc, shift = reference.centred(x, y)
    x0, y0 = x.contiguous(), y.contiguous()  # the close pairs' differences (tiled path)
    B, N, D = xc.shape
    M = yc.shape[1]
    inv, inv_bs = _inv1(s2)
    yT, yn, yR = _T(yc), _norms(yc), _R(yc) if _tiled(x) else None
    xn = _norms(xc)  # held here: the extension gets only its pointer
    mu = torch.empty_like(xc)
    lse = xc.new_empty(B, N)
    # both sets' squared norms from here, in every pass alike (see csrc/cpu_tiles.h, soft_logits)
    _cpu_ext.softmax(0, xc.data_ptr(), yT.data_ptr(), _ptr(yn), _ptr(yR), inv.data_ptr(), mu.data_ptr(),
                     lse.data_ptr(), 0, 0, 0, _ptr(xn), B, N, M, D, inv_bs, _dtype(x), torch.get_num_threads(),
                     x0.data_ptr(), y0.data_ptr())
    return mu + shift, lse


def softmax_mean_backward(x, y, s2, lse, mu, g, needs):
    if _empty(x, y):
        return reference.softmax_mean_backward(x, y, s2, lse, mu, g, needs)
    need_x, need_y = needs
    xc, yc, shift = reference.centred(x, y)
    x0, y0 = x.contiguous(), y.contiguous()  # the close pairs' differences (tiled path)
    B, N, D = xc.shape
    M = yc.shape[1]
    inv, inv_bs = _inv1(s2)
    g = g.contiguous()
    lse = lse.contiguous()
    gmu = (g * (mu - shift)).sum(-1).contiguous()
    tiled = _tiled(x)
    nt = torch.get_num_threads()
    xn, yn = _norms(xc), _norms(yc)
    gx = gy = None
    if need_x:
        yT, yR = _T(yc), _R(yc) if tiled else None
        gx = torch.empty_like(xc)
        muc = (mu - shift).contiguous()
        _cpu_ext.softmax(1, xc.data_ptr(), yT.data_ptr(), _ptr(yn), _ptr(yR), inv.data_ptr(), lse.data_ptr(),
                         gmu.data_ptr(), g.data_ptr(), gx.data_ptr(), muc.data_ptr(), _ptr(xn), B, N, M, D, inv_bs,
                         _dtype(x), nt,
                         x0.data_ptr(), y0.data_ptr())
    if need_y:
        xT, gT = _T(xc), _T(g)
        xR, gR = (_R(xc), _R(g)) if tiled else (None, None)
        gy = torch.empty_like(yc)
        _cpu_ext.softmax(2, yc.data_ptr(), xT.data_ptr(), _ptr(xn), _ptr(xR), inv.data_ptr(), lse.data_ptr(),
                         gmu.data_ptr(), gT.data_ptr(), _ptr(gR), gy.data_ptr(), _ptr(yn), B, N, M, D, inv_bs,
                         _dtype(x), nt,
                         y0.data_ptr(), x0.data_ptr())
    return gx, gy
