"""Sharded mmd_field on 2 gloo ranks (1 thread each) against the single-process op (2 threads).

The benchmark process is rank 0; a partner process (benchmarks/dist_partner.py) is rank 1 and makes
the same calls. Besides the time per call, extra_info records the bytes each rank sends per call
and how much of the transfer time the computation hides:
overlap = (t_compute + t_transfer − t_call) / min(t_compute, t_transfer), clipped to [0, 1], with
t_compute the reductions alone (rank 0's, no transfers) and t_transfer the rings alone; t_other is
what is left of a call (the agreement all-gather, waiting for the slower rank). On one machine the
transfers are a small fraction of a call, so the overlap figure is mostly noise there.
"""

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
from bench_dist_common import comm_only, full, probe, ring_only, shards
from gpflow_kernels import distributed as gd, reference
from gpflow_kernels.kernels import get_kernel

SIZES = [(8192, 2), (8192, 16)]
ROUNDS, WARMUP, COMM = 9, 2, 9
HERE = Path(__file__).parent


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n,d", SIZES, ids=str)
@pytest.mark.parametrize("impl", ["ours-2ranks", "single-process"])
def test_sharded_mmd_field(benchmark, impl, n, d):
    benchmark.group = f"sharded mmd_field N=M={n} D={d} (2 cores)"
    threads = torch.get_num_threads()
    if impl == "single-process":
        torch.set_num_threads(2)
        x, y, s = full(n, d)
        try:
            benchmark.pedantic(lambda: gk.mmd_field(x, y, bandwidth=s), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
        finally:
            torch.set_num_threads(threads)
        return
    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    partner = subprocess.Popen([sys.executable, str(HERE / "dist_partner.py"), str(port), str(n), str(d),
                                str(ROUNDS + WARMUP), str(COMM)], env=env)
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
        x, y, s = shards(n, d, 0)
        benchmark.pedantic(lambda: gd.mmd_field(x, y, bandwidth=s), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
        transfer = []
        for _ in range(COMM):
            t0 = time.perf_counter()
            comm_only(x, y)
            transfer.append(time.perf_counter() - t0)
        dist.barrier()
        # the reductions alone: rank 0's rows against both ranks' blocks of y and of x
        fx, fy, _ = full(n, d)
        s2 = torch.full((1, 1), s * s)
        kern = get_kernel("gaussian")
        xb = x.unsqueeze(0)
        blocks = [t[a:b].unsqueeze(0) for t in (fy, fx) for a, b in (gd.shard_bounds(n, 2, r) for r in (0, 1))]
        compute = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for blk in blocks:
                reference.grad_sum(kern, xb, blk, None, s2)
            compute.append(time.perf_counter() - t0)
        t_call = benchmark.stats.stats.median
        t_comm, t_comp = statistics.median(transfer), statistics.median(compute)
        hidden = (t_comp + t_comm - t_call) / min(t_comp, t_comm)
        sent = sum(len(t) * d * 4 for t in (y, x))  # each rank sends its y and x blocks once per call (W − 1 = 1 hop)
        benchmark.extra_info.update({"bytes_sent_per_rank_per_call": sent, "t_transfer_s": t_comm,
                                     "t_compute_s": t_comp, "overlap": max(0.0, min(1.0, hidden)),
                                     # the rest of a call: agreement all-gather, waiting for the slower rank
                                     "t_other_s": t_call - t_comp - t_comm})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
        partner.wait(timeout=120)


PROBE = (128, 16384, 512)  # query rows, source points, D: a block's transfer ~ its reduction


@pytest.mark.parametrize("impl", ["ours-2ranks", "single-process"])
def test_ring_overlap_probe(benchmark, impl):
    """kernel_integral with 64 query rows per rank against 8192 sources of D = 512 per rank: moving a
    16 MB block costs about as much as reducing against it, so the overlap is measurable."""
    n, m, d = PROBE
    benchmark.group = f"overlap probe kernel_integral N={n} M={m} D={d} (2 cores)"
    threads = torch.get_num_threads()
    x, y, xl, yl = probe(n, m, d, 0)
    if impl == "single-process":
        torch.set_num_threads(2)
        try:
            benchmark.pedantic(lambda: gk.kernel_integral(x, y, bandwidth=1.0), rounds=ROUNDS, warmup_rounds=WARMUP,
                               iterations=1)
        finally:
            torch.set_num_threads(threads)
        return
    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    partner = subprocess.Popen([sys.executable, str(HERE / "dist_partner.py"), str(port), str(n), str(d),
                                str(ROUNDS + WARMUP), str(COMM), "probe", str(m)], env=env)
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
        benchmark.pedantic(lambda: gd.kernel_integral(xl, yl, bandwidth=1.0), rounds=ROUNDS, warmup_rounds=WARMUP,
                           iterations=1)
        transfer = []
        for _ in range(COMM):
            t0 = time.perf_counter()
            ring_only(yl, m)
            transfer.append(time.perf_counter() - t0)
        dist.barrier()
        s2 = torch.ones(1, 1)
        kern = get_kernel("gaussian")
        blocks = [y[a:b].unsqueeze(0) for a, b in (gd.shard_bounds(m, 2, r) for r in (0, 1))]
        compute = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for blk in blocks:
                reference.integral(kern, xl.unsqueeze(0), blk, None, s2)
            compute.append(time.perf_counter() - t0)
        t_call = benchmark.stats.stats.median
        t_comm, t_comp = statistics.median(transfer), statistics.median(compute)
        benchmark.extra_info.update({
            "bytes_sent_per_rank_per_call": len(yl) * d * 4, "t_transfer_s": t_comm, "t_compute_s": t_comp,
            "overlap": max(0.0, min(1.0, (t_comp + t_comm - t_call) / min(t_comp, t_comm))),
            "t_other_s": t_call - t_comp - t_comm})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
        partner.wait(timeout=120)
