"""solvers.sharded: rank-count-independent normals and Brownian increments (one process)."""

import math

import pytest
import torch

import solvers
from solvers.sharded import ParticleNormals


@pytest.mark.parametrize("cuts", [[10], [3, 7], [0, 4, 0, 6], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
def test_normals_do_not_depend_on_how_particles_are_split(cuts):
    whole = ParticleNormals(5, 0, block=4).draw((2, 0.25), 10, 3)
    parts, start = [], 0
    for n in cuts:
        parts.append(ParticleNormals(5, start, block=4).draw((2, 0.25), n, 3))
        start += n
    assert torch.equal(torch.cat(parts), whole)


def test_streams_and_seeds_differ_and_blocks_are_standard_normal():
    a = ParticleNormals(0).draw((1, 0.0), 20000, 2)
    assert not torch.equal(a, ParticleNormals(0).draw((1, 0.1), 20000, 2))
    assert not torch.equal(a, ParticleNormals(1).draw((1, 0.0), 20000, 2))
    # 4e4 standard normals: mean within 5 standard errors, variance within 5 of its standard errors
    assert abs(float(a.mean())) < 5 / math.sqrt(a.numel())
    assert abs(float(a.var()) - 1) < 5 * math.sqrt(2 / a.numel())


def test_sharded_brownian_increments_have_variance_dt_and_flip_sign_backwards():
    bm = solvers.ShardedBrownian(3, 50000, 1, start=0)
    inc = bm(0.2, 0.25)
    assert abs(float(inc.var()) / 0.05 - 1) < 5 * math.sqrt(2 / inc.numel())
    assert torch.equal(bm(0.25, 0.2), -inc)


def test_bad_seed_and_start_are_named():
    with pytest.raises(TypeError, match="seed must be an int"):
        ParticleNormals(1.5)
    with pytest.raises(ValueError, match="start must be an int >= 0"):
        ParticleNormals(0, -1)
