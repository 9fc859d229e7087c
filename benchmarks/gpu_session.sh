#!/usr/bin/env bash
# Everything that needs a GPU, by stages, each logged to OUTDIR/<stage>.log.
#
#   bash benchmarks/gpu_session.sh STAGE...        (from the repository root)
#
# Stages, in the order they are best run:
#   build        build the CUDA extension in place (GPFLOW_BUILD_CUDA=1; archs from
#                GPFLOW_CUDA_ARCHS, default: this GPU's only, which is faster to build)
#   gputests     the tests that skip without a GPU: Triton kernels on the device, the CUDA
#                extension, CUDA-graph capture, the solvers on CUDA
#   tests        the whole test suite, slow cases included (--run-slow; pytest-xdist with 8
#                workers where installed)
#   check        gpflow check --device cuda (every op x backend x dtype x D against float64,
#                OUTDIR/gpflow-check.json), then benchmarks/gpu_check.py: accuracy, median times,
#                pairs/s and the fraction of the exp ceiling (QUICK=1: the small grid / two smallest sizes)
#   bench        pytest-benchmark: the ops on CUDA and the solvers' *_cuda groups (BENCH_K replaces
#                its -k selection "gpu or cuda": all 171 cases take more than one call), then the
#                ratio table (OUTDIR/bench.json, OUTDIR/bench.md)
#   dist         benchmarks/gpu_dist_check.py under torchrun, one rank per GPU (NCCL): the sharded
#                ops on the GPU backends against one process, and their lse merge on the device
#   images       image training on the device: edm and gan on the digits at 16×16 (U-Net / DCGAN,
#                channels_last), fp32 then bf16 + compile, and edm streamed from a .npy file
#                (DataLoader workers, pinned memory); metrics.json (images/s, FD, KID, NLL) in
#                OUTDIR/images/
# Every call starts with the environment (versions, nvidia-smi) in OUTDIR/env.log. Wheels in
# ./.whl (torchsde, pykeops, ... for a machine without a package index) are installed first; made
# on a machine with one by
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchsde==0.2.6 boltons trampoline
#   pip wheel --no-deps -w .whl pykeops==2.3 keopscore==2.3
# STAGE_LIMIT=SECONDS bounds each stage (see run below). OUTDIR is $OUT where set (the device tool's folder), else ./gpu_out. The exit status is that of
# the first stage that failed; later stages still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
for stage in "$@"; do
    case $stage in build|gputests|tests|check|bench|dist|images) ;;
        *) echo "unknown stage '$stage' (build, gputests, tests, check, bench, dist, images)" >&2; exit 2 ;;
    esac
done

