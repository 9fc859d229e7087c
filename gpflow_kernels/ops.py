"""Public kernel reductions: check the inputs, resolve kernel and bandwidth, dispatch.

All ops take batched point sets ``x: (..., N, D)`` and ``y: (..., M, D)`` with equal batch dims,
compute in float32 or float64 (float16/bfloat16 inputs are computed in float32 and the result
cast back), and are differentiable with analytic backward passes: autograd never sees an N×M
graph, only one node per op whose backward runs another tiled reduction. The backward passes are
not themselves differentiable (double backward raises).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Optional, Sequence, Union

import torch

from . import _bandwidth, _checks, _library, reference
from .kernels import Kernel, fused_code, get_kernel

Tensor = torch.Tensor
Bandwidth = Union[float, Sequence[float], Tensor, str]

__all__ = [
    "mmd_field",
    "mmd2",
    "kernel_integral",
    "kde_score",
    "kde_denoiser",
    "svgd_field",
    "median_bandwidth",
]


# --------------------------------------------------------------------------------------------
# dispatch


def _triton_module():
    try:
        from . import _triton
    except ImportError as e:  # triton missing or broken
        return None, e
    problem = _triton.version_problem()
    return (None, problem) if problem else (_triton, None)


def _fusable(kernel: Kernel) -> bool:
    try:
        fused_code(kernel)
    except ValueError:
        return False
    return True


def _cuda_impl(x: Tensor, kernel: Optional[Kernel]) -> ModuleType:
    from . import _cuda

    if not _cuda.available():
        raise ValueError(
            "backend='cuda' is not available: the extension gpflow_kernels._cuda_ext was not built "
            f"({_cuda.IMPORT_ERROR}); reinstall on a machine with nvcc (GPFLOW_BUILD_CUDA=1 to insist)"
        )
    if not x.is_cuda:
        raise ValueError(f"backend='cuda' needs CUDA tensors, got x on {x.device}")
    if x.shape[-1] > _cuda.MAX_D:
        raise ValueError(f"backend='cuda' takes point dimension D <= {_cuda.MAX_D}, got x with shape {tuple(x.shape)}; use backend='triton' or 'torch'")
    if kernel is not None:
        fused_code(kernel)  # ValueError for custom kernels
    return _library.primitives("cuda")


_NOTICED = []


def _notice_no_cpu_ext(err) -> None:
    """One warning per process when CPU ops fall back to the tiled path for want of the extension."""
    if not _NOTICED:
        _NOTICED.append(True)
        warnings.warn(
            f"gpflow_kernels: the fused CPU kernels are not built ({err}); CPU ops use the tiled torch path, "
            "several times slower. Reinstall where a C++ compiler with OpenMP is found.",
            RuntimeWarning,
            stacklevel=5,
        )


def _cpu_impl(backend: str, x: Tensor, kernel: Optional[Kernel]) -> ModuleType:
    """The fused CPU kernels (csrc/gpflow_cpu.cpp) for "cpu", and for "auto" on CPU tensors where
    they are built and the kernel is a built-in one; the tiled torch reference otherwise."""
    from . import _cpu

    if backend == "auto":
        if not _cpu.available():
            _notice_no_cpu_ext(_cpu.IMPORT_ERROR)
            return reference
        return _library.primitives("cpu") if (kernel is None or _fusable(kernel)) else reference
    if not _cpu.available():
        raise ValueError(
            "backend='cpu' is not available: the extension gpflow_kernels._cpu_ext was not built "
            f"({_cpu.IMPORT_ERROR}); reinstall where a C++ compiler with OpenMP is found (GPFLOW_BUILD_CPU=1 to insist)"
        )
    if x.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got x on {x.device}")
    if kernel is not None:
        fused_code(kernel)  # ValueError for custom kernels
    return _library.primitives("cpu")


def _impl(backend: str, x: Tensor, kernel: Optional[Kernel] = None) -> ModuleType:
    """The module implementing the primitive reductions for ``backend`` on x's device.

    "auto": on CPU tensors the fused C++ kernels where the extension is built and the kernel is a
    built-in one (``_cpu_impl``); on CUDA tensors the fused Triton kernels when triton (>= 3.5)
    imports and the kernel and D are supported; else the tiled torch reference. "cpu" and
    "triton" insist. A compiled backend comes wrapped in its custom operators
    (``_library.primitives``), so torch.compile sees opaque ops, never raw pointers.
    """
    _checks.backend(backend)
    if backend == "torch":
        return reference
    if backend == "cpu" or (backend == "auto" and x.device.type == "cpu"):
        return _cpu_impl(backend, x, kernel)
    if backend == "auto" and not x.is_cuda:
        return reference
    if backend == "cuda":
        return _cuda_impl(x, kernel)
    mod, err = _triton_module()
    supported = mod is not None and x.shape[-1] <= mod.MAX_D and (kernel is None or _fusable(kernel))
    if backend == "auto":  # guarded: a kernel that fails to compile or launch falls back (_fallback)
        return _library.guarded("triton") if supported else reference
    if mod is None:
        raise ValueError(f"backend='triton' needs the triton package (>= 3.5), which is not usable here: {err}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(f"backend='triton' needs CUDA tensors (x is on {x.device}); set TRITON_INTERPRET=1 to run it on the CPU for testing")
    if x.shape[-1] > mod.MAX_D:
        raise ValueError(f"backend='triton' takes point dimension D <= {mod.MAX_D}, got x with shape {tuple(x.shape)}; use backend='torch'")
    if not supported:
        raise ValueError(f"backend='triton' has no fused kernel for {kernel!r} (a custom Kernel); use backend='torch'")
    return _library.primitives("triton")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _cast_back(op: str, out: Tensor, dtype: torch.dtype, bandwidth) -> Tensor:
    """The result in the inputs' dtype. float16 (max 65504) can overflow where float32 did not, e.g. a
    KDE score ~ distance/σ² at small σ: that is an error naming the bandwidth, not an inf."""
    res = out.to(dtype)
    if dtype in (torch.float16, torch.bfloat16):
        bw = bandwidth if isinstance(bandwidth, (str, int, float)) else "the given tensor/list"
        _checks.require(torch.isfinite(res), f"{op}: the result overflows {dtype} (largest {torch.finfo(dtype).max:g}) "
                                             f"at bandwidth={bw}; use float32 inputs or a larger bandwidth")
    return res


def _flat(t: Optional[Tensor], trailing: int, dtype: torch.dtype) -> Optional[Tensor]:
    """(..., *last) -> (B, *last) contiguous in the compute dtype."""
    if t is None:
        return None
    last = tuple(t.shape[t.dim() - trailing :])
    return t.to(dtype).reshape((-1,) + last).contiguous()


# --------------------------------------------------------------------------------------------
# autograd nodes over the primitive reductions


def _first_order_only(backward):
    """Backward passes are tiled reductions, not differentiable graphs: refuse create_graph.

    (torch's once_differentiable would silently return a constant here when the incoming
    gradient does not require grad, e.g. a gradient penalty, which is worse than an error.)
    """

    def wrapped(ctx, g):
        _checks.first_order_only()
        return backward(ctx, g)

    return wrapped


def _pair_function(name: str, forward: str, backward: str):
    """An autograd node (impl, kernel, s2, x, y, w) -> impl.<forward>(kernel, x, y, w, s2).

    Its backward runs impl.<backward>, another tiled reduction, for whichever of x, y, w need it.
    """

    def fwd(ctx, impl, kernel, s2, x, y, w):
        ctx.impl, ctx.kernel = impl, kernel
        ctx.save_for_backward(s2, x, y, w)
        return getattr(impl, forward)(kernel, x, y, w, s2)

    @_first_order_only
    def bwd(ctx, g):
        s2, x, y, w = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:6]
        gx, gy, gw = getattr(ctx.impl, backward)(ctx.kernel, x, y, w, s2, g.contiguous(), needs)
        return None, None, None, gx, gy, gw

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})


#: Σ_j k(x_i, y_j) v_j and Σ_j a_j ∇_x k(x_i, y_j), with their analytic backward passes.
_Integral = _pair_function("_Integral", "integral", "integral_backward")
_GradSum = _pair_function("_GradSum", "grad_sum", "grad_sum_backward")


def _traced(impl, x) -> bool:
    """A compiled backend's call that something traces: it must go through the custom operator."""
    return _library.is_compiled(impl) and not _library.plain_eager(x)


