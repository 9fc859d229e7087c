"""The ops under torch.compile, torch.export and torch.func (issue: silent wrong answers).

Before the compiled backends were custom operators, dynamo traced the extensions' raw
``data_ptr()`` calls on fake tensors: ``torch.compile(lambda a, b: gk.mmd_field(a, b))`` returned
all NaN in float64 (eager: correct), and the solvers' ``compile=True`` stopped with NonFiniteError.
Here every op, backend and dtype, forward and backward, compiled with ``fullgraph=True``, must give
the eager numbers. Most cases compile with the "aot_eager" backend (dynamo, the fake kernels and
the registered backward, without inductor's C++ build, which costs seconds per graph on 2 cores);
the cases from the issue and the solvers use inductor, as users do.
"""

import warnings

import pytest
import torch

import gpflow_kernels as gk
import solvers
from gpflow_kernels import _cpu

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="needs the fused CPU extension")

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


def _inputs(dtype, n=6, m=8, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.rand(m, 2, generator=g, dtype=torch.float64).to(dtype)
    return x, y, v


OPS = {
    "mmd_field": lambda x, y, v, be: gk.mmd_field(x, y, backend=be, kernel="imq", bandwidth=0.8),
    "mmd_field_ref_weights": lambda x, y, v, be: gk.mmd_field(x, y, x_ref=y[:5] * 0.5, weights=v[:, 0], backend=be),
    "mmd2": lambda x, y, v, be: gk.mmd2(x, y, backend=be, kernel="laplace", bandwidth=[0.5, 2.0]),
    "mmd2_unbiased_median": lambda x, y, v, be: gk.mmd2(x, y, unbiased=True, bandwidth="median", backend=be),
    "kernel_integral": lambda x, y, v, be: gk.kernel_integral(x, y, v, backend=be, kernel="energy"),
    "kde_score": lambda x, y, v, be: gk.kde_score(x, y, bandwidth=0.4, backend=be),
    "kde_denoiser": lambda x, y, v, be: gk.kde_denoiser(x, y, bandwidth=0.7, backend=be),
    "svgd_field": lambda x, y, v, be: gk.svgd_field(x, -x, backend=be, kernel="polyharmonic"),
}


def _eager_and_compiled(op, dtype, backend, compiler="aot_eager"):
    x, y, v = _inputs(dtype)
    fn = OPS[op]
    leaves = [t.clone().requires_grad_() for t in (x, y, v)]
    out = fn(*leaves, backend)
    grads = torch.autograd.grad((out * out).sum(), leaves, allow_unused=True)
    torch._dynamo.reset()
    cfn = torch.compile(lambda a, b, c: fn(a, b, c, backend), backend=compiler, fullgraph=True)
    cleaves = [t.clone().requires_grad_() for t in (x, y, v)]
    cout = cfn(*cleaves)
    cgrads = torch.autograd.grad((cout * cout).sum(), cleaves, allow_unused=True)
    return (out, grads), (cout, cgrads)


def _same(a, b, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    (out, grads), (cout, cgrads) = a, b
    torch.testing.assert_close(cout, out, rtol=tol, atol=tol)
    for g, cg in zip(grads, cgrads):
        assert (g is None) == (cg is None)
        if g is not None:
            torch.testing.assert_close(cg, g, rtol=tol, atol=tol)


# "auto" is "cpu" here (the inductor cases below use it); the tiled torch path traces as plain
# torch and was right under compile already, so it runs in float64 only (CI time).
@pytest.mark.parametrize("backend, dtype", [("cpu", torch.float32), ("cpu", torch.float64), ("torch", torch.float64)])
@pytest.mark.parametrize("op", sorted(OPS))
def test_compiled_op_equals_eager_forward_and_backward(op, backend, dtype):
    eager, compiled = _eager_and_compiled(op, dtype, backend)
    assert bool(torch.isfinite(eager[0]).all())
    _same(eager, compiled, dtype)


@pytest.mark.interpreter
@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["mmd_field", "kde_score", "kernel_integral"])
def test_compiled_triton_op_equals_eager(op, dtype):
    _same(*_eager_and_compiled(op, dtype, "triton"), dtype)


@pytest.mark.parametrize("op", ["mmd_field", "mmd2", "kde_score"])
def test_the_reported_cases_under_inductor(op):
    # The reproducer: float64 mmd_field was all NaN, mmd2 NaN, kde_score finite but wrong.
    eager, compiled = _eager_and_compiled(op, torch.float64, "auto", compiler="inductor")
    _same(eager, compiled, torch.float64)


def test_a_compiled_op_sees_one_opaque_operator_per_reduction():
    x, y, _ = _inputs(torch.float64)
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(lambda a, b: gk.mmd_field(a, b, backend="cpu"), backend=count, fullgraph=True)(x, y)
    calls = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert calls.count(torch.ops.gpflow.grad_sum.default) == 2  # attraction and repulsion


def test_torch_export_holds_the_custom_operators():
    x, y, _ = _inputs(torch.float64)

    class M(torch.nn.Module):
        def forward(self, a, b):
            return gk.mmd_field(a, b, backend="cpu") + gk.kde_score(a, b, bandwidth=0.5, backend="cpu")

    ep = torch.export.export(M(), (x, y))
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert torch.ops.gpflow.grad_sum.default in targets and torch.ops.gpflow.softmax_mean.default in targets
    torch.testing.assert_close(ep.module()(x, y), M()(x, y), rtol=1e-12, atol=1e-12)


def test_the_operators_pass_torch_library_opcheck():
    x, y, v = _inputs(torch.float64)
    s2 = torch.full((1, 1), 0.64, dtype=torch.float64)
    xb, yb, vb = x[None].requires_grad_(), y[None].requires_grad_(), v[None].requires_grad_()
    torch.library.opcheck(torch.ops.gpflow.integral.default, (xb, yb, vb, s2, 1, 0.0, 0.0, 0.0, "cpu"))
    torch.library.opcheck(torch.ops.gpflow.grad_sum.default, (xb, yb, None, s2, 0, 0.0, 0.0, 0.0, "cpu"))
    torch.library.opcheck(torch.ops.gpflow.softmax_mean.default, (xb, yb, s2, "cpu"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_a_bad_value_under_compile_is_still_named():
    x, y, _ = _inputs(torch.float64)
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: gk.mmd_field(a, b), backend="aot_eager", fullgraph=True)
    f(x, y)
    x[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="x contains NaN or infinite values"):
        f(x, y)


def test_double_backward_is_refused_on_the_operator_path_too():
    x, y, _ = _inputs(torch.float64)
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: gk.mmd2(a, b, backend="cpu"), backend="aot_eager")
    a = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(a, y), a, create_graph=True)
    if g.requires_grad:  # the graph of the gradient, if any, must refuse to be differentiated
        with pytest.raises(RuntimeError, match="double backward"):  # torch's own words under compile
            g.sum().backward()
    # The operator's registered backward, called eagerly, refuses it in ours.
    s2 = torch.full((1, 1), 1.0, dtype=torch.float64)
    b = x[None].clone().requires_grad_()
    out = torch.ops.gpflow.integral(b, y[None], None, s2, 0, 0.0, 0.0, 0.0, "cpu")
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(out.sum(), b, create_graph=True)


