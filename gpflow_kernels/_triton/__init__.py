"""Triton backend: fused kernels with the same primitive contract as gpflow_kernels.reference.

Import needs the ``triton`` package; kernels run on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1`` (how CI tests them).
"""

import re
from typing import Optional

import triton

from .common import MAX_D
from .kde import LSE_UNIT, softmax_mean, softmax_mean_backward
from .pairs import grad_sum, grad_sum_backward, integral, integral_backward

__all__ = ["LSE_UNIT", "integral", "integral_backward", "grad_sum", "grad_sum_backward", "softmax_mean", "softmax_mean_backward", "MAX_D",
           "MIN_TRITON", "version_problem"]

#: The oldest Triton these kernels are tested with (the interpreter suite against float64 and the
#: sm_80/sm_90 compile). Triton 3.4 has no float64 ``tl.dot``.
MIN_TRITON = (3, 5)


def version_problem(version: Optional[str] = None) -> Optional[str]:
    """Why the installed (or the given) Triton version cannot run these kernels, or None."""
    version = triton.__version__ if version is None else version
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < MIN_TRITON:
        return f"triton {version} is older than {MIN_TRITON[0]}.{MIN_TRITON[1]}, the oldest version the fused kernels support"
    return None