# KeOps goes to a folder of its own, added only for the stages that time it (check, bench) and
# only once a probe in a separate process has compiled and run one reduction on this GPU: seen on
# an H100 with CUDA 13.0 (2026-11-25), pykeops 2.3's nvrtc compile segfaulted inside pytest-xdist
# workers, which took the whole test stage down with it.
keops=()
for w in .whl/*.whl; do
    [ -e "$w" ] || continue
    case $(basename "$w") in pykeops-*|keopscore-*) keops+=("$w") ;; *) other+=("$w") ;; esac
done
if [ -n "${other+x}" ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpflow_site "${other[@]}" \
        && export PYTHONPATH="$PYTHONPATH:/tmp/gpflow_site"
fi
keops_path=
if [ ${#keops[@]} -gt 0 ] && $py -m pip install -q --no-index --no-deps --no-compile --upgrade \
        --target /tmp/gpflow_keops "${keops[@]}"; then
    if PYTHONPATH="$PYTHONPATH:/tmp/gpflow_keops" timeout 300 $py benchmarks/keops_probe.py >"$out/keops_probe.log" 2>&1
    then keops_path=/tmp/gpflow_keops
    fi
    echo "KeOps probe: ${keops_path:+usable}${keops_path:-UNUSABLE, left out (see keops_probe.log)}"
fi
with_keops=(env "PYTHONPATH=$PYTHONPATH${keops_path:+:$keops_path}")

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version | tail -1
    $py - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for name in ("triton", "torchsde", "torchdiffeq", "xdist", "pytest_benchmark", "pytest_timeout"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
EOF
} >"$out/env.log" 2>&1
cat "$out/env.log"

# STAGE_LIMIT=SECONDS stops each stage after that long with SIGINT, on which pytest still prints
# its summary of failures (a device call killed from outside returns no summary at all: pytest-xdist
# reports failures only at the end).
limit=()
[ -n "${STAGE_LIMIT:-}" ] && limit=(timeout -s INT -k 20 "$STAGE_LIMIT")

run() {  # run STAGE COMMAND...: log to OUTDIR/STAGE.log, keep the first failure's status
    local stage=$1 t0=$SECONDS rc
    shift
    echo "== $stage: $*" | tee -a "$out/$stage.log"
    "${limit[@]}" "$@" 2>&1 | tee -a "$out/$stage.log"
    rc=${PIPESTATUS[0]}
    echo "== $stage: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/$stage.log"
    [ "$status" -ne 0 ] || status=$rc
}

xdist=()
$py -c "import xdist" 2>/dev/null && xdist=(-n 8)
# A hung test (a GPU wait that never returns) fails alone instead of eating the stage's time.
$py -c "import pytest_timeout" 2>/dev/null && xdist+=(--timeout 300)
gpu_tests=(tests/test_triton.py tests/test_cuda.py tests/test_solvers_fast_loops.py tests/test_solvers_ode.py
           tests/test_benchmark_scripts.py)

for stage in "$@"; do
    case $stage in
        build)
            archs=${GPFLOW_CUDA_ARCHS:-$($py -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')")}
            run build env GPFLOW_BUILD_CUDA=1 GPFLOW_CUDA_ARCHS="$archs" \
                $py setup.py -q build_ext --inplace ;;
        # Two torch threads per xdist worker: 8 workers × 2 = the machine's 16 cores.
        gputests) run gputests env OMP_NUM_THREADS=2 $py -m pytest -q -ra "${xdist[@]}" "${gpu_tests[@]}" ;;
        tests) run tests env OMP_NUM_THREADS=2 $py -m pytest -q -ra --run-slow "${xdist[@]}" tests ;;
        check)
            # gpflow check first: every op, backend and dtype against float64, one row per case as it
            # is measured, the JSON written at the end (the issue's gpu-<date>-check.json)
            # (the quick grid unless FULL_CHECK=1: the full one compiles a Triton kernel per op, kernel,
            # D and dtype, far more than one device session holds; not yet timed on a GPU)
            run check $py -m gpflow_kernels check --device cuda $([ -n "${FULL_CHECK:-}" ] || echo --quick) --json "$out/gpflow-check.json"
            run check "${with_keops[@]}" $py benchmarks/gpu_check.py ${QUICK:+--quick} ;;
        bench)
            run bench "${with_keops[@]}" $py -m pytest -q benchmarks -k "${BENCH_K:-gpu or cuda}" --benchmark-only \
                --benchmark-json="$out/bench.json" --benchmark-columns=median,iqr,rounds
            [ -f "$out/bench.json" ] && $py benchmarks/report.py "$out/bench.json" >"$out/bench.md" && cat "$out/bench.md" ;;
        dist)
            ngpu=$($py -c "import torch; print(max(1, torch.cuda.device_count()))")
            run dist $py -m torch.distributed.run --standalone --nproc-per-node "$ngpu" benchmarks/gpu_dist_check.py ;;
        images)
            for m in edm gan; do
                for mode in fp32 bf16; do
                    extra=(); [ $mode = bf16 ] && extra=(--set precision=bf16 --set compile=true --set penalty=0)
                    [ $m = edm ] && [ $mode = bf16 ] && extra=(--set precision=bf16 --set compile=true)
                    run images $py -m gpflow_kernels run $m --data digits --out "$out/images/$m-$mode" --overwrite \
                        --device cuda --steps 1000 --set image_size=16 --no-plots --quiet "${extra[@]}"
                done
            done
            mkdir -p "$out/images"
            # streamed from a file (memory map, 4 DataLoader workers, pinned memory): the digits as
            # uint8 with their labels in a .pt (pixels rounded to 256 levels, not the digits' 17);
            # compare images/s, FD and KID with edm-fp32's
            run images $py -c "import torch; from sklearn.datasets import load_digits; d = load_digits(); \
torch.save({'images': torch.tensor(d.images * 255 / 16).to(torch.uint8), 'labels': torch.tensor(d.target)}, \
'$out/images/digits.pt')"
            run images $py -m gpflow_kernels run edm --data "$out/images/digits.pt" --out "$out/images/edm-stream" \
                --overwrite --device cuda --steps 1000 --set image_size=16 --set stream=on --no-plots --quiet ;;
    esac
done
exit $status
