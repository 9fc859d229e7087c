"""Build script.

The pure-Python packages (gpflow_kernels, solvers) are described in pyproject.toml. This file
exists for the optional CUDA extension built from csrc/, which later work adds; until then it
installs the pure-Python packages only.
"""

from setuptools import setup

setup()