@pytest.mark.parametrize("transform", ["grad", "jacrev", "vmap"])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_torch_func_transforms_stop_with_one_line_naming_the_op(transform, backend):
    x, y, _ = _inputs(torch.float64)
    with pytest.raises(RuntimeError) as e:
        if transform == "grad":
            torch.func.grad(lambda a: gk.mmd2(a, y, backend=backend))(x)
        elif transform == "jacrev":
            torch.func.jacrev(lambda a: gk.kde_score(a, y, bandwidth=0.5, backend=backend))(x)
        else:
            torch.func.vmap(lambda a: gk.mmd_field(a, y, backend=backend))(x[None].expand(3, -1, -1))
    msg = str(e.value)
    assert "\n" not in msg and "does not support torch.func transforms" in msg and "gpflow_kernels." in msg
    assert "torch.autograd.grad" in msg


# ----- the solvers' compile=True with every built-in field ------------------------------------

def _fields(dtype):
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.5 + 1.0).to(dtype)
    x0 = torch.randn(24, 2, generator=g, dtype=torch.float64).to(dtype)
    ts = torch.linspace(0, 1, 5, dtype=dtype)
    return data, x0, ts


SOLVES = {
    "MMDFlow": lambda d, x0, ts, c: solvers.odeint(solvers.MMDFlow(d, bandwidth=1.0), x0, ts, compile=c, save="last"),
    "SteinFlow": lambda d, x0, ts, c: solvers.odeint(solvers.SteinFlow(lambda x: -x), x0, ts, compile=c, save="last"),
    "LogRatioField": lambda d, x0, ts, c: solvers.odeint(solvers.LogRatioField(d, sigma=0.5), x0, ts, compile=c,
                                                         save="last"),
    "MMDFlow-dopri5": lambda d, x0, ts, c: solvers.odeint(solvers.MMDFlow(d, bandwidth=1.0), x0, ts, method="dopri5",
                                                          compile=c, save="last"),
    "DiffFlowSDE": lambda d, x0, ts, c: solvers.sdeint(solvers.DiffFlowSDE.from_samples(d, sigma=0.5, beta=1.0, mix=0.2),
                                                       x0, ts, generator=torch.Generator().manual_seed(2), compile=c,
                                                       save="last"),
}


@pytest.mark.parametrize("field, dtype", [(f, torch.float32) for f in sorted(SOLVES)]
                         + [("MMDFlow", torch.float64), ("DiffFlowSDE", torch.float64)])
def test_solver_compile_true_gives_the_eager_numbers(field, dtype):
    d, x0, ts = _fields(dtype)
    eager = SOLVES[field](d, x0, ts, False)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = SOLVES[field](d, x0, ts, True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol)