def _direct(impl):
    return impl.module if _library.is_compiled(impl) else impl


def _distinct(x, y):
    """y, or a view of it when it is x itself: dynamo cannot trace an autograd.Function given one
    tensor twice (mmd2's k(x, x), svgd's self pairs), a view it can."""
    return y.view_as(y) if (y is x and _checks.compiling()) else y


def _integral(impl, kern, s2, x, y, w):
    """Σ_j k(x_i, y_j) w_j, differentiable: the registered custom operator (with its backward) when
    traced (torch.compile, export, a dispatch mode), else the autograd node over the backend."""
    if _traced(impl, x):
        return impl.integral(kern, x, y, w, s2)
    return _Integral.apply(_direct(impl), kern, s2, x, _distinct(x, y), w)


def _grad_sum(impl, kern, s2, x, y, a):
    """Σ_j a_j ∇_x k(x_i, y_j), differentiable (as ``_integral``)."""
    if _traced(impl, x):
        return impl.grad_sum(kern, x, y, a, s2)
    return _GradSum.apply(_direct(impl), kern, s2, x, _distinct(x, y), a)


def _softmax_mean(impl, s2, x, y):
    """The Gaussian soft assignment's mean μ, differentiable (as ``_integral``)."""
    if _traced(impl, x):
        return impl.softmax_mean(x, y, s2)[0]
    return _SoftmaxMean.apply(_direct(impl), s2, x, y)


