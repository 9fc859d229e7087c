"""One call on a GPU machine: check the Triton kernels against float64, then time them.

Usage (from the repository root): python benchmarks/gpu_check.py [--quick]
Checks the Triton (and, where built, CUDA) backends against the float64 torch reference, then
prints a table of median times (CUDA events via triton.testing.do_bench), pairs per second and
the fraction of the exp-throughput ceiling, for mmd_field, kernel_integral and kde_score, with the
tiled torch path (and pykeops when installed, checked against ours first) as baselines. Above
D = 16 Triton also runs as "triton-tf32x3" and "triton-tf32" (torch's float32 matmul precision
"high" and "medium": tensor-core dots), with their own accuracy rows and budgets.

Per pair, the Gaussian mmd_field forward at small D costs one exp2 plus about 3D + 4 FLOPs
(D subtractions and D FMAs for r², the scale, the weight, the row sum, D FMAs for W·y), and moves
no bytes beyond the O(N + M) inputs. As compiled it spends 14 float32 ops per pair at D = 2 and 17
at D = 3 (benchmarks/ptx_count.py), against 8 per exp2 that the FMA pipe can hide, so it can
reach about half of the special-function unit's ceiling, not all of it. An H100 SXM has
132 SMs × 16 MUFU ops/clock at ~1.98 GHz ≈ 4.2e12 exp/s, so the ceiling is ~4e12 pairs/s
(10^9 pairs: ~0.24 ms; N = M = 1e6, i.e. 10^12 pairs per term: ~0.24 s). At D = 64 the distance tile is a tensor-core product: 2·64 FLOPs per
pair for x·y plus 2·64 for W·y.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # keops_ops
import gpflow_kernels as gk  # noqa: E402

EXP_PER_S = 132 * 16 * 1.98e9  # H100 SXM MUFU ceiling (datasheet lead; measure to confirm)
# H100 SXM datasheet float32 rates (dense): CUDA-core FMAs, and TF32 tensor cores (tf32x3 spends
# three TF32 products per float32 product). Above D = 16 the distance dot and W·y cost 4·D FLOPs
# per pair.
DOT_FLOPS = {"triton": 67e12, "triton-tf32x3": 495e12 / 3, "triton-tf32": 495e12}


def dot_fraction(impl, d, rate):
    """Fraction of the float32 dot ceiling of ``impl`` reached at ``rate`` pairs/s, or None."""
    from gpflow_kernels.reference import EXACT_MAX_D

    if d <= EXACT_MAX_D or impl not in DOT_FLOPS:
        return None
    return rate * 4 * d / DOT_FLOPS[impl]


def rel_err(got, ref):
    return float((got.double() - ref).norm() / ref.norm().clamp_min(1e-300))


#: Triton under torch's other float32 matmul precisions: tensor-core dots (see
#: gpflow_kernels._triton.common.DOT_PRECISION), with their float32 accuracy budgets.
TF32 = {"triton-tf32x3": "high", "triton-tf32": "medium"}
BUDGET32 = {"triton-tf32": 5e-3}


def backends(d, device="cuda"):
    """Our GPU backends for point dimension d: triton (also with TF32 dots above the exact-
    difference range, where the distances are dots too), and cuda where the extension is built
    (and the points are on a GPU: the extension can be built on a machine without one)."""
    from gpflow_kernels import _cuda
    from gpflow_kernels.reference import EXACT_MAX_D

    usable = _cuda.available() and torch.device(device).type == "cuda" and d <= _cuda.MAX_D
    return ["triton"] + (list(TF32) if d > EXACT_MAX_D else []) + (["cuda"] if usable else [])


def call(f, args, impl):
    """f(*args, backend) for ``impl``: a backend name, or a TF32 variant of triton."""
    if impl not in TF32:
        return f(*args, impl)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(TF32[impl])
    try:
        return f(*args, "triton")
    finally:
        torch.set_float32_matmul_precision(old)


OPS = {
    "mmd_field": lambda a, b, c, s, be: gk.mmd_field(a, b, bandwidth=s, backend=be),
    "kernel_integral": lambda a, b, c, s, be: gk.kernel_integral(a, b, c, bandwidth=s, backend=be),
    "kde_score": lambda a, b, c, s, be: gk.kde_score(a, b, bandwidth=s, backend=be),
}


def keops_op(name):
    """The KeOps baseline of op ``name`` (same arguments as OPS), or None."""
    try:
        import keops_ops
    except ImportError:
        return None
    if name == "mmd_field":
        return lambda a, b, c, s: keops_ops.mmd_field(a, b, s)
    if name == "kernel_integral":
        return lambda a, b, c, s: keops_ops.kernel_integral(a, b, c, s)
    if name == "kde_score":
        return lambda a, b, c, s: keops_ops.kde_score(a, b, s)
    return None


def check(n=3000, m=2500, dims=(1, 2, 3, 17, 64, 130), device="cuda"):
    """Accuracy of our GPU backends against float64 torch; raises SystemExit on a failure.
    (The tests run it on the CPU through TRITON_INTERPRET=1 with tiny sizes.)"""
    rows = []
    # each row printed as soon as it is known: a launch that fails later leaves the rows before it
    print("| op | D | backend | rel err fp32 | rel err fp64 |", flush=True)
    for d in dims:
        g = torch.Generator(device=device).manual_seed(d)
        x = torch.randn(2, n, d, device=device, generator=g)
        y = torch.randn(2, m, d, device=device, generator=g) + 0.3
        v = torch.randn(2, m, 3, device=device, generator=g)
        s = 0.7 * d**0.5
        X, Y, V = x.double(), y.double(), v.double()
        for name, f in OPS.items():
            ref = f(X, Y, V, s, "torch")
            for be in backends(d, device):
                e64 = None if be in TF32 else rel_err(call(f, (X, Y, V, s), be), ref)  # float64: always exact dots
                r = (name, d, be, rel_err(call(f, (x, y, v, s), be), ref), e64)
                rows.append(r)
                print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2e} | {'-' if r[4] is None else f'{r[4]:.2e}'} |", flush=True)
    bad = [r for r in rows if not (r[3] < BUDGET32.get(r[2], 1e-4) and (r[4] is None or r[4] < 1e-10))]
    if bad:
        raise SystemExit(f"accuracy check failed: {bad}")


def timing_cases(sizes, device="cuda"):
    """(op, N, D, impl, fn, pairs per call) for every op, size and implementation to time."""
    for n, d in sizes:
        g = torch.Generator(device=device).manual_seed(n + d)
        x = torch.randn(n, d, device=device, generator=g)
        y = torch.randn(n, d, device=device, generator=g) + 0.5
        v = torch.randn(n, 4, device=device, generator=g)
        s = 0.5 * d**0.5
        args = (x, y, v, s)  # bound as defaults below: the closures outlive this iteration
        for name, f in OPS.items():
            impls = {be: (lambda f=f, be=be, a=args: call(f, a, be)) for be in backends(d, device)}
            if n <= 100_000:
                impls["torch"] = lambda f=f, a=args: f(*a, "torch")
            kf = keops_op(name)
            if kf is not None:
                try:
                    got = kf(*args)
                except Exception as e:  # pykeops installed but unusable here (no nvrtc, say): no rows
                    print(f"KeOps left out for {name} N={n} D={d}: {type(e).__name__}: {e}")
                else:  # a KeOps answer that disagrees with ours stops the run
                    torch.testing.assert_close(got, f(*args, "torch"), rtol=1e-3, atol=1e-4)
                    impls["keops"] = lambda kf=kf, a=args: kf(*a)
            pairs = (2 if name == "mmd_field" else 1) * n * n  # mmd_field: attract + repel terms
            for impl, fn in impls.items():
                yield name, n, d, impl, fn, pairs


def bench(quick):
    from triton.testing import do_bench

    sizes = [(10_000, 2), (100_000, 2), (1_000_000, 2), (100_000, 3), (100_000, 16), (100_000, 64), (100_000, 128)]
    if quick:
        sizes = sizes[:2]
    print("| op | N=M | D | impl | median ms | pairs/s | fraction of exp ceiling | fraction of dot ceiling |", flush=True)
    for name, n, d, impl, fn, pairs in timing_cases(sizes):
        ms = do_bench(fn, warmup=50, rep=300, return_mode="median")
        rate = pairs / (ms * 1e-3)
        dots = dot_fraction(impl, d, rate)
        print(f"| {name} | {n} | {d} | {impl} | {ms:.3f} | {rate:.3e} | {rate / EXP_PER_S:.2f} | "
              f"{'-' if dots is None else f'{dots:.2f}'} |", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device")
    t0 = time.time()
    check()
    bench(args.quick)
    print(f"done in {time.time() - t0:.0f} s on {torch.cuda.get_device_name()}")
