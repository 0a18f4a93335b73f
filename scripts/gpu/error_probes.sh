#!/usr/bin/env bash
# Error-path probes: does raising an error whose message holds an integer crash the process, and
# which C++ runtime serves the formatting? Each probe runs in a process of its own, so that a
# crash (rc 139, or -11 from Python) is reported and the next probe still runs. Run from the
# repository root after the build:
#
#   PY=python3 bash scripts/gpu/error_probes.sh OUT_DIR
#
# Probes: torch's own integer error (c10::str); the extension's bad-budget error on the CPU and,
# in a fresh process, on CUDA; the same error after an exact-path call and after a torch.compile
# call. Then the libraries in the process that define libstdc++'s locale registry or integer
# formatter (with the GLIBCXX versions of each libstdc++), the extension's unversioned std::
# references, and who binds the locale and formatting symbols at run time (LD_DEBUG=bindings).
#
# Reading it: every probe "raised" → the error path is sound. torch's own probe crashing too, or a
# "second copy" line → two C++ runtimes in one process (pytorch/pytorch#109923). Only the probes
# after GPU work crashing → memory corrupted by that work (run them under compute-sanitizer).
# A libstdc++ older than the GLIBCXX version the extension requires → a newer compiler's build on
# an older runtime, which unversioned references keep the loader from refusing.
set -uo pipefail
PY=${PY:-python3}
OUT=${1:?usage: error_probes.sh OUT_DIR}
mkdir -p "$OUT"
status=0

probe() {  # name, setup statements, the statement expected to raise
  timeout 300 "$PY" -X faulthandler -c "import torch, svdprune_cuda
$2
try:
    $3
except (RuntimeError, ValueError) as error:
    print('raised:', str(error).splitlines()[0][:120])
else:
    print('did not raise')" > "$OUT/probe_$1.log" 2>&1
  local rc=$?
  local outcome
  outcome=$(grep -m1 -E '^(raised|did not raise)|Fatal Python error' "$OUT/probe_$1.log")
  echo "probe $1: rc=$rc ${outcome:-no output}"
  grep -q '^raised:' "$OUT/probe_$1.log" && [ $rc -eq 0 ] || status=1
}

BAD_BUDGET_CUDA="torch.ops.svdprune.select(torch.randn(16, 8, device='cuda'), 0)"
EXACT_CALL="x = torch.randn(2, 576, 1024, device='cuda'); torch.ops.svdprune.select(x, 16, 0.9, 'exact'); torch.cuda.synchronize()"
COMPILED_CALL="f = torch.compile(lambda t: torch.ops.svdprune.select(t, 16)[0], fullgraph=True); f(torch.randn(2, 576, 1024, device='cuda').half()); torch.cuda.synchronize()"
probe torch_integer_error  ""               "torch.empty(6).view(7)"
probe extension_cpu        ""               "torch.ops.svdprune.select(torch.randn(16, 8), 0)"
probe extension_cuda       ""               "$BAD_BUDGET_CUDA"
probe after_exact_call     "$EXACT_CALL"    "$BAD_BUDGET_CUDA"
probe after_compile        "$COMPILED_CALL" "$BAD_BUDGET_CUDA"
probe torch_after_compile  "$COMPILED_CALL" "torch.empty(6).view(7)"

echo "C++ runtimes in the process (libraries defining libstdc++'s locale registry or integer formatter):"
"$PY" - > "$OUT/runtimes.log" 2>&1 <<'EOF'
import os, re, subprocess
import torch, svdprune_cuda
if torch.cuda.is_available():
    torch.zeros(1, device="cuda")
print("LD_PRELOAD =", os.environ.get("LD_PRELOAD"), "| LD_LIBRARY_PATH =", os.environ.get("LD_LIBRARY_PATH"))
libraries = sorted({line.split()[-1] for line in open("/proc/self/maps") if re.search(r"\.so(\.|$)", line.split()[-1])})
symbols = ("_ZNSt8numpunctIcE2idE", "_ZNSt7__cxx118numpunctIcE2idE", "_ZNSt6locale2id5_M_idEv",
           "_ZNSt6locale5_ImplC2Em", "_ZNSo9_M_insertIlEERSoT_")
for library in libraries:
    defined = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True).stdout
    hits = [symbol for symbol in symbols if symbol in defined]
    if "libstdc++" in library:
        versions = sorted(set(re.findall(r"GLIBCXX_3\.4\.(\d+)", open(library, "rb").read().decode("latin1"))), key=int)
        print("libstdc++", library, "newest GLIBCXX_3.4." + versions[-1], hits)
    elif hits:
        print("second copy", library, hits)
print("extension:", svdprune_cuda._C.__file__ if hasattr(svdprune_cuda, "_C") else "-")
EOF
cat "$OUT/runtimes.log"
grep -q '^second copy' "$OUT/runtimes.log" && status=1

extension=$(ls svdprune_cuda/_C*.so | head -1)
echo "unversioned std:: references of $extension:"
nm -D --undefined-only "$extension" | grep -v '@' | c++filt |
  grep -E 'U (std::|vtable for std::|VTT for std::|typeinfo for std::)' | tee "$OUT/unversioned.log"
[ -s "$OUT/unversioned.log" ] && status=1
echo "GLIBCXX versions the extension requires: $(readelf -V "$extension" | grep -oE 'GLIBCXX_3\.4\.[0-9]+' | sort -uV | tail -1)"

echo "run-time bindings of the locale and formatting symbols (extension and libstdc++'s own):"
LD_DEBUG=bindings LD_DEBUG_OUTPUT="$OUT/ld" timeout 300 "$PY" -c "import torch, svdprune_cuda
try: torch.ops.svdprune.select(torch.randn(16, 8), 0)
except RuntimeError: pass" > /dev/null 2>&1
grep -hE "numpunctIcE2id|locale2id|locale5_Impl|_M_insertIl|ios_base_library_init|basic_ostringstream" "$OUT"/ld.* 2>/dev/null |
  sed -E 's/^ *[0-9]+: *//' | sort | uniq -c | sort -rn > "$OUT/bindings.log"
grep -E "_C[.a-z0-9]*\.so .*(numpunct|locale2id|_M_insert)" "$OUT/bindings.log" | head -12
rm -f "$OUT"/ld.*

if command -v gdb > /dev/null && ! grep -q '^raised:' "$OUT/probe_extension_cuda.log"; then
  echo "gdb backtrace of the CUDA probe:"
  timeout 300 gdb -q -batch -ex run -ex bt -ex 'info symbol $pc' -ex 'info sharedlibrary' \
    --args "$PY" -c "import torch, svdprune_cuda; $BAD_BUDGET_CUDA" > "$OUT/gdb.log" 2>&1
  grep -A25 -m1 SIGSEGV "$OUT/gdb.log"
fi
exit $status
