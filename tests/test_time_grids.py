"""Time grids are checked in the state's dtype, where the steps run.

A float64 grid can be strictly monotone and still collapse when cast to a float32 state: sdeint
returned an uninitialised row for ts = [0, 1, 1 + 1e-9, 2], odeint returned x0 three times for
ts = [1e8, 1e8 + 1, 1e8 + 2]. Both are now one error naming the two times.
"""

import pytest
import torch

import solvers

COLLAPSING = [
    ([0.0, 1.0, 1.0 + 1e-9, 2.0], "ts[1] = 1.0 and ts[2] = 1.000000001"),
    ([1e8, 1e8 + 1, 1e8 + 2], "ts[0] = 100000000.0 and ts[1] = 100000001.0"),
    ([2.0, 1.0 + 1e-9, 1.0, 0.0], "ts[1] = 1.000000001 and ts[2] = 1.0"),  # decreasing too
]

SOLVES = {
    "sdeint": lambda x, ts: solvers.sdeint(solvers.LangevinFlow(lambda z: -z), x, ts,
                                           generator=torch.Generator().manual_seed(0)),
    "odeint-euler": lambda x, ts: solvers.odeint(lambda t, z: -z, x, ts),
    "odeint-dopri5": lambda x, ts: solvers.odeint(lambda t, z: -z, x, ts, method="dopri5"),
    "log_prob": lambda x, ts: solvers.log_prob(lambda t, z: -z, x, ts, solvers.gaussian_log_prob()),
}


@pytest.mark.parametrize("solve", sorted(SOLVES))
@pytest.mark.parametrize("grid, named", COLLAPSING)
def test_a_grid_that_collapses_in_float32_is_one_error_naming_the_times(solve, grid, named):
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError) as e:
        SOLVES[solve](x, torch.tensor(grid, dtype=torch.float64))
    msg = str(e.value)
    assert named in msg and "collapse" in msg and "torch.float32" in msg and "\n" not in msg


@pytest.mark.parametrize("solve", sorted(SOLVES))
def test_the_same_grid_with_a_float64_state_integrates(solve):
    x = torch.ones(3, 2, dtype=torch.float64)
    out = SOLVES[solve](x, torch.tensor([0.0, 1.0, 1.0 + 1e-9, 2.0], dtype=torch.float64))
    out = out[0] if isinstance(out, tuple) else out
    assert bool(torch.isfinite(out).all())


def test_float64_times_beyond_float32_are_refused_for_a_float32_state():
    with pytest.raises(ValueError, match="overflows torch.float32"):
        solvers.odeint(lambda t, z: -z, torch.zeros(2, 2), torch.tensor([0.0, 1e39], dtype=torch.float64))


def test_a_repeated_time_is_still_the_monotone_error():
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        solvers.odeint(lambda t, z: -z, torch.zeros(2, 2), torch.tensor([0.0, 1.0, 1.0, 2.0]))
