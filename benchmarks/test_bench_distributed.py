"""Sharded ops on 2 gloo ranks (1 thread each) against the single-process op (2 threads).

The benchmark process is rank 0; a partner process (benchmarks/dist_partner.py) is rank 1 and makes
the same calls. Besides the time per call, extra_info records the bytes each rank sends per call
and how much of the transfer time the computation hides:
overlap = (t_compute + t_transfer − t_call) / min(t_compute, t_transfer), clipped to [0, 1], with
t_compute the reductions alone (rank 0's, no transfers) and t_transfer the rings alone; t_other is
what is left of a call (the agreement all-gather, waiting for the slower rank). On one machine the
transfers are a small fraction of an mmd_field call, so its overlap figure is mostly noise there;
the overlap probe makes them comparable.
"""

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import gpflow_kernels as gk
from bench_dist_common import comm_only, full, probe, ring_pass, shards
from gpflow_kernels import distributed as gd, reference
from gpflow_kernels.kernels import get_kernel

SIZES = [(8192, 2), (8192, 16)]
PROBE = (128, 16384, 512)  # query rows, source points, D: a block's transfer ~ its reduction
ROUNDS, WARMUP, COMM = 9, 2, 9
HERE = Path(__file__).parent


def headline(p):  # the default run (benchmarks/conftest.py): D = 2 and the overlap probe
    return p.get("d", 2) == 2


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pedantic(benchmark, fn):
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _rank0(partner_args):
    """This process as rank 0 of a 2-rank gloo group, with dist_partner.py as rank 1 (1 thread each)."""
    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    partner = subprocess.Popen([sys.executable, str(HERE / "dist_partner.py"), str(port), *map(str, partner_args)],
                               env=env)
    try:
        with _threads(1):
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
            yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        partner.wait(timeout=120)


def _breakdown(benchmark, transfer_once, compute_once, sent):
    """Time the transfers alone and the reductions alone; record them with the call's median."""
    transfer, compute = [], []
    for _ in range(COMM):
        t0 = time.perf_counter()
        transfer_once()
        transfer.append(time.perf_counter() - t0)
    dist.barrier()
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        compute_once()
        compute.append(time.perf_counter() - t0)
    t_call = benchmark.stats.stats.median
    t_comm, t_comp = statistics.median(transfer), statistics.median(compute)
    benchmark.extra_info.update({"bytes_sent_per_rank_per_call": sent, "t_transfer_s": t_comm, "t_compute_s": t_comp,
                                 "overlap": max(0.0, min(1.0, (t_comp + t_comm - t_call) / min(t_comp, t_comm))),
                                 "t_other_s": t_call - t_comp - t_comm})


@pytest.mark.parametrize("n,d", SIZES, ids=str)
@pytest.mark.parametrize("impl", ["ours-2ranks", "single-process"])
def test_sharded_mmd_field(benchmark, impl, n, d):
    benchmark.group = f"sharded mmd_field N=M={n} D={d} (2 cores)"
    if impl == "single-process":
        x, y, s = full(n, d)
        with _threads(2):
            _pedantic(benchmark, lambda: gk.mmd_field(x, y, bandwidth=s))
        return
    with _rank0([n, d, ROUNDS + WARMUP, COMM]):
        x, y, s = shards(n, d, 0)
        _pedantic(benchmark, lambda: gd.mmd_field(x, y, bandwidth=s))
        # the reductions alone: rank 0's rows against both ranks' blocks of y and of x
        fx, fy, _ = full(n, d)
        s2, kern = torch.full((1, 1), s * s), get_kernel("gaussian")
        blocks = [t[a:b].unsqueeze(0) for t in (fy, fx) for a, b in (gd.shard_bounds(n, 2, r) for r in (0, 1))]
        # each rank sends its y and x blocks once per call (W − 1 = 1 hop each)
        _breakdown(benchmark, lambda: comm_only(x, y, n),
                   lambda: [reference.grad_sum(kern, x.unsqueeze(0), blk, None, s2) for blk in blocks],
                   sum(len(t) * d * 4 for t in (y, x)))


@pytest.mark.parametrize("impl", ["ours-2ranks", "single-process"])
def test_ring_overlap_probe(benchmark, impl):
    """kernel_integral with 64 query rows per rank against 8192 sources of D = 512 per rank: moving a
    16 MB block costs about as much as reducing against it, so the overlap is measurable."""
    n, m, d = PROBE
    benchmark.group = f"overlap probe kernel_integral N={n} M={m} D={d} (2 cores)"
    x, y, xl, yl = probe(n, m, d, 0)
    if impl == "single-process":
        with _threads(2):
            _pedantic(benchmark, lambda: gk.kernel_integral(x, y, bandwidth=1.0))
        return
    with _rank0([n, d, ROUNDS + WARMUP, COMM, "probe", m]):
        _pedantic(benchmark, lambda: gd.kernel_integral(xl, yl, bandwidth=1.0))
        s2, kern = torch.ones(1, 1), get_kernel("gaussian")
        blocks = [y[a:b].unsqueeze(0) for a, b in (gd.shard_bounds(m, 2, r) for r in (0, 1))]
        _breakdown(benchmark, lambda: ring_pass(yl, m),
                   lambda: [reference.integral(kern, xl.unsqueeze(0), blk, None, s2) for blk in blocks],
                   len(yl) * d * 4)
