"""CUDA backend: loads the csrc/ extension (gpflow_kernels._cuda_ext) and wraps its kernels in
the primitive contract of gpflow_kernels.reference.

The extension implements the forward reductions (kernel integral, gradient sum, Gaussian soft
assignment) for D <= 8 with exact differences, one x row per thread. The pair sums take the
points uncentred and form r² and the field Σ_j w_ij (x_i − y_j) from each pair's difference (as
the reference's exact range does: no cancellation between x_i Σ w and Σ w y); the soft assignment
takes them centred on y's mean and adds the mean back to μ. Backward passes run on the
fused Triton kernels where triton imports (integral and gradient sum), else on the tiled torch
reference; the soft assignment's backward always uses the reference, whose log-sum-exp
convention for D <= 8 (natural log of −r²/(2σ²)) the CUDA forward matches.
"""

from __future__ import annotations

import torch

from . import reference
from .kernels import fused_code

try:
    from . import _cuda_ext
    IMPORT_ERROR = None
except ImportError as e:  # not built (no nvcc at install time) or not loadable
    _cuda_ext = None
    IMPORT_ERROR = e

MAX_D = reference.EXACT_MAX_D  # the extension's MAXD; equal by construction (see module doc)
MAX_P = 16


def available() -> bool:
    return _cuda_ext is not None


def _launch_args(kernel, x, s2):
    kind, pc, ph, peps2 = fused_code(kernel)
    inv = (1.0 / s2).contiguous()
    inv_bs = inv.shape[1] if inv.shape[0] > 1 else 0
    dtype = 1 if x.dtype == torch.float64 else 0
    stream = torch.cuda.current_stream(x.device).cuda_stream
    return inv, inv_bs, kind, pc, ph, peps2, dtype, stream


def integral(kernel, x, y, v, s2):
    x, y = x.contiguous(), y.contiguous()
    B, N, D = x.shape
    M = y.shape[1]
    P = 1 if v is None else v.shape[-1]
    inv, inv_bs, kind, pc, ph, peps2, dtype, stream = _launch_args(kernel, x, s2)
    out = x.new_empty(B, N, P)
    v = None if v is None else v.contiguous()
    _cuda_ext.integral(x.data_ptr(), y.data_ptr(), 0 if v is None else v.data_ptr(), inv.data_ptr(), out.data_ptr(),
                       B, N, M, D, P, inv.shape[1], inv_bs, kind, pc, ph, peps2, dtype, stream)
    return out


def grad_sum(kernel, x, y, a, s2):
    x, y = x.contiguous(), y.contiguous()
    B, N, D = x.shape
    M = y.shape[1]
    inv, inv_bs, kind, pc, ph, peps2, dtype, stream = _launch_args(kernel, x, s2)
    out = torch.empty_like(x)
    a = None if a is None else a.contiguous()
    _cuda_ext.grad_sum(x.data_ptr(), y.data_ptr(), 0 if a is None else a.data_ptr(), inv.data_ptr(), out.data_ptr(),
                       B, N, M, D, inv.shape[1], inv_bs, kind, pc, ph, peps2, dtype, stream)
    return out


def softmax_mean(x, y, s2):
    xc, yc, shift = reference.centred(x, y)
    B, N, D = xc.shape
    M = yc.shape[1]
    inv = (1.0 / s2).reshape(-1).contiguous()
    mu = torch.empty_like(xc)
    lse = xc.new_empty(B, N)
    _cuda_ext.softmax_mean(xc.data_ptr(), yc.data_ptr(), inv.data_ptr(), mu.data_ptr(), lse.data_ptr(), B, N, M, D,
                           1 if inv.numel() > 1 else 0, 1 if x.dtype == torch.float64 else 0,
                           torch.cuda.current_stream(x.device).cuda_stream)
    return mu + shift, lse


def _pair_backward():
    try:
        from . import _triton

        return _triton
    except ImportError:
        return reference


def integral_backward(*args):
    return _pair_backward().integral_backward(*args)


def grad_sum_backward(*args):
    return _pair_backward().grad_sum_backward(*args)


softmax_mean_backward = reference.softmax_mean_backward
# The extension's lse is the reference's convention (exact logits, natural log; D <= 8 only).
LSE_UNIT = reference.LSE_UNIT
