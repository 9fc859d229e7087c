"""``gpflow check``: every public op on every backend usable here, forward and backward, against
the float64 reference, then a median time; the first thing to run on a new machine.

For each op (mmd_field, mmd2, kernel_integral, kde_score, kde_denoiser, svgd_field), built-in
kernel, point dimension D (the buckets the kernels special-case), dtype and backend: the op and
the gradients of a fixed random projection of its output with respect to every input, against
the same with ``backend="torch"`` in float64 on the same (rounded) inputs. The error of a case is
the largest, over the output and the gradients, of ‖got − ref‖ / ‖ref‖; budgets: 1e-9 in float64,
1e-4 in float32, 2e-2 in bfloat16 (where the backend takes it). The shapes are ragged (not multiples
of any tile) and batched. One row is printed per case as soon as it is known; ``--json PATH``
writes every row and the environment (written whole at the end, through a temporary file);
``--jsonl PATH`` appends each row as one JSON line the moment it is measured (the environment
first), so a run cut off from outside keeps every row it finished.

The budgets are the backends' agreement with the reference on benign data (points spread at unit
scale, σ ≈ 0.7·sqrt(D)). Then the accuracy contract's hard cases (gpflow_kernels.accuracy: self
pairs at small bandwidths, close pairs on offset data, the soft assignment on tight clusters) on
every backend here, against dense float64 oracles with the contract's per-row budget: rows named
``contract/<case>``, whose error column is the worst row's error as a fraction of its budget (pass:
at most 1). The same cases run in CI on the CPU backends (tests/test_accuracy_contract.py).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from . import accuracy, ops
from .kernels import KERNELS

BUDGET = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2}
DIMS = (1, 2, 3, 16, 17, 64, 130, 512)
QUICK_DIMS = (1, 3, 17, 130)


# op: (callable(x, y, v, kernel, s, backend) -> output, names of the inputs to differentiate, Gaussian only)
OPS: Dict[str, Any] = {
    "mmd_field": (lambda x, y, v, k, s, be: ops.mmd_field(x, y, kernel=k, bandwidth=s, backend=be), ("x", "y"), False),
    "mmd2": (lambda x, y, v, k, s, be: ops.mmd2(x, y, kernel=k, bandwidth=s, backend=be), ("x", "y"), False),
    "kernel_integral": (lambda x, y, v, k, s, be: ops.kernel_integral(x, y, v, kernel=k, bandwidth=s, backend=be),
                        ("x", "y", "v"), False),
    "kde_score": (lambda x, y, v, k, s, be: ops.kde_score(x, y, bandwidth=s, backend=be), ("x", "y"), True),
    "kde_denoiser": (lambda x, y, v, k, s, be: ops.kde_denoiser(x, y, bandwidth=s, backend=be), ("x", "y"), True),
    # the score: a smooth function of the particles, so its gradient flows into x as well
    "svgd_field": (lambda x, y, v, k, s, be: ops.svgd_field(x, -x, kernel=k, bandwidth=s, backend=be), ("x",), False),
}


def environment(device: torch.device) -> Dict[str, Any]:
    """torch, triton, CUDA, the device and which extensions are built."""
    from . import _cpu, _cuda

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cpu_extension": _cpu.available(), "cuda_extension": _cuda.available(),
           "threads": torch.get_num_threads()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["device_name"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        try:  # the driver version, where NVML answers
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            env["driver"] = None
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def backends(device: torch.device, D: int) -> List[str]:
    """The backends that run for points of dimension D on ``device``."""
    from . import _cpu, _cuda

    out = ["torch"]
    if device.type == "cpu" and _cpu.available():
        out.append("cpu")
    triton_ok = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    mod, _ = ops._triton_module()
    if triton_ok and mod is not None and D <= mod.MAX_D:
        out.append("triton")
    if device.type == "cuda" and _cuda.available() and D <= _cuda.MAX_D:
        out.append("cuda")
    return out


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    scale = float(ref.norm())
    return float((got - ref).norm()) / scale if scale > 0 else float((got - ref).norm())


def _run(fn, inputs: Dict[str, torch.Tensor], wrt: Sequence[str], kernel, s, backend, w=None):
    """(output, gradients of (output·w).sum() with respect to wrt)."""
    leaves = {k: t.detach().clone().requires_grad_(k in wrt) for k, t in inputs.items()}
    out = fn(leaves["x"], leaves["y"], leaves["v"], kernel, s, backend)
    if w is None:
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.device)
    grads = torch.autograd.grad((out * w.to(out.dtype)).sum(), [leaves[k] for k in wrt])
    return out, grads, w


def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds of fn() over reps calls (CUDA: synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def cases(device: torch.device, quick: bool, ops_filter: Optional[Sequence[str]] = None,
          dims: Optional[Sequence[int]] = None):
    """(op, kernel, D, dtype, backend) of every case to check here."""
    dims = dims or (QUICK_DIMS if quick else DIMS)
    kernels = ("gaussian", "imq") if quick else tuple(KERNELS)
    dtypes = [torch.float32, torch.float64]
    for name, (_, _, gaussian_only) in OPS.items():
        if ops_filter and name not in ops_filter:
            continue
        for kern in (("gaussian",) if gaussian_only else kernels):
            for D in dims:
                for be in backends(device, D):
                    for dt in dtypes + ([torch.bfloat16] if be in ("triton",) and device.type == "cuda" else []):
                        yield name, kern, D, dt, be


def _contract(dev: torch.device, quick: bool, rows: "_Rows", out: Callable[[str], None]) -> None:
    """The accuracy contract's hard cases on every backend usable here, one row each."""
    for case, kern, D, dt, run in accuracy.hard_cases(quick):
        for be in backends(dev, D):
            row = {"op": f"contract/{case}", "kernel": kern, "D": D, "dtype": str(dt).replace("torch.", ""),
                   "backend": be, "budget": 1.0, "median_ms": None, "pairs_per_s": None}
            try:
                frac = run(be, dev)
                row.update(rel_err=frac, ok=bool(frac <= 1.0))
            except accuracy.ContractError as e:
                row.update(rel_err=None, ok=False, error=str(e)[:300])
            except Exception as e:  # a kernel that fails to compile or launch
                row.update(rel_err=None, ok=False,
                           error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
            rows.append(row)
            err_txt = "-" if row["rel_err"] is None else f"{row['rel_err']:.2e}"
            out(f"| contract/{case} | {kern} | {D} | {row['dtype']} | {be} | {err_txt} | 1 of budget | "
                f"{'pass' if row['ok'] else 'FAIL'} | - | - |" + (f" {row['error']}" if "error" in row else ""))


class _Rows(list):
    """The rows so far; each appended row also goes to the JSON-lines file at once, when there is one."""

    def __init__(self, jsonl_path: Optional[str], env: Dict[str, Any]):
        super().__init__()
        self.path = jsonl_path
        if self.path is not None:
            with open(self.path, "w") as f:
                f.write(json.dumps({"environment": env}) + "\n")

    def append(self, row: Dict[str, Any]) -> None:
        super().append(row)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def run_check(device: str = "cpu", quick: bool = False, json_path: Optional[str] = None,
              ops_filter: Optional[Sequence[str]] = None, out: Callable[[str], None] = print,
              sizes: Optional[tuple] = None, dims: Optional[Sequence[int]] = None,
              jsonl_path: Optional[str] = None) -> int:
    """Check every case (see the module doc); returns the exit status: 0 all passed, 1 otherwise.

    sizes: (B, N, M) of the checked arrays (default (2, 37, 29) on the CPU, quick (2, 13, 11), and
    (2, 3001, 2503) on a GPU). Timings are of the forward pass on the same arrays. dims: the point
    dimensions D to check (default: DIMS, or QUICK_DIMS with quick); the contract's cases keep theirs.
    jsonl_path: a file that gets one JSON line per row as soon as it is measured.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")
    env = environment(dev)
    out("gpflow check: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    B, N, M = sizes or ((2, 13, 11) if quick else (2, 37, 29) if dev.type == "cpu" else (2, 3001, 2503))
    reps = 3 if dev.type == "cpu" else 10
    out("| op | kernel | D | dtype | backend | rel err | budget | ok | median ms | pairs/s |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    rows = _Rows(jsonl_path, env)
    refs: Dict[tuple, Any] = {}
    for name, kern, D, dt, be in cases(dev, quick, ops_filter, dims):
        fn, wrt, _ = OPS[name]
        g = torch.Generator().manual_seed(D)
        base = {"x": torch.randn(B, N, D, generator=g, dtype=torch.float64),
                "y": torch.randn(B, M, D, generator=g, dtype=torch.float64) + 0.3,
                "v": torch.randn(B, M, 3, generator=g, dtype=torch.float64)}
        s = 0.7 * max(1.0, D ** 0.5)
        inputs = {k: t.to(dt).to(dev) for k, t in base.items()}
        row = {"op": name, "kernel": kern, "D": D, "dtype": str(dt).replace("torch.", ""), "backend": be,
               "budget": BUDGET[dt], "shape": [B, N, M]}
        try:
            key = (name, kern, D, dt)
            if key not in refs:  # the float64 torch answer on these (rounded) inputs
                refs[key] = _run(fn, {k: t.to(torch.float64) for k, t in inputs.items()}, wrt, kern, s, "torch")
            ref_out, ref_grads, w = refs[key]
            got_out, got_grads, _ = _run(fn, inputs, wrt, kern, s, be, w)
            err = max([_rel(got_out, ref_out)] + [_rel(a, b) for a, b in zip(got_grads, ref_grads)])
            sec = _time(lambda: fn(inputs["x"], inputs["y"], inputs["v"], kern, s, be), dev, reps)
            pairs = B * N * M * (2 if name in ("mmd_field", "mmd2") else 1)
            row.update(rel_err=err, ok=bool(err <= BUDGET[dt]), median_ms=sec * 1e3, pairs_per_s=pairs / sec)
        except Exception as e:  # a kernel that fails to compile or launch is a failed row, not a stop
            row.update(rel_err=None, ok=False, median_ms=None, pairs_per_s=None,
                       error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
        rows.append(row)
        err_txt = "-" if row["rel_err"] is None else f"{row['rel_err']:.2e}"
        t_txt = "-" if row["median_ms"] is None else f"{row['median_ms']:.3f}"
        p_txt = "-" if row["pairs_per_s"] is None else f"{row['pairs_per_s']:.3e}"
        out(f"| {name} | {kern} | {D} | {row['dtype']} | {be} | {err_txt} | {BUDGET[dt]:.0e} | "
            f"{'pass' if row['ok'] else 'FAIL'} | {t_txt} | {p_txt} |" + (f" {row['error']}" if "error" in row else ""))
    if not ops_filter or "contract" in ops_filter:
        _contract(dev, quick, rows, out)
    bad = [r for r in rows if not r["ok"]]
    if json_path is not None:
        tmp = f"{json_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"environment": env, "rows": list(rows), "failures": len(bad)}, f, indent=1)
        os.replace(tmp, json_path)
    if bad:
        names = sorted({f"{r['op']}/{r['backend']}/{r['dtype']}" for r in bad})
        out(f"gpflow check: {len(bad)} of {len(rows)} cases FAILED: {', '.join(names)}")
        return 1
    out(f"gpflow check: all {len(rows)} cases passed")
    return 0
