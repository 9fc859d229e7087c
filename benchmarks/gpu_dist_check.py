"""The sharded ops on the local backend, under torchrun: NCCL and the GPU kernels' log-sum-exp merge.

    torchrun --standalone --nproc-per-node NGPU benchmarks/gpu_dist_check.py [--small]

Each rank takes cuda:LOCAL_RANK and NCCL (without CUDA: the CPU and gloo, to check this script),
shards fixed float32 point sets unevenly, and compares every sharded op and its gradients with the
single-process op on the whole sets, on the backend "auto" picks (Triton or CUDA on a GPU). On one
GPU the ring has no transfers, so the ring nodes are also called directly on two blocks of y held
by the one rank, which checks the backends' lse convention (LSE_UNIT, exact logits) on the device.
Prints one line per case; the exit status is 1 if any case is off by more than 1e-4 (relative).
--small: about 300 points a side instead of 3000 (the CPU dry run of gpu_session.sh).
"""

import os
import sys

import torch
import torch.distributed as dist

import gpflow_kernels as gk
from gpflow_kernels import distributed as gd
from gpflow_kernels.ops import _impl

TOL = 1e-4


def rel(want, got, scale) -> float:
    """max |want − got| / max |scale| (0 for an empty shard)."""
    return float((want - got).detach().abs().max() / scale.detach().abs().max()) if want.numel() else 0.0


def main():
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    bad = 0
    for D, sigma in ((2, 0.3), (12, 1.0), (40, 3.0)):
        g = torch.Generator().manual_seed(D)
        N, M = (300 + 17 * world, 250 + 5 * world) if "--small" in sys.argv[1:] else (3000 + 17 * world, 2500 + 5 * world)
        x = torch.randn(N, D, generator=g).to(dev)
        y = (torch.randn(M, D, generator=g) * 1.2 + 0.3).to(dev)
        xs = [N // world + (r < N % world) for r in range(world)]
        ys = [M // world + (r < M % world) for r in range(world)]
        ys = [ys[0] + ys[-1]] + ys[1:-1] + [0] if world > 1 else ys  # uneven, one empty shard
        xl = x.narrow(0, sum(xs[:rank]), xs[rank])
        yl = y.narrow(0, sum(ys[:rank]), ys[rank])
        for name, full, shard in (
            ("mmd_field", lambda a, b: gk.mmd_field(a, b, bandwidth=sigma),
             lambda a, b: gd.mmd_field(a, b, bandwidth=sigma)),
            ("kde_score", lambda a, b: gk.kde_score(a, b, bandwidth=sigma),
             lambda a, b: gd.kde_score(a, b, bandwidth=sigma)),
            ("kernel_integral", lambda a, b: gk.kernel_integral(a, b, bandwidth=sigma),
             lambda a, b: gd.kernel_integral(a, b, bandwidth=sigma)),
        ):
            xf, yf = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            xa, ya = xl.clone().requires_grad_(True), yl.clone().requires_grad_(True)
            ref, got = full(xf, yf), shard(xa, ya)
            w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dev)
            (ref * w).sum().backward()
            (got * w.narrow(0, sum(xs[:rank]), xs[rank])).sum().backward()
            errs = [rel(ref.narrow(0, sum(xs[:rank]), xs[rank]), got, ref),
                    rel(xf.grad.narrow(0, sum(xs[:rank]), xs[rank]), xa.grad, xf.grad),
                    rel(yf.grad.narrow(0, sum(ys[:rank]), ys[rank]), ya.grad, yf.grad)]
            err = max(errs)
            bad += err > TOL
            print(f"rank {rank}/{world} {name} D={D} backend={_impl('auto', x).__name__.split('.')[-1]}: "
                  f"max relative error {err:.2e} {'OK' if err <= TOL else 'FAIL'}", flush=True)
        if world == 1:  # the ring nodes on two blocks of y, on this device's backend
            impl = _impl("auto", x)
            s2 = torch.full((1, 1), sigma * sigma, device=dev)
            ring = gd._Ring(None, 0, 1, [M])
            xb = x.unsqueeze(0).clone().requires_grad_(True)
            halves = [y[: M // 3].unsqueeze(0), y[M // 3:].unsqueeze(0)]
            mu, lse = None, None
            for yb in halves:
                mu_b, lse_b = gd._block_softmax(impl, xb.detach(), yb, s2)
                mu, lse = gd._merge(mu, lse, mu_b, lse_b)
            ref = gk.kde_denoiser(x, y, bandwidth=sigma)
            err = float((mu[0] - ref).abs().max() / ref.abs().max())
            got = gd._RingSoftmax.apply(impl, s2, ring, xb, y.unsqueeze(0))
            err = max(err, float((got[0] - ref).abs().max() / ref.abs().max()))
            bad += err > TOL
            print(f"rank 0/1 two-block lse merge D={D} backend={impl.__name__.split('.')[-1]}: "
                  f"max relative error {err:.2e} {'OK' if err <= TOL else 'FAIL'}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
