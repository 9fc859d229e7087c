#!/usr/bin/env bash
# Everything that needs a GPU, in one command that fits a device session:
#
#   bash benchmarks/gpu_session.sh all            (from the repository root; or name STAGEs)
#
# Stages, in the order `all` runs them, each with its own time budget in seconds (GPU / CPU dry run):
#   build     (90 / 20)   the CPU and CUDA extensions in place (GPFLOW_BUILD_CUDA=1, this GPU's arch only)
#   check     (90 / 25)   gpflow check --device cuda --quick (FULL_CHECK=1: the full grid): every op x
#                         backend x dtype x D against float64, and the accuracy contract's hard cases;
#                         then benchmarks/gpu_check.py --quick (TF32 variants, times; GPU only)
#   gputests  (120 / 60)  the test files that skip without a GPU (Triton on the device, the CUDA
#                         extension, CUDA graphs, the solvers on CUDA)
#   bench     (75 / 15)   pytest-benchmark: the ops and solvers on CUDA against their baselines
#   dist      (30 / 15)   benchmarks/gpu_dist_check.py under torchrun, one rank per GPU (NCCL)
#   images    (60 / 45)   edm and gan on the digits at 16x16 on the device (fp32, streamed, then bf16 +
#                         compile on a GPU only)
# and, outside `all`:
#   tests     (300 / 300) the whole test suite, slow cases included
# 8 minutes in all on a GPU (about 3 on the CPU). BUDGET_<stage>=SECONDS overrides one budget.
# A stage that runs out of time gets SIGINT (pytest still reports what it has), then SIGKILL 15 s
# later; it is marked "cut off" and the next stage runs. The exit status is the first failing stage's.
#
# Without a CUDA device this is the dry run: the same stages on the CPU (Triton's interpreter, tiny
# sizes, the same output files), to run before any GPU session. REDUCED=1 runs a few cases per stage
# (tests/test_gpu_session.py runs that in CI). XDIST=N sets pytest-xdist's workers (default 8 on a
# GPU, 2 in the dry run, none in the reduced run).
#
# What comes back, in OUTDIR ($OUT where set, the device tool's folder; else ./gpu_out), written
# while the stages run (at most 8 files, as the device tool returns):
#   summary.md           the environment, then one row per stage (budget, seconds, exit, cut off),
#                        rewritten after each stage; the benchmark ratio table at the end
#   failures.txt         each failing test's full report, appended the moment it fails
#   gpflow-check.jsonl   gpflow check's rows, one JSON line each as measured
#   gpflow-check.json    the same, whole, when the check finishes
#   bench.json           pytest-benchmark's JSON (every group)
#   logs.tar.gz          every stage's full log, the tests' junit XML, the image runs' metrics.json;
#                        rebuilt after each stage
# Wheels for what the device image lacks (torchsde and its two dependencies) are in
# benchmarks/wheels/ and installed first, with any in ./.whl (pykeops, keopscore: probed in a separate
# process first, and used by check and bench only if one reduction compiles and runs).
set -uo pipefail
cd "$(dirname "$0")/.."
stages=()
for stage in "$@"; do
    case $stage in
        all) stages+=(build check gputests bench dist images) ;;
        build|check|gputests|bench|dist|images|tests) stages+=("$stage") ;;
        *) echo "unknown stage '$stage' (all, build, check, gputests, bench, dist, images, tests)" >&2; exit 2 ;;
    esac
