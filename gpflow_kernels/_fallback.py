"""``backend="auto"`` on CUDA degrades instead of crashing (issue "GPU readiness", item 2).

The Triton kernels are picked by default on CUDA tensors. A kernel configuration that fails to
compile or launch there (Triton's ``OutOfResources`` or ``CompilationError``, a CUDA launch
error: any exception other than our own argument errors) is a crash in the user's training loop.
Under ``"auto"`` the primitive is instead computed by the tiled torch reference, with one warning
naming the primitive, the dtype, D and the error, and that configuration keeps using the reference
for the rest of the process. ``backend="triton"`` (or ``"cuda"``) still raises.

Covered: the kernel integral and gradient sum, forward and backward (mmd_field, mmd2,
kernel_integral, svgd_field). Not covered yet: the Gaussian soft assignment (kde_score,
kde_denoiser), whose log-normaliser is in each backend's own convention, and calls under
torch.compile/export (they run the registered operators, whose failures propagate).
"""

from __future__ import annotations

import warnings
from typing import Dict, Tuple

from . import reference

#: (primitive, dtype, D, kernel) -> the error, for the configurations that failed in this process
FAILED: Dict[Tuple[str, str, int, str], str] = {}

GUARDED = ("integral", "integral_backward", "grad_sum", "grad_sum_backward")


class GuardedModule:
    """The raw primitives of ``module`` (a compiled backend), each falling back to the reference
    on a compile or launch failure (see the module doc); other names are the module's."""

    def __init__(self, module, backend: str):
        self.module = module
        self.backend = backend

    def __getattr__(self, name):
        fn = getattr(self.module, name)
        if name not in GUARDED:
            return fn

        def call(kernel, x, *rest):
            key = (name, str(x.dtype).replace("torch.", ""), int(x.shape[-1]), repr(kernel))
            if key not in FAILED:
                try:
                    return fn(kernel, x, *rest)
                except (ValueError, TypeError):
                    raise  # an argument error of ours: the same on any backend
                except Exception as e:  # compile or launch failure
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                    FAILED[key] = f"{type(e).__name__}: {first}"
                    warnings.warn(f"gpflow_kernels: the {self.backend} kernel for {name} ({key[1]}, D = {key[2]}, "
                                  f"{key[3]}) failed ({FAILED[key]}); backend='auto' uses the tiled torch path "
                                  f"for it from now on in this process (backend='{self.backend}' would raise)",
                                  RuntimeWarning, stacklevel=3)
            return getattr(reference, name)(kernel, x, *rest)

        return call
