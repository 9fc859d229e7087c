"""The smaller silent wrong answers of the numerical-trust issue, each a case that failed before.

- sliced_score_matching_loss detached x: a generator feeding it got no gradient;
- denoising_score_matching_loss took a NaN ``noise=``;
- ntk_smooth drew different Dropout masks in its two passes, and failed on train-mode BatchNorm
  with a raw torch.func message;
- the soft assignment's x gradient (kde_score / kde_denoiser) lost up to 5e-2 of its value at
  σ = 1e-6 on data away from the origin (Σ_j c_ij y_j with Σ_j c_ij = 0), on both CPU backends;
- the cpu backend must agree with the torch backend at extreme float64 bandwidths.
"""

import numpy as np
import pytest
import torch

import gpflow_kernels as gk
from gpflow_kernels import _cpu

BACKENDS = ["torch"] + (["cpu"] if _cpu.available() else [])


def test_sliced_score_matching_keeps_the_graph_of_x():
    # x = θ z feeds the loss of the linear score s(x) = −x: the loss is a function of θ.
    z = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(theta):
        x = theta * z
        return gk.sliced_score_matching_loss(lambda u: -u, x, generator=torch.Generator().manual_seed(1))

    theta = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(theta), theta)
    h = 1e-6
    fd = (loss(torch.tensor(1.3 + h, dtype=torch.float64)) - loss(torch.tensor(1.3 - h, dtype=torch.float64))) / (2 * h)
    # closed form: mean(−|v|² + ½ (v·θz)²) -> d/dθ = mean(θ (v·z)²)
    closed = (1.3 * ((v[0] * z).sum(1)) ** 2).mean()
    assert float(g) == pytest.approx(float(closed), rel=1e-10)
    assert float(g) == pytest.approx(float(fd.detach()), rel=1e-6)


def test_sliced_score_matching_on_data_still_trains_the_score_only():
    x = torch.randn(8, 2)
    net = torch.nn.Linear(2, 2)
    gk.sliced_score_matching_loss(net, x).backward()
    assert net.weight.grad is not None and not x.requires_grad


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_denoising_score_matching_refuses_non_finite_noise(bad):
    x = torch.randn(4, 2)
    noise = torch.randn(4, 2)
    noise[1, 0] = float(bad)
    with pytest.raises(ValueError, match="noise contains NaN or infinite values"):
        gk.denoising_score_matching_loss(lambda u, s: -u, x, 0.5, noise=noise)


def test_denoising_score_matching_refuses_noise_of_another_dtype():
    with pytest.raises(TypeError, match="noise has dtype torch.float64 but x has dtype torch.float32"):
        gk.denoising_score_matching_loss(lambda u, s: -u, torch.randn(4, 2), 0.5,
                                         noise=torch.randn(4, 2, dtype=torch.float64))


def _explicit_ntk_motion(gen, z, field):
    """J Jᵀ field / N with one forward pass (jacrev): one Dropout mask."""
    p = {k: v.detach() for k, v in gen.named_parameters()}
    jac = torch.func.jacrev(lambda pp: torch.func.functional_call(gen, pp, (z,)))(p)
    n = field.numel()
    J = torch.cat([jac[k].reshape(n, -1) for k in p], 1)
    return (J @ (J.T @ field.reshape(-1))).reshape(field.shape) / z.shape[0]


def test_ntk_smooth_uses_one_dropout_mask_for_both_passes():
    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2)).double()
    z = torch.randn(8, 3, dtype=torch.float64)
    field = torch.randn(8, 2, dtype=torch.float64)
    torch.manual_seed(5)
    got = gk.ntk_smooth(gen, z, field)
    after = torch.rand(())
    torch.manual_seed(5)
    want = _explicit_ntk_motion(gen, z, field)
    after_one_forward = torch.rand(())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert float(after) == float(after_one_forward)  # the generator's state moved as by one forward pass


def test_ntk_smooth_refuses_train_mode_batchnorm_with_one_line():
    gen = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    z, field = torch.randn(6, 3), torch.randn(6, 2)
    with pytest.raises(ValueError, match=r"BatchNorm1d '1' is in training mode.*generator.eval\(\)"):
        gk.ntk_smooth(gen, z, field)
    gen.eval()
    assert gk.ntk_smooth(gen, z, field).shape == (6, 2)


def _soft_assignment_x_gradient(x, y, g, s):
    """d(g · μ)/dx in long double, from the well-conditioned form Σ_j c_ij (y_j − μ_i) / σ²."""
    x, y, g = (np.asarray(t.numpy(), dtype=np.longdouble) for t in (x, y, g))
    d = x[:, None, :] - y[None, :, :]
    ell = -(d * d).sum(-1) / (2 * s * s)
    p = np.exp(ell - ell.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = y[None] - (p[..., None] * y[None]).sum(1)[:, None]
    c = p * (e * g[:, None]).sum(-1)
    return torch.tensor(((c[..., None] * e).sum(1) / (s * s)).astype(np.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("sigma", [1e-6, 1e-3])
def test_kde_x_gradient_at_tiny_bandwidths_on_offset_data(backend, d, sigma):
    gen = torch.Generator().manual_seed(d)
    c = torch.randn(3, d, generator=gen, dtype=torch.float64) + 3.0
    y = (c[:, None, :] + sigma * torch.randn(3, 3, d, generator=gen, dtype=torch.float64)).reshape(9, d)
    x = c[[0, 1, 2, 0, 1, 2, 0]] + sigma * torch.randn(7, d, generator=gen, dtype=torch.float64)
    g = torch.randn(7, d, generator=gen, dtype=torch.float64)
    a = x.clone().requires_grad_()
    (got,) = torch.autograd.grad((gk.kde_denoiser(a, y, bandwidth=sigma, backend=backend) * g).sum(), a)
    want = _soft_assignment_x_gradient(x, y, g, sigma)
    rel = ((got - want).norm(dim=1) / want.norm(dim=1)).max()
    assert float(rel) < 1e-7  # was 2.4e-3 (D = 2) and 5e-2 (D = 5) at σ = 1e-6 on both backends


@pytest.mark.skipif(not _cpu.available(), reason="needs the fused CPU extension")
@pytest.mark.parametrize("kernel", ["gaussian", "imq", "laplace"])
@pytest.mark.parametrize("sigma", [1e-6, 1e6])
def test_cpu_backend_agrees_with_torch_at_extreme_float64_bandwidths(kernel, sigma):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 2, generator=gen, dtype=torch.float64) + 0.5
    a, b = (t.clone().requires_grad_() for t in (x, y))
    vals, grads = [], []
    for be in ("torch", "cpu"):
        a.grad = b.grad = None
        m = gk.mmd2(a, b, bandwidth=sigma, kernel=kernel, backend=be)
        m.backward()
        vals.append(m.detach())
        grads.append((a.grad.clone(), b.grad.clone()))
    # mmd2 is a difference of kernel means of size ~1: both backends carry the same ~1e-16 absolute
    # cancellation; they must agree to it (and the gradients to their own scale).
    assert abs(float(vals[0] - vals[1])) <= 1e-14
    if sigma > 1:  # at σ = 1e-6 the x gradient's self pairs cancel (x_i Σ W − W y): a separate, open case
        for g0, g1 in zip(*grads):
            assert float((g0 - g1).abs().max()) <= 1e-10 * max(1e-300, float(g0.abs().max()))
