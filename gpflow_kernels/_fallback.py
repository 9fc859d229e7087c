"""``backend="auto"`` on CUDA degrades instead of crashing (issue "GPU readiness", item 2).

The Triton kernels are picked by default on CUDA tensors. A kernel configuration that fails to
compile or launch there (Triton's ``OutOfResources`` or ``CompilationError``, a CUDA launch
error: any exception other than our own argument errors) is a crash in the user's training loop.
Under ``"auto"`` the primitive is instead computed by the tiled torch reference, with one warning
naming the primitive, the dtype, D and the error, and that configuration keeps using the reference
for the rest of the process. ``backend="triton"`` (or ``"cuda"``) still raises.

Covered: every primitive, forward and backward: the kernel integral and gradient sum (mmd_field,
mmd2, kernel_integral, svgd_field) and the Gaussian soft assignment (kde_score, kde_denoiser), whose
log-normaliser is converted between the backend's unit (``LSE_UNIT``: log2 for Triton) and the
reference's, so that a forward pass on one and a backward pass on the other agree. Not covered:
calls under torch.compile/export (they run the registered operators, whose failures propagate).
"""

from __future__ import annotations

import warnings
from typing import Dict, Tuple

from . import reference

#: (primitive, dtype, D, kernel) -> the error, for the configurations that failed in this process
FAILED: Dict[Tuple[str, str, int, str], str] = {}

GUARDED = ("integral", "integral_backward", "grad_sum", "grad_sum_backward", "softmax_mean",
           "softmax_mean_backward")


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
        soft = name.startswith("softmax")
        unit = getattr(self.module, "LSE_UNIT", 1.0) / reference.LSE_UNIT  # backend lse = unit × reference lse

        def fallback(*args):
            if name == "softmax_mean":
                mu, lse = reference.softmax_mean(*args)
                return mu, lse * unit
            if name == "softmax_mean_backward":
                x, y, s2, lse, *rest = args
                return reference.softmax_mean_backward(x, y, s2, lse / unit, *rest)
            return getattr(reference, name)(*args)

        def call(*args):
            x = args[0] if soft else args[1]
            kern = "gaussian" if soft else repr(args[0])
            key = (name, str(x.dtype).replace("torch.", ""), int(x.shape[-1]), kern)
            if key not in FAILED:
                try:
                    return fn(*args)
                except (ValueError, TypeError):
                    raise  # an argument error of ours: the same on any backend
                except Exception as e:  # compile or launch failure
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                    FAILED[key] = f"{type(e).__name__}: {first}"
                    warnings.warn(f"gpflow_kernels: the {self.backend} kernel for {name} ({key[1]}, D = {key[2]}, "
                                  f"{key[3]}) failed ({FAILED[key]}); backend='auto' uses the tiled torch path "
                                  f"for it from now on in this process (backend='{self.backend}' would raise)",
                                  RuntimeWarning, stacklevel=3)
            return fallback(*args)

        return call
