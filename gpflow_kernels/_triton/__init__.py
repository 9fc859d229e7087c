"""Triton backend: fused kernels with the same primitive contract as gpflow_kernels.reference.

Import needs the ``triton`` package; kernels run on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1`` (how CI tests them).
"""

from .common import MAX_D
from .kde import softmax_mean, softmax_mean_backward
from .pairs import grad_sum, grad_sum_backward, integral, integral_backward

__all__ = ["integral", "integral_backward", "grad_sum", "grad_sum_backward", "softmax_mean", "softmax_mean_backward", "MAX_D"]
