"""Shared by the sharded-op benchmark and its partner rank: the data and the transfer-only ring."""

import torch
import torch.distributed as dist

from gpflow_kernels import distributed as gd


def full(n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) + 0.5
    return x, y, 0.5 * d**0.5


def shards(n, d, rank, world=2):
    x, y, s = full(n, d)
    a, b = gd.shard_bounds(n, world, rank)
    return x[a:b], y[a:b], s


def probe(n_rows, m, d, rank, world=2):
    """The overlap probe: few query rows against many wide source points, so that moving a block
    costs about as much as reducing against it (x: this rank's rows, y: its block of sources)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_rows, d, generator=g) * 0.1
    y = torch.randn(m, d, generator=g) * 0.1
    a, b = gd.shard_bounds(n_rows, world, rank)
    c, e = gd.shard_bounds(m, world, rank)
    return x, y, x[a:b], y[c:e]


def ring_pass(local, total, world=2):
    """One ring pass of ``local`` (this rank's block of ``total`` points) with no reduction: the
    transfers of one sharded reduction."""
    sizes = [b - a for a, b in (gd.shard_bounds(total, world, r) for r in range(world))]
    ring = gd._Ring(None, dist.get_rank(), world, sizes)
    gd._ring_forward(ring, [local.unsqueeze(0), None], lambda block: None)


def comm_only(x, y, n):
    """The two rings of one sharded mmd_field call on n points (y, then x as x_ref)."""
    ring_pass(y, n)
    ring_pass(x, n)
