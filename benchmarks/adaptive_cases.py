"""The adaptive-solver benchmark cases, shared by test_bench_adaptive.py (pytest-benchmark) and
adaptive_interleaved.py (ours and the baseline alternated round by round, medians).

Each ``make_*`` returns {impl: callable} where the callable runs one full solve (and backward where
the case says so) and returns the number of field evaluations it made.
"""

import torch

import solvers

torchdiffeq = None
try:
    import torchdiffeq
except ImportError:  # pragma: no cover
    pass


class MLPField(torch.nn.Module):
    """A small time-conditioned network field, per sample: the usual neural-ODE / flow workload."""

    def __init__(self, d, hidden=64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(d + 1, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5))
        self.calls = 0

    def forward(self, t, x):
        self.calls += 1
        h = torch.tanh(self.l1(torch.cat([x, t.expand(x.shape[0], 1)], 1)))
        return self.l3(torch.tanh(self.l2(h)))


def linear_field(t, x):
    return -x + torch.sin(t)


def _counted(f):
    calls = [0]

    def g(t, x):
        calls[0] += 1
        return f(t, x)

    return g, calls


FORWARD = [  # (name, N, D, rtol)
    ("mlp", 4096, 2, 1e-6),
    ("linear", 100_000, 2, 1e-8),
]


def make_forward(name, n, d, tol):
    x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([0.0, 1.0])
    base = MLPField(d) if name == "mlp" else linear_field

    def ours():
        st = solvers.SolverStats()
        with torch.no_grad():
            solvers.odeint(base, x0, ts, method="dopri5", rtol=tol, atol=tol, save="last", stats=st)
        return st.nfe

    def theirs():
        f, calls = _counted(base)
        with torch.no_grad():
            torchdiffeq.odeint(f, x0, ts, method="dopri5", rtol=tol, atol=tol)
        return calls[0]

    return {"ours": ours, "torchdiffeq": theirs}


ADJOINT = [(1024, 2, 1e-6), (1024, 16, 1e-5)]


def make_adjoint(n, d, tol):
    field = MLPField(d, seed=2)
    x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(3))
    ts = torch.tensor([0.0, 1.0])

    def ours():
        field.calls = 0
        x = x0.clone().requires_grad_()
        out = solvers.odeint(field, x, ts, method="dopri5", rtol=tol, atol=tol, adjoint=True, save="last")
        out.square().sum().backward()
        field.zero_grad(set_to_none=True)
        return field.calls

    def theirs():
        field.calls = 0
        x = x0.clone().requires_grad_()
        out = torchdiffeq.odeint_adjoint(field, x, ts, method="dopri5", rtol=tol, atol=tol)[-1]
        out.square().sum().backward()
        field.zero_grad(set_to_none=True)
        return field.calls

    return {"ours": ours, "torchdiffeq": theirs}


LOG_PROB = [(512, 2), (512, 8), (512, 32)]


def make_log_prob(n, d):
    """log p of n points under an MLP flow: our exact and Hutchinson divergences against the
    FFJORD-style baseline (torchdiffeq dopri5 on (x, ℓ), exact divergence by a loop of D
    autograd.grad calls)."""
    field = MLPField(d, seed=4)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(5))
    ts = torch.tensor([0.0, 1.0])
    prior = solvers.gaussian_log_prob()
    tol = 1e-5

    def ours(kind):
        def run():
            field.calls = 0
            with torch.no_grad():
                solvers.log_prob(field, x, ts, prior, divergence=kind, rtol=tol, atol=tol)
            return field.calls
        return run

    def loop():
        field.calls = 0

        def aug(t, state):
            y = state[0]
            with torch.enable_grad():
                y = y.detach().requires_grad_()
                f = field(t, y)
                div = sum(torch.autograd.grad(f[:, j].sum(), y, retain_graph=True)[0][:, j] for j in range(d))
            return f.detach(), div.detach()

        with torch.no_grad():
            torchdiffeq.odeint(aug, (x, x.new_zeros(n)), ts, method="dopri5", rtol=tol, atol=tol)
        return field.calls

    return {"ours-exact": ours("exact"), "ours-hutchinson": ours("hutchinson"), "autograd-loop": loop}
