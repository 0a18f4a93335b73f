#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, builds the extension for that GPU, records the
# toolchain, probes the error path (scripts/gpu/error_probes.sh) and cuSOLVER's eigensolvers under
# CUDA graph capture (scripts/gpu/eigensolver_matrix.py), runs every CUDA test, runs the CUDA
# benchmark (a shorter grid) and the memory measurement, then compute-sanitizer (memcheck,
# racecheck, synccheck) on a few tests, and writes one report into OUT_DIR: report.md and
# report.json (GPU, versions, pass/fail and seconds per step) plus each step's log and output.
# Test steps run in pytest-xdist workers, so a test that crashes its process fails alone. Meant to
# take under 8 minutes on an H100; --quick (build, probes, eigensolver matrix, tests/test_cuda.py)
# under 3. Without a GPU it says so and exits 1; it exits 1 too when a step fails.
#
#   bash scripts/gpu_check.sh [--quick] OUT_DIR
#   bash scripts/gpu_check.sh [--quick] --dry-run    # lists the steps, runs nothing
#   PY=python3 STEP_TIMEOUT=300 bash scripts/gpu_check.sh OUT_DIR   # another Python; seconds per step
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}  # another Python with torch, e.g. a GPU machine's own
SANITIZED="tests/test_cuda.py::test_rank_follows_variance tests/test_cuda.py::test_many_tokens"
BENCHMARK_GRID="not (B8 or (B64 and (linalg or cupy)))"  # the full grid: without -k

# name|quick (in --quick too) or full|command
STEPS=(
  "build|quick|CUDA_HOME=\${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=\$ARCH MAX_JOBS=\$(nproc) $PY -m pip install -q --no-build-isolation --no-deps -e ."
  "info|quick|$PY -m svdprune_cuda.info"
  "toolchain|quick|c++ --version | head -1; $PY -c 'import torch; print(torch.__config__.show())'; ldd svdprune_cuda/_C.abi3.so"
  "error-probes|quick|PY=$PY bash scripts/gpu/error_probes.sh \$OUT/error-probes"
  "eigensolver-matrix|quick|$PY scripts/gpu/eigensolver_matrix.py \$OUT/eigensolver-matrix"
  "cuda-tests|quick|$PY -m pytest -q -n 4 tests/test_cuda.py"
  "cuda-op-tests|full|$PY -m pytest -q -n 4 tests/test_ops.py tests/test_pivoted.py tests/test_properties.py tests/test_autograd.py tests/test_concurrency.py -k 'cuda and not cuda_on_host'"
  "benchmark|full|$PY -m pytest -q benchmarks/bench_select_cuda.py -k '$BENCHMARK_GRID' --benchmark-json=\$OUT/bench_select_cuda.json"
  "memory|full|$PY benchmarks/bench_memory.py --device cuda > \$OUT/memory.md"
  "memcheck|full|compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest -q -p no:cacheprovider $SANITIZED"
  "racecheck|full|compute-sanitizer --tool racecheck --error-exitcode 1 $PY -m pytest -q -p no:cacheprovider $SANITIZED"
  "synccheck|full|compute-sanitizer --tool synccheck --error-exitcode 1 $PY -m pytest -q -p no:cacheprovider $SANITIZED"
)

quick=0 dry_run=0 out_dir=
for argument in "$@"; do
  case $argument in
    --quick) quick=1 ;;
    --dry-run) dry_run=1 ;;
    -*) echo "usage: $0 [--quick] OUT_DIR | [--quick] --dry-run" >&2; exit 2 ;;
    *) [ -z "$out_dir" ] || { echo "usage: $0 [--quick] OUT_DIR | [--quick] --dry-run" >&2; exit 2; }; out_dir=$argument ;;
  esac
done
selected=()
for step in "${STEPS[@]}"; do
  rest=${step#*|}
  [ $quick -eq 0 ] || [ "${rest%%|*}" = quick ] && selected+=("${step%%|*}|${rest#*|}")
done
if [ $dry_run -eq 1 ]; then
  for step in "${selected[@]}"; do echo "${step%%|*}: ${step#*|}"; done
  [ $quick -eq 1 ] || { echo "eigensolver-matrix cases:"; $PY scripts/gpu/eigensolver_matrix.py --list | sed 's/^/  /'; }
  exit 0
fi
[ -n "$out_dir" ] || { echo "usage: $0 [--quick] OUT_DIR | [--quick] --dry-run" >&2; exit 2; }
if ! command -v nvidia-smi >/dev/null || ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: no CUDA GPU visible here; nothing checked" >&2
  exit 1
fi
OUT=$(mkdir -p "$out_dir" && cd "$out_dir" && pwd)
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export OUT ARCH
: > "$OUT/steps.tsv"
status=0
for step in "${selected[@]}"; do
  name=${step%%|*}
  start=$(date +%s%N)
  timeout "${STEP_TIMEOUT:-1800}" bash -c "${step#*|}" > "$OUT/$name.log" 2>&1
  rc=$?
  milliseconds=$(( ($(date +%s%N) - start) / 1000000 ))  # shell arithmetic: GPU machines may lack bc
  seconds=$(printf %d.%03d $((milliseconds / 1000)) $((milliseconds % 1000)))
  printf '%s\t%s\t%.1f\n' "$name" "$rc" "$seconds" >> "$OUT/steps.tsv"
  echo "gpu_check: $name: $([ $rc -eq 0 ] && echo pass || echo "FAIL ($rc)") in ${seconds%.*} s"
  [ $rc -eq 0 ] || status=1
done

$PY - "$OUT" <<'PY'
import json, subprocess, sys, torch
from pathlib import Path
out = Path(sys.argv[1])
steps = [dict(step=n, passed=rc == "0", exit_code=int(rc), seconds=float(s))
         for n, rc, s in (line.split("\t") for line in (out / "steps.tsv").read_text().splitlines())]
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
report = dict(gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda,
              svdprune_info=(out / "info.log").read_text().strip(), steps=steps,
              passed=all(s["passed"] for s in steps))
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
lines = [f"# svdprune GPU check: {'PASS' if report['passed'] else 'FAIL'}", "",
         f"GPU: {gpu}  ", f"torch {torch.__version__}, CUDA {torch.version.cuda}", "",
         "| step | result | seconds |", "|---|---|---|"]
lines += [f"| {s['step']} | {'pass' if s['passed'] else 'FAIL (%d)' % s['exit_code']} | {s['seconds']:.1f} |" for s in steps]
lines += ["", "Logs: `<step>.log`; benchmark: `bench_select_cuda.json`; peak memory: `memory.md`."]
if (out / "error-probes.log").exists():
    lines += ["", "## Error-path probes", "", "```", (out / "error-probes.log").read_text().strip()[:6000], "```"]
if (out / "eigensolver-matrix" / "matrix.md").exists():
    lines += ["", "## cuSOLVER eigensolvers under capture", "", (out / "eigensolver-matrix" / "matrix.md").read_text()]
(out / "report.md").write_text("\n".join(lines) + "\n")
PY
echo "gpu_check: report in $OUT/report.md"
exit $status
