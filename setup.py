"""Build script: the pure-Python packages (described in pyproject.toml) plus, where nvcc is
available, the optional CUDA extension gpflow_kernels._cuda_ext built from csrc/ with ninja.

The extension does not link against torch (Python passes raw device pointers, sizes, dtype and
stream), so it builds with any nvcc for any torch. Environment:
  GPFLOW_BUILD_CUDA=1   build it, and fail if nvcc is missing or the build fails
  GPFLOW_BUILD_CUDA=0   never build it
  (unset)               build it when nvcc is found (on PATH or in $CUDA_HOME/bin)
  GPFLOW_CUDA_ARCHS     semicolon-separated SM versions, default "80;90"
"""

import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = os.path.join("csrc", "gpflow_cuda.cu")


def find_nvcc():
    flag = os.environ.get("GPFLOW_BUILD_CUDA", "").strip()
    if flag == "0":
        return None
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        cand = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        nvcc = cand if os.path.exists(cand) else None
    if nvcc is None:
        if flag == "1":
            raise SystemExit("GPFLOW_BUILD_CUDA=1 but nvcc was not found (PATH, $CUDA_HOME/bin)")
        print("gpflow-kernels: nvcc not found, installing without the CUDA extension (backend='cuda' unavailable)")
    return nvcc


class NinjaBuildExt(build_ext):
    """Compile the .cu with nvcc and link a Python extension, through a generated build.ninja."""

    def build_extension(self, ext):
        import ninja
        import pybind11

        nvcc = ext.nvcc
        out = os.path.abspath(self.get_ext_fullpath(ext.name))
        tmp = os.path.abspath(self.build_temp)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.makedirs(tmp, exist_ok=True)
        archs = [a.strip() for a in os.environ.get("GPFLOW_CUDA_ARCHS", "80;90").split(";") if a.strip()]
        gencode = " ".join(f"-gencode arch=compute_{a},code=sm_{a}" for a in archs)
        includes = f"-I{pybind11.get_include()} -I{sysconfig.get_paths()['include']}"
        src = os.path.abspath(ext.sources[0])
        obj = os.path.join(tmp, "gpflow_cuda.o")
        with open(os.path.join(tmp, "build.ninja"), "w") as f:
            f.write(
                f"rule nvcc\n  command = {nvcc} -std=c++17 -O3 -Xcompiler -fPIC -Xcompiler -fvisibility=hidden "
                f"{includes} {gencode} -c $in -o $out\n"
                f"rule link\n  command = {nvcc} -shared $in -o $out -cudart static\n"
                f"build {obj}: nvcc {src}\n"
                f"build {out}: link {obj}\n"
            )
        try:
            subprocess.check_call([os.path.join(ninja.BIN_DIR, "ninja"), "-C", tmp])
        except subprocess.CalledProcessError:
            print("gpflow-kernels: building the CUDA extension failed (set GPFLOW_BUILD_CUDA=0 to skip it)", file=sys.stderr)
            raise


nvcc = find_nvcc()
ext_modules = []
if nvcc:
    ext = Extension("gpflow_kernels._cuda_ext", sources=[SOURCE])
    ext.nvcc = nvcc
    ext_modules.append(ext)

setup(ext_modules=ext_modules, cmdclass={"build_ext": NinjaBuildExt})
