"""Rank 1 of benchmarks/test_bench_distributed.py: makes the same collective calls as rank 0.

Usage (started by the benchmark): python benchmarks/dist_partner.py PORT N D CALLS COMM_CALLS [probe M]
"""

import sys

import torch
import torch.distributed as dist

from bench_dist_common import comm_only, probe, ring_pass, shards
from gpflow_kernels import distributed as gd


def main():
    port, n, d, calls, comm_calls = (int(a) for a in sys.argv[1:6])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
    if len(sys.argv) > 6 and sys.argv[6] == "probe":
        m = int(sys.argv[7])
        _, _, x, y = probe(n, m, d, 1)
        for _ in range(calls):
            gd.kernel_integral(x, y, bandwidth=1.0)
        for _ in range(comm_calls):
            ring_pass(y, m)
        dist.barrier()
        dist.destroy_process_group()
        return
    x, y, s = shards(n, d, 1)
    for _ in range(calls):
        gd.mmd_field(x, y, bandwidth=s)
    for _ in range(comm_calls):
        comm_only(x, y, n)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
