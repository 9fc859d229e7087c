"""Radial kernels k(x, y) = Σ_b φ(|x − y|² / σ_b²) and their derivatives.

Every kernel here is radial: it depends on the points only through the squared
distance r² = |x − y|², rescaled by the bandwidth, u = r² / σ². A kernel object
returns the profile φ(u) and its first two derivatives in u; the reductions turn
them into derivatives in r² (k' = φ'(u)/σ², k'' = φ''(u)/σ⁴), which is all that
fields (∇_x k = 2 k' (x − y)) and their backward passes (2 k' I + 4 k'' d dᵀ) need.

Kernels whose gradient is singular where two points coincide (laplace, energy,
polyharmonic of low order) use the usual convention ∇k = 0 at r = 0: by symmetry
it is the only choice that makes a particle exert no force on itself.
"""

from __future__ import annotations

import math
import numbers
from typing import Tuple, Union

import torch

__all__ = [
    "Kernel",
    "Gaussian",
    "IMQ",
    "Laplace",
    "Energy",
    "Polyharmonic",
    "get_kernel",
    "KERNELS",
]

Tensor = torch.Tensor


class Kernel:
    """A radial kernel profile φ(u), u = r²/σ² ≥ 0.

    Subclasses implement :meth:`profile`. Where a derivative blows up at u = 0 it must
    return 0 there (coincident points feel no force); the reductions snap round-off-sized
    r² to exactly zero so that this also holds when distances come from matrix products.
    """

    name: str = "kernel"

    def profile(self, u: Tensor, order: int) -> Tuple[Tensor, ...]:
        """Return (φ, φ', φ'')[: order + 1] evaluated at ``u`` (any shape).

        Must not modify ``u``; the returned derivative tensors must be fresh (callers scale them
        in place).
        """
        raise NotImplementedError

    def value_at_zero(self) -> float:
        """φ(0): the diagonal of the kernel matrix, used by the unbiased MMD²."""
        return float(self.profile(torch.zeros((), dtype=torch.float64), 0)[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


#: torch.exp on the CPU leaves its vectorised path for arguments whose result underflows (below
#: about −87 in float32 and −708 in float64) and is ~25x slower there: with a small bandwidth most
#: pairs are that far apart. Arguments are therefore clamped at a floor whose exponential is still
#: a normal number, and far below anything a sum of kernel values can notice.
EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}


def exp_(t: Tensor) -> Tensor:
    """exp of a fresh tensor, in place, with arguments below ``EXP_FLOOR[dtype]`` raised to it
    (e^−80 ≈ 1.8e−35 in float32, e^−700 ≈ 1e−304 in float64, instead of smaller values or 0)."""
    floor = EXP_FLOOR.get(t.dtype)
    if floor is not None:
        t.clamp_(min=floor)
    return t.exp_()


def _safe(u: Tensor) -> Tuple[Tensor, Tensor]:
    """(u > 0 mask, u with zeros replaced by one) so singular terms never make inf·0."""
    pos = u > 0
    return pos, torch.where(pos, u, torch.ones_like(u))


class Gaussian(Kernel):
    """k = exp(−r²/(2σ²))."""

    name = "gaussian"

    def profile(self, u, order):
        phi = exp_(u * -0.5)
        if order == 0:
            return (phi,)
        if order == 1:
            return (phi, phi * -0.5)
        return (phi, phi * -0.5, phi * 0.25)


class IMQ(Kernel):
    """Inverse multiquadric k = (1 + r²/σ²)^(−1/2)."""

    name = "imq"

    def profile(self, u, order):
        w = torch.rsqrt(1.0 + u)  # (1+u)^(-1/2)
        if order == 0:
            return (w,)
        w3 = w * w * w
        if order == 1:
            return (w, -0.5 * w3)
        return (w, -0.5 * w3, 0.75 * w3 * w * w)


class Laplace(Kernel):
    """k = exp(−r/σ) with r the Euclidean distance (not the L1 distance)."""

    name = "laplace"

    def profile(self, u, order):
        phi = exp_(torch.sqrt(u).neg_())
        if order == 0:
            return (phi,)
        pos, us = _safe(u)
        ss = torch.sqrt(us)
        e = exp_(-ss)
        d1 = torch.where(pos, -e / (2.0 * ss), torch.zeros_like(u))
        if order == 1:
            return (phi, d1)
        d2 = torch.where(pos, e * (1.0 / (4.0 * us) + 1.0 / (4.0 * us * ss)), torch.zeros_like(u))
        return (phi, d1, d2)


class Energy(Kernel):
    """k = −r/σ. With σ = 1 the biased MMD² is the energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'|."""

    name = "energy"

    def profile(self, u, order):
        phi = -torch.sqrt(u)
        if order == 0:
            return (phi,)
        pos, us = _safe(u)
        ss = torch.sqrt(us)
        d1 = torch.where(pos, -0.5 / ss, torch.zeros_like(u))
        if order == 1:
            return (phi, d1)
        d2 = torch.where(pos, 0.25 / (us * ss), torch.zeros_like(u))
        return (phi, d1, d2)


class Polyharmonic(Kernel):
    """Polyharmonic radial basis function of exponent ``order`` = k, on s = sqrt(r²/σ² + eps²).

    φ = c s^k for k not an even integer, φ = c s^k log s for even integer k ≥ 0, with the sign c
    chosen so that the kernel is conditionally positive definite (c = (−1)^⌈k/2⌉ for k > 0 not
    even, c = (−1)^(k/2 + 1) for even k, c = +1 for k < 0). These are the Green's functions of the
    iterated Laplacian used for the closed-form discriminators of Poly-WGAN / Poly-LSGAN (Asokan &
    Seelamantula 2023): for a gradient penalty of order m in dimension n the exponent is k = 2m − n
    (see :meth:`from_penalty`). ``order = 1`` is the energy kernel.

    k ≤ 0 is singular at r = 0 in value as well, so it needs a softening ``eps > 0``.
    """

    name = "polyharmonic"

    def __init__(self, order: float = 1.0, eps: float = 0.0):
        if isinstance(order, bool) or not isinstance(order, numbers.Real) or not math.isfinite(order):
            raise TypeError(f"polyharmonic order must be a finite number, got {order!r}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"polyharmonic eps must be a finite number >= 0, got {eps!r}")
        if order <= 0 and eps == 0:
            raise ValueError(
                f"polyharmonic order={order} is infinite where points coincide; pass eps > 0 to soften it"
            )
        self.order = float(order)
        self.eps = float(eps)
        k = self.order
        self._even = k == round(k) and int(round(k)) % 2 == 0
        if self._even:
            self._sign = (-1.0) ** (int(round(k)) // 2 + 1)
        elif k > 0:
            self._sign = (-1.0) ** math.ceil(k / 2)
        else:
            self._sign = 1.0

    @classmethod
    def from_penalty(cls, m: int, n: int, eps: float = 0.0) -> "Polyharmonic":
        """The Poly-WGAN kernel for a gradient penalty of order ``m`` in dimension ``n`` (k = 2m − n)."""
        if not (isinstance(m, int) and isinstance(n, int)) or m < 1 or n < 1:
            raise ValueError(f"from_penalty needs integers m >= 1 and n >= 1, got m={m!r}, n={n!r}")
        return cls(order=2 * m - n, eps=eps)

    def __repr__(self) -> str:
        return f"Polyharmonic(order={self.order:g}, eps={self.eps:g})"

    def profile(self, u, order):
        c, k = self._sign, self.order
        w = u + self.eps * self.eps  # s² ; φ written in w so derivatives in u are plain
        if self.eps > 0:
            pos, ws = torch.ones_like(w, dtype=torch.bool), w
        else:
            pos, ws = _safe(w)
        zero = torch.zeros_like(w)
        if self._even:
            j = int(round(k)) // 2
            lw = torch.log(ws)
            # φ = (c/2) w^j log w, continuous with value 0 at w = 0 for j ≥ 1.
            phi = torch.where(pos, 0.5 * c * ws**j * lw, zero)
            if order == 0:
                return (phi,)
            d1 = 0.5 * c * ws ** (j - 1) * (j * lw + 1.0)
            d1 = torch.where(pos, d1, zero)
            if order == 1:
                return (phi, d1)
            d2 = 0.5 * c * ws ** (j - 2) * (j * (j - 1) * lw + 2 * j - 1)
            return (phi, d1, torch.where(pos, d2, zero))
        h = 0.5 * k
        phi = torch.where(pos, c * ws**h, zero)
        if order == 0:
            return (phi,)
        d1 = torch.where(pos, c * h * ws ** (h - 1.0), zero)
        if order == 1:
            return (phi, d1)
        d2 = torch.where(pos, c * h * (h - 1.0) * ws ** (h - 2.0), zero)
        return (phi, d1, d2)


def fused_code(kernel: Kernel) -> Tuple[int, float, float, float]:
    """(kind, c, h, eps²) describing a built-in kernel to the fused (Triton, CUDA) kernels.

    kind: 0 gaussian, 1 imq, 2 laplace, 3 energy, 4 polyharmonic c·w^h, 5 polyharmonic
    (c/2)·w^h·log w, with w = u + eps². Subclasses and custom kernels have no fused code.
    """
    if isinstance(kernel, tuple) and len(kernel) == 4:
        return kernel  # already a code (the custom operators pass kernels this way)
    simple = {Gaussian: 0, IMQ: 1, Laplace: 2, Energy: 3}
    if type(kernel) in simple:
        return simple[type(kernel)], 0.0, 0.0, 0.0
    if type(kernel) is Polyharmonic:
        if kernel._even:
            return 5, kernel._sign, float(round(kernel.order)) / 2.0, kernel.eps**2
        return 4, kernel._sign, 0.5 * kernel.order, kernel.eps**2
    raise ValueError(f"no fused kernel for {kernel!r} (a custom Kernel); use backend='torch'")


KERNELS = {
    "gaussian": Gaussian,
    "imq": IMQ,
    "laplace": Laplace,
    "energy": Energy,
    "polyharmonic": Polyharmonic,
}


def get_kernel(kernel: Union[str, Kernel]) -> Kernel:
    """Resolve a kernel name or instance; unknown names raise ``ValueError`` listing the known ones."""
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, str):
        try:
            return KERNELS[kernel.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS)} or a gpflow_kernels.kernels.Kernel"
            ) from None
    raise TypeError(f"kernel must be a string or a gpflow_kernels.kernels.Kernel, got {type(kernel).__name__}")
