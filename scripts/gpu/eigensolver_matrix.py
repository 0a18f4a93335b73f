"""cuSOLVER's symmetric eigensolvers by size, algorithm and CUDA graph capture mode.

Calls cuSOLVER directly (ctypes, through the library torch loaded), independent of svdprune, so
that the algorithms can be compared without building anything. For each size n and solver:

- eager: the status, the largest eigenvalue error against float64 (relative to the largest
  eigenvalue), and the median time of one call at batch 1 and 64 (CUDA events);
- under capture, in "global" and "relaxed" mode: the solver's status inside the capture, whether
  the capture ended, and the eigenvalue error of a replay on new data.

Workspaces are sized and allocated before capturing, so that the capture records a copy and the
solver call only. Every capture runs in a process of its own (a failed capture can leave the
context unusable). Reading: a solver that captures in both modes can replace the exact path's
default; one that captures in relaxed mode only allocates inside the call; failing in both points
at a host synchronisation. `CUSOLVERDN_LOG_LEVEL=5` makes cuSOLVER log its calls.

    python scripts/gpu/eigensolver_matrix.py OUT_DIR      # matrix.json and matrix.md in OUT_DIR
    python scripts/gpu/eigensolver_matrix.py --list       # the cases, runs nothing
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIZES = (64, 128, 256, 576, 1024, 2880)
# xsyevbatched: cusolverDnXsyevBatched, whose default "may switch between algorithms";
# xsyevbatched-alg1: the same with cusolverDnSetAdvOptions(CUSOLVERDN_SYEVBATCHED, CUSOLVER_ALG_1);
# syevjbatched: cusolverDnSsyevjBatched (Jacobi, documented for n <= 32: its status is reported);
# syevj: cusolverDnSsyevj once per matrix (Jacobi, any n).
SOLVERS = ("xsyevbatched", "xsyevbatched-alg1", "syevjbatched", "syevj")
CAPTURE_MODES = ("global", "relaxed")
BATCHES = (1, 64)
TIMED_SECONDS = 0.5  # time spent per timed figure, at least one call
LONGEST_CALL = 20.0  # seconds: batch 64 is skipped when batch 1 predicts more

CUDA_R_32F, FILL_LOWER, EIG_VECTOR, SYEVBATCHED, ALG_1 = 0, 0, 1, 2, 1
STATUS = {0: "SUCCESS", 1: "NOT_INITIALIZED", 2: "ALLOC_FAILED", 3: "INVALID_VALUE", 4: "ARCH_MISMATCH",
          5: "MAPPING_ERROR", 6: "EXECUTION_FAILED", 7: "INTERNAL_ERROR", 8: "MATRIX_TYPE_NOT_SUPPORTED",
          9: "NOT_SUPPORTED"}


def cases() -> list[tuple[int, str, str]]:
    """(n, solver, mode) for every case; mode "eager" also times the solver."""
    return [(n, solver, mode) for solver in SOLVERS for n in SIZES for mode in ("eager", *CAPTURE_MODES)]


def loaded_library(torch, name: str) -> ctypes.CDLL:
    """The shared library `name` (e.g. "libcusolver.so") as torch loaded it."""
    torch.zeros(1, device="cuda")
    torch.linalg.eigvalsh(torch.eye(2, device="cuda"))  # loads cuSOLVER where torch does so lazily
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if name in Path(path).name:
            return ctypes.CDLL(path)
    raise RuntimeError(f"{name} is not loaded by torch {torch.__version__}")


class Solver:
    """One solver on `batch` float32 n×n matrices `a` (lower triangles read, eigenvectors in
    place), eigenvalues ascending into `w`, status per matrix into `info`; workspaces sized and
    allocated on construction, so that `run()` issues the solver call and nothing else."""

    def __init__(self, torch, cusolver, name: str, a, w, info):
        self.torch, self.lib, self.name = torch, cusolver, name
        self.a, self.w, self.info = a, w, info
        self.batch, self.n = a.shape[0], a.shape[1]
        vp, i32, i64, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_size_t
        lib = cusolver
        lib.cusolverDnCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cusolverDnSetStream.argtypes = [vp, vp]
        self.handle = vp()
        self.check("cusolverDnCreate", lib.cusolverDnCreate(ctypes.byref(self.handle)))
        self.params = vp()
        self.status = 0  # of the sizing calls; run() returns the call's own
        if name.startswith("xsyevbatched"):
            lib.cusolverDnCreateParams.argtypes = [ctypes.POINTER(vp)]
            lib.cusolverDnSetAdvOptions.argtypes = [vp, i32, i32]
            lib.cusolverDnXsyevBatched_bufferSize.argtypes = [
                vp, vp, i32, i32, i64, i32, vp, i64, i32, vp, i32, ctypes.POINTER(size), ctypes.POINTER(size), i64]
            lib.cusolverDnXsyevBatched.argtypes = [
                vp, vp, i32, i32, i64, i32, vp, i64, i32, vp, i32, vp, size, vp, size, vp, i64]
            self.check("cusolverDnCreateParams", lib.cusolverDnCreateParams(ctypes.byref(self.params)))
            if name.endswith("alg1"):
                self.check("cusolverDnSetAdvOptions", lib.cusolverDnSetAdvOptions(self.params, SYEVBATCHED, ALG_1))
            device_bytes, host_bytes = size(), size()
            self.status = lib.cusolverDnXsyevBatched_bufferSize(
                self.handle, self.params, EIG_VECTOR, FILL_LOWER, self.n, CUDA_R_32F, a.data_ptr(), self.n,
                CUDA_R_32F, w.data_ptr(), CUDA_R_32F, ctypes.byref(device_bytes), ctypes.byref(host_bytes), self.batch)
            self.device_bytes, self.host_bytes = device_bytes.value, host_bytes.value
            self.work = torch.empty(max(self.device_bytes, 1), dtype=torch.uint8, device="cuda")
            self.host_work = ctypes.create_string_buffer(max(self.host_bytes, 1))
        else:
            lib.cusolverDnCreateSyevjInfo.argtypes = [ctypes.POINTER(vp)]
            self.check("cusolverDnCreateSyevjInfo", lib.cusolverDnCreateSyevjInfo(ctypes.byref(self.params)))
            lwork = i32()
            if name == "syevjbatched":
                lib.cusolverDnSsyevjBatched_bufferSize.argtypes = [vp, i32, i32, i32, vp, i32, vp, ctypes.POINTER(i32), vp, i32]
                lib.cusolverDnSsyevjBatched.argtypes = [vp, i32, i32, i32, vp, i32, vp, vp, i32, vp, vp, i32]
                self.status = lib.cusolverDnSsyevjBatched_bufferSize(
                    self.handle, EIG_VECTOR, FILL_LOWER, self.n, a.data_ptr(), self.n, w.data_ptr(),
                    ctypes.byref(lwork), self.params, self.batch)
            else:
                lib.cusolverDnSsyevj_bufferSize.argtypes = [vp, i32, i32, i32, vp, i32, vp, ctypes.POINTER(i32), vp]
                lib.cusolverDnSsyevj.argtypes = [vp, i32, i32, i32, vp, i32, vp, vp, i32, vp, vp]
                self.status = lib.cusolverDnSsyevj_bufferSize(
                    self.handle, EIG_VECTOR, FILL_LOWER, self.n, a.data_ptr(), self.n, w.data_ptr(),
                    ctypes.byref(lwork), self.params)
            self.lwork = lwork.value
            self.device_bytes, self.host_bytes = 4 * self.lwork, 0
            self.work = torch.empty(max(self.lwork, 1), dtype=torch.float32, device="cuda")

    @staticmethod
    def check(call: str, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"{call} returned CUSOLVER_STATUS_{STATUS.get(status, status)}")

    def run(self) -> int:
        """One call on the current stream; the worst status it returned."""
        lib, a, w, info, n = self.lib, self.a, self.w, self.info, self.n
        stream = ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)
        self.check("cusolverDnSetStream", lib.cusolverDnSetStream(self.handle, stream))
        if self.name.startswith("xsyevbatched"):
            return lib.cusolverDnXsyevBatched(
                self.handle, self.params, EIG_VECTOR, FILL_LOWER, n, CUDA_R_32F, a.data_ptr(), n, CUDA_R_32F,
                w.data_ptr(), CUDA_R_32F, self.work.data_ptr(), self.device_bytes, self.host_work, self.host_bytes,
                info.data_ptr(), self.batch)
        if self.name == "syevjbatched":
            return lib.cusolverDnSsyevjBatched(
                self.handle, EIG_VECTOR, FILL_LOWER, n, a.data_ptr(), n, w.data_ptr(), self.work.data_ptr(),
                self.lwork, info.data_ptr(), self.params, self.batch)
        statuses = [
            lib.cusolverDnSsyevj(self.handle, EIG_VECTOR, FILL_LOWER, n, a[i].data_ptr(), n, w[i].data_ptr(),
                                 self.work.data_ptr(), self.lwork, info[i].data_ptr(), self.params)
            for i in range(self.batch)
        ]
        return max(statuses, key=lambda status: status != 0)


def gram_matrices(torch, n: int, batch: int, seed: int):
    """`batch` symmetric positive semi-definite n×n float32 matrices, as the exact path's Gram products are."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, n, n + 64, device="cuda", generator=generator) / (n + 64) ** 0.5
    return x @ x.mT


