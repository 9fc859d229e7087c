"""Property-based fuzzing of the public ops (Hypothesis).

Random shapes (batched or not, N, M, D from 1), dtypes (float16, bfloat16, float32, float64),
kernels, bandwidths (usable numbers, lists, "median", tensors, and out-of-range, zero, negative
or non-finite ones), NaN/inf placed in the inputs, and meta tensors. Each call must either raise
ValueError/TypeError, or return finite values equal to the op on float64 copies of the same inputs
(the float64 path is itself checked against dense numpy and finite differences elsewhere). Calls
on well-formed input must not raise. A deadline per example guards against hangs.
"""

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import gpflow_kernels as gk
from gpflow_kernels import _bandwidth

KERNEL_OPS = ("mmd_field", "mmd_field_ref_weights", "mmd2", "mmd2_unbiased", "kernel_integral", "svgd_field")
OPS = KERNEL_OPS + ("kde_score", "kde_denoiser")
KERNELS = ("gaussian", "imq", "laplace", "energy", "polyharmonic")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# relative tolerance of a result in each dtype against float64 on the same (rounded) inputs
TOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 2e-4, torch.float64: 1e-9}
BAD_BANDWIDTHS = (0.0, -1.0, float("nan"), float("inf"), 1e-30, 1e30, [1.0, -2.0], [], "silverman", True)


@st.composite
def cases(draw):
    op = draw(st.sampled_from(OPS))
    dtype = draw(st.sampled_from(DTYPES))
    batch = draw(st.sampled_from([(), (2,)]))
    n, m, d = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    good = True
    kind = draw(st.sampled_from(["number", "number", "list", "median", "tensor", "bad"]))
    if kind == "number":
        bw = draw(st.floats(0.05, 20.0))
    elif kind == "list":
        bw = draw(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=3))
    elif kind == "tensor":
        bw = torch.tensor(draw(st.floats(0.05, 20.0)), dtype=draw(st.sampled_from([torch.float32, torch.float64])))
    elif kind == "median":
        bw = "median"
    else:
        bw, good = draw(st.sampled_from(BAD_BANDWIDTHS)), False
        if dtype == torch.float64 and bw in (1e-30, 1e30):
            bw = bw**3  # float64's usable range reaches about 1e±76
    if op.startswith("kde") and isinstance(bw, list) and len(bw) != 1:
        good = False  # one convolution only
    corrupt = draw(st.sampled_from([None] * 6 + ["x-nan", "y-inf", "x-inf", "score-nan", "meta", "weights-neg",
                                                  "weights-zero", "ref-nan"]))
    if (corrupt == "score-nan" and op != "svgd_field") or (corrupt == "y-inf" and op == "svgd_field"):
        corrupt = None  # svgd_field takes a score and no y
    if corrupt in ("weights-neg", "weights-zero", "ref-nan") and op != "mmd_field_ref_weights":
        corrupt = None
    good = good and corrupt is None
    if op == "mmd2_unbiased" and (n < 2 or m < 2):
        good = False
    kernel = draw(st.sampled_from(KERNELS)) if op in KERNEL_OPS else None
    return dict(op=op, dtype=dtype, batch=batch, n=n, m=m, d=d, seed=seed, bw=bw, corrupt=corrupt,
                good=good, kernel=kernel, scale=draw(st.sampled_from([1.0, 1.0, 0.01, 100.0])))


def _inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = (c["scale"] * torch.randn(*c["batch"], c["n"], c["d"], generator=g, dtype=torch.float64)).to(c["dtype"])
    y = (c["scale"] * torch.randn(*c["batch"], c["m"], c["d"], generator=g, dtype=torch.float64)).to(c["dtype"])
    score = torch.randn(*c["batch"], c["n"], c["d"], generator=g, dtype=torch.float64).to(c["dtype"])
    v = torch.rand(*c["batch"], c["m"], 2, generator=g, dtype=torch.float64).to(c["dtype"])
    ref = (c["scale"] * torch.randn(*c["batch"], c["n"] + 1, c["d"], generator=g, dtype=torch.float64)).to(c["dtype"])
    w = torch.rand(*c["batch"], c["m"], generator=g, dtype=torch.float64).to(c["dtype"])
    if c["corrupt"] == "weights-neg":
        w.view(-1)[0] = -1.0
    elif c["corrupt"] == "weights-zero":
        w.zero_()
    elif c["corrupt"] == "ref-nan":
        ref.view(-1)[-1] = float("nan")
    if c["corrupt"] == "x-nan":
        x.view(-1)[0] = float("nan")
    elif c["corrupt"] == "x-inf":
        x.view(-1)[-1] = float("inf")
    elif c["corrupt"] == "y-inf":
        y.view(-1)[0] = -float("inf")
    elif c["corrupt"] == "score-nan":
        score.view(-1)[0] = float("nan")
    elif c["corrupt"] == "meta":
        x = x.to("meta")
    return x, y, score, (v, ref, w)