class _SoftmaxMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, impl, s2, x, y):
        mu, lse = impl.softmax_mean(x, y, s2)
        ctx.impl = impl
        ctx.save_for_backward(s2, x, y, lse, mu)
        return mu

    @staticmethod
    @_first_order_only
    def backward(ctx, g):
        s2, x, y, lse, mu = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:4]
        gx, gy = ctx.impl.softmax_mean_backward(x, y, s2, lse, mu, g.contiguous(), needs)
        return None, None, gx, gy


# --------------------------------------------------------------------------------------------
# public ops


def median_bandwidth(x: Tensor, y: Optional[Tensor] = None) -> Tensor:
    """Median heuristic σ = median pairwise distance of the pooled points, shape ``x.shape[:-2]``.

    Uses at most 1024 points per batch element (a fixed random subset beyond that).
    """
    _checks.no_functorch("median_bandwidth")
    if y is None:
        x = _checks.points("x", x)
        pools = [x.reshape((-1,) + tuple(x.shape[-2:]))]
    else:
        x, y = _checks.point_pair("x", x, "y", y)
        pools = [t.reshape((-1,) + tuple(t.shape[-2:])) for t in (x, y)]
    s2 = _bandwidth.resolve("median", pools, _compute_dtype(x.dtype), x.device)
    return s2.sqrt().reshape(x.shape[:-2]).to(x.dtype)


def kernel_integral(
    x: Tensor,
    y: Tensor,
    v: Optional[Tensor] = None,
    *,
    kernel: Union[str, Kernel] = "gaussian",
    bandwidth: Bandwidth = 1.0,
    backend: str = "auto",
) -> Tensor:
    """Σ_j k(x_i, y_j) v_j, the KeOps-style kernel reduction.

    Args:
        x: (..., N, D) query points. y: (..., M, D) source points.
        v: (..., M, P) values at the sources, (..., M) for scalar values, or None for ones.
        kernel: a name from ``gpflow_kernels.kernels.KERNELS`` or a ``Kernel`` instance.
        bandwidth: σ > 0, a list or 1-d tensor of several σ (their kernels are summed), or "median".
    Returns:
        (..., N, P) if v is (..., M, P); (..., N) if v is (..., M) or None.
        Differentiable with respect to x, y and v.
    """
    _checks.no_functorch("kernel_integral")
    x, y = _checks.point_pair("x", x, "y", y)
    squeeze = True
    if v is not None:
        if isinstance(v, torch.Tensor) and v.dim() == y.dim():
            v = _checks.per_point("v", v, "y", y, trailing=v.shape[-1])
            squeeze = False
        else:
            v = _checks.per_point("v", v, "y", y, trailing=None)
            v = v.unsqueeze(-1)
    kern = get_kernel(kernel)
    impl = _impl(backend, x, kern)
    cd = _compute_dtype(x.dtype)
    xf, yf = _flat(x, 2, cd), _flat(y, 2, cd)
    s2 = _bandwidth.resolve(bandwidth, [xf, yf], cd, x.device)
    out = _integral(impl, kern, s2, xf, yf, _flat(v, 2, cd))
    out = out.reshape(tuple(x.shape[:-1]) + (out.shape[-1],))
    if squeeze:
        out = out.squeeze(-1)
    return _cast_back("kernel_integral", out, x.dtype, bandwidth)


