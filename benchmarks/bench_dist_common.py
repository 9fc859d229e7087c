"""Shared by the sharded-op benchmark and its partner rank: the data and the transfer-only ring."""

import torch

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


def comm_only(x, y, world=2):
    """The two rings of one sharded mmd_field call (y, then x as x_ref) with no reduction."""
    import torch.distributed as dist

    rank = dist.get_rank()
    for t in (y, x):
        sizes = [gd.shard_bounds(len(x) * world, world, r)[1] - gd.shard_bounds(len(x) * world, world, r)[0]
                 for r in range(world)]
        ring = gd._Ring(None, rank, world, sizes)
        gd._ring_forward(ring, [t.unsqueeze(0), None], lambda block: None)


def probe(n_rows, m, d, rank, world=2):
    """The overlap probe: few query rows against many wide source points, so that moving a block
    costs about as much as reducing against it (x: this rank's rows, y: its block of sources)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_rows, d, generator=g) * 0.1
    y = torch.randn(m, d, generator=g) * 0.1
    a, b = gd.shard_bounds(n_rows, world, rank)
    c, e = gd.shard_bounds(m, world, rank)
    return x, y, x[a:b], y[c:e]


def ring_only(y_local, m, world=2):
    """One ring pass of y blocks with no reduction (the transfers of one kernel_integral call)."""
    import torch.distributed as dist

    sizes = [gd.shard_bounds(m, world, r)[1] - gd.shard_bounds(m, world, r)[0] for r in range(world)]
    ring = gd._Ring(None, dist.get_rank(), world, sizes)
    gd._ring_forward(ring, [y_local.unsqueeze(0), None], lambda block: None)
