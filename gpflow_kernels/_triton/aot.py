"""Ahead-of-time compilation of the Triton kernels for a GPU target, on a machine without a GPU.

Used by tests/test_triton_compile.py (every kernel variant lowers to a cubin for sm_80/sm_90) and
by benchmarks/ptx_count.py (static instruction counts). Not usable under TRITON_INTERPRET=1, where
the kernels are interpreted functions.
"""

from __future__ import annotations

from typing import Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

#: The kernels' integer runtime arguments; the others are pointers (``*_ptr``) or float scalars.
INT_ARGS = {"N", "M", "P", "K", "inv_bs"}


def compile_for(kernel, constexprs: dict, *, dtype: str = "fp32", arch: int = 90, num_warps: int = 4,
                num_stages: Optional[int] = None, aligned: bool = False):
    """Compile ``kernel`` (a @triton.jit function, autotuned or not) with the given constexprs for
    CUDA SM ``arch``, its pointers pointing at ``dtype`` ("fp32" or "fp64"). ``aligned``: the
    pointers carry the 16-byte alignment hint that a launch on torch tensors gives them (it changes
    the layouts, and so the shared memory). Returns the compiled kernel; ``.asm`` holds its "ptx"
    and "cubin", ``.metadata.shared`` its shared memory in bytes."""
    fn = getattr(kernel, "fn", kernel)  # under the autotuner
    ptr = "*fp64" if dtype == "fp64" else "*fp32"
    sig = {a: ("constexpr" if a in constexprs else ptr if a.endswith("_ptr") else "i32" if a in INT_ARGS else "fp32")
           for a in fn.arg_names}
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if aligned and a.endswith("_ptr")}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32), options=options)
