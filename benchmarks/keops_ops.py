"""KeOps versions of the Gaussian reductions, as benchmark baselines (pykeops is optional).

Each returns what the gpflow_kernels op of the same name returns, for one bandwidth σ; the
benchmarks check that agreement on their own inputs before timing anything.
"""

from pykeops.torch import LazyTensor


def _pairs(a, b):
    return LazyTensor(a[:, None, :]), LazyTensor(b[None, :, :])


def kernel_integral(x, y, v, sigma):
    """Σ_j exp(−|x_i − y_j|²/(2σ²)) v_j: (N, P)."""
    xi, yj = _pairs(x, y)
    return (-((xi - yj).sqnorm2()) / (2 * sigma**2)).exp() @ v


def mmd_field(x, y, sigma):
    """∇h(x_i) for the MMD witness h = mean_j k(·, y_j) − mean_l k(·, x_l): (N, D)."""

    def grad_sum(a, b):  # Σ_j k(a_i, b_j) (a_i − b_j)
        ai, bj = _pairs(a, b)
        d = ai - bj
        return ((-(d.sqnorm2()) / (2 * sigma**2)).exp() * d).sum(1)

    return (-grad_sum(x, y) / y.shape[0] + grad_sum(x, x) / x.shape[0]) / sigma**2


def kde_score(x, y, sigma):
    """∇log of the data convolved with N(0, σ²I) at x_i: (Σ_j softmax_j(−|x_i − y_j|²/2σ²) y_j − x_i)/σ²,
    through KeOps's max-stabilised softmax-weighted sum: (N, D)."""
    xi, yj = _pairs(x, y)
    mean = (-((xi - yj).sqnorm2()) / (2 * sigma**2)).sumsoftmaxweight(yj, axis=1)
    return (mean - x) / sigma**2


def svgd_field(x, score, sigma):
    """(1/N) Σ_j [k(x_j, x_i) score_j + ∇_{x_j} k(x_j, x_i)] with the Gaussian k: (N, D)."""
    xi, xj = _pairs(x, x)
    k = (-((xi - xj).sqnorm2()) / (2 * sigma**2)).exp()
    drive = (k * LazyTensor(score[None, :, :])).sum(1)
    repulse = (k * (xi - xj)).sum(1) / sigma**2
    return (drive + repulse) / x.shape[0]
