"""NTK smoothing: how a generator update moves its particles (Franceschi et al. 2023, Int-PMs).

A gradient step θ ← θ + η J(z)ᵀ f on the generator g_θ moves its outputs by η J(z) J(z)ᵀ f to
first order, where J = ∂g(z)/∂θ. The field f on the particles is thus smoothed by the matrix NTK
k_θ(z_i, z_j) = J(z_i) J(z_j)ᵀ. ``ntk_smooth`` applies it with one vector-Jacobian product and one
Jacobian-vector product, never forming J.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp

from . import _checks

Tensor = torch.Tensor


def _params(generator: nn.Module, params: Optional[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
    if params is None:
        params = {k: p.detach() for k, p in generator.named_parameters() if p.requires_grad}
    else:
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict name -> tensor, got {type(params).__name__}")
        known = dict(generator.named_parameters())
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"params names {unknown} are not parameters of the generator")
        params = {k: p.detach() for k, p in params.items()}
    if not params:
        raise ValueError("the generator has no trainable parameters to take the NTK over")
    return params


def _check_modes(generator: nn.Module) -> None:
    """BatchNorm in training mode normalises with the batch's statistics and updates its running
    ones in place on each of the two passes (torch.func refuses the in-place update with a raw
    message): ask for eval mode instead."""
    for name, m in generator.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training:
            raise ValueError(
                f"ntk_smooth: the generator's {type(m).__name__} {name or '(the generator itself)'!r} is in training mode "
                "(batch statistics, running statistics updated on every pass); call generator.eval() first, "
                "or take the NTK of a copy in eval mode"
            )


def _rng_devices(p: Dict[str, Tensor]):
    return sorted({t.device for t in p.values() if t.device.type == "cuda"}, key=str)


def _fn(generator: nn.Module, z: Tensor):
    buffers = dict(generator.named_buffers())

    def f(p):
        return functional_call(generator, (p, buffers), (z,))

    return f


def ntk_smooth(generator: nn.Module, z: Tensor, field: Tensor, *, params: Optional[Dict[str, Tensor]] = None,
               reduction: str = "mean") -> Tensor:
    """How one generator step along ``field`` moves the particles: J(z) J(z)ᵀ field / N (or without / N).

    J is the Jacobian of g(z) w.r.t. the generator's parameters. A generator trained by the loss
    L(θ) = −mean_i field_i · g(z_i) (the usual mean over the batch, as the methods here write it)
    takes the step θ ← θ + η Jᵀ field / N, which moves particle i by η [J Jᵀ field]_i / N to first
    order in η (Franceschi et al. 2023: dg(z) = η E_z'[k_θ(z, z') ∇h(g(z'))] dt, the expectation
    being this mean). ``reduction="mean"`` returns that motion per unit η; ``"sum"`` is the motion
    under the summed loss −Σ_i field_i · g(z_i), i.e. J Jᵀ field (N times larger).

    Args:
        generator: module mapping z: (N, ...) to particles g(z): (N, ...).
        z: latent batch. field: tensor shaped like g(z) (e.g. ``mmd_field`` at g(z)).
        params: optional subset {name: tensor} of the parameters to take the NTK over (the rest are
            held fixed); default all parameters that require grad.
        reduction: "mean" (default) or "sum", the reduction of the generator loss over the batch.
    Returns:
        A tensor shaped like g(z). Not differentiable (inputs are detached).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}')
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not isinstance(field, torch.Tensor):
        raise TypeError(f"field must be a torch.Tensor, got {type(field).__name__}")
    p = _params(generator, params)
    devices = {t.device for t in p.values()}
    if z.device not in devices or field.device not in devices:
        raise ValueError(f"z ({_checks.describe(z)}) and field ({_checks.describe(field)}) must be on the device of "
                         f"the generator's parameters ({', '.join(map(str, sorted(devices, key=str)))})")
    _checks.finite("z", z)
    _check_modes(generator)
    f = _fn(generator, z.detach())
    # The two passes (vjp, then jvp) must see one network: with Dropout in training mode, the same
    # masks. Both start from the same random state; afterwards the state is where one forward
    # pass of the generator leaves it.
    cuda = _rng_devices(p)
    cpu_state = torch.get_rng_state()
    cuda_states = [torch.cuda.get_rng_state(d) for d in cuda]
    out, pullback = vjp(f, p)
    if field.shape != out.shape:
        raise ValueError(f"field must be shaped like the generator output {tuple(out.shape)}, got {_checks.describe(field)}")
    if field.dtype != out.dtype or field.device != out.device:
        raise TypeError(f"field must match the generator output's dtype/device ({out.dtype}, {out.device}), got {_checks.describe(field)}")
    _checks.finite("field", field)
    (tangent,) = pullback(field.detach())
    torch.set_rng_state(cpu_state)
    for d, st in zip(cuda, cuda_states):
        torch.cuda.set_rng_state(st, d)
    _, moved = jvp(f, (p,), (tangent,))
    return moved / out.shape[0] if reduction == "mean" else moved


def empirical_ntk(generator: nn.Module, z1: Tensor, z2: Tensor, *, params: Optional[Dict[str, Tensor]] = None) -> Tensor:
    """The explicit matrix NTK Θ[i, j] = J(z1_i) J(z2_j)ᵀ: shape (N1, N2, O, O), O = numel of one output.

    Materialises the Jacobians: for small generators and batches (tests, plots).
    """
    p = _params(generator, params)

    def flat_jac(z):
        jac = jacrev(_fn(generator, z.detach()))(p)
        n = z.shape[0]
        # jac[name]: (N, *out, *param_shape) -> (N, O, numel(param)), concatenated over params.
        return torch.cat([j.reshape(n, -1, p[name].numel()) for name, j in jac.items()], dim=-1)

    j1, j2 = flat_jac(z1), flat_jac(z2)
    if j1.shape[1] != j2.shape[1]:
        raise ValueError(f"z1 and z2 give outputs of different sizes ({j1.shape[1]} and {j2.shape[1]} per sample)")
    return torch.einsum("iap,jbp->ijab", j1, j2)
