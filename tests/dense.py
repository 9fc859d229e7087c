"""Dense float64 numpy references, written independently of gpflow_kernels.

Kernels are evaluated from their textbook formulas on the Euclidean distance r; fields are
obtained by central finite differences of the witness function, never from the package's
derivative formulas.
"""

import numpy as np


def kernel_matrix(name, a, b, sigma, order=1.0, eps=0.0):
    """k(a_i, b_j) for one bandwidth or a list of them (summed)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    r = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    total = 0.0
    for s in np.atleast_1d(sigma):
        t = r / s
        if name == "gaussian":
            total = total + np.exp(-0.5 * t**2)
        elif name == "imq":
            total = total + 1.0 / np.sqrt(1.0 + t**2)
        elif name == "laplace":
            total = total + np.exp(-t)
        elif name == "energy":
            total = total - t
        elif name == "polyharmonic":
            u = np.sqrt(t**2 + eps**2)
            k = order
            if k == round(k) and int(round(k)) % 2 == 0:
                sign = (-1.0) ** (int(round(k)) // 2 + 1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    val = np.where(u > 0, sign * u**k * np.log(np.where(u > 0, u, 1.0)), 0.0)
            else:
                sign = (-1.0) ** np.ceil(k / 2) if k > 0 else 1.0
                val = sign * u**k
            total = total + val
        else:
            raise KeyError(name)
    return total


def witness(name, z, y, x_ref, sigma, weights=None, **kw):
    """h(z) = Σ_j w_j k(z, y_j) − mean_l k(z, x_ref_l)."""
    w = np.full(len(y), 1.0 / len(y)) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    return kernel_matrix(name, z, y, sigma, **kw) @ w - kernel_matrix(name, z, x_ref, sigma, **kw).mean(1)


def witness_gradient_fd(name, x, y, x_ref, sigma, weights=None, h=1e-6, **kw):
    """∇h at each x_i by central differences (only the i-th row moves)."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for d in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[d] = h
        out[:, d] = (witness(name, x + e, y, x_ref, sigma, weights, **kw) - witness(name, x - e, y, x_ref, sigma, weights, **kw)) / (2 * h)
    return out


def mmd2(name, x, y, sigma, unbiased=False, **kw):
    kxx = kernel_matrix(name, x, x, sigma, **kw)
    kyy = kernel_matrix(name, y, y, sigma, **kw)
    kxy = kernel_matrix(name, x, y, sigma, **kw)
    n, m = len(x), len(y)
    if unbiased:
        return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def svgd(x, score, sigma):
    """Liu & Wang's update with the Gaussian kernel, written out per pair."""
    x = np.asarray(x, np.float64)
    score = np.asarray(score, np.float64)
    n = len(x)
    out = np.zeros_like(x)
    for i in range(n):
        for j in range(n):
            k = np.exp(-np.sum((x[j] - x[i]) ** 2) / (2 * sigma**2))
            grad_xj = -k * (x[j] - x[i]) / sigma**2
            out[i] += k * score[j] + grad_xj
    return out / n


def median_distance(z):
    z = np.asarray(z, np.float64)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    return np.median(d[np.triu_indices(len(z), 1)])
