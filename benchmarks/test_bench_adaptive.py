"""Adaptive solves against torchdiffeq: dopri5 forward, adjoint gradients, and log_prob.

Field evaluations of each solve are in ``extra_info["nfe"]``; benchmarks/adaptive_interleaved.py
times the same cases with ours and the baseline alternated round by round.
Run: pytest benchmarks -k adaptive --benchmark-only
"""

import pytest
import torch

from adaptive_cases import ADJOINT, FORWARD, LOG_PROB, make_adjoint, make_forward, make_log_prob

pytest.importorskip("torchdiffeq")


def headline(p):  # the default run (benchmarks/conftest.py): the first case of each kind
    return p["case"] in (FORWARD[0], ADJOINT[0], LOG_PROB[0])


def run(benchmark, fn):
    nfe = fn()  # warm-up, and the evaluation count (the same every round)
    benchmark.extra_info["nfe"] = nfe
    benchmark.pedantic(fn, rounds=5, iterations=1)


@pytest.mark.parametrize("case", FORWARD, ids=lambda c: f"{c[0]}-N{c[1]}-D{c[2]}-tol{c[3]:g}")
@pytest.mark.parametrize("impl", ["ours", "torchdiffeq"])
def test_dopri5_forward(benchmark, impl, case):
    benchmark.group = "dopri5 forward {} N={} D={} rtol=atol={:g}".format(*case)
    torch.set_grad_enabled(True)
    run(benchmark, make_forward(*case)[impl])


@pytest.mark.parametrize("case", ADJOINT, ids=lambda c: f"N{c[0]}-D{c[1]}-tol{c[2]:g}")
@pytest.mark.parametrize("impl", ["ours", "torchdiffeq"])
def test_dopri5_adjoint(benchmark, impl, case):
    benchmark.group = "dopri5 adjoint forward+backward mlp N={} D={} rtol=atol={:g}".format(*case)
    run(benchmark, make_adjoint(*case)[impl])


@pytest.mark.parametrize("case", LOG_PROB, ids=lambda c: f"N{c[0]}-D{c[1]}")
@pytest.mark.parametrize("impl", ["ours-exact", "ours-hutchinson", "autograd-loop"])
def test_log_prob(benchmark, impl, case):
    benchmark.group = "log_prob mlp N={} D={} dopri5 rtol=atol=1e-5".format(*case)
    run(benchmark, make_log_prob(*case)[impl])
