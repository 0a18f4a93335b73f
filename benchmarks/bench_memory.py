"""Peak extra memory of `select`: how much memory grows above the input during one call.

Each case runs in a fresh subprocess, which builds float32 features [B, 576, D] and makes one small
call first (so that loading BLAS/LAPACK, their thread pools or the CUDA libraries is not counted).
On the CPU it then resets the peak resident set size (Linux: writing 5 to /proc/self/clear_refs
sets VmHWM to the current VmRSS), runs `select` once and reads the peak (VmHWM) again; the extra
memory is that peak minus the resident set just before the call, which already holds the input.
On CUDA the same is read from the caching allocator (peak allocated minus allocated before the
call), which is where the op's buffers and the solver workspaces come from.

    python benchmarks/bench_memory.py              # the table in benchmarks/RESULTS.md
    python benchmarks/bench_memory.py --batches 1 8 --dims 1024
    python benchmarks/bench_memory.py --device cuda
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
batch, dim, method, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

svdprune_cuda.select(torch.randn(2, 64, 64, device=device), 8, method=method)
features = torch.randn(batch, {n}, dim, generator=torch.Generator().manual_seed(0)).to(device)
if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    svdprune_cuda.select(features, {budget}, method=method)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
else:
    open("/proc/self/clear_refs", "w").write("5")
    before = kib("VmRSS")
    svdprune_cuda.select(features, {budget}, method=method)
    extra = (kib("VmHWM") - before) * 1024
print(json.dumps({{"input_mib": features.numel() * 4 / 2**20, "extra_mib": extra / 2**20}}))
""".format(n=N, budget=BUDGET)


def measure(batch: int, dim: int, method: str, device: str) -> dict:
    args = [sys.executable, "-c", CASE, str(batch), str(dim), method, device]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["exact", "randomized"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    import torch

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"select(features [B, {N}, D] float32, budget={BUDGET}), {where}, torch {torch.__version__}")
    print()
    print("| method | B | D | input (MiB) | peak extra (MiB) | extra / input |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        for dim in args.dims:
            for batch in args.batches:
                result = measure(batch, dim, method, args.device)
                ratio = result["extra_mib"] / result["input_mib"]
                print(f"| {method} | {batch} | {dim} | {result['input_mib']:.1f} | {result['extra_mib']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
