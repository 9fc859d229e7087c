"""Compile-only check of every Triton kernel for real GPU targets (sm_80, sm_90), no GPU needed.

The interpreter tests check the numbers; this checks what the interpreter cannot: that each kernel
lowers through Triton's compiler to PTX and a cubin (tl.dot shapes, dtypes, constexpr branches).
"""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

from gpflow_kernels._triton.aot import compile_for  # noqa: E402


def variants(dtype, exact, dot):
    import triton.language as tl

    from gpflow_kernels._triton import kde, pairs
    from gpflow_kernels._triton.common import SUMS_DEFER, SUMS_ONES, SUMS_REDUCE

    D, BD = (3, 16) if exact else (64, 64)
    acc = tl.float64 if dtype == "fp64" else tl.float32
    base = dict(D=D, BD=BD, EXACT=exact, ACC=acc, DOT=dot, BN=64, BM=64)
    out = [(pairs._integral_kernel, dict(base, BP=16, KIND=kind, HAS_V=True, NP=0)) for kind in range(6)]
    out.append((pairs._integral_kernel, dict(base, BP=16, KIND=0, HAS_V=False, NP=0)))
    if exact and dtype == "fp32":  # value sums kept per register slot (P <= 4)
        out += [(pairs._integral_kernel, dict(base, BP=16, KIND=0, HAS_V=v, NP=n)) for v, n in [(True, 4), (True, 3), (False, 1)]]
    # every way the launchers may sum a tile (pairs.sums_mode; a ones column needs a padding column, D < BD)
    sums = [SUMS_REDUCE] + ([SUMS_ONES] if D < BD else []) + ([SUMS_DEFER] if exact and dtype == "fp32" else [])
    out += [(pairs._field_kernel, dict(base, BP=16, KIND=1, HAS_A=a, HAS_UW=uw, SUMS=m)) for a, uw in [(True, False), (False, True)]
            for m in sums]
    out += [(pairs._hessian_kernel, dict(base, KIND=2, HAS_A=True, G_ON_ROWS=r, WANT_A=w)) for r, w in [(True, False), (False, True)]]
    out += [(kde._kde_fwd, dict(base, SUMS=m)) for m in sums]
    out += [(k, dict(base)) for k in (kde._kde_bwd_x, kde._kde_bwd_y)]
    return out


# (dtype, exact differences?, SM, tl.dot precision): float32 under each of torch's float32 matmul
# precisions ("ieee", "tf32x3", "tf32"; see common.DOT_PRECISION), float64 always "ieee".
# Each case takes 20-60 s of ptxas on 2 cores (float64 for sm_80 the longest), so the whole matrix
# is marked slow; the default run compiles one variant of every kernel function (test_quick_...).
CASES = [("fp32", True, 90, "ieee"), ("fp32", False, 90, "ieee"), ("fp64", False, 80, "ieee"),
         ("fp32", False, 90, "tf32x3"), ("fp32", False, 80, "tf32"), ("fp32", True, 80, "tf32x3")]


def _in_subprocess(call: str, timeout=600):
    # A fresh interpreter without TRITON_INTERPRET: under the interpreter (as the other tests run
    # here) the kernels are not compilable objects.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_triton_compile as t; t.{call}"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]


def _compile_in_subprocess(dtype, exact, arch, dot, quick=False):
    _in_subprocess(f"main({dtype!r}, {str(exact)!r}, {arch}, {dot!r}, {quick})")


def test_quick_every_kernel_function_compiles_for_sm90():
    _compile_in_subprocess("fp32", True, 90, "ieee", quick=True)


def main(dtype, exact, arch, dot, quick=False):
    from gpflow_kernels._triton.common import PINNED, shared_bound

    todo = variants(dtype, exact == "True", dot)
    if quick:  # the first variant of each kernel function
        seen = set()
        todo = [(k, c) for k, c in todo if not (k in seen or seen.add(k))]
    for kernel, const in todo:
        compiled = compile_for(kernel, const, dtype=dtype, arch=int(arch), num_warps=PINNED[2], num_stages=PINNED[3],
                               aligned=True)
        assert compiled.asm.get("cubin"), f"{kernel.fn.__name__} {const} produced no cubin"
        bound = shared_bound(const["BN"], const["BM"], PINNED[3], const["BD"], 8 if dtype == "fp64" else 4)
        assert bound > SM90_SHARED or compiled.metadata.shared <= bound, (kernel.fn.__name__, const, compiled.metadata.shared)
    print("compiled", dtype, exact, arch, dot)


SM90_SHARED = 232448  # bytes a block may use on an H100/H200, as Triton checks it at launch


def shared_main(dtype, d):
    """Every kernel at point dimension d: wherever common.shared_bound is within sm_90's shared
    memory, the compiled kernel is within the bound (so prune's "surely fits" is right), and the
    SMALL shape fits."""
    import triton.language as tl

    from gpflow_kernels._triton import kde, pairs
    from gpflow_kernels._triton.common import SMALL, SUMS_DEFER, SUMS_ONES, SUMS_REDUCE, TUNED, pow2, shared_bound

    bd, elem = pow2(d), 8 if dtype == "fp64" else 4
    sums = SUMS_DEFER if d <= 3 and dtype == "fp32" else SUMS_ONES if d < bd else SUMS_REDUCE
    kernels = [(pairs._field_kernel, dict(BP=4, KIND=0, HAS_A=True, HAS_UW=False, SUMS=sums)),
               (pairs._integral_kernel, dict(BP=4, KIND=0, HAS_V=True, NP=0)),
               (pairs._hessian_kernel, dict(KIND=0, HAS_A=True, G_ON_ROWS=False, WANT_A=True)),
               (kde._kde_fwd, dict(SUMS=sums)), (kde._kde_bwd_x, {}), (kde._kde_bwd_y, {})]
    for kernel, extra in kernels:
        for bn, bm, warps, stages in TUNED + [SMALL]:
            const = dict(D=d, BD=bd, EXACT=d <= 16, ACC=tl.float64 if dtype == "fp64" else tl.float32, DOT="ieee",
                         BN=bn, BM=bm, **extra)
            bound = shared_bound(bn, bm, stages, bd, elem)
            if bound > SM90_SHARED and (bn, bm, warps, stages) != SMALL:
                continue  # prune never trusts the bound there (and these compiles take minutes at D = 512)
            shared = compile_for(kernel, const, dtype=dtype, num_warps=warps, num_stages=stages, aligned=True).metadata.shared
            # where prune trusts the bound (within the limit), it holds
            assert bound > SM90_SHARED or shared <= bound, (kernel.fn.__name__, d, dtype, (bn, bm, stages), shared, bound)
            assert (bn, bm, warps, stages) != SMALL or shared <= SM90_SHARED, (kernel.fn.__name__, d, dtype, shared)
    print("shared memory within bounds", dtype, d)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,d", [("fp64", 1), ("fp32", 1), ("fp64", 130), ("fp32", 512), ("fp64", 512)])
def test_shared_memory_bound_and_the_small_shape(dtype, d):
    _in_subprocess(f"shared_main({dtype!r}, {d})", timeout=1200)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,exact,arch,dot", CASES, ids=lambda v: str(v))
def test_every_kernel_compiles_to_a_cubin(dtype, exact, arch, dot):
    _compile_in_subprocess(dtype, exact, arch, dot)