def mmd_field(
    x: Tensor,
    y: Tensor,
    *,
    kernel: Union[str, Kernel] = "gaussian",
    bandwidth: Bandwidth = 1.0,
    x_ref: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """∇h at the points x, where h(z) = Σ_j w_j k(z, y_j) − mean_l k(z, x_ref_l).

    h is the MMD witness function between the data y (weighted by ``weights``, normalised to
    sum to one; uniform by default) and the particles x_ref (default: x itself). It is the
    closed-form optimal IPM discriminator of an MMD-GAN; x + η ∇h(x) moves the particles toward
    the data (Franceschi et al. 2023, "Squared MMD" row; Asokan et al. 2023). For x_ref = x,
    ∇h = −(N/2) ∇_x MMD²(x, y).

    Args:
        x: (..., N, D) where the field is evaluated. y: (..., M, D) data points.
        x_ref: (..., L, D) generated points of the witness (default x).
        weights: (..., M) non-negative weights of y with a positive sum.
    Returns:
        (..., N, D), differentiable with respect to x, y, x_ref and weights.
    """
    _checks.no_functorch("mmd_field")
    x, y = _checks.point_pair("x", x, "y", y)
    if x_ref is not None:
        _, x_ref = _checks.point_pair("x", x, "x_ref", x_ref)
    if weights is not None:
        weights = _checks.per_point("weights", weights, "y", y, trailing=None)
        _checks.require((weights >= 0).all() & (weights.sum(-1) > 0).all(),
                        "weights must be >= 0 with a positive sum over the M points of y")
    kern = get_kernel(kernel)
    impl = _impl(backend, x, kern)
    cd = _compute_dtype(x.dtype)
    xf, yf = _flat(x, 2, cd), _flat(y, 2, cd)
    rf = xf if x_ref is None else _flat(x_ref, 2, cd)
    s2 = _bandwidth.resolve(bandwidth, [xf, yf], cd, x.device)
    if weights is None:
        attract = _grad_sum(impl, kern, s2, xf, yf, None) / yf.shape[1]
    else:
        wf = _flat(weights, 1, cd)
        attract = _grad_sum(impl, kern, s2, xf, yf, wf / wf.sum(-1, keepdim=True))
    repel = _grad_sum(impl, kern, s2, xf, rf, None) / rf.shape[1]
    return _cast_back("mmd_field", (attract - repel).reshape(x.shape), x.dtype, bandwidth)


def mmd2(
    x: Tensor,
    y: Tensor,
    *,
    kernel: Union[str, Kernel] = "gaussian",
    bandwidth: Bandwidth = 1.0,
    unbiased: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Squared MMD between the samples x: (..., N, D) and y: (..., M, D); shape (...).

    Biased (V-statistic): mean k(x, x') + mean k(y, y') − 2 mean k(x, y), diagonals included.
    Unbiased (U-statistic, needs N, M >= 2): the diagonals k(x_i, x_i) are left out.
    With ``kernel="energy"`` and σ = 1 the biased value is the energy distance.
    Differentiable with respect to x and y.
    """
    _checks.no_functorch("mmd2")
    x, y = _checks.point_pair("x", x, "y", y)
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be a bool, got {type(unbiased).__name__}")
    N, M = x.shape[-2], y.shape[-2]
    if unbiased and (N < 2 or M < 2):
        raise ValueError(f"the unbiased MMD² needs at least 2 points in each set, got x {tuple(x.shape)}, y {tuple(y.shape)}")
    kern = get_kernel(kernel)
    impl = _impl(backend, x, kern)
    cd = _compute_dtype(x.dtype)
    xf, yf = _flat(x, 2, cd), _flat(y, 2, cd)
    s2 = _bandwidth.resolve(bandwidth, [xf, yf], cd, x.device)

    def total(a, b):
        return _integral(impl, kern, s2, a, b, None).sum((1, 2))

    kxx, kyy, kxy = total(xf, xf), total(yf, yf), total(xf, yf)
    if unbiased:
        k0 = kern.value_at_zero() * s2.shape[1]
        val = (kxx - N * k0) / (N * (N - 1)) + (kyy - M * k0) / (M * (M - 1)) - 2.0 * kxy / (N * M)
    else:
        val = kxx / (N * N) + kyy / (M * M) - 2.0 * kxy / (N * M)
    return _cast_back("mmd2", val.reshape(x.shape[:-2]), x.dtype, bandwidth)


def _kde_prepare(op, x, y, bandwidth, backend):
    _checks.no_functorch(op)
    x, y = _checks.point_pair("x", x, "y", y)
    _bandwidth.single(bandwidth)
    impl = _impl(backend, x)
    cd = _compute_dtype(x.dtype)
    xf, yf = _flat(x, 2, cd), _flat(y, 2, cd)
    s2 = _bandwidth.resolve(bandwidth, [xf, yf], cd, x.device)
    return x, xf, yf, s2, impl


def kde_denoiser(x: Tensor, y: Tensor, *, bandwidth: Bandwidth, backend: str = "auto") -> Tensor:
    """E[y | x] when x = y_J + σ ε with J uniform over the data and ε ~ N(0, I).

    This is the ideal denoiser of EDM (Karras et al. 2022) for the finite data set y:
    Σ_j softmax_j(−|x − y_j|²/(2σ²)) y_j, computed with an online log-sum-exp (stable for tiny σ).
    x: (..., N, D), y: (..., M, D) -> (..., N, D); differentiable with respect to x and y.
    """
    x, xf, yf, s2, impl = _kde_prepare("kde_denoiser", x, y, bandwidth, backend)
    return _cast_back("kde_denoiser", _softmax_mean(impl, s2, xf, yf).reshape(x.shape), x.dtype, bandwidth)


def kde_score(x: Tensor, y: Tensor, *, bandwidth: Bandwidth, backend: str = "auto") -> Tensor:
    """∇_x log Σ_j exp(−|x − y_j|²/(2σ²)): the exact score of the data y convolved with N(0, σ² I).

    Equals (kde_denoiser(x, y) − x) / σ² (Tweedie). x: (..., N, D), y: (..., M, D) -> (..., N, D).
    """
    x, xf, yf, s2, impl = _kde_prepare("kde_score", x, y, bandwidth, backend)
    mu = _softmax_mean(impl, s2, xf, yf)
    return _cast_back("kde_score", ((mu - xf) / s2.view(-1, 1, 1)).reshape(x.shape), x.dtype, bandwidth)


def svgd_field(
    x: Tensor,
    score: Tensor,
    *,
    kernel: Union[str, Kernel] = "gaussian",
    bandwidth: Bandwidth = "median",
    backend: str = "auto",
) -> Tensor:
    """Stein variational gradient φ(x_i) = (1/N) Σ_j [k(x_j, x_i) score_j + ∇_{x_j} k(x_j, x_i)].

    Liu & Wang (2016). ``score``: ∇log p at the particles, same shape as x: (..., N, D).
    ``bandwidth="median"`` follows Liu & Wang: σ = median distance / sqrt(2 log(N + 1)).
    Returns (..., N, D), differentiable with respect to x and score.
    """
    _checks.no_functorch("svgd_field")
    x = _checks.points("x", x)
    score = _checks.per_point("score", score, "x", x, trailing=x.shape[-1])
    kern = get_kernel(kernel)
    impl = _impl(backend, x, kern)
    cd = _compute_dtype(x.dtype)
    xf, sf = _flat(x, 2, cd), _flat(score, 2, cd)
    N = xf.shape[1]
    s2 = _bandwidth.resolve(bandwidth, [xf], cd, x.device, scale=_bandwidth.svgd_scale(N))
    drive = _integral(impl, kern, s2, xf, xf, sf)
    # ∇_{x_j} k(x_j, x_i) = −∇_{x_i} k(x_i, x_j) for a radial kernel.
    repulse = _grad_sum(impl, kern, s2, xf, xf, None)
    return _cast_back("svgd_field", ((drive - repulse) / N).reshape(x.shape), x.dtype, bandwidth)
