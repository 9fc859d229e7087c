"""Particles sharded over torch.distributed ranks: offsets and noise that do not depend on the rank count.

A particle system split over W ranks gives each rank a contiguous shard of the global particles,
in rank order (``shard_bounds``). Its fields come from ``gpflow_kernels.distributed`` (pass
``group=`` to ``MMDFlow``, ``SteinFlow``, ``LogRatioField`` or ``DiffFlowSDE.from_samples``).

Noise. ``torch.randn(shape, generator=...)`` on each rank would give particle i different numbers
on 1, 2 or 4 ranks. Here the global particles are cut into fixed blocks of ``BLOCK`` particles and
the numbers of block b in stream k (a step, the prior, ...) come from a generator seeded with a
hash of (seed, k, b): a rank draws the blocks its shard overlaps and keeps its rows. So particle i
gets the same numbers whatever the number of ranks and however the particles are split, on a
given device type (CPU and CUDA generators differ). The cost is at most two partial blocks per
rank and draw beyond its own rows.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from gpflow_kernels.distributed import comm_device, shard_bounds

__all__ = ["BLOCK", "shard_bounds", "group_rank_world", "global_offset", "ParticleNormals", "ShardedBrownian"]

Tensor = torch.Tensor

#: Particles per noise block (the unit of rank-count-independent random numbers).
BLOCK = 4096


def group_rank_world(group) -> Tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when group is None (one process)."""
    if group is None:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("group= was given but torch.distributed is not initialised (init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def global_offset(n_local: int, group) -> int:
    """Index of this rank's first particle among all ranks' particles (an exclusive prefix sum)."""
    rank, world = group_rank_world(group)
    if world == 1:
        return 0
    mine = torch.tensor([n_local], dtype=torch.int64, device=comm_device(group))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    return int(sum(int(p) for p in parts[:rank]))


def _key(*parts) -> int:
    flat = []
    for p in parts:
        flat.extend(p if isinstance(p, tuple) else (p,))
    parts = flat
    raw = b"".join(struct.pack("<d", float(p)) if isinstance(p, float) else struct.pack("<q", int(p)) for p in parts)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") & ((1 << 63) - 1)


class ParticleNormals:
    """Standard normals for the global particles [start, start + n) of stream ``key``.

    ``draw(key, n, width)`` -> (n, width); the same (seed, key, particle) gives the same row on any
    number of ranks. ``key`` is an int, a float or a tuple of them, e.g. (stream, time): streams
    keyed by the step's time need no step counter.
    """

    def __init__(self, seed: int, start: int = 0, *, dtype=torch.float32, device="cpu", block: int = BLOCK):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        self.seed, self.start, self.dtype, self.device, self.block = seed, start, dtype, torch.device(device), block

    def draw(self, key, n: int, width: int) -> Tensor:
        out = torch.empty(n, width, dtype=self.dtype, device=self.device)
        if n == 0:
            return out
        first, last = self.start // self.block, (self.start + n - 1) // self.block
        gen = torch.Generator(device=self.device)
        for b in range(first, last + 1):
            gen.manual_seed(_key(self.seed, key, b))
            z = torch.randn(self.block, width, generator=gen, dtype=self.dtype, device=self.device)
            lo = max(self.start, b * self.block)
            hi = min(self.start + n, (b + 1) * self.block)
            out[lo - self.start: hi - self.start] = z[lo - b * self.block: hi - b * self.block]
        return out


class ShardedBrownian:
    """Brownian increments for sharded particles, as ``sdeint``'s ``bm``: bm(t0, t1) -> W(t1) − W(t0).

    The increment over [t0, t1] is sqrt(|t1 − t0|) times the normals of stream (``stream``, earlier
    end of the interval), shaped (n_local, width) (reshaped by ``sdeint`` to the noise shape). Same seed, same grid:
    the same path for every particle on any number of ranks.
    """

    def __init__(self, seed: int, n_local: int, width: int, *, start: Optional[int] = None, group=None,
                 dtype=torch.float32, device="cpu", stream: int = 2):
        start = global_offset(n_local, group) if start is None else start
        self.stream = stream
        self.normals = ParticleNormals(seed, start, dtype=dtype, device=device)
        self.n, self.width = n_local, width

    def __call__(self, t0, t1) -> Tensor:
        a, b = float(t0), float(t1)
        lo, hi = min(a, b), max(a, b)
        z = self.normals.draw((self.stream, lo), self.n, self.width)
        sign = 1.0 if b >= a else -1.0
        return z.mul_(sign * math.sqrt(hi - lo))
