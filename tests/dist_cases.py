"""Cases for tests/test_distributed.py, run on 2 ranks: torchrun --nproc-per-node 2 tests/dist_cases.py OUT.

Every rank builds the same full point sets (fixed seeds), takes its shard (uneven sizes, some
empty), runs the sharded op and its backward, and compares its rows and gradients with the
single-process op on the full sets. Each rank writes OUT/rank{r}.json: case -> [max error, scale]
or "error: <type>: <message>" for the error cases. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

import gpflow_kernels as gk
import solvers
from gpflow_kernels import distributed as gd


def split(t, sizes, rank, dim=-2):
    start = sum(sizes[:rank])
    return t.narrow(dim, start, sizes[rank])


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def compare(full_out, local_out, pairs, rank, sizes_out, loss_weights=None):
    """Max abs error of the local rows and of the gradients in ``pairs`` [(full_leaf, local_leaf, sizes)]."""
    errs, scale = [], []
    ref_rows = split(full_out.detach(), sizes_out, rank) if sizes_out is not None else full_out.detach()
    errs.append(float((ref_rows - local_out.detach()).abs().max()) if local_out.numel() else 0.0)
    scale.append(float(full_out.detach().abs().max()))
    for full_leaf, local_leaf, sizes, *dim in pairs:
        ref = split(full_leaf.grad, sizes, rank, *dim)
        got = local_leaf.grad if local_leaf.grad is not None else torch.zeros_like(local_leaf)
        errs.append(float((ref - got).abs().max()) if got.numel() else 0.0)
        scale.append(float(full_leaf.grad.abs().max()))
    return [max(errs), max(scale)]


def pair_case(op, rank, *, N, M, D=2, xs, ys, dtype=torch.float64, batch=(), seed=0, with_v=None, **kw):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, N, D, generator=g, dtype=dtype)
    y = torch.randn(*batch, M, D, generator=g, dtype=dtype) * 1.3 + 0.5
    extra_full, extra_local, pairs = {}, {}, []
    xf, yf = leaf(x), leaf(y)
    xl, yl = leaf(split(x, xs, rank)), leaf(split(y, ys, rank))
    pairs += [(xf, xl, xs), (yf, yl, ys)]
    if op == "kernel_integral":
        v = torch.randn(*batch, M, with_v, generator=g, dtype=dtype)
        vf, vl = leaf(v), leaf(split(v, ys, rank))
        pairs.append((vf, vl, ys))
        out_f = gk.kernel_integral(xf, yf, vf, **kw)
        out_l = gd.kernel_integral(xl, yl, vl, **kw)
    elif op == "mmd_field":
        if kw.pop("weights", False):
            w = torch.rand(*batch, M, generator=g, dtype=dtype) + 0.1
            wf, wl = leaf(w), leaf(split(w, ys, rank, dim=-1))
            pairs.append((wf, wl, ys, -1))
            extra_full["weights"], extra_local["weights"] = wf, wl
        if kw.pop("x_ref", False):
            L = N + 3
            r = torch.randn(*batch, L, D, generator=g, dtype=dtype) * 0.7
            rs = [L - 3, 3] if rank >= 0 else None
            rf, rl = leaf(r), leaf(split(r, rs, rank))
            pairs.append((rf, rl, rs))
            extra_full["x_ref"], extra_local["x_ref"] = rf, rl
        out_f = gk.mmd_field(xf, yf, **extra_full, **kw)
        out_l = gd.mmd_field(xl, yl, **extra_local, **kw)
    else:
        out_f = getattr(gk, op)(xf, yf, **kw)
        out_l = getattr(gd, op)(xl, yl, **kw)
    G = torch.randn(out_f.shape, generator=g, dtype=dtype)
    (out_f * G).sum().backward()
    (out_l * split(G, xs, rank)).sum().backward()
    return compare(out_f, out_l, pairs, rank, xs)


def mmd2_case(rank, *, N, M, D=2, xs, ys, batch=(), **kw):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*batch, N, D, generator=g, dtype=torch.float64)
    y = torch.randn(*batch, M, D, generator=g, dtype=torch.float64) + 0.3
    xf, yf = leaf(x), leaf(y)
    xl, yl = leaf(split(x, xs, rank)), leaf(split(y, ys, rank))
    vf = gk.mmd2(xf, yf, **kw)
    vl = gd.mmd2(xl, yl, **kw)
    G = torch.randn(vf.shape, generator=g, dtype=torch.float64)
    (vf * G).sum().backward()
    (vl * G).sum().backward()
    return compare(vf, vl, [(xf, xl, xs), (yf, yl, ys)], rank, None)


def svgd_case(rank, *, N, D, xs, **kw):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    s = -x + 0.1 * torch.randn(N, D, generator=g, dtype=torch.float64)
    xf, sf = leaf(x), leaf(s)
    xl, sl = leaf(split(x, xs, rank)), leaf(split(s, xs, rank))
    of = gk.svgd_field(xf, sf, **kw)
    ol = gd.svgd_field(xl, sl, **kw)
    G = torch.randn(of.shape, generator=g, dtype=torch.float64)
    (of * G).sum().backward()
    (ol * split(G, xs, rank)).sum().backward()
    return compare(of, ol, [(xf, xl, xs), (sf, sl, xs)], rank, xs)


def flow_case(kind, rank, *, N=50, M=40, xs=(20, 30), ys=(25, 15), seed=7):
    """The same flow, seed and grid on one process (full sets) and sharded over 2 ranks."""
    world = dist.group.WORLD
    data = torch.randn(M, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.5 + 1.0
    ts = torch.linspace(0.0, 0.5, 11, dtype=torch.float64)

    def run(group, start, n, y):
        normals = solvers.ParticleNormals(seed, start, dtype=torch.float64)
        x0 = normals.draw((0,), n, 2)
        if kind == "mmd":
            field = solvers.MMDFlow(y, bandwidth=[0.5, 2.0], noise_level=lambda t: 0.3 * (1 - float(t)),
                                    normals=normals, group=group)
            return solvers.odeint(field, x0, ts, method="heun", save="last")
        if kind == "svgd":
            field = solvers.SteinFlow(lambda z: -(z - 1.0), group=group)
            return solvers.odeint(field, x0, ts, method="rk4", save="last")
        if kind == "logratio":
            return solvers.odeint(solvers.LogRatioField(y, 0.4, group=group), x0, ts, method="euler", save="last")
        bm = solvers.ShardedBrownian(seed, n, 2, start=start, dtype=torch.float64)
        if kind == "diffflow":
            sde = solvers.DiffFlowSDE.from_samples(y, 0.5, mix=0.5, group=group)
        else:  # langevin: no interaction, no group
            sde = solvers.LangevinFlow(lambda z: -(z - 1.0) / 0.25)
        return solvers.sdeint(sde, x0, ts, method="euler_maruyama", bm=bm, save="last")

    full = run(None, 0, N, data)
    start = solvers.global_offset(xs[rank], world)
    assert start == sum(xs[:rank])
    local = run(world, start, xs[rank], split(data, list(ys), rank))
    return [float((split(full, list(xs), rank) - local).abs().max()), float(full.abs().max())]


def error_case(fn):
    try:
        fn()
    except Exception as e:  # the message is what the test reads
        return f"error: {type(e).__name__}: {e}"
    return "no error"


def cases(rank):
    two = lambda a, b: [a, b]
    out = {}
    out["integral_uneven"] = lambda: pair_case("kernel_integral", rank, N=9, M=11, xs=two(2, 7), ys=two(8, 3), with_v=3)
    out["integral_empty_y_shard"] = lambda: pair_case("kernel_integral", rank, N=6, M=5, xs=two(3, 3), ys=two(0, 5),
                                                      with_v=2, kernel="imq", bandwidth=[0.5, 2.0])
    out["integral_batch_float32"] = lambda: pair_case("kernel_integral", rank, N=7, M=6, D=3, xs=two(4, 3), ys=two(2, 4),
                                                      with_v=1, dtype=torch.float32, batch=(2,))
    out["mmd_field_weights_xref"] = lambda: pair_case("mmd_field", rank, N=8, M=10, xs=two(5, 3), ys=two(4, 6),
                                                      weights=True, x_ref=True, bandwidth=0.8)
    out["mmd_field_empty_x_shard"] = lambda: pair_case("mmd_field", rank, N=6, M=7, xs=two(6, 0), ys=two(3, 4),
                                                       kernel="laplace", bandwidth=[0.5, 1.5])
    out["mmd_field_median_subset"] = lambda: pair_case("mmd_field", rank, N=700, M=500, xs=two(300, 400),
                                                       ys=two(260, 240), bandwidth="median")
    out["mmd_field_highdim"] = lambda: pair_case("mmd_field", rank, N=10, M=9, D=20, xs=two(4, 6), ys=two(5, 4),
                                                 bandwidth="median")
    out["mmd2_biased_batch"] = lambda: mmd2_case(rank, N=9, M=8, xs=two(3, 6), ys=two(5, 3), batch=(2,))
    out["mmd2_unbiased_median"] = lambda: mmd2_case(rank, N=9, M=8, xs=two(9, 0), ys=two(5, 3), unbiased=True,
                                                    bandwidth="median", kernel="energy")
    out["kde_score_2d_small_sigma"] = lambda: pair_case("kde_score", rank, N=9, M=12, xs=two(4, 5), ys=two(7, 5),
                                                         bandwidth=0.05)
    out["kde_score_12d_flash"] = lambda: pair_case("kde_score", rank, N=8, M=10, D=12, xs=two(3, 5), ys=two(6, 4),
                                                    bandwidth=0.7)
    out["kde_denoiser_empty_x_shard"] = lambda: pair_case("kde_denoiser", rank, N=6, M=9, D=3, xs=two(0, 6),
                                                          ys=two(4, 5), bandwidth=0.5, batch=(2,))
    out["kde_denoiser_empty_y_shard_16d"] = lambda: pair_case("kde_denoiser", rank, N=5, M=7, D=16, xs=two(2, 3),
                                                              ys=two(7, 0), bandwidth="median")
    # the Triton kernels (interpreted on the CPU; TRITON_INTERPRET=1 in the environment): their lse is
    # in base 2 and exact up to D = 16, flash form above
    if os.environ.get("TRITON_INTERPRET") == "1":
        out["triton_kde_score_3d"] = lambda: pair_case("kde_score", rank, N=6, M=7, D=3, xs=two(2, 4), ys=two(4, 3),
                                                       bandwidth=0.3, backend="triton")
        out["triton_kde_denoiser_20d"] = lambda: pair_case("kde_denoiser", rank, N=5, M=6, D=20, xs=two(3, 2),
                                                           ys=two(2, 4), bandwidth=1.5, backend="triton")
        out["triton_mmd_field"] = lambda: pair_case("mmd_field", rank, N=6, M=5, xs=two(4, 2), ys=two(1, 4),
                                                    bandwidth=0.7, backend="triton")
    out["svgd_median"] = lambda: svgd_case(rank, N=11, D=2, xs=two(6, 5))
    out["svgd_fixed_imq"] = lambda: svgd_case(rank, N=10, D=3, xs=two(1, 9), kernel="imq", bandwidth=1.0)
    for kind in ("mmd", "svgd", "logratio", "diffflow", "langevin"):
        out[f"flow_{kind}"] = lambda kind=kind: flow_case(kind, rank)
    # disagreements and bad input: every rank must raise, none may hang
    out["err_dimension"] = lambda: error_case(lambda: gd.mmd_field(torch.randn(4, 2 + rank), torch.randn(3, 2 + rank)))
    out["err_kernel"] = lambda: error_case(lambda: gd.mmd2(torch.randn(4, 2), torch.randn(3, 2),
                                                           kernel="gaussian" if rank == 0 else "imq"))
    out["err_bandwidth"] = lambda: error_case(lambda: gd.kde_score(torch.randn(4, 2), torch.randn(3, 2),
                                                                   bandwidth=1.0 + rank))
    out["err_dtype"] = lambda: error_case(lambda: gd.kernel_integral(
        torch.randn(4, 2, dtype=torch.float64 if rank else torch.float32),
        torch.randn(3, 2, dtype=torch.float64 if rank else torch.float32)))
    out["err_nan_on_rank1"] = lambda: error_case(lambda: gd.svgd_field(
        torch.full((4, 2), float("nan") if rank == 1 else 0.5), torch.randn(4, 2)))
    out["err_all_empty_y"] = lambda: error_case(lambda: gd.kde_denoiser(torch.randn(3, 2), torch.randn(0, 2),
                                                                        bandwidth=1.0))
    out["after_errors_still_works"] = lambda: pair_case("kernel_integral", rank, N=4, M=4, xs=two(2, 2), ys=two(1, 3),
                                                        with_v=1)
    return out


def main():
    outdir = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    if len(sys.argv) > 2 and sys.argv[2] == "crash":
        # rank 1 dies while rank 0 waits in a ring: rank 0 must not hang
        if rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        gd.mmd_field(torch.randn(5, 2), torch.randn(5, 2))
        return
    results = {}
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    for name, fn in cases(rank).items():
        if only and name not in only:
            continue
        try:
            results[name] = fn()
        except Exception:
            results[name] = "crash: " + traceback.format_exc()[-2000:]
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
