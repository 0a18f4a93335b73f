"""Peak extra memory of `select` on the CPU: how much the resident set grows above the input.

Each case runs in a fresh subprocess, which builds float32 features [B, 576, D], makes one small
call first (so that loading BLAS/LAPACK and their thread pools is not counted), resets the peak
resident set size (Linux: writing 5 to /proc/self/clear_refs sets VmHWM to the current VmRSS), runs
`select` once and reads the peak (VmHWM) again. The extra memory is that peak minus the resident
set just before the call, which already holds the input.

    python benchmarks/bench_memory.py              # the table in benchmarks/RESULTS.md
    python benchmarks/bench_memory.py --batches 1 8 --dims 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

N = 576
BUDGET = 64

CASE = """
import json, sys, torch, svdprune_cuda
batch, dim, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

svdprune_cuda.select(torch.randn(2, 64, 64), 8, method=method)
features = torch.randn(batch, {n}, dim, generator=torch.Generator().manual_seed(0))
open("/proc/self/clear_refs", "w").write("5")
before = kib("VmRSS")
svdprune_cuda.select(features, {budget}, method=method)
print(json.dumps({{"input_mib": features.numel() * 4 / 2**20, "extra_mib": (kib("VmHWM") - before) / 1024}}))
""".format(n=N, budget=BUDGET)


def measure(batch: int, dim: int, method: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, str(batch), str(dim), method], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["exact", "randomized"])
    args = parser.parse_args()
    import torch

    print(f"select(features [B, {N}, D] float32, budget={BUDGET}), CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print()
    print("| method | B | D | input (MiB) | peak extra (MiB) | extra / input |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        for dim in args.dims:
            for batch in args.batches:
                result = measure(batch, dim, method)
                ratio = result["extra_mib"] / result["input_mib"]
                print(f"| {method} | {batch} | {dim} | {result['input_mib']:.1f} | {result['extra_mib']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