def eigenvalue_error(torch, w, a, checked: int = 4) -> float:
    """Of the first `checked` matrices (float64 eigenvalues of many large ones take long)."""
    w, a = w[:checked], a[:checked]
    want = torch.linalg.eigvalsh(a.double())
    return ((w.double() - want).abs().amax() / want.abs().amax()).item()


def status_name(status: int) -> str:
    return STATUS.get(status, str(status))


def eager_case(torch, cusolver, n: int, solver: str) -> dict:
    result: dict = {"n": n, "solver": solver, "mode": "eager"}
    for batch in BATCHES:
        src = gram_matrices(torch, n, batch, seed=batch)
        a = src.clone()
        w = torch.empty(batch, n, device="cuda")
        info = torch.zeros(batch, dtype=torch.int32, device="cuda")
        call = Solver(torch, cusolver, solver, a, w, info)
        if call.status != 0:
            result.update(status=f"bufferSize: {status_name(call.status)}")
            return result
        status = call.run()
        torch.cuda.synchronize()
        result[f"status_b{batch}"] = status_name(status)
        if status != 0:
            result.setdefault("status", status_name(status))
            return result
        result[f"info_b{batch}"] = int(info.abs().amax().item())
        result[f"error_b{batch}"] = eigenvalue_error(torch, w, src)
        result[f"device_bytes_b{batch}"], result[f"host_bytes_b{batch}"] = call.device_bytes, call.host_bytes
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        while not times or (sum(times) < TIMED_SECONDS * 1e3 and len(times) < 20):
            a.copy_(src)
            start.record()
            call.run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        result[f"median_ms_b{batch}"] = statistics.median(times)
        if batch == 1 and times[0] * BATCHES[-1] > LONGEST_CALL * 1e3:
            result[f"status_b{BATCHES[-1]}"] = f"skipped (batch 1 took {times[0]:.0f} ms)"
            break
    result.setdefault("status", result["status_b1"])
    return result


