"""Build script: the pure-Python packages (described in pyproject.toml) plus two optional
extensions built from csrc/ with ninja:

- gpflow_kernels._cpu_ext (csrc/gpflow_cpu.cpp), the fused CPU kernels, where a C++ compiler with
  OpenMP is found. Without one, or if it fails to build, the install goes on without it and the
  CPU ops use the tiled torch path (with a one-line notice here and from gpflow_kernels).
- gpflow_kernels._cuda_ext (csrc/gpflow_cuda.cu), the CUDA kernels, where nvcc is found.

Neither links against torch (Python passes raw pointers, sizes and a dtype code), so they build
for any torch. Environment:
  GPFLOW_BUILD_CPU=1 / 0    insist on the CPU extension (fail if it cannot build) / never build it
  GPFLOW_CPU_ARCH           the -march value, default "native" (the extension is built where it
                            runs; set e.g. "x86-64-v3" for a build that other machines load)
  CXX                       the C++ compiler, default c++ or g++ on PATH
  GPFLOW_CPU_VEC_BYTES      16, 32 or 64: the CPU kernels' vector width (default: 64 with AVX-512, else 32)
  GPFLOW_BUILD_CUDA=1       build the CUDA extension, and fail if nvcc is missing or the build fails
  GPFLOW_BUILD_CUDA=0       never build it
  (unset)                   build each extension when its compiler is found
  GPFLOW_CUDA_ARCHS         semicolon-separated SM versions, default "80;90"
"""

import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

SOURCE = os.path.join("csrc", "gpflow_cuda.cu")
CPU_SOURCE = os.path.join("csrc", "gpflow_cpu.cpp")
#: Flags of the CPU extension. -fopenmp: its threads are OpenMP's, and at run time libgomp.so.1
#: resolves to the copy torch loaded, so they are torch's pool; -fno-math-errno / -fno-trapping-math
#: let GCC vectorise sqrt and the steps of our exp; no -ffast-math (NaN and inf keep their meaning).
CPU_FLAGS = "-O3 -std=c++17 -fPIC -fvisibility=hidden -fopenmp -fno-math-errno -fno-trapping-math"


def find_cxx():
    flag = os.environ.get("GPFLOW_BUILD_CPU", "").strip()
    if flag == "0":
        return None
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        if flag == "1":
            raise SystemExit("GPFLOW_BUILD_CPU=1 but no C++ compiler was found (CXX, c++, g++)")
        print("gpflow-kernels: no C++ compiler found, installing without the fused CPU kernels (the CPU ops use tiled torch)")
    return cxx


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

    def finalize_options(self):
        super().finalize_options()
        # The CUDA and CPU extensions build at the same time (each is a ninja call): on 2 cores
        # that cut the install's compile from 48 s to about 35 s.
        if not self.parallel:
            self.parallel = True

    def build_extension(self, ext):
        if getattr(ext, "cxx", None):
            return self.build_cpu(ext)
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
                f"rule nvcc\n  command = {nvcc} -std=c++17 -O3 --threads {min(len(archs), os.cpu_count() or 1)} "
                f"-Xcompiler -fPIC -Xcompiler -fvisibility=hidden "
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


    def build_cpu(self, ext):
        import ninja
        import pybind11

        out = os.path.abspath(self.get_ext_fullpath(ext.name))
        tmp = os.path.abspath(self.build_temp)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.makedirs(tmp, exist_ok=True)
        march = os.environ.get("GPFLOW_CPU_ARCH", "native").strip() or "native"
        vec = os.environ.get("GPFLOW_CPU_VEC_BYTES", "").strip()  # default: the registers' width
        if vec and vec not in ("16", "32", "64"):
            raise SystemExit(f"GPFLOW_CPU_VEC_BYTES must be 16, 32 or 64, got {vec!r}")
        march += f" -DGPFLOW_VEC_BYTES={vec}" if vec else ""
        includes = f"-I{pybind11.get_include()} -I{sysconfig.get_paths()['include']}"
        src = os.path.abspath(ext.sources[0])
        # Two objects of about equal compile time (GPFLOW_CPU_PART in the source), which ninja
        # compiles in parallel.
        objs = [os.path.join(tmp, f"gpflow_cpu_{part}.o") for part in ("a", "b")]
        # The headers as implicit inputs: without them an edit to cpu_tiles.h alone left the old
        # objects in place ("ninja: no work to do") and the tests ran the previous kernels.
        headers = " ".join(os.path.abspath(h) for h in ext.depends)
        with open(os.path.join(tmp, "build_cpu.ninja"), "w") as f:
            f.write(
                f"rule cxx\n  command = {ext.cxx} {CPU_FLAGS} -march={march} {includes} $defs -c $in -o $out\n"
                f"rule link\n  command = {ext.cxx} -shared -fopenmp $in -o $out\n"
                f"build {objs[0]}: cxx {src} | {headers}\n  defs = -DGPFLOW_CPU_PART=0\n"
                f"build {objs[1]}: cxx {src} | {headers}\n  defs = -DGPFLOW_CPU_PART=1\n"
                f"build {out}: link {' '.join(objs)}\n"
            )
        try:
            subprocess.check_call([os.path.join(ninja.BIN_DIR, "ninja"), "-C", tmp, "-f", "build_cpu.ninja"])
        except subprocess.CalledProcessError as e:
            msg = "gpflow-kernels: building the fused CPU kernels failed; the CPU ops will use tiled torch"
            if os.environ.get("GPFLOW_BUILD_CPU", "").strip() == "1":
                raise SystemExit(msg) from e
            print(msg, file=sys.stderr)
            raise CompileError(msg) from e


ext_modules = []
cxx = find_cxx()
if cxx:
    cpu = Extension("gpflow_kernels._cpu_ext", sources=[CPU_SOURCE], optional=True,
                    depends=[os.path.join("csrc", h) for h in ("cpu_math.h", "cpu_rows.h", "cpu_tiles.h")])
    cpu.cxx = cxx
    ext_modules.append(cpu)
nvcc = find_nvcc()
if nvcc:
    ext = Extension("gpflow_kernels._cuda_ext", sources=[SOURCE])
    ext.nvcc = nvcc
    ext_modules.append(ext)

setup(ext_modules=ext_modules, cmdclass={"build_ext": NinjaBuildExt})
