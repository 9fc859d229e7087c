import pytest
import torch
from torch import nn

import gpflow_kernels as gk


def make_generator(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def explicit_jacobian(gen, z):
    """J: (N·D, P) from torch.autograd.functional.jacobian over the flat parameter vector."""
    names = [n for n, _ in gen.named_parameters()]
    shapes = [p.shape for _, p in gen.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in gen.parameters()])

    def f(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i : i + s.numel()].view(s)
            i += s.numel()
        return torch.func.functional_call(gen, params, (z,)).reshape(-1)

    return torch.autograd.functional.jacobian(f, flat)


def test_ntk_smooth_is_j_jt_v():
    gen = make_generator()
    z = torch.randn(6, 3, dtype=torch.float64)
    v = torch.randn(6, 2, dtype=torch.float64)
    J = explicit_jacobian(gen, z)
    want = (J @ (J.T @ v.reshape(-1))).view(6, 2)
    torch.testing.assert_close(gk.ntk_smooth(gen, z, v, reduction="sum"), want)
    torch.testing.assert_close(gk.ntk_smooth(gen, z, v), want / 6)  # the default: a mean loss


def test_empirical_ntk_matches_explicit_jacobian():
    gen = make_generator(1)
    z1, z2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    J1, J2 = explicit_jacobian(gen, z1).view(4, 2, -1), explicit_jacobian(gen, z2).view(5, 2, -1)
    want = torch.einsum("iap,jbp->ijab", J1, J2)
    K = gk.empirical_ntk(gen, z1, z2)
    assert K.shape == (4, 5, 2, 2)
    torch.testing.assert_close(K, want)
    v = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(gk.ntk_smooth(gen, z1, v, reduction="sum"), torch.einsum("ijab,jb->ia", gk.empirical_ntk(gen, z1, z1), v))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_generator_step_moves_particles_by_the_smoothed_field(reduction):
    """One SGD step of lr η on L(θ) = −reduce_i f_i · g(z_i) moves g(z) by η ntk_smooth(..., reduction) + O(η²):
    what a generator trained with a mean loss (the default) or a summed one does to its particles."""
    gen = make_generator(2)
    z = torch.randn(10, 3, dtype=torch.float64)
    f = torch.randn(10, 2, dtype=torch.float64)
    before = gen(z).detach()
    predicted = gk.ntk_smooth(gen, z, f, reduction=reduction)
    eta = 1e-6
    per_sample = -(f * gen(z)).sum(1)
    loss = per_sample.mean() if reduction == "mean" else per_sample.sum()
    opt = torch.optim.SGD(gen.parameters(), lr=eta)
    loss.backward()
    opt.step()
    torch.testing.assert_close((gen(z).detach() - before) / eta, predicted, rtol=1e-4, atol=1e-6)


def test_reduction_is_checked():
    gen = make_generator(2)
    z = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match='reduction must be "mean" or "sum", got \'avg\''):
        gk.ntk_smooth(gen, z, torch.zeros(4, 2, dtype=torch.float64), reduction="avg")


def test_parameter_subset_and_errors():
    gen = make_generator(3)
    z = torch.randn(5, 3, dtype=torch.float64)
    v = torch.randn(5, 2, dtype=torch.float64)
    last = {"2.weight": gen[2].weight, "2.bias": gen[2].bias}
    # Only the last layer: J = [h ⊗ I, I] so J Jᵀ v = (h·h' + 1) v summed over samples.
    h = torch.tanh(gen[0](z)).detach()
    want = (h @ h.T + 1.0) @ v
    torch.testing.assert_close(gk.ntk_smooth(gen, z, v, params=last, reduction="sum"), want)
    with pytest.raises(ValueError, match="shaped like the generator output"):
        gk.ntk_smooth(gen, z, torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not parameters"):
        gk.ntk_smooth(gen, z, v, params={"nope": torch.zeros(1)})
    with pytest.raises(TypeError, match="nn.Module"):
        gk.ntk_smooth(lambda z: z, z, v)


def test_more_bad_input_is_named():
    gen = make_generator(3)
    z = torch.randn(5, 3, dtype=torch.float64)
    v = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="z must be a torch.Tensor, got list"):
        gk.ntk_smooth(gen, [[0.0] * 3] * 5, v)
    with pytest.raises(TypeError, match="field must be a torch.Tensor, got ndarray"):
        gk.ntk_smooth(gen, z, v.numpy())
    with pytest.raises(TypeError, match=r"field must match the generator output's dtype/device \(torch.float64, cpu\), got .*float32"):
        gk.ntk_smooth(gen, z, v.float())
    bad = v.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="field contains NaN or infinite values"):
        gk.ntk_smooth(gen, z, bad)
    with pytest.raises(TypeError, match="params must be a dict name -> tensor, got list"):
        gk.ntk_smooth(gen, z, v, params=[gen[2].bias])
    frozen = make_generator(3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        gk.ntk_smooth(frozen, z, v)


    class Scale(nn.Module):  # output size follows the input's
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

        def forward(self, z):
            return self.w * z

    with pytest.raises(ValueError, match=r"outputs of different sizes \(3 and 2 per sample\)"):
        gk.empirical_ntk(Scale(), z, z[:, :2])