def capture_case(torch, cusolver, n: int, solver: str, mode: str, batch: int = 2) -> dict:
    result: dict = {"n": n, "solver": solver, "mode": mode}
    src = gram_matrices(torch, n, batch, seed=0)
    a = src.clone()
    w = torch.empty(batch, n, device="cuda")
    info = torch.zeros(batch, dtype=torch.int32, device="cuda")
    call = Solver(torch, cusolver, solver, a, w, info)
    if call.status != 0:
        result.update(status=f"bufferSize: {status_name(call.status)}")
        return result
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # warm-up outside capture, as a model's first call would be
        result["eager_status"] = status_name(call.run())
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode=mode):
            a.copy_(src)
            result["status_in_capture"] = status_name(call.run())
    except Exception as error:  # capture_end of an invalidated capture lands here
        result.update(status="capture failed", error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        return result
    src.copy_(gram_matrices(torch, n, batch, seed=1))
    graph.replay()
    torch.cuda.synchronize()
    result.update(status="captured", replay_error=eigenvalue_error(torch, w, src), info=int(info.abs().amax().item()))
    return result


def run_case(n: int, solver: str, mode: str) -> dict:
    import torch

    cusolver = loaded_library(torch, "libcusolver.so")
    try:
        if mode == "eager":
            return eager_case(torch, cusolver, n, solver)
        return capture_case(torch, cusolver, n, solver, mode)
    except Exception as error:
        return {"n": n, "solver": solver, "mode": mode, "status": "error",
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}


def in_child(n: int, solver: str, mode: str, timeout: float) -> dict:
    """The case in a process of its own; a crash or a hang is a result too."""
    command = [sys.executable, __file__, "--case", str(n), solver, mode]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"n": n, "solver": solver, "mode": mode, "status": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return {"n": n, "solver": solver, "mode": mode, "status": f"process exited {done.returncode}", "error": " | ".join(tail)}


def table(results: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.1e}" if isinstance(value, float) and value < 1e-2 else (
            f"{value:.3g}" if isinstance(value, float) else str(value))

    rows = ["| n | solver | mode | status | eigenvalue error | ms at batch 1 | ms at batch 64 | note |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        error = r.get("error_b1", r.get("replay_error"))
        note = r.get("error") or (f"in capture: {r['status_in_capture']}" if "status_in_capture" in r else "")
        if r["mode"] == "eager" and "status_b64" in r:
            note = f"batch 64: {r['status_b64']}" + (f", error {cell(r.get('error_b64'))}" if "error_b64" in r else "")
        rows.append(f"| {r['n']} | {r['solver']} | {r['mode']} | {r['status']} | {cell(error)} | "
                    f"{cell(r.get('median_ms_b1'))} | {cell(r.get('median_ms_b64'))} | {note} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path)
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--case", nargs=3, metavar=("N", "SOLVER", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=8, help="capture cases run this many at a time")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    args = parser.parse_args()
    if args.list:
        for n, solver, mode in cases():
            print(f"n={n} solver={solver} mode={mode}")
        return 0
    if args.case:
        n, solver, mode = args.case
        print("RESULT " + json.dumps(run_case(int(n), solver, mode)), flush=True)
        return 0
    if args.out_dir is None:
        parser.error("OUT_DIR is required")
    all_cases = cases()
    # Timed cases one at a time, alone on the GPU; the capture cases, untimed, several at a time.
    results = {case: in_child(*case, args.timeout) for case in all_cases if case[2] == "eager"}
    captured = [case for case in all_cases if case[2] != "eager"]
    with ThreadPoolExecutor(args.workers) as pool:
        results.update(zip(captured, pool.map(lambda case: in_child(*case, args.timeout), captured)))
    ordered = [results[case] for case in all_cases]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "matrix.json").write_text(json.dumps(ordered, indent=1) + "\n")
    (args.out_dir / "matrix.md").write_text(table(ordered))
    print(table(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