done
[ ${#stages[@]} -gt 0 ] || { echo "usage: bash benchmarks/gpu_session.sh all|STAGE..." >&2; exit 2; }

out=${OUT:-gpu_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpflow_session.XXXXXX")
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export GPFLOW_FAILURES="$out/failures.txt"
: >"$GPFLOW_FAILURES"
reduced=${REDUCED:-}

# One probe: is there a CUDA device, and does torchsde import (it is not on the device image)?
read -r has_cuda has_torchsde < <($py -c "import importlib.util, torch; print(int(torch.cuda.is_available()), \
int(importlib.util.find_spec('torchsde') is not None))" 2>/dev/null || echo "0 0")
if [ "$has_cuda" = 1 ]; then
    mode=gpu dev=cuda
else
    mode=dry dev=cpu
    export TRITON_INTERPRET=1  # Triton's kernels run through its interpreter on the CPU
fi
declare -A budget
if [ $mode = gpu ]; then budget=([build]=90 [check]=90 [gputests]=120 [bench]=75 [dist]=30 [images]=60 [tests]=300)
else budget=([build]=20 [check]=25 [gputests]=60 [bench]=15 [dist]=15 [images]=45 [tests]=300); fi
for s in "${!budget[@]}"; do
    v="BUDGET_$s"
    [ -n "${!v:-}" ] && budget[$s]=${!v}
done

# ---- wheels, KeOps probe, environment ------------------------------------------------------------
wheels=(benchmarks/wheels/*.whl) keops=() other=()
for w in "${wheels[@]}" .whl/*.whl; do
    [ -e "$w" ] || continue
    case $(basename "$w") in pykeops-*|keopscore-*) keops+=("$w") ;; *) other+=("$w") ;; esac
done
# Only what is missing (the CPU dry run has torchsde from the test extra).
if [ ${#other[@]} -gt 0 ] && [ "$has_torchsde" != 1 ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$work/site" "${other[@]}" \
        && export PYTHONPATH="$PYTHONPATH:$work/site"
fi
keops_path=
if [ ${#keops[@]} -gt 0 ] && $py -m pip install -q --no-index --no-deps --no-compile --upgrade \
        --target "$work/keops" "${keops[@]}"; then
    if PYTHONPATH="$PYTHONPATH:$work/keops" timeout 300 $py benchmarks/keops_probe.py >"$work/keops_probe.log" 2>&1
    then keops_path=$work/keops
    fi
fi
with_keops=(env "PYTHONPATH=$PYTHONPATH${keops_path:+:$keops_path}")

{
    echo "# gpu_session.sh ${stages[*]} ($mode run${reduced:+, reduced})"
    echo '```'
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    command -v nvcc >/dev/null && nvcc --version | tail -1
    $py - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE (dry run on the CPU)")
for name in ("triton", "torchsde", "torchdiffeq", "xdist", "pytest_benchmark", "pytest_timeout"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
EOF
    [ ${#keops[@]} -gt 0 ] && echo "KeOps probe: ${keops_path:+usable}${keops_path:-UNUSABLE, left out (see keops_probe.log)}"
    echo '```'
    echo
    echo "| stage | budget s | took s | exit | |"
    echo "|---|---|---|---|---|"
} >"$work/summary.head"
cat "$work/summary.head"
: >"$work/summary.rows"

publish() {  # summary.md and logs.tar.gz in OUTDIR, each replaced whole (never half-written)
    { cat "$work/summary.head" "$work/summary.rows"
      if [ -s "$work/bench.md" ]; then echo; cat "$work/bench.md"; fi
    } >"$out/.summary.md" && mv "$out/.summary.md" "$out/summary.md"
    tar -czf "$out/.logs.tar.gz" -C "$work" --exclude=site --exclude=keops --exclude='summary.*' \
        --exclude='*.pt' --exclude='*.npy' --exclude='*.npz' . 2>/dev/null \
        && mv "$out/.logs.tar.gz" "$out/logs.tar.gz"
}

status=0
declare -A t0
run() {  # run STAGE COMMAND...: within what is left of the stage's budget, logged to WORK/STAGE.log
    local stage=$1 start=$SECONDS rc note=
    shift
    [ -n "${t0[$stage]:-}" ] || t0[$stage]=$SECONDS
    local left=$((budget[$stage] - (SECONDS - t0[$stage])))
    echo "== $stage: $*" | tee -a "$work/$stage.log"
    if [ "$left" -lt 1 ]; then
        rc=124 note="not run: the stage's budget is spent"
    else
        timeout -s INT -k 15 "$left" "$@" 2>&1 | tee -a "$work/$stage.log"
        rc=${PIPESTATUS[0]}
        # timeout's 124 (SIGINT at the budget), 137 (SIGKILL 15 s later)
        { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && note="cut off at the budget"
    fi
    local took=$((SECONDS - start))
    echo "== $stage: exit $rc after $took s${note:+ ($note)}" | tee -a "$work/$stage.log"
    echo "| $stage | ${budget[$stage]} | $took | $rc | $note |" >>"$work/summary.rows"
    [ "$status" -ne 0 ] || status=$rc
    publish
}

xdist=()
nx=${XDIST:-$([ -n "$reduced" ] && echo 0 || { [ $mode = gpu ] && echo 8 || echo 2; })}
[ "$nx" -gt 0 ] && $py -c "import xdist" 2>/dev/null && xdist=(-n "$nx")
# A hung test (a GPU wait that never returns) fails alone instead of eating the stage's time.
$py -c "import pytest_timeout" 2>/dev/null && xdist+=(--timeout 120)
pytest_live=(-p live_failures -q -ra -o addopts= -p no:cacheprovider)
read -r -a gpu_tests <<<"${GPU_TESTS:-tests/test_triton.py tests/test_cuda.py tests/test_accuracy_contract.py tests/test_solvers_fast_loops.py tests/test_solvers_ode.py tests/test_benchmark_scripts.py}"
# The dry run leaves out what takes minutes through Triton's interpreter (CI runs those cases anyway).
dry_k="not matmul_precision and not half_precision and not pair_reductions and not test_accuracy_contract"

for stage in "${stages[@]}"; do
    case $stage in
        build)
            if [ -n "$reduced" ]; then  # CI: the extensions it installed import
                run build $py -c "from gpflow_kernels import _cpu, _cuda; print('cpu extension', _cpu.available(), '| cuda extension', _cuda.available())"
            elif [ $mode = gpu ]; then
                archs=${GPFLOW_CUDA_ARCHS:-$($py -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')")}
                run build env GPFLOW_BUILD_CUDA=1 GPFLOW_CUDA_ARCHS="$archs" $py setup.py -q build_ext --inplace
            else
                run build env GPFLOW_BUILD_CUDA=0 $py setup.py -q build_ext --inplace
            fi ;;
        check)
            args=(--device $dev --json "$out/gpflow-check.json" --jsonl "$out/gpflow-check.jsonl")
            { [ -z "${FULL_CHECK:-}" ] || [ -n "$reduced" ]; } && args+=(--quick)
            # Triton's interpreter takes about a second a case: a few ops at one D (CI checks the rest)
            [ $mode = dry ] && [ -z "$reduced" ] && args+=(--ops mmd_field,kde_score --dims 2)
            [ -n "$reduced" ] && args+=(--ops mmd2 --dims 2)
            run check $py -m gpflow_kernels check "${args[@]}"
            [ $mode = gpu ] && [ -z "$reduced" ] && run check "${with_keops[@]}" $py benchmarks/gpu_check.py --quick ;;
        gputests)
            sel=("${gpu_tests[@]}")
            [ $mode = dry ] && sel+=(-k "$dry_k")
            [ -n "$reduced" ] && sel=("${GPU_TESTS_REDUCED:-tests/test_triton.py::test_backend_errors_are_clear}")
            run gputests env OMP_NUM_THREADS=2 $py -m pytest "${pytest_live[@]}" "${xdist[@]}" \
                --junitxml="$work/junit-gputests.xml" "${sel[@]}" ;;
        tests)
            run tests env OMP_NUM_THREADS=2 $py -m pytest "${pytest_live[@]}" --run-slow "${xdist[@]}" \
                --junitxml="$work/junit-tests.xml" tests ;;
        bench)
            if [ $mode = gpu ]; then sel=(benchmarks -k "${BENCH_K:-gpu or cuda}")
            else sel=(benchmarks -k "${BENCH_K:-test_sde_euler and 10000-2-100 and not compiled and not cuda}"); fi
            [ -n "$reduced" ] && sel=(benchmarks/test_bench_solvers.py -k "test_sde_euler and 10000-2-100 and ours and not compiled and not cuda")
            rounds=(--benchmark-max-time=0.5)
            [ -n "$reduced" ] && rounds=(--benchmark-max-time=0.01 --benchmark-min-rounds=2 --benchmark-warmup=off)
            run bench "${with_keops[@]}" $py -m pytest "${pytest_live[@]}" "${sel[@]}" --benchmark-only \
                "${rounds[@]}" --benchmark-json="$out/bench.json" --benchmark-columns=median,iqr,rounds
            if [ -s "$out/bench.json" ]; then
                $py benchmarks/report.py "$out/bench.json" >"$work/bench.md" 2>>"$work/bench.log"
                cat "$work/bench.md"
                publish
            fi ;;
        dist)
            ngpu=$($py -c "import torch; print(max(1, torch.cuda.device_count()))")
            small=(); [ $mode = dry ] && small=(--small)
            run dist $py -m torch.distributed.run --standalone --nproc-per-node "$ngpu" \
                benchmarks/gpu_dist_check.py "${small[@]}" ;;
        images)
            small=(--steps 1000 --set image_size=16)  # the dry run: a few steps and samples, no held-out NLL
            [ $mode = dry ] && small=(--steps 3 --samples 16 --set image_size=8)
            mkdir -p "$work/images"
            im() {  # im NAME METHOD EXTRA...: one image run into WORK/images/NAME
                local name=$1 m=$2 extra=()
                shift 2
                [ $mode = dry ] && [ "$m" = edm ] && extra=(--set sample_steps=4 --set nll_points=0)
                run images $py -m gpflow_kernels run "$m" --data "${data:-digits}" --out "$work/images/$name" --overwrite \
                    --device $dev --no-plots --quiet "${small[@]}" "${extra[@]}" "$@"
            }
            data=digits im edm-fp32 edm
            if [ -z "$reduced" ]; then
                data=digits im gan-fp32 gan
                # streamed from a file (memory map, DataLoader workers, pinned memory on CUDA): the
                # digits as uint8 with their labels in a .pt; compare images/s, FD and KID with edm-fp32's
                $py -c "import torch; from sklearn.datasets import load_digits; d = load_digits(); \
torch.save({'images': torch.tensor(d.images * 255 / 16).to(torch.uint8), 'labels': torch.tensor(d.target)}, \
'$work/images/digits.pt')" && data="$work/images/digits.pt" im edm-stream edm --set stream=on
                # bf16 + compile: GPU only (on the CPU, inductor's compile and bf16 sampling alone
                # outlast the dry run's budget)
                if [ $mode = gpu ]; then
                    data=digits im edm-bf16 edm --set precision=bf16 --set compile=true
                    data=digits im gan-bf16 gan --set precision=bf16 --set compile=true --set penalty=0
                fi
            fi ;;
    esac
done
publish
rm -rf "$work"
exit $status
