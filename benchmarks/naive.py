"""The naive dense torch versions the benchmarks compare against: cdist, exp, autograd."""

import torch


def gauss(x, y, sigma):
    return torch.exp(-torch.cdist(x, y) ** 2 / (2 * sigma**2))


def mmd_field(x, y, sigma):
    """∇h by autograd through the dense kernel matrices."""
    z = x.detach().requires_grad_(True)
    h = gauss(z, y, sigma).mean(-1) - gauss(z, x.detach(), sigma).mean(-1)
    (g,) = torch.autograd.grad(h.sum(), z)
    return g


def mmd2_with_grad(x, y, sigma):
    x = x.detach().requires_grad_(True)
    val = gauss(x, x, sigma).mean() + gauss(y, y, sigma).mean() - 2 * gauss(x, y, sigma).mean()
    (g,) = torch.autograd.grad(val, x)
    return val, g


def kernel_integral(x, y, v, sigma):
    return gauss(x, y, sigma) @ v


def kde_score(x, y, sigma):
    p = torch.softmax(-torch.cdist(x, y) ** 2 / (2 * sigma**2), dim=-1)
    return (p @ y - x) / sigma**2


def svgd_field(x, score, sigma):
    z = x.detach().requires_grad_(True)
    K = gauss(z, x.detach(), sigma)
    (rep,) = torch.autograd.grad(K.sum(), z)  # Σ_j ∇_{x_i} k(x_i, x_j)
    return (K.detach() @ score - rep) / x.shape[0]