def _call(c, x, y, score, v, bw):
    op, kw = c["op"], {"bandwidth": bw}
    if c["kernel"]:
        kw["kernel"] = c["kernel"]
    if op == "mmd_field":
        return gk.mmd_field(x, y, **kw)
    if op == "mmd_field_ref_weights":
        return gk.mmd_field(x, y, x_ref=v[1], weights=v[2], **kw)
    if op == "mmd2":
        return gk.mmd2(x, y, **kw)
    if op == "mmd2_unbiased":
        return gk.mmd2(x, y, unbiased=True, **kw)
    if op == "kernel_integral":
        return gk.kernel_integral(x, y, v[0], **kw)
    if op == "svgd_field":
        return gk.svgd_field(x, score, **kw)
    return getattr(gk, op)(x, y, **kw)


def _scale(c, x, y, bw):
    """The size of the terms a result sums: its float64 value, and for mmd2 (a difference of kernel
    means) the kernel values themselves, so that cancellation is judged against them."""
    if not c["op"].startswith("mmd2"):
        return 0.0
    xf, yf = x.reshape(-1, c["n"], c["d"]), y.reshape(-1, c["m"], c["d"])
    s2 = _bandwidth.resolve(bw, [xf, yf], torch.float64, x.device)  # (B or 1, K)
    z = torch.cat([xf, yf], 1)
    u = torch.cdist(z, z).square()[..., None] / s2[:, None, None, :]
    return float(gk.get_kernel(c["kernel"]).profile(u, 0)[0].sum(-1).abs().max())


@settings(max_examples=1000, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(c=cases())
def test_ops_give_the_float64_answer_or_a_named_error(c):
    x, y, score, v = _inputs(c)
    try:
        out = _call(c, x, y, score, v, c["bw"])
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip()
        if c["good"]:
            # well-formed input may only be refused for a stated reason of the data itself
            allowed = ("median" in msg and c["bw"] == "median") or "overflows" in msg
            assert allowed, f"refused well-formed input: {msg}"
        return
    assert c["good"], f"accepted bad input {c['corrupt']!r} / bandwidth {c['bw']!r}"
    assert out.dtype == c["dtype"]
    assert bool(torch.isfinite(out).all()), out
    bw64 = c["bw"].double() if isinstance(c["bw"], torch.Tensor) else c["bw"]
    ref = _call(c, x.double(), y.double(), score.double(), tuple(t.double() for t in v), bw64)
    scale = max(1.0, float(ref.abs().max()), _scale(c, x.double(), y.double(), bw64))
    err = float((out.double() - ref).abs().max())
    assert err <= TOL[c["dtype"]] * scale, (err, scale)


def test_the_fuzz_covers_every_op_dtype_and_kernel():
    """The strategy draws from every op, dtype and kernel (a guard against a narrowed strategy).

    Derandomised with a fixed seed, whatever the profile: 300 unseeded draws once missed "imq"
    (a kernel is drawn only for the 6 of 8 ops that take one), a failure by chance. The same
    examples every run; 600 of them reach every kernel with a wide margin."""
    seen = {"op": set(), "dtype": set(), "kernel": set()}

    @seed(20261202)
    @settings(max_examples=600, deadline=None, database=None, derandomize=True)
    @given(c=cases())
    def collect(c):
        for k in seen:
            seen[k].add(c[k])

    collect()
    assert seen["op"] == set(OPS) and seen["dtype"] == set(DTYPES) and set(KERNELS) <= seen["kernel"]
