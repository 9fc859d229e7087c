"""DiffFlow (Zhang et al. 2023): one SDE from score-based diffusion to GAN-like flows.

    dx = [ f(x, t) + β(t) ∇log p_σ(t)(x) − (β(t) − g(t)²/2) ∇log q̃_t(x) ] dt + g(t) dW

p_σ is the data distribution smoothed at noise level σ(t), q̃_t the estimate of the current particle
(generated) law q_t that the generated score uses, and f an optional extra drift (regularisation).

When the marginals do not depend on g. By Fokker–Planck the noise g dW adds (g²/2) Δq_t =
∇·(q_t (g²/2) ∇log q_t) to ∂q_t/∂t, and the drift term +(g²/2) ∇log q̃_t adds −∇·(q_t (g²/2) ∇log q̃_t).
They cancel exactly when q̃_t = q_t, the score of the particles' own law: then
∂q/∂t = −∇·(q [f + β(∇log p_σ − ∇log q)]) whatever g is, and g (our ``mix``) slides only the
particles' path law between
- g² = 2β (mix = 1): Langevin dynamics on p_σ, the score-based-diffusion end, and
- g = 0 (mix = 0): the deterministic score-difference flow β(∇log p_σ − ∇log q), the GAN end.
With a smoothed estimate q̃_t = q_t ⋆ N(0, s² I) (``q_bandwidth`` = s in :meth:`from_samples`) a
residual −∇·(q_t (g²/2)(∇log q_t − ∇log q̃_t)) remains, so the marginals do depend on g, less so as
s → 0; a test measures both cases against the Fokker–Planck prediction on Gaussians. DiffFlow's
abstract states the invariance without this condition; we only claim what the equation shows.

Weight form. The same family written with a data-score weight w_p, a generated-score weight
0 ≤ w_q ≤ w_p and the noise that keeps the marginals (with the exact q_t, as above),

    dx = [ f + w_p ∇log p_σ − w_q ∇log q̃ ] dt + √(2 (w_p − w_q)) dW,

is :meth:`DiffFlowSDE.weighted`: w_q = 0 is the diffusion end, w_q = w_p the GAN end. In the form
above: β = w_p, g = √(2 (w_p − w_q)), mix = 1 − w_q/w_p. The names β, g and mix are ours: the
paper's text (arXiv 2307.02159) was not available to us beyond its abstract, so we make no claim
about how its β, g and λ functions map onto them.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Union

import torch


from .fields import _ops, _schedule
from .sde import SDE

Tensor = torch.Tensor
Score = Callable[[Tensor, Tensor], Tensor]  # (t, x) -> ∇log density at x


class DiffFlowSDE(SDE):
    """The DiffFlow SDE. Scores are callables (t, x) -> (..., N, D); β, g, σ numbers or functions of t.

    ``generated_score`` receives the whole particle set, so estimating ∇log q from the particles
    themselves (an interacting particle system) is allowed; see :meth:`from_samples`.
    """

    noise_type = "additive"

    def __init__(self, data_score: Score, generated_score: Score, *, beta=1.0, g=0.0,
                 extra_drift: Optional[Callable[[Tensor, Tensor], Tensor]] = None):
        super().__init__()
        for name, fn in (("data_score", data_score), ("generated_score", generated_score)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable as {name}(t, x)")
        for name, v in (("beta", beta), ("g", g)):
            if not callable(v) and not (isinstance(v, numbers.Real) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0 or a function of t, got {v!r}")
        self.data_score, self.generated_score = data_score, generated_score
        self.beta, self.g_fn, self.extra_drift = _schedule(beta), _schedule(g), extra_drift

    @classmethod
    def mixed(cls, data_score: Score, generated_score: Score, *, beta: float = 1.0, mix: float = 1.0, **kw) -> "DiffFlowSDE":
        """g² = 2 β · mix: mix = 1 is Langevin on p (diffusion), mix = 0 the noiseless GAN-like flow."""
        if not (isinstance(mix, numbers.Real) and 0 <= mix <= 1):
            raise ValueError(f"mix must be a number in [0, 1], got {mix!r}")
        b = _schedule(beta)
        return cls(data_score, generated_score, beta=b, g=lambda t: (2.0 * float(b(t)) * mix) ** 0.5, **kw)

    @classmethod
    def weighted(cls, data_score: Score, generated_score: Score, *, w_p=1.0, w_q=0.0, **kw) -> "DiffFlowSDE":
        """Drift f + w_p ∇log p − w_q ∇log q with noise √(2 (w_p − w_q)); numbers or functions of t, 0 ≤ w_q ≤ w_p."""
        for name, v in (("w_p", w_p), ("w_q", w_q)):
            if not callable(v) and not (isinstance(v, numbers.Real) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0 or a function of t, got {v!r}")
        wp, wq = _schedule(w_p), _schedule(w_q)

        def noise(t):
            a, b = float(wp(t)), float(wq(t))
            if b > a * (1 + 1e-12):
                raise ValueError(f"DiffFlow needs w_q <= w_p (the noise is sqrt(2 (w_p - w_q))), got w_p={a:.6g}, w_q={b:.6g} at t={float(t):.6g}")
            return (2.0 * max(a - b, 0.0)) ** 0.5

        return cls(data_score, generated_score, beta=wp, g=noise, **kw)

    @classmethod
    def from_samples(cls, data: Tensor, sigma: Union[float, Callable], *,
                     q_bandwidth: Union[float, Callable, None] = None, group=None, **kw) -> "DiffFlowSDE":
        """Both scores in closed form: the data's convolved with N(0, σ(t)² I), the particles' with
        N(0, s(t)² I), s = ``q_bandwidth`` (default σ(t)). A smaller s brings the generated score
        closer to the particles' own law, where the marginals do not depend on the noise (see above).
        ``group``: particles and data sharded over a torch.distributed group (the scores are then
        ``gpflow_kernels.distributed.kde_score`` over all ranks; pair with ``ShardedBrownian``)."""
        sig = _schedule(sigma)
        qsig = sig if q_bandwidth is None else _schedule(q_bandwidth)
        ops = _ops(group)
        data_score = lambda t, x: ops.kde_score(x, data, bandwidth=float(sig(t)))
        gen_score = lambda t, x: ops.kde_score(x, x.detach(), bandwidth=float(qsig(t)))
        if "mix" in kw:
            return cls.mixed(data_score, gen_score, **kw)
        if "w_p" in kw or "w_q" in kw:
            return cls.weighted(data_score, gen_score, **kw)
        return cls(data_score, gen_score, **kw)

    def probability_flow(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The deterministic counterpart, field(t, x) = f + β (∇log p_σ − ∇log q̃): the drift with
        g = 0. By the Fokker–Planck argument above it has the SDE's marginals for every g when q̃ is
        the particles' own law; with a smoothed q̃ only approximately (that residual, again)."""
        def field(t, x):
            b = float(self.beta(t))
            out = b * (self.data_score(t, x) - self.generated_score(t, x))
            return out if self.extra_drift is None else out + self.extra_drift(t, x)

        return field

    def drift(self, t, x):
        b, g = float(self.beta(t)), float(self.g_fn(t))
        out = b * self.data_score(t, x)
        w = b - 0.5 * g * g
        if w != 0.0:
            out = out - w * self.generated_score(t, x)
        if self.extra_drift is not None:
            out = out + self.extra_drift(t, x)
        return out

    def diffusion(self, t, x):
        return torch.full_like(x, float(self.g_fn(t)))
